"""A config saved by the web UI: where it is written and that ``run`` without --config prefers it (issue 6)."""

from __future__ import annotations

from pathlib import Path

from drivers import load_profiles
from gateway.config import config_from_text, load_config, saved_config_path
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR


def test_the_embedded_default_is_never_written_and_a_saved_file_is_preferred(tmp_path: Path) -> None:
    profiles = load_profiles(PROFILES_DIR)
    default = load_config(None, profiles, data_dir_override=tmp_path)
    assert default.source_path == DEFAULT_CONFIG
    assert saved_config_path(default) == tmp_path / "gateway.toml"
    text = DEFAULT_CONFIG.read_text().replace('id = "demo-gateway"', 'id = "saved-by-ui"')
    (tmp_path / "gateway.toml").write_text(text)
    saved = load_config(None, profiles, data_dir_override=tmp_path)
    assert saved.gateway_id == "saved-by-ui" and saved.source_path == tmp_path / "gateway.toml"
    assert saved.data_dir == tmp_path


def test_a_config_file_given_with_config_is_written_in_place(tmp_path: Path) -> None:
    path = tmp_path / "plant.toml"
    path.write_text('[gateway]\nid = "plant"\n\n[sync]\nenabled = false\n')
    config = load_config(path, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data")
    assert saved_config_path(config) == path
    assert config_from_text(path.read_text(), "upload", {}, tmp_path).gateway_id == "plant"
