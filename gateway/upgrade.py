"""``carbon-gateway upgrade BUNDLE``: install a signed release beside the running one, switch, roll back by itself.

The layout (systemd/install.sh makes it)::

    <prefix>/releases/<version>/   a virtual environment per release
    <prefix>/current               -> releases/<version>, what the unit runs

An upgrade, in order:

1. verify the bundle against the release keys the box trusts (:func:`gateway.bundle.verify_bundle`): an
   unsigned, tampered or untrusted bundle is refused, and so is a downgrade unless forced (and the running
   version itself); a refusal changes nothing;
2. take an encrypted backup of the store (the daemon keeps running);
3. install the release into ``releases/<version>`` with ``pip --no-index --find-links`` (nothing is
   downloaded from anywhere);
4. stop the service, switch ``current``, start it, and wait for ``/healthz`` to answer with the new version
   (and status ok, if it was ok before);
5. if it does not within the bound: stop it, switch back, restore the pre-upgrade store if the new release
   migrated it, start the old release and wait for it.

Two releases stay: the running one and the one to go back to; older ones (and a release that was rolled back)
are deleted, since each is a whole virtual environment.

Everything is recorded in the store's audit log (actor ``upgrade``) once the store is settled, so a restore
during the rollback cannot take the record with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_store import audit, open_store
from local_store.backup import BackupError, create_backup, restore_backup

from gateway.bundle import Bundle, BundleError, load_public_keys, verify_bundle
from gateway.config import GatewayConfig
from gateway.paths import RELEASE_KEYS_DIR

# Imported above, not inside the functions: once `current` is switched, a late import by this process (started
# from current/bin/python) would load the other release's code.

Log = Callable[[str], None]


class UpgradeError(Exception):
    """The upgrade was refused or could not start; nothing was changed. The message says why."""


@dataclass(frozen=True)
class UpgradeSettings:
    """Where the releases are, what the box trusts, and how the service is stopped, started and checked."""

    prefix: Path = Path("/opt/carbon-gateway")
    trusted_keys: Sequence[Path] = (RELEASE_KEYS_DIR,)
    stop_command: Sequence[str] = ("systemctl", "stop", "carbon-gateway")
    start_command: Sequence[str] = ("systemctl", "start", "carbon-gateway")
    health_timeout_s: float = 120.0
    python: str = field(default_factory=lambda: getattr(sys, "_base_executable", sys.executable))
    find_links: Sequence[Path] = ()     # more local wheel directories (a bundle built without its dependencies)
    force: bool = False                 # allow a downgrade


@dataclass(frozen=True)
class UpgradeResult:
    outcome: str                 # upgraded | rolled_back
    from_version: str
    to_version: str
    backup: Path | None
    reason: str = ""             # why it was rolled back
    store_restored: bool = False


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Orders release numbers X.Y.Z as numbers: 0.9.0 < 0.10.0 < 1.0.0."""
    key = []
    for piece in re.split(r"[.+-]", version):
        digits = re.match(r"\d*", piece)
        number = digits.group(0) if digits else ""
        key.append((int(number or 0), piece[len(number):]))
    return tuple(key)


def current_version(prefix: Path) -> str:
    """The running release: where ``<prefix>/current`` points."""
    link = prefix / "current"
    if not link.is_symlink():
        raise UpgradeError(f"{link}: no such link; this box was not installed by systemd/install.sh, so there is "
                           "no release to upgrade from (install with install.sh --bundle first)")
    return Path(os.readlink(link)).name


def check_bundle(bundle: Path, trusted_keys: Sequence[Path], running: str, force: bool, into: Path) -> Bundle:
    """Verify ``bundle`` (unpacked into ``into``) and compare its version with ``running``.

    :raises UpgradeError: unsigned, tampered, untrusted, the running version, or a downgrade without force.
    """
    try:
        verified = verify_bundle(bundle, load_public_keys(trusted_keys), into)
    except BundleError as exc:
        raise UpgradeError(str(exc)) from exc
    if verified.version == running:
        raise UpgradeError(f"{bundle.name}: refused, {running} is the running release already")
    if not force and version_key(verified.version) < version_key(running):
        raise UpgradeError(f"{bundle.name}: refused, a downgrade: {running} runs and the bundle is {verified.version}; "
                           "to install it anyway (going back on purpose), add --force")
    return verified


# -- an upgrade asked for in the web UI: the daemon checks and stages it, a root unit runs it ----------------
REQUEST = "request.json"
RESULT = "result.json"


def upgrade_dir(data_dir: Path) -> Path:
    """``<data_dir>/upgrade/``: the staged bundle, request.json (watched by carbon-gateway-upgrade.path) and
    result.json (the last outcome, shown in the web UI)."""
    return data_dir / "upgrade"


def stage_request(upload: Path, filename: str, data_dir: Path, trusted_keys: Sequence[Path], running: str,
                  actor: str) -> dict[str, Any]:
    """Check an uploaded bundle as :func:`upgrade` would, keep it and write the request; returns the request.

    The daemon cannot replace its own program (its unit makes /opt read-only) nor restart itself, so the
    upgrade runs in ``carbon-gateway-upgrade.service``, which systemd starts when the request appears.

    :raises UpgradeError: refused (the upload is deleted, nothing is requested).
    """
    directory = upgrade_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".check-", dir=directory) as scratch:
        verified = check_bundle(upload, trusted_keys, running, False, Path(scratch))
    bundle = directory / f"carbon-gateway-{verified.version}.tar"
    os.replace(upload, bundle)
    request = {"bundle": str(bundle), "from": running, "to": verified.version, "filename": filename,
               "release_key": verified.key_fingerprint, "requested_by": actor, "requested_at": time.time()}
    _write_json(directory / REQUEST, request)
    return request


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_request(request_file: Path, config: GatewayConfig, settings: UpgradeSettings, log: Log = print) -> UpgradeResult:
    """Run the upgrade a request names (carbon-gateway-upgrade.service); the request is removed first, the
    outcome written to result.json beside it.

    :raises UpgradeError: no readable request, or the upgrade was refused (also in result.json).
    """
    request = read_json(request_file)
    request_file.unlink(missing_ok=True)     # once: the path unit must not start it again
    if request is None or "bundle" not in request:
        raise UpgradeError(f"{request_file}: no upgrade request to run")
    outcome: dict[str, Any] = {**request, "finished_at": None}
    try:
        result = upgrade(Path(request["bundle"]), config, settings, log)
    except UpgradeError as exc:
        _write_json(request_file.with_name(RESULT), {**outcome, "outcome": "refused", "reason": str(exc),
                                                      "finished_at": time.time()})
        _own_like(config.data_dir)
        raise
    _write_json(request_file.with_name(RESULT), {**outcome, "outcome": result.outcome, "reason": result.reason,
                                                  "store_restored": result.store_restored, "finished_at": time.time()})
    Path(request["bundle"]).unlink(missing_ok=True)
    _own_like(config.data_dir)
    return result


def _run(command: Sequence[str], what: str, log: Log, timeout_s: float = 600) -> None:
    log(f"{what}: {shlex.join(command)}")
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
        raise UpgradeError(f"{what} failed (exit {result.returncode}): {tail}")


def health_url(config: GatewayConfig) -> str:
    web = config.web
    if not web.enabled:
        raise UpgradeError("[web] is disabled: the upgrade checks the new release through /healthz; enable the "
                           "web UI (it may listen on 127.0.0.1 only)")
    host = "127.0.0.1" if web.host in ("0.0.0.0", "", "*") else "::1" if web.host == "::" else web.host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if web.tls else 'http'}://{host}:{web.port}/healthz"


def read_health(url: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """``/healthz`` as JSON (200 and 503 both answer), or None when nothing answers."""
    # Loopback, and only the status is read: the self-signed certificate is not checked here.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (OSError, ssl.SSLError):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def wait_healthy(url: str, version: str, need_ok: bool, timeout_s: float) -> tuple[bool, str]:
    """Poll ``url`` until it answers with ``version`` (and status ok when ``need_ok``); returns (healthy, last seen)."""
    deadline = time.monotonic() + timeout_s
    seen = "no answer"
    while True:
        health = read_health(url)
        if health is not None:
            seen = f"version {health.get('version', '?')}, status {health.get('status', '?')}"
            if health.get("version") == version and (health.get("status") == "ok" or not need_ok):
                return True, seen
        if time.monotonic() > deadline:
            return False, seen
        time.sleep(1.0)


def _migrations(database: Path) -> frozenset[tuple[str, str]]:
    """The migrations applied to the store (every migration set), to see whether a release migrated it."""
    if not database.exists():
        return frozenset()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
            return frozenset(conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall())
    except sqlite3.DatabaseError:
        return frozenset()


def _own_like(directory: Path) -> None:
    """Run as root, the upgrade must not leave root-owned files in the service's state directory."""
    if os.geteuid() != 0 or not directory.exists():
        return
    owner = directory.stat()
    for path in [directory, *directory.rglob("*")]:
        with contextlib.suppress(OSError):
            if path.lstat().st_uid != owner.st_uid:
                os.lchown(path, owner.st_uid, owner.st_gid)


def record_audit(config: GatewayConfig, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    """Append to the store's audit log, sealed with the gateway's audit key like the daemon's entries."""
    with open_store(config.database) as store:
        audit.use_key(config.database, audit.ensure_key(config.audit_key, store.db))
        try:
            audit.record(store.db, actor, action, target, detail)
        finally:
            audit.use_key(config.database, None)
    _own_like(config.data_dir)


def _record(config: GatewayConfig, action: str, target: str, detail: dict[str, Any], log: Log) -> None:
    """The audit entry of an upgrade; a store that refuses it does not undo what was done (it is logged)."""
    try:
        record_audit(config, "upgrade", action, target, detail)
    except Exception as exc:  # noqa: BLE001 - a full or broken store: say so, the upgrade itself stands
        log(f"could not write the audit entry {action} ({exc}): {json.dumps(detail, default=str)}")


@contextlib.contextmanager
def _exclusive(prefix: Path) -> Iterator[None]:
    with open(prefix / ".upgrade.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise UpgradeError(f"another upgrade is running ({prefix / '.upgrade.lock'} is held)") from exc
        yield


def _switch(prefix: Path, version: str) -> None:
    """Point ``current`` at ``releases/<version>`` atomically (a new link renamed over the old one)."""
    temporary = prefix / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(f"releases/{version}")
    os.replace(temporary, prefix / "current")


def install_release(verified: Bundle, settings: UpgradeSettings, log: Log) -> Path:
    """A fresh virtual environment in ``releases/<version>`` holding the bundle's wheels; installed offline.

    Built in place (a venv's scripts name its path); a left-over directory of an earlier failed attempt is
    replaced. The running release's directory is never touched (:func:`check_bundle` refuses its version).
    """
    target = settings.prefix / "releases" / verified.version
    shutil.rmtree(target, ignore_errors=True)
    links = [arg for d in (verified.wheels, *settings.find_links) for arg in ("--find-links", str(d))]
    try:
        _run([settings.python, "-m", "venv", str(target)], "creating the release's virtual environment", log)
        _run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-index", *links, f"carbon-edge-gateway=={verified.version}"], "installing the release offline", log)
    except UpgradeError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def upgrade(bundle: Path, config: GatewayConfig, settings: UpgradeSettings, log: Log = print) -> UpgradeResult:
    """Upgrade to ``bundle``; see the module docstring.

    :raises UpgradeError: refused (nothing changed), or a step before the switch failed (the running
        release was not touched).
    """
    settings.prefix.mkdir(parents=True, exist_ok=True)
    with _exclusive(settings.prefix), tempfile.TemporaryDirectory(prefix=".bundle-", dir=settings.prefix) as scratch:
        running = current_version(settings.prefix)
        verified = check_bundle(bundle, settings.trusted_keys, running, settings.force, Path(scratch))
        url = health_url(config)
        before = read_health(url)
        need_ok = before is not None and before.get("status") == "ok"
        log(f"upgrading {running} -> {verified.version} (bundle signed by release key {verified.key_fingerprint}); "
            f"health now: {'status ' + str(before.get('status')) if before else 'not answering'}")
        backup = _backup(config, log)
        migrations_before = _migrations(config.database)
        install_release(verified, settings, log)
        detail: dict[str, Any] = {"from": running, "to": verified.version, "bundle": bundle.name,
                                  "release_key": verified.key_fingerprint, "backup": str(backup) if backup else None}
        _run(settings.stop_command, "stopping the service", log)   # fails: nothing switched, the old one runs on
        _switch(settings.prefix, verified.version)
        try:
            _run(settings.start_command, "starting the new release", log)
        except UpgradeError as exc:      # from here on every failure ends in the rollback, never in a dead box
            healthy, seen = False, str(exc)
        else:
            healthy, seen = wait_healthy(url, verified.version, need_ok, settings.health_timeout_s)
        if healthy:
            log(f"upgraded to {verified.version}: /healthz answers ({seen})")
            _record(config, "upgrade.done", verified.version, {**detail, "removed": _prune(settings.prefix,
                                                                                          {verified.version, running}, log)}, log)
            return UpgradeResult("upgraded", running, verified.version, backup)
        reason = (f"{verified.version} was not healthy within {settings.health_timeout_s:g} s "
                  f"(/healthz: {seen}{'; status ok was required, as before the upgrade' if need_ok else ''})")
        log(f"rolling back: {reason}")
        return _roll_back(config, settings, running, verified.version, backup, migrations_before, url, need_ok,
                          reason, detail, log)


def _other_releases(prefix: Path, but: str) -> set[str]:
    return {p.name for p in (prefix / "releases").iterdir() if p.is_dir() and p.name != but}


def _prune(prefix: Path, keep: set[str], log: Log) -> list[str]:
    """Delete releases other than ``keep`` (the running one and the one to go back to): a release is a whole
    virtual environment, and a box's SD card is small. Returns the versions removed."""
    removed = []
    for release in sorted((prefix / "releases").iterdir()):
        if release.is_dir() and release.name not in keep and not release.name.startswith("."):
            shutil.rmtree(release, ignore_errors=True)
            removed.append(release.name)
    if removed:
        log(f"removed the releases no longer needed: {', '.join(removed)}")
    return removed


def _backup(config: GatewayConfig, log: Log) -> Path | None:
    if not config.database.exists():
        log("no store yet: nothing to back up")
        return None
    try:
        path = create_backup(config.database, config.backup_dir, config.backup_key)
    except (BackupError, OSError) as exc:
        raise UpgradeError(f"the pre-upgrade backup failed, nothing was changed: {exc}") from exc
    _own_like(config.data_dir)
    log(f"backup of the store: {path}")
    return path


def _roll_back(config: GatewayConfig, settings: UpgradeSettings, running: str, failed: str, backup: Path | None,
               migrations_before: frozenset[tuple[str, str]], url: str, need_ok: bool, reason: str,
               detail: dict[str, Any], log: Log) -> UpgradeResult:
    problems: list[str] = []

    def attempt(step: Callable[[], object]) -> bool:
        """Each step of the way back is tried even when one before it failed; failures are reported."""
        try:
            step()
        except (UpgradeError, BackupError, OSError) as exc:
            log(f"rollback: {exc}")
            problems.append(str(exc))
            return False
        return True

    attempt(lambda: _run(settings.stop_command, "stopping the failed release", log))
    _switch(settings.prefix, running)
    restored = False
    migrated = _migrations(config.database) - migrations_before
    if migrated and backup is not None:
        log(f"{failed} migrated the store ({', '.join(sorted(n for _, n in migrated))}): restoring {backup}")
        restored = attempt(lambda: restore_backup(backup, config.database, config.backup_key, config.audit_key))
        _own_like(config.data_dir)
    attempt(lambda: _run(settings.start_command, f"starting {running} again", log))
    healthy, seen = wait_healthy(url, running, need_ok, settings.health_timeout_s)
    detail = {**detail, "reason": reason, "store_restored": restored, "migrations": sorted(n for _, n in migrated),
              "back_healthy": healthy, "health_after": seen, "problems": problems}
    if healthy:      # the failed release is of no further use; a retry installs it afresh
        detail["removed"] = _prune(settings.prefix, {running} | _other_releases(settings.prefix, failed), log)
    _record(config, "upgrade.rolled_back", failed, detail, log)
    if healthy:
        log(f"rolled back to {running}: /healthz answers ({seen})")
    else:
        log(f"rolled back to {running}, but it is not healthy either ({seen}): check journalctl -u carbon-gateway")
    return UpgradeResult("rolled_back", running, failed, backup, reason, restored)
