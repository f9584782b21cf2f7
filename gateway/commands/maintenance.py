"""CLI commands of the maintenance area: ``backup``, ``restore``, ``audit``.

They parse arguments, call ``local_store.backup`` and ``local_store.audit``, and turn their errors into
``click.ClickException`` (exit 1, no traceback). See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import click

from local_store import Store, StoreError, audit, open_store
from local_store.backup import BackupError, check_backup, create_backup, restore_backup

from gateway.commands.operations import load_or_exit
from gateway.config import GatewayConfig

_CONFIG = click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                       help="The gateway's TOML config (default: the embedded demo config).")
_DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
                         help="The gateway's state directory (overrides gateway.data_dir).")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _audit(config: GatewayConfig, action: str, target: str, detail: dict) -> None:
    """Record what the CLI did in the store's audit log, sealed like the daemon's entries."""
    with open_store(config.database) as store:
        audit.use_key(config.database, audit.ensure_key(config.audit_key, store.db))
        try:
            audit.record(store.db, "cli", action, target, detail)
        finally:
            audit.use_key(config.database, None)


@click.command("backup")
@_CONFIG
@_DATA_DIR
@click.option("--dest", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for the backup (default: [backup] directory, or <data_dir>/backups).")
def backup(config_path: Path | None, data_dir: Path | None, dest: Path | None) -> None:
    """Write an encrypted, consistent backup of the store now (safe while the gateway runs)."""
    config, _ = load_or_exit(config_path, data_dir)
    try:
        if config.database.exists():
            open_store(config.database).close()    # refuses another program's file before a backup of it is written
        path = create_backup(config.database, dest or config.backup_dir, config.backup_key)
        _audit(config, "backup.create", path.name, {"path": str(path), "by": "cli"})
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup written: {path} ({path.stat().st_size} bytes)")
    click.echo(f"key: {config.backup_key} (keep a copy off the gateway: without it no backup can be read)")


@click.command("restore")
@click.argument("backup_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_CONFIG
@_DATA_DIR
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The backup.key of the gateway that made the backup (default: this gateway's).")
@click.option("--audit-key", "audit_key_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The old gateway's keys/audit.key, for a backup made before backups carried it.")
@click.option("--check", is_flag=True, help="Only check the file (key, every chunk, integrity, schema).")
def restore(backup_file: Path, config_path: Path | None, data_dir: Path | None, key_path: Path | None,
            audit_key_path: Path | None, check: bool) -> None:
    """Replace the store with a backup, after checking it completely. Stop the gateway first.

    Nothing is replaced when the file is foreign, corrupt, truncated, made with another key or by a
    newer version. The replaced store is kept beside it as gateway.db.before-restore-<time>. The audit
    key the backup carries is put back in keys/audit.key, so `audit verify` stays OK; sync starts a new
    sync stream, so nothing that left the gateway after the backup is sent again under the same number.
    """
    config, _ = load_or_exit(config_path, data_dir)
    key = key_path or config.backup_key
    try:
        if check:
            result = check_backup(backup_file, config.database, key)
            click.echo(f"{backup_file}: OK, made {_when(result.backup_created_at)}, {result.readings} readings, "
                       f"{result.audit_entries} audit entries")
            return
        result = restore_backup(backup_file, config.database, key, config.audit_key, audit_key_path)
        _audit(config, "backup.restore", backup_file.name,
               {"path": str(backup_file), "backup_created_at": result.backup_created_at,
                "previous_copy": str(result.previous_copy) if result.previous_copy else None})
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored {backup_file} (made {_when(result.backup_created_at)}): {result.readings} readings, "
               f"{result.audit_entries} audit entries")
    if result.audit_key == "restored":
        click.echo(f"audit key put back from the backup: {config.audit_key}")
    if result.previous_copy is not None:
        click.echo(f"the replaced store is kept as {result.previous_copy}; delete it once the gateway runs well")
    click.echo("start the gateway again: systemctl start carbon-gateway")


@contextlib.contextmanager
def _existing_store(config_path: Path | None, data_dir: Path | None) -> Iterator[Store]:
    """The configured store, which must exist already; its errors become ClickExceptions."""
    config, _ = load_or_exit(config_path, data_dir)
    if not config.database.exists():
        raise click.ClickException(f"{config.database}: no gateway database here: pass --data-dir DIR")
    try:
        if config.audit_key.exists():
            audit.use_key(config.database, audit.load_key(config.audit_key))
        with open_store(config.database) as store:
            yield store
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        audit.use_key(config.database, None)


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: list entries, verify the hash chain."""


@audit_group.command("verify")
@_CONFIG
@_DATA_DIR
def audit_verify(config_path: Path | None, data_dir: Path | None) -> None:
    """Check every entry's hash and the chain; exit 1 naming each edited, deleted or cut-off entry."""
    with _existing_store(config_path, data_dir) as store:
        result = audit.verify(store.db)
    if not result.ok:
        for problem in result.problems:
            click.echo(f"TAMPERED: {problem}")
        raise click.ClickException(f"audit log: {len(result.problems)} problem(s) in {result.checked} entries; "
                                   f"restore a backup to see the original entries (docs/operations.md)")
    click.echo(f"audit log OK: {result.checked} entries, hash chain intact")


@audit_group.command("list")
@_CONFIG
@_DATA_DIR
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--actor", default=None, help="Only entries by this actor (a user name, cli, daemon).")
@click.option("--action", default=None, help="Only this action or its sub-actions (backup matches backup.create).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_list(config_path: Path | None, data_dir: Path | None, limit: int, actor: str | None,
               action: str | None, as_json: bool) -> None:
    """The newest audit entries first."""
    with _existing_store(config_path, data_dir) as store:
        found = audit.entries(store.db, limit=limit, actor=actor, action_prefix=action)
    for e in found:
        if as_json:
            click.echo(json.dumps({"id": e.id, "ts": e.ts, "actor": e.actor, "action": e.action,
                                   "target": e.target, "detail": e.detail}, ensure_ascii=False))
        else:
            detail = json.dumps(e.detail, ensure_ascii=False, sort_keys=True) if e.detail else ""
            click.echo(f"{e.id:>6}  {_when(e.ts)}  {e.actor:<10} {e.action:<16} {e.target} {detail}".rstrip())


@click.command("doctor")
@_CONFIG
@_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="One JSON list of {check, status, message, fix}.")
def doctor(config_path: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """A checklist for technicians: config, clock, data directory, disk, serial ports, broker, keys, store.

    Each line is OK, WARN or FAIL with the fix. Exit status 1 when something fails.
    """
    from drivers import ProfileError, load_profile_set

    from gateway.config import ConfigError, load_config
    from gateway.doctor import run_checks
    from gateway.paths import PROFILE_DIRS

    config, error, broken = None, None, {}
    try:
        found = load_profile_set(PROFILE_DIRS)
        broken = dict(found.broken)
        config = load_config(config_path, found.profiles, data_dir, broken_profiles=broken)
    except (ConfigError, ProfileError) as exc:
        error = str(exc)
    rows = run_checks(config_path, config, error, broken_profiles=broken)
    if as_json:
        click.echo(json.dumps([{"check": r.name, "status": r.status, "message": r.message, "fix": r.fix}
                               for r in rows], ensure_ascii=False, indent=2))
    else:
        for r in rows:
            click.echo(f"{r.status:<5} {r.name}: {r.message}" + (f"\n      fix: {r.fix}" if r.fix else ""))
    failed = sum(r.status == "FAIL" for r in rows)
    if failed:
        raise click.exceptions.Exit(1)


COMMANDS: list[click.Command] = [backup, restore, audit_group, doctor]
