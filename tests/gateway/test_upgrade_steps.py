"""gateway/upgrade.py step by step, without building releases: versions, and a start that fails is rolled back.
The whole upgrade with real bundles and a real daemon: tests/test_upgrade.py."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import gateway.upgrade as upgrades
from drivers import load_profile_set
from gateway.bundle import load_private_key, new_release_key, write_bundle
from gateway.config import load_config
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR
from gateway.upgrade import UpgradeError, UpgradeSettings, upgrade, version_key
from tests.conftest import free_port


def test_versions_compare_as_numbers() -> None:
    assert version_key("0.9.0") < version_key("0.10.0") < version_key("1.0.0") < version_key("1.0.1")
    assert version_key("1.2") < version_key("1.2.1") and version_key("2.0.0") == version_key("2.0.0")


def _box(tmp_path: Path) -> tuple[UpgradeSettings, Path, Path]:
    prefix = tmp_path / "opt"
    (prefix / "releases" / "1.0.0").mkdir(parents=True)
    (prefix / "current").symlink_to("releases/1.0.0")
    keys = tmp_path / "keys"
    keys.mkdir()
    new_release_key(tmp_path / "k" / "release.pem").rename(keys / "release.pub")
    wheel = tmp_path / "carbon_edge_gateway-1.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stand-in")
    bundle = write_bundle(tmp_path / "b.tar", [wheel], "1.1.0", "linux_x86_64",
                          load_private_key(tmp_path / "k" / "release.pem"))
    # the "service": starting fails while current points at 1.1.0 (a release that cannot even start)
    start = tmp_path / "start.py"
    start.write_text(f"import os, sys\nsys.exit(1 if os.readlink({str(prefix / 'current')!r}).endswith('1.1.0') else 0)\n")
    settings = UpgradeSettings(prefix=prefix, trusted_keys=(keys,), stop_command=("true",),
                               start_command=(sys.executable, str(start)), health_timeout_s=1.0)
    return settings, prefix, bundle


def test_a_release_that_does_not_start_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, prefix, bundle = _box(tmp_path)
    monkeypatch.setattr(upgrades, "install_release",
                        lambda verified, settings, log: (prefix / "releases" / verified.version).mkdir())
    found = load_profile_set(PROFILES_DIR)
    config = load_config(DEFAULT_CONFIG, found.profiles, data_dir_override=tmp_path / "data")
    config = replace(config, web=replace(config.web, port=free_port()))    # nothing answers /healthz there
    lines: list[str] = []
    result = upgrade(bundle, config, settings, log=lines.append)
    assert result.outcome == "rolled_back" and os.readlink(prefix / "current") == "releases/1.0.0"
    assert "starting the new release failed (exit 1)" in result.reason
    assert any(line.startswith("rolling back:") for line in lines)


def test_refusals_change_nothing(tmp_path: Path) -> None:
    settings, prefix, bundle = _box(tmp_path)
    found = load_profile_set(PROFILES_DIR)
    config = load_config(DEFAULT_CONFIG, found.profiles, data_dir_override=tmp_path / "data")
    for other, reason in ((tmp_path / "not-a-bundle.tar", "not a release bundle"),):
        other.write_bytes(b"x" * 2048)
        with pytest.raises(UpgradeError, match=reason):
            upgrade(other, config, settings)
    (prefix / "current").unlink()
    (prefix / "current").symlink_to("releases/1.1.0")
    with pytest.raises(UpgradeError, match="is the running release already"):
        upgrade(bundle, config, settings)
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == ["1.0.0"]
    assert not (tmp_path / "data").exists()
