"""A gateway store as v0.1 wrote it (one ``readings`` row per value, its three indexes and
``latest_readings``), built by v0.1's own statements, for the migration tests and the flash benchmark."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from local_store.schema import migrations

# v0.1's Store.insert_readings, verbatim: one row per value, then the newest-per-point table.
V01_INSERT = ("INSERT INTO readings (meter_id, point, timestamp, value, unit, quantity, quality, reason, origin)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
V01_LATEST = ("INSERT INTO latest_readings (meter_id, point, reading_id, timestamp, value, unit, quantity, quality, reason)"
              " SELECT meter_id, point, id, timestamp, value, unit, quantity, quality, reason FROM readings"
              " WHERE id >= ? AND true"
              " ON CONFLICT (meter_id, point) DO UPDATE SET reading_id = excluded.reading_id,"
              " timestamp = excluded.timestamp, value = excluded.value, unit = excluded.unit,"
              " quantity = excluded.quantity, quality = excluded.quality, reason = excluded.reason"
              " WHERE excluded.timestamp >= latest_readings.timestamp")
# v0.1's sync/outbox.py created its tables itself.
V01_OUTBOX = """
CREATE TABLE IF NOT EXISTS sync_outbox (
    seq INTEGER PRIMARY KEY, first_reading_id INTEGER NOT NULL, last_reading_id INTEGER NOT NULL,
    count INTEGER NOT NULL, message BLOB NOT NULL, created_at REAL NOT NULL, sent_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Row = tuple[str, str, float, float | None, str, str, str, str, str]   # meter, point, ts, value, unit, quantity, quality, reason, origin


def create_v01_store(path: Path) -> sqlite3.Connection:
    """An empty v0.1 store at ``path`` (migrations m001..m004, the outbox's own tables, WAL, 4 KiB pages)."""
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous = FULL")
    migrations.apply(db, stop_before="m005_sync_outbox")
    conn.executescript(V01_OUTBOX)
    return conn


def insert_v01(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """Store rows as v0.1 did: one transaction, one row per value, then ``latest_readings``."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(V01_INSERT, rows)
    last_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    conn.execute(V01_LATEST, (last_id - len(rows) + 1,))
    conn.execute("COMMIT")
