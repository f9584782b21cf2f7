"""Helpers for the gateway tests: the demo config without web UI and sync, polling fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from drivers import load_profiles
from gateway.config import GatewayConfig, load_config
from gateway.paths import PROFILES_DIR


def fast_demo(data_dir: Path, **changes: Any) -> GatewayConfig:
    """The embedded demo polling every 0.5 s, web UI, sync and scheduled backups off; ``changes`` override."""
    config = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=data_dir)
    config = replace(config, web=replace(config.web, enabled=False), sync=replace(config.sync, enabled=False),
                     backup=replace(config.backup, enabled=False),
                     meters=tuple(replace(m, poll_interval_s=0.5) for m in config.meters))
    return replace(config, **changes)
