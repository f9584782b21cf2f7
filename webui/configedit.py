"""Apply a config changed in the web UI: validate, reload the running gateway, then save the file.

The flow (issue 6): build the new TOML, validate it with ``gateway.config``, ``runtime.reload()`` it,
and only when the reload worked replace the file atomically (temp file, fsync, rename). On a
``ReloadError`` the old file stays and the running config is the old one. Comments in the file are
not kept (the TOML is written back from its data); docs/webui.md says so.
"""

from __future__ import annotations

import os
import tempfile
import threading
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from gateway.config import ConfigError, GatewayConfig, config_from_text, saved_config_path
from gateway.daemon import ReloadError

_lock = threading.Lock()   # one change at a time: two technicians never overwrite each other's edit


class ApplyError(Exception):
    """The change was not applied; the message says why (validation or reload)."""


def current_data(runtime: Any) -> dict[str, Any]:
    """The running config as TOML data (a fresh copy the caller may change)."""
    text = runtime.config.text
    return tomllib.loads(text) if text else {}


def validate(runtime: Any, text: str, origin: str = "web UI") -> GatewayConfig:
    """:raises ApplyError: the text is not a valid config (the message names key, value and fix)."""
    path = saved_config_path(runtime.config)
    try:
        # a meter whose profile file is broken stays disabled, as at start, rather than failing every edit
        return config_from_text(text, origin, runtime.profiles(), data_dir_override=runtime.config.data_dir,
                                source_path=path, broken_profiles=dict(runtime.config.profile_errors))
    except ConfigError as exc:
        raise ApplyError(str(exc)) from exc


def apply_text(runtime: Any, text: str, origin: str = "web UI") -> GatewayConfig:
    """Validate ``text``, run it, save it. :raises ApplyError: nothing changed (file and running config)."""
    with _lock:
        new = validate(runtime, text, origin)
        path = saved_config_path(runtime.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gateway-", suffix=".toml", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                runtime.reload(new)
            except ReloadError as exc:
                raise ApplyError(str(exc)) from exc
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return new


def apply_data(runtime: Any, data: dict[str, Any]) -> GatewayConfig:
    """Apply ``data`` built from :func:`current_data`. :raises ApplyError: as :func:`apply_text`."""
    if not runtime.config.text:
        # a config built in code has no TOML to edit: writing `data` would drop everything else
        raise ApplyError("the running config was not read from a TOML file, so it cannot be edited here")
    return apply_text(runtime, tomli_w.dumps(data))


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a power cut leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
