"""Helpers for the gateway tests: the demo config without web UI and sync, polling fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from drivers import ProfileSet, load_profile_set
from gateway.config import GatewayConfig, load_config
from gateway.paths import PROFILES_DIR


def fast_demo(data_dir: Path, profiles: ProfileSet | None = None, **changes: Any) -> GatewayConfig:
    """The embedded demo polling every 0.5 s, web UI, sync and scheduled backups off; ``changes`` override.

    :param profiles: a profile directory as loaded (default: the shipped one).
    """
    found = profiles or load_profile_set(PROFILES_DIR)
    config = load_config(None, found.profiles, data_dir_override=data_dir, broken_profiles=found.broken)
    config = replace(config, web=replace(config.web, enabled=False), sync=replace(config.sync, enabled=False),
                     backup=replace(config.backup, enabled=False),
                     meters=tuple(replace(m, poll_interval_s=0.5) for m in config.meters))
    return replace(config, **changes)
