"""The outbox: sealed batches kept in the gateway's SQLite file until the receiver acknowledges them.

The batch row, the sequence counter, the reading cursor and the hash chain move in one transaction, so
a power cut either loses the whole new batch (and its readings are batched again) or keeps all of it;
a sequence number is never reused.

The tables are created by the store's migrations (``local_store/schema.py``); readings are read through
``Store`` methods, never with SQL of their own on ``readings``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from local_store import Store
from local_store.connections import write_transaction
from local_store.derived import Cursor, derived_since, is_empty
from sync.batches import encode_derived, encode_rows
from sync.crypto import BatchHeader, message_hash, parse_header, seal
from sync.keys import key_id

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class OutboxRow:
    seq: int
    count: int
    message: bytes
    created_at: float
    sent_at: float | None


@dataclass(frozen=True)
class Stream:
    """The sync stream new batches are sealed in, and the streams before it (see ``BatchHeader.lineage``)."""

    id: str
    lineage: tuple[tuple[str, int, int], ...]


def stream(db: sqlite_utils.Database) -> Stream:
    lineage = tuple(tuple(e) for e in json.loads(_state(db, "lineage", "[]")))
    return Stream(_state(db, "stream", ""), lineage)  # type: ignore[arg-type]


def follow_restore(db: sqlite_utils.Database, restored_id: str | None, next_reading_id: int) -> Stream | None:
    """After a restore (``restored_id`` is the restore marker's id, not seen before), start a new sync
    stream: batches from the next sequence number on and readings from ``next_reading_id`` on belong
    to it, so numbers that left the gateway after the backup are never reused under the same stream.
    Returns the new stream, or None when there was nothing new to follow.
    """
    if not restored_id:
        return None
    with write_transaction(db):
        if _state(db, "restore_seen", "") == restored_id:
            return None
        current = stream(db)
        lineage = list(current.lineage) or [("", 1, 1)]
        new_id = secrets.token_hex(8)
        entry = (new_id, int(_state(db, "next_seq", "1")), max(int(next_reading_id), cursor(db) + 1))
        new = Stream(new_id, (*lineage, entry))
        _set_state(db, "stream", new_id)
        _set_state(db, "lineage", json.dumps([list(e) for e in new.lineage]))
        _set_state(db, "restore_seen", restored_id)
    return new


def forget_in_flight(db: sqlite_utils.Database) -> None:
    """After a restart nothing is in flight any more: resend unacknowledged batches now, not after a timeout."""
    with write_transaction(db):
        db.execute("UPDATE sync_outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")


def _state(db: sqlite_utils.Database, key: str, default: str) -> str:
    row = db.execute("SELECT value FROM sync_state WHERE key = ?", [key]).fetchone()
    return row[0] if row else default


def _set_state(db: sqlite_utils.Database, key: str, value: object) -> None:
    db.execute("INSERT INTO sync_state(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               [key, str(value)])


def cursor(db: sqlite_utils.Database) -> int:
    """Id of the last reading already put into a batch."""
    return int(_state(db, "last_reading_id", "0"))


def pending_readings(store: Store) -> tuple[int, float | None]:
    """Readings stored but not yet batched, and the timestamp of the first of them.

    Counted as ``MAX(id) - cursor``: reading ids only grow and are never reused, and nothing above the
    cursor is deleted (unsynced data is never pruned), so this is exact and O(log n) instead of a scan
    of a possibly million-row backlog on every tick.
    """
    after = cursor(store.db)
    pending = max(0, store.last_reading_id() - after)
    if not pending:
        return 0, None
    return pending, store.first_timestamp_after(after)


def new_stream(db: sqlite_utils.Database) -> Stream:
    """Start a new sync stream by hand (``carbon-gateway sync new-stream``), after a conflict showed that
    this store reused numbers that had left it (a copied store): the batches of the current stream
    the receiver has not acknowledged are sealed again in the new stream, and their readings count as
    the new stream's, so none is lost (a reading the receiver also got from the copy's original may
    then be there twice, under two streams)."""
    with write_transaction(db):
        current = stream(db)
        first = db.execute("SELECT MIN(first_reading_id) FROM sync_outbox WHERE stream = ?", [current.id]).fetchone()[0]
        first_reading_id = int(first) if first is not None else cursor(db) + 1
        db.execute("DELETE FROM sync_outbox WHERE stream = ?", [current.id])
        _set_state(db, "last_reading_id", first_reading_id - 1)
        _set_state(db, "derived_cursor", "{}")      # derived data is sent again in full; the receiver keeps one copy
        new = Stream(secrets.token_hex(8), (*(current.lineage or (("", 1, 1),)),))
        new = Stream(new.id, (*new.lineage, (new.id, int(_state(db, "next_seq", "1")), first_reading_id)))
        _set_state(db, "stream", new.id)
        _set_state(db, "lineage", json.dumps([list(e) for e in new.lineage]))
    return new


def make_batch(store: Store, gateway_id: str, max_readings: int,
               receiver: X25519PublicKey, signer: Ed25519PrivateKey) -> int | None:
    """Seal the next batch of unbatched readings into the outbox; returns its sequence number."""
    db = store.db
    with write_transaction(db):  # one transaction: counter, cursor, chain and row commit together
        rows = store.sync_rows(cursor(db), max_readings)
        if not rows:
            return None
        seq = int(_state(db, "next_seq", "1"))
        current = stream(db)
        header = BatchHeader(gateway_id=gateway_id, seq=seq, prev_hash=_state(db, "prev_hash", ""),
                             gateway_key_id=key_id(signer.public_key()), receiver_key_id=key_id(receiver),
                             count=len(rows), created_at=time.time(), stream=current.id, lineage=current.lineage)
        message = seal(header, encode_rows(rows), receiver, signer)
        db.execute("INSERT INTO sync_outbox(seq, first_reading_id, last_reading_id, count, message, created_at, "
                   "stream) VALUES (?, ?, ?, ?, ?, ?, ?)", [seq, rows[0][0], rows[-1][0], len(rows), message,
                                                            header.created_at, current.id])
        _set_state(db, "next_seq", seq + 1)
        _set_state(db, "last_reading_id", rows[-1][0])
        _set_state(db, "prev_hash", message_hash(message))
    return seq


def make_derived_batch(store: Store, gateway_id: str, receiver: X25519PublicKey,
                       signer: Ed25519PrivateKey) -> int | None:
    """Seal the derived data changed since the last derived batch (issue 14 part 8) into the outbox.

    It takes the next sequence number and joins the hash chain like a readings batch, so it is signed,
    ordered and acknowledged the same way; it carries no readings (``count`` 0 in the outbox, and its
    reading range is empty at the current reading cursor, so pruning is not held back).
    :returns: its sequence number, or None when nothing changed.
    """
    db = store.db
    with write_transaction(db):
        saved = json.loads(_state(db, "derived_cursor", "{}"))
        payload, nxt = derived_since(store, Cursor(**saved))
        if is_empty(payload):
            return None
        seq = int(_state(db, "next_seq", "1"))
        current = stream(db)
        rows = sum(len(payload[k]) for k in ("emissions", "activity_data", "instruments"))
        header = BatchHeader(gateway_id=gateway_id, seq=seq, prev_hash=_state(db, "prev_hash", ""),
                             gateway_key_id=key_id(signer.public_key()), receiver_key_id=key_id(receiver),
                             count=rows, created_at=time.time(), stream=current.id, lineage=current.lineage,
                             kind="derived")
        message = seal(header, encode_derived(payload), receiver, signer)
        at = cursor(db)
        db.execute("INSERT INTO sync_outbox(seq, first_reading_id, last_reading_id, count, message, created_at, "
                   "stream) VALUES (?, ?, ?, 0, ?, ?, ?)", [seq, at + 1, at, message, header.created_at, current.id])
        _set_state(db, "next_seq", seq + 1)
        _set_state(db, "prev_hash", message_hash(message))
        _set_state(db, "derived_cursor", json.dumps(nxt.__dict__))
    return seq


def unseal_unsent_tail(db: sqlite_utils.Database, max_readings: int) -> tuple[int, int]:
    """Undo the newest batches that were never published, so their readings can be sealed again in
    larger batches: returns (how many were undone, the last reading id they held); (0, 0) when there is
    nothing worth it (fewer than two such batches, or they would not get fewer).

    Only the tail is taken: batches of the current stream, never sent, after every batch that was ever
    published, up to the newest. Their numbers never left the gateway, so the same sequence numbers and
    the same chain link (the first one's ``prev_hash``) are used again; nothing that left is changed.
    """
    with write_transaction(db):
        current = stream(db)
        next_seq = int(_state(db, "next_seq", "1"))
        floor = db.execute("SELECT COALESCE(MAX(seq), 0) FROM sync_outbox WHERE attempts > 0 OR sent_at IS NOT NULL "
                           "OR stream != ?", [current.id]).fetchone()[0]
        rows = db.execute("SELECT seq, first_reading_id, last_reading_id, count, message FROM sync_outbox WHERE "
                          "seq > ? AND stream = ? ORDER BY seq", [floor, current.id]).fetchall()
        total = sum(r[3] for r in rows)
        if len(rows) < 2 or rows[-1][0] != next_seq - 1 or -(-total // max_readings) >= len(rows) or \
                [r[0] for r in rows] != list(range(rows[0][0], next_seq)):
            return 0, 0
        first = rows[0]
        prev_hash = parse_header(bytes(first[4]))[0].prev_hash
        db.execute("DELETE FROM sync_outbox WHERE seq >= ? AND stream = ?", [first[0], current.id])
        _set_state(db, "next_seq", first[0])
        _set_state(db, "last_reading_id", first[1] - 1)
        _set_state(db, "prev_hash", prev_hash)
        if any(r[3] == 0 for r in rows):
            # A derived batch was undone with them: its data goes again (the receiver keeps one copy).
            _set_state(db, "derived_cursor", "{}")
    return len(rows), int(rows[-1][2])


@dataclass(frozen=True)
class Slot:
    seq: int
    sent_at: float | None
    created_at: float


def window(db: sqlite_utils.Database, limit: int) -> list[Slot]:
    """The oldest ``limit`` unacknowledged batches (without their bytes)."""
    return [Slot(*r) for r in db.execute("SELECT seq, sent_at, created_at FROM sync_outbox ORDER BY seq LIMIT ?", [limit])]


def in_flight(db: sqlite_utils.Database, sent_after: float) -> int:
    """Batches sent after ``sent_after`` and not yet acknowledged, anywhere in the outbox (a live batch
    sent ahead of the backlog is outside :func:`window` but still on the wire)."""
    return int(db.execute("SELECT COUNT(*) FROM sync_outbox WHERE sent_at > ?", [sent_after]).fetchone()[0])


def newest(db: sqlite_utils.Database) -> Slot | None:
    row = db.execute("SELECT seq, sent_at, created_at FROM sync_outbox ORDER BY seq DESC LIMIT 1").fetchone()
    return Slot(*row) if row else None


def message(db: sqlite_utils.Database, seq: int) -> bytes | None:
    row = db.execute("SELECT message FROM sync_outbox WHERE seq = ?", [seq]).fetchone()
    return bytes(row[0]) if row else None


def synced_through(db: sqlite_utils.Database) -> int:
    """Highest reading id such that it and every lower id are committed at the receiver."""
    row = db.execute("SELECT MIN(first_reading_id) FROM sync_outbox").fetchone()
    return int(row[0]) - 1 if row and row[0] is not None else cursor(db)


def unacked(db: sqlite_utils.Database, limit: int) -> list[OutboxRow]:
    return [OutboxRow(*r) for r in db.execute(
        "SELECT seq, count, message, created_at, sent_at FROM sync_outbox ORDER BY seq LIMIT ?", [limit]).fetchall()]


def mark_sent(db: sqlite_utils.Database, seq: int) -> None:
    with write_transaction(db):
        db.execute("UPDATE sync_outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?", [time.time(), seq])


def acknowledge(db: sqlite_utils.Database, seq: int, stream_id: str = "") -> bool:
    """Drop an acknowledged batch of ``stream_id``; True if it was still there."""
    with write_transaction(db):
        removed = db.execute("DELETE FROM sync_outbox WHERE seq = ? AND stream = ?", [seq, stream_id]).rowcount
        _set_state(db, "last_ack_at", time.time())
    return bool(removed)


def backlog(db: sqlite_utils.Database) -> tuple[int, int]:
    """(batches waiting for an acknowledgement, readings in them)."""
    row = db.execute("SELECT COUNT(*), COALESCE(SUM(count), 0) FROM sync_outbox").fetchone()
    return int(row[0]), int(row[1])


def last_ack_at(db: sqlite_utils.Database) -> float | None:
    value = _state(db, "last_ack_at", "")
    return float(value) if value else None
