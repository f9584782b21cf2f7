"""Connections to the store file, and the one helper that opens a write transaction.

One file in WAL mode. Each thread gets its own connection, because sqlite3 connections must not run
transactions from two threads at once; WAL lets readers (web UI, sync) proceed while the writer
commits. ``synchronous=FULL``: a reading acknowledged by a meter and committed here survives a power
cut (with WAL, NORMAL may lose the last commits); batching many readings per transaction keeps the
fsync cost small. See docs/models.md, "Store".

Every write in ``local_store`` (and in the shells, through it) goes through :func:`write_transaction`,
which takes the write lock up front (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Like ``Database.atomic()`` but takes the write lock at BEGIN (``BEGIN IMMEDIATE``).

    A deferred transaction that reads first and writes later fails at once with SQLITE_BUSY when
    another connection (the daemon, a CLI report) committed in between; taking the lock up front
    makes it wait for ``busy_timeout`` instead. Nested use becomes a savepoint.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    else:
        try:
            db.conn.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise


def connect(path: Path) -> sqlite_utils.Database:
    """A new connection to the store file with the store's pragmas (busy wait 30 s, FULL sync)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db
