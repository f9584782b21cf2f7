"""Where the gateway finds its shipped files and keeps its state.

The shipped files (the default config, the meter profiles, the emission factors) are package data of the
installed wheel, ``gateway/shipped/`` (setup.py copies ``config/`` there at build time), found with
:mod:`importlib.resources`. In a development checkout (an editable install) they are read in place from
``config/``. ``CARBON_GATEWAY_CONFIG_DIR`` overrides both (a directory holding ``gateway.toml``,
``profiles/`` and ``factors/``).

On a box, site-specific profiles go in ``/etc/carbon-gateway/profiles/`` (``CARBON_GATEWAY_SITE_PROFILES``
overrides the place): a file there is loaded after the shipped ones and wins over a shipped profile with the
same id.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def shipped_dir() -> Path:
    """The directory of the shipped config: the override, the wheel's package data, or the checkout's ``config/``."""
    override = os.environ.get("CARBON_GATEWAY_CONFIG_DIR")
    if override:
        return Path(override)
    packaged = resources.files("gateway").joinpath("shipped")
    if isinstance(packaged, Path) and packaged.is_dir():   # an installed wheel (always on the file system here)
        return packaged
    return Path(__file__).resolve().parent.parent / "config"


#: Shipped config: default gateway.toml, profiles/, factors/.
CONFIG_DIR = shipped_dir()
PROFILES_DIR = CONFIG_DIR / "profiles"
FACTORS_DIR = CONFIG_DIR / "factors"
DEFAULT_CONFIG = CONFIG_DIR / "gateway.toml"

#: Site profiles, loaded over the shipped ones (same id: the site's file wins). Absent: none.
SITE_PROFILES_DIR = Path(os.environ.get("CARBON_GATEWAY_SITE_PROFILES", "/etc/carbon-gateway/profiles"))
#: Where the daemon and the commissioning commands look for profiles, in load order.
PROFILE_DIRS: tuple[Path, ...] = (PROFILES_DIR, SITE_PROFILES_DIR)

#: Release public keys this box trusts for `carbon-gateway upgrade` (and for uploads in the web UI).
RELEASE_KEYS_DIR = Path(os.environ.get("CARBON_GATEWAY_RELEASE_KEYS", "/etc/carbon-gateway/release-keys"))

#: State (SQLite, keys, backups). The systemd unit sets it to /var/lib/carbon-gateway.
DEFAULT_DATA_DIR = Path(os.environ.get("CARBON_GATEWAY_DATA_DIR", "var"))
