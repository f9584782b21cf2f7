"""Where the gateway finds its shipped files and keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

#: Shipped config: default gateway.toml, profiles/, factors/. Overridable for /opt installs.
CONFIG_DIR = Path(os.environ.get("CARBON_GATEWAY_CONFIG_DIR", Path(__file__).resolve().parent.parent / "config"))
PROFILES_DIR = CONFIG_DIR / "profiles"
FACTORS_DIR = CONFIG_DIR / "factors"
DEFAULT_CONFIG = CONFIG_DIR / "gateway.toml"

#: State (SQLite, keys, backups). The systemd unit sets it to /var/lib/carbon-gateway.
DEFAULT_DATA_DIR = Path(os.environ.get("CARBON_GATEWAY_DATA_DIR", "var"))
