"""A tamper-evident audit log: every entry is chained by SHA-256 to the one before.

Each entry's ``hash`` covers its own fields and the previous entry's hash, and the newest
``(id, hash)`` is kept in ``store_meta`` in the same transaction. Editing an entry breaks its hash;
deleting one breaks the chain (the next entry's ``prev_hash`` no longer matches, or ids skip);
cutting entries off the end no longer matches the stored head. :func:`verify` reports each of these.

Writers: the web UI (logins, every change), the CLI and the daemon (config reloads, backups,
restores). Readers: the web UI's audit page and ``carbon-gateway audit verify``.

**Sealing.** A plain hash chain stops an editor who does not recompute it; one who rewrites the whole
chain and the head is not caught. So the gateway registers an HMAC key for its database
(:func:`use_key`, ``<data_dir>/keys/audit.key``, 0600, outside the database). Entries written while a
key is registered are sealed: their ``hash`` is ``"h1:" + HMAC-SHA256(key, ...)``. The key file also
records the first entry it sealed; :func:`verify` with the key insists that every entry from there on
is sealed, so a chain rewritten without the key (sealed or plain) is found. Without a registered key
everything works as before (plain SHA-256), and sealed entries are reported as not checkable. Limit:
someone with write access who deletes entries at the end and puts back a head value seen earlier is
not caught here; the backups (encrypted, authenticated) keep the older log for comparison.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from local_store.connections import write_transaction
from local_store.keyfiles import create_key_file

GENESIS = "0" * 64
_HEAD_KEY = "audit_head"
SEALED = "h1:"


@dataclass(frozen=True)
class AuditKey:
    key: bytes
    sealed_from: int      # the first entry id written under this key


_KEYS: dict[str, AuditKey] = {}
_KEYS_LOCK = threading.Lock()


def _database_file(db: sqlite_utils.Database) -> str:
    row = next((r for r in db.execute("PRAGMA database_list").fetchall() if r[1] == "main"), None)
    return os.path.realpath(row[2]) if row and row[2] else ""


def ensure_key(key_path: Path, db: sqlite_utils.Database) -> AuditKey:
    """The audit key at ``key_path``; made (0600) on first use, sealing from the next entry of ``db``."""
    key_path = Path(key_path)
    if not key_path.exists():
        head = db.execute("SELECT value FROM store_meta WHERE key = ?", (_HEAD_KEY,)).fetchone()
        sealed_from = (int(json.loads(head[0])[0]) if head else 0) + 1
        content = json.dumps({"key": base64.b64encode(os.urandom(32)).decode(), "sealed_from": sealed_from})
        create_key_file(key_path, content + "\n")
    return load_key(key_path)


def load_key(key_path: Path) -> AuditKey:
    """:raises ValueError: the file is not an audit key (naming it)."""
    try:
        data = json.loads(Path(key_path).read_text(encoding="utf-8"))
        key = base64.b64decode(data["key"], validate=True)
        sealed_from = int(data["sealed_from"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{key_path}: not an audit key ({exc}): restore it from the gateway's keys backup") from exc
    if len(key) != 32:
        raise ValueError(f"{key_path}: not an audit key (wrong length): restore it from the gateway's keys backup")
    return AuditKey(key, sealed_from)


def use_key(database: Path | str, key: AuditKey | None) -> None:
    """Seal (and check) the entries of the database file at ``database`` with ``key``; None forgets it."""
    path = os.path.realpath(database)
    with _KEYS_LOCK:
        if key is None:
            _KEYS.pop(path, None)
        else:
            _KEYS[path] = key


def _key_for(db: sqlite_utils.Database) -> AuditKey | None:
    if not _KEYS:
        return None
    with _KEYS_LOCK:
        return _KEYS.get(_database_file(db))


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float                  # UTC epoch seconds
    actor: str                 # user name, "cli", "daemon", or "-" before anyone logged in
    action: str                # dotted verb, e.g. "login.ok", "login.failed", "meter.add", "backup.create"
    target: str                # what was acted on ("meter main-incomer"), may be ""
    detail: dict[str, Any]     # JSON-able specifics (old/new values, client address)
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    checked: int
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _entry_hash(entry_id: int, ts: float, actor: str, action: str, target: str, detail_json: str,
                prev_hash: str, key: bytes | None = None) -> str:
    # A canonical JSON array: field boundaries cannot be shifted between fields to forge a match.
    material = json.dumps([entry_id, repr(ts), actor, action, target, detail_json, prev_hash],
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if key is not None:
        return SEALED + hmac.new(key, material, hashlib.sha256).hexdigest()
    return hashlib.sha256(material).hexdigest()


def record(db: sqlite_utils.Database, actor: str, action: str, target: str = "",
           detail: Mapping[str, Any] | None = None, now: float | None = None) -> AuditEntry:
    """Append one entry and move the chain head, atomically. Returns the entry written.

    Call it inside the caller's write transaction when the audited change is written there too,
    so the change and its audit entry commit (or roll back) together.
    """
    ts = time.time() if now is None else now
    detail_json = json.dumps(dict(detail or {}), ensure_ascii=False, sort_keys=True, default=str)
    sealing = _key_for(db)
    # The write lock is taken before the head is read (BEGIN IMMEDIATE): with a deferred transaction a
    # concurrent writer's commit between the read and the write made this fail with "database is
    # locked" at once instead of waiting, and the entry was lost.
    with write_transaction(db):
        head = db.execute("SELECT value FROM store_meta WHERE key = ?", (_HEAD_KEY,)).fetchone()
        last_id, prev_hash = (0, GENESIS) if head is None else json.loads(head[0])
        entry_id = int(last_id) + 1
        digest = _entry_hash(entry_id, ts, actor, action, target, detail_json, prev_hash,
                             sealing.key if sealing else None)
        db.execute("INSERT INTO audit_log (id, ts, actor, action, target, detail, prev_hash, hash)"
                   " VALUES (?,?,?,?,?,?,?,?)", (entry_id, ts, actor, action, target, detail_json, prev_hash, digest))
        db.execute("INSERT INTO store_meta (key, value) VALUES (?, ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (_HEAD_KEY, json.dumps([entry_id, digest])))
    return AuditEntry(entry_id, ts, actor, action, target, json.loads(detail_json), prev_hash, digest)


def entries(db: sqlite_utils.Database, limit: int = 100, offset: int = 0, actor: str | None = None,
            action_prefix: str | None = None) -> list[AuditEntry]:
    """Newest first; filter by actor and by action prefix (``"login"`` matches ``login.ok``)."""
    where, params = [], []
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if action_prefix:
        where.append("(action = ? OR action LIKE ?)")
        params += [action_prefix, action_prefix.replace("%", "") + ".%"]
    sql = ("SELECT id, ts, actor, action, target, detail, prev_hash, hash FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ? OFFSET ?")
    rows = db.execute(sql, (*params, int(limit), int(offset))).fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]


def verify(db: sqlite_utils.Database) -> AuditVerification:
    """Walk the chain from the first entry; name every edited, deleted or cut-off entry."""
    problems: list[str] = []
    sealing = _key_for(db)
    unsealed_checks: list[int] = []
    expected_prev, expected_id, checked = GENESIS, 1, 0
    for entry_id, ts, actor, action, target, detail_json, prev_hash, digest in db.execute(
            "SELECT id, ts, actor, action, target, detail, prev_hash, hash FROM audit_log ORDER BY id"):
        checked += 1
        if entry_id != expected_id:
            problems.append(f"entries {expected_id}..{entry_id - 1} are missing (deleted)"
                            if entry_id > expected_id else f"entry {entry_id} is out of order")
        if prev_hash != expected_prev:
            problems.append(f"entry {entry_id}: does not follow the entry before it (an entry before it was "
                            f"deleted or edited)")
        if sealing is not None and entry_id >= sealing.sealed_from and not digest.startswith(SEALED):
            problems.append(f"entry {entry_id} ({action} by {actor}): not sealed with the audit key although it "
                            f"was written after the key (the log was rewritten)")
        elif digest.startswith(SEALED) and sealing is None:
            unsealed_checks.append(entry_id)
        elif _entry_hash(entry_id, ts, actor, action, target, detail_json, prev_hash,
                         sealing.key if digest.startswith(SEALED) and sealing else None) != digest:
            problems.append(f"entry {entry_id} ({action} by {actor}): content does not match its hash (edited)")
        expected_prev, expected_id = digest, entry_id + 1
    head = db.execute("SELECT value FROM store_meta WHERE key = ?", (_HEAD_KEY,)).fetchone()
    if head is not None:
        head_id, head_hash = json.loads(head[0])
        if (head_id, head_hash) != (expected_id - 1, expected_prev):
            problems.append(f"the log ends at entry {expected_id - 1} but entry {head_id} was written last "
                            f"(entries at the end were deleted or edited)")
    elif checked:
        problems.append("the chain head is missing from store_meta (it was deleted)")
    if unsealed_checks:
        problems.append(f"{len(unsealed_checks)} sealed entries (from entry {unsealed_checks[0]}) cannot be checked "
                        f"without the audit key: verify with the gateway's data directory (keys/audit.key)")
    return AuditVerification(checked, tuple(problems))


__all__ = ["AuditEntry", "AuditVerification", "AuditKey", "record", "entries", "verify", "ensure_key", "load_key",
           "use_key"]
