"""100 ms polling is allowed (issue 17); the bound below it still names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import load_profiles
from gateway.config import ConfigError, load_config
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR

PROFILES = load_profiles(PROFILES_DIR)
DEMO = DEFAULT_CONFIG.read_text()


def test_a_100_ms_poll_interval_loads_and_50_ms_is_refused(tmp_path: Path) -> None:
    old = "poll_interval_s = 2\n"
    assert old in DEMO
    path = tmp_path / "fast.toml"
    path.write_text(DEMO.replace(old, "poll_interval_s = 0.1\n", 1))
    assert load_config(path, PROFILES).meters[0].poll_interval_s == 0.1
    path.write_text(DEMO.replace(old, "poll_interval_s = 0.05\n", 1))
    with pytest.raises(ConfigError) as error:
        load_config(path, PROFILES)
    assert str(error.value).startswith(f"{path}: meters[0].poll_interval_s = 0.05: use a value from 0.1 to 86400 s")
