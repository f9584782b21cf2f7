"""Backups: consistent while the store is written, encrypted, refused before anything is replaced when bad."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import Quantity, Reading
from gateway.cli import main
from local_store import audit, open_store
from local_store.backup import (
    BackupError, StoreLock, apply_staged_restore, create_backup, ensure_backup_key, list_backups, prune_backups,
    restore_backup, stage_restore,
)


def _readings(n: int, start: float, meter: str = "m1") -> list[Reading]:
    return [Reading(meter, "energy", start + i, float(i), "kWh", Quantity.ENERGY_IMPORT) for i in range(n)]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "gateway.db"
    with open_store(path) as store:
        store.insert_readings(_readings(100, 1_780_000_000))
        audit.record(store.db, "admin", "meter.add", "meter m1")
    return path


def _key(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keys" / "backup.key"


def test_backup_while_writing_restores_to_a_consistent_database(tmp_path: Path, store_path: Path) -> None:
    """A writer commits 50-reading transactions while backups are taken: each restore holds whole ones."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open_store(store_path) as store:
                t = 1_780_001_000.0
                while not stop.is_set():
                    store.insert_readings(_readings(50, t, "m2"))
                    t += 50
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    try:
        backups = []
        for _ in range(3):
            time.sleep(0.05)
            backups.append(create_backup(store_path, tmp_path / "backups", _key(tmp_path)))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors and not thread.is_alive()
    for i, backup in enumerate(backups):
        target = tmp_path / f"restored{i}" / "gateway.db"
        result = restore_backup(backup, target, _key(tmp_path))
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            m2 = conn.execute("SELECT count(*) FROM readings WHERE meter_id = 'm2'").fetchone()[0]
            total = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        finally:
            conn.close()
        assert m2 % 50 == 0 and total == result.readings == 100 + m2   # no half-written transaction
        assert result.audit_entries == 1
    assert (_key(tmp_path).stat().st_mode & 0o777) == 0o600
    assert [p.name.split("-")[1] for p in list_backups(tmp_path / "backups")] == ["000001", "000002", "000003"]


def test_the_backup_is_encrypted(tmp_path: Path, store_path: Path) -> None:
    backup = create_backup(store_path, tmp_path / "b", _key(tmp_path))
    data = backup.read_bytes()
    assert data.startswith(b"CARBONGW-BACKUP\n")
    assert b"SQLite format 3" not in data and b"meter.add" not in data


def _damaged(backup: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(backup.read_bytes())
    if how == "flipped":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) - 20]
    elif how == "appended":
        data += b"\0\0\0\x10" + b"x" * 16
    elif how == "header":
        data[20] ^= 0x01      # inside the key id: authenticated by every chunk
    out = tmp_path / f"{how}.cgbak"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how,message", [
    ("flipped", "chunk 0 is corrupt or was altered (authentication failed); nothing was replaced: use another backup"),
    ("truncated", "chunk 0 is corrupt or was altered (authentication failed); nothing was replaced: use another backup"),
    ("appended", "data after the final chunk (altered); nothing was replaced: use another backup"),
    ("header", "encrypted with another key"),
])
def test_a_damaged_backup_is_refused_and_nothing_is_replaced(tmp_path: Path, store_path: Path, how: str,
                                                           message: str) -> None:
    backup = _damaged(create_backup(store_path, tmp_path / "b", _key(tmp_path)), tmp_path, how)
    before = store_path.read_bytes()
    with pytest.raises(BackupError) as caught:
        restore_backup(backup, store_path, _key(tmp_path))
    assert message in str(caught.value)
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in store_path.parent.iterdir() if "restore" in p.name) == []


def test_a_foreign_file_and_a_wrong_key_are_refused(tmp_path: Path, store_path: Path) -> None:
    foreign = tmp_path / "photo.cgbak"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(BackupError) as caught:
        restore_backup(foreign, store_path, _key(tmp_path))
    assert str(caught.value) == (f"{foreign}: not a Carbon Edge Gateway backup (no backup header); nothing was "
                                 f"replaced: choose a .cgbak file made by `carbon-gateway backup`")
    backup = create_backup(store_path, tmp_path / "b", _key(tmp_path))
    other_key = tmp_path / "other.key"
    ensure_backup_key(other_key)
    with pytest.raises(BackupError) as caught:
        restore_backup(backup, store_path, other_key)
    assert "encrypted with another key (key id " in str(caught.value)
    assert str(caught.value).endswith("nothing was replaced: pass the backup.key of the gateway that made it with --key")


def test_a_backup_of_a_foreign_database_is_refused(tmp_path: Path, store_path: Path) -> None:
    """Properly encrypted, but the SQLite file inside is not a gateway store."""
    other = tmp_path / "other" / "gateway.db"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    backup = create_backup(other, tmp_path / "b", _key(tmp_path))
    with pytest.raises(BackupError) as caught:
        restore_backup(backup, store_path, _key(tmp_path))
    assert str(caught.value) == (f"{backup}: the database inside is not a gateway store (no schema); "
                                 f"nothing was replaced")


def test_restore_refuses_while_the_gateway_holds_the_store(tmp_path: Path, store_path: Path) -> None:
    backup = create_backup(store_path, tmp_path / "b", _key(tmp_path))
    lock = StoreLock(store_path)
    assert lock.acquire()
    try:
        with pytest.raises(BackupError) as caught:
            restore_backup(backup, store_path, _key(tmp_path))
    finally:
        lock.release()
    assert str(caught.value) == (f"{store_path}: the gateway is running; nothing was replaced: stop it first "
                                 f"(systemctl stop carbon-gateway), restore, then start it")


def test_restore_replaces_the_store_and_keeps_the_old_one(tmp_path: Path, store_path: Path) -> None:
    backup = create_backup(store_path, tmp_path / "b", _key(tmp_path))
    with open_store(store_path) as store:
        store.insert_readings(_readings(5, 1_790_000_000, "later"))
    result = restore_backup(backup, store_path, _key(tmp_path))
    assert result.readings == 100 and result.previous_copy is not None
    with open_store(store_path) as store:
        assert store.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 100
        assert audit.verify(store.db).ok
    with open_store(result.previous_copy) as old:
        assert old.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 105


def test_a_staged_restore_is_applied_at_the_next_start(tmp_path: Path, store_path: Path) -> None:
    backup = create_backup(store_path, tmp_path / "b", _key(tmp_path))
    with open_store(store_path) as store:
        store.insert_readings(_readings(5, 1_790_000_000, "later"))
    result = stage_restore(backup, store_path, _key(tmp_path))
    assert result.staged and result.readings == 100
    previous = apply_staged_restore(store_path)
    assert previous is not None and apply_staged_restore(store_path) is None
    with open_store(store_path) as store:
        assert store.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 100


def test_retention_keeps_the_newest_by_sequence(tmp_path: Path, store_path: Path) -> None:
    made = [create_backup(store_path, tmp_path / "b", _key(tmp_path), now=1_800_000_000 - i * 3600)
            for i in range(4)]   # the clock stepped backwards between backups
    removed = prune_backups(tmp_path / "b", keep=2)
    assert removed == made[:2] and list_backups(tmp_path / "b") == made[2:]


def test_backup_and_restore_commands(tmp_path: Path, store_path: Path) -> None:
    runner = CliRunner()
    data_dir = store_path.parent
    result = runner.invoke(main, ["backup", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    backup = list_backups(data_dir / "backups")[0]
    assert result.output.splitlines()[0] == f"backup written: {backup} ({backup.stat().st_size} bytes)"
    result = runner.invoke(main, ["restore", str(backup), "--data-dir", str(data_dir), "--check"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(", 100 readings, 1 audit entries\n")
    result = runner.invoke(main, ["restore", str(backup), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "start the gateway again: systemctl start carbon-gateway"
    result = runner.invoke(main, ["audit", "list", "--data-dir", str(data_dir), "--action", "backup"])
    assert result.exit_code == 0, result.output
    # The restored store holds the entries up to the backup, then the restore itself.
    actions = [line.split()[5] for line in result.output.splitlines()]
    assert actions == ["backup.restore"]
    result = runner.invoke(main, ["audit", "verify", "--data-dir", str(data_dir)])
    assert result.exit_code == 0 and result.output == "audit log OK: 2 entries, hash chain intact\n"

    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    result = runner.invoke(main, ["restore", str(foreign), "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert result.output == (f"Error: {foreign}: not a Carbon Edge Gateway backup (no backup header); nothing was "
                             f"replaced: choose a .cgbak file made by `carbon-gateway backup`\n")


def test_audit_verify_names_an_edited_and_a_deleted_entry(tmp_path: Path, store_path: Path) -> None:
    with open_store(store_path) as store:
        for i in range(3):
            audit.record(store.db, "admin", "meter.edit", f"meter m{i}")
        store.db.execute("UPDATE audit_log SET actor = 'intruder' WHERE id = 2")
        store.db.execute("DELETE FROM audit_log WHERE id = 3")
        store.db.conn.commit()
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(store_path.parent)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "TAMPERED: entry 2 (meter.edit by intruder): content does not match its hash (edited)",
        "TAMPERED: entries 3..3 are missing (deleted)",
        "TAMPERED: entry 4: does not follow the entry before it (an entry before it was deleted or edited)",
        "Error: audit log: 3 problem(s) in 3 entries; restore a backup to see the original entries "
        "(docs/operations.md)",
    ]


def test_a_chain_rewritten_without_the_audit_key_is_found(tmp_path: Path, store_path: Path) -> None:
    """An editor who recomputes every hash and the head passes a plain chain; the sealed one catches it."""
    import json

    from local_store.audit import _entry_hash

    key_path = store_path.parent / "keys" / "audit.key"
    with open_store(store_path) as store:
        audit.use_key(store_path, audit.ensure_key(key_path, store.db))   # as the daemon does at start
        try:
            for i in range(3):
                audit.record(store.db, "admin", "meter.edit", f"meter m{i}")
        finally:
            audit.use_key(store_path, None)
        assert (key_path.stat().st_mode & 0o777) == 0o600
        # The intruder: edit entry 3, then recompute the chain and the head without the key.
        store.db.execute("UPDATE audit_log SET actor = 'intruder' WHERE id = 3")
        prev = audit.GENESIS
        for row in store.db.execute("SELECT id, ts, actor, action, target, detail FROM audit_log ORDER BY id").fetchall():
            digest = _entry_hash(*row, prev)
            store.db.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, row[0]))
            prev = digest
        store.db.execute("UPDATE store_meta SET value = ? WHERE key = 'audit_head'", (json.dumps([4, prev]),))
        store.db.conn.commit()
        assert audit.verify(store.db).ok          # without the key the rewrite is invisible
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(store_path.parent)])
    assert result.exit_code == 1
    assert result.output.splitlines()[:3] == [
        "TAMPERED: entry 2 (meter.edit by admin): not sealed with the audit key although it was written after "
        "the key (the log was rewritten)",
        "TAMPERED: entry 3 (meter.edit by intruder): not sealed with the audit key although it was written after "
        "the key (the log was rewritten)",
        "TAMPERED: entry 4 (meter.edit by admin): not sealed with the audit key although it was written after "
        "the key (the log was rewritten)"]


def test_a_sealed_entry_edited_is_found_and_unchecked_without_the_key(tmp_path: Path, store_path: Path) -> None:
    key_path = store_path.parent / "keys" / "audit.key"
    with open_store(store_path) as store:
        audit.use_key(store_path, audit.ensure_key(key_path, store.db))
        try:
            audit.record(store.db, "admin", "user.add", "user bob")
            assert audit.entries(store.db, limit=1)[0].hash.startswith("h1:")
            assert audit.verify(store.db).ok
            store.db.execute("UPDATE audit_log SET target = 'user eve' WHERE id = 2")
            store.db.conn.commit()
            assert audit.verify(store.db).problems == (
                "entry 2 (user.add by admin): content does not match its hash (edited)",)
        finally:
            audit.use_key(store_path, None)
        assert audit.verify(store.db).problems == (
            "1 sealed entries (from entry 2) cannot be checked without the audit key: verify with the gateway's "
            "data directory (keys/audit.key)",)


def _sealed_store(data_dir: Path) -> Path:
    """A store whose audit entries are sealed with data_dir/keys/audit.key."""
    path = data_dir / "gateway.db"
    with open_store(path) as store:
        audit.use_key(path, audit.ensure_key(data_dir / "keys" / "audit.key", store.db))
        try:
            audit.record(store.db, "admin", "meter.add", "meter m1")
            audit.record(store.db, "admin", "meter.edit", "meter m1")
        finally:
            audit.use_key(path, None)
    return path


def _verify(path: Path, key_file: Path) -> audit.AuditVerification:
    with open_store(path) as store:
        audit.use_key(path, audit.load_key(key_file))
        try:
            return audit.verify(store.db)
        finally:
            audit.use_key(path, None)


def test_issue16_a_backup_carries_the_audit_key_sealed_and_a_fresh_data_dir_verifies(tmp_path: Path) -> None:
    old = _sealed_store(tmp_path / "old")
    backup = create_backup(old, tmp_path / "b", tmp_path / "old" / "keys" / "backup.key")
    key_bytes = (tmp_path / "old" / "keys" / "audit.key").read_bytes()
    assert key_bytes not in backup.read_bytes() and b"sealed_from" not in backup.read_bytes()   # sealed, not plain
    fresh = tmp_path / "new" / "gateway.db"
    result = restore_backup(backup, fresh, tmp_path / "old" / "keys" / "backup.key")
    assert result.audit_key == "restored"
    assert (tmp_path / "new" / "keys" / "audit.key").read_bytes() == key_bytes
    assert (tmp_path / "new" / "keys" / "audit.key").stat().st_mode & 0o777 == 0o600
    verification = _verify(fresh, tmp_path / "new" / "keys" / "audit.key")
    assert verification.ok and verification.checked == 2
    # A restore over a data dir with another audit key keeps that one aside and puts the backup's in place.
    other = _sealed_store(tmp_path / "other")
    result = restore_backup(backup, other, tmp_path / "old" / "keys" / "backup.key")
    assert result.audit_key == "restored"
    assert len(list((tmp_path / "other" / "keys").glob("audit.key.before-restore-*"))) == 1
    assert _verify(other, tmp_path / "other" / "keys" / "audit.key").ok
    # Staged (the web UI): the key waits beside the staged file and is put in place at the next start.
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    stage_restore(backup, staged_dir / "gateway.db", tmp_path / "old" / "keys" / "backup.key")
    assert not (staged_dir / "keys" / "audit.key").exists()
    apply_staged_restore(staged_dir / "gateway.db")
    assert (staged_dir / "keys" / "audit.key").read_bytes() == key_bytes


def test_issue16_an_older_backup_without_the_audit_key_is_refused_until_the_key_is_supplied(tmp_path: Path) -> None:
    old = _sealed_store(tmp_path / "old")
    key = tmp_path / "old" / "keys" / "backup.key"
    backup = create_backup(old, tmp_path / "b", key, audit_key_path=tmp_path / "none" / "audit.key")  # as before
    fresh = tmp_path / "new" / "gateway.db"
    with pytest.raises(BackupError) as caught:
        restore_backup(backup, fresh, key)
    assert str(caught.value) == (
        f"{backup}: this backup does not carry the audit key (made by an older version) and "
        f"{tmp_path / 'new' / 'keys' / 'audit.key'} does not exist, so `audit verify` could not check its sealed "
        f"entries; nothing was replaced: copy the old gateway's keys/audit.key there, or pass it with --audit-key")
    assert not fresh.exists()
    result = CliRunner().invoke(main, ["restore", str(backup), "--data-dir", str(tmp_path / "new"), "--key", str(key),
                                       "--audit-key", str(tmp_path / "old" / "keys" / "audit.key")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(tmp_path / "new")])
    assert result.exit_code == 0 and result.output == "audit log OK: 3 entries, hash chain intact\n", result.output
