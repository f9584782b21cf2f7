"""A tamper-evident audit log: every entry is chained by SHA-256 to the one before.

Each entry's ``hash`` covers its own fields and the previous entry's hash, and the newest
``(id, hash)`` is kept in ``store_meta`` in the same transaction. Editing an entry breaks its hash;
deleting one breaks the chain (the next entry's ``prev_hash`` no longer matches, or ids skip);
cutting entries off the end no longer matches the stored head. :func:`verify` reports each of these.

Writers: the web UI (logins, every change), the CLI and the daemon (config reloads, backups,
restores). Readers: the web UI's audit page and ``carbon-gateway audit verify``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

GENESIS = "0" * 64
_HEAD_KEY = "audit_head"


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
                prev_hash: str) -> str:
    # A canonical JSON array: field boundaries cannot be shifted between fields to forge a match.
    material = json.dumps([entry_id, repr(ts), actor, action, target, detail_json, prev_hash],
                          ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def record(db: sqlite_utils.Database, actor: str, action: str, target: str = "",
           detail: Mapping[str, Any] | None = None, now: float | None = None) -> AuditEntry:
    """Append one entry and move the chain head, atomically. Returns the entry written.

    Call it inside the caller's write transaction when the audited change is written there too,
    so the change and its audit entry commit (or roll back) together.
    """
    ts = time.time() if now is None else now
    detail_json = json.dumps(dict(detail or {}), ensure_ascii=False, sort_keys=True, default=str)
    with db.atomic():
        head = db.execute("SELECT value FROM store_meta WHERE key = ?", (_HEAD_KEY,)).fetchone()
        last_id, prev_hash = (0, GENESIS) if head is None else json.loads(head[0])
        entry_id = int(last_id) + 1
        digest = _entry_hash(entry_id, ts, actor, action, target, detail_json, prev_hash)
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
        if _entry_hash(entry_id, ts, actor, action, target, detail_json, prev_hash) != digest:
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
    return AuditVerification(checked, tuple(problems))


__all__ = ["AuditEntry", "AuditVerification", "record", "entries", "verify"]
