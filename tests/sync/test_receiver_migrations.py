"""The receiver's tables come from its own migration set (``sync/storage.py``), apart from the gateway's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sync.storage import MIGRATIONS, ReceiverDb, ReceiverDbError

# What the receiver created before it had a migration set and sync streams (v0.1): the tables only.
V01_TABLES = """
CREATE TABLE batches (
    gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL,
    count INTEGER NOT NULL, received_at REAL NOT NULL, chain_ok INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
CREATE TABLE readings (
    gateway_id TEXT NOT NULL, reading_id BIGINT NOT NULL, seq BIGINT NOT NULL,
    meter_id TEXT NOT NULL, point TEXT NOT NULL, timestamp REAL NOT NULL, value REAL,
    unit TEXT NOT NULL, quantity TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (gateway_id, reading_id)
);
CREATE TABLE rejections (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, gateway_id TEXT, seq BIGINT, reason TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, message BLOB NOT NULL
);
"""


def test_a_new_receiver_database_records_its_migrations(tmp_path: Path) -> None:
    db = ReceiverDb(tmp_path / "receiver.db")
    try:
        assert db.applied_migrations() == [name for name, _ in MIGRATIONS]
        tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"batches", "readings", "rejections", "quarantine", "receiver_migrations"} <= tables
    finally:
        db.close()
    again = ReceiverDb(tmp_path / "receiver.db")          # reopening applies nothing twice
    try:
        assert again.applied_migrations() == [name for name, _ in MIGRATIONS]
    finally:
        again.close()


def test_a_database_made_before_the_migration_set_is_adopted_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "receiver.db"
    conn = sqlite3.connect(path)                          # what the receiver created before: the tables only
    conn.executescript(V01_TABLES)
    conn.execute("INSERT INTO batches VALUES ('gw', 1, 'h', '', 3, 1.0, 1)")
    conn.execute("INSERT INTO readings VALUES ('gw', 7, 1, 'm1', 'energy_import', 1.0, 2.5, 'kWh', 'energy_import',"
                 " 'ok', '')")
    conn.executemany("INSERT INTO rejections (at, gateway_id, seq, reason, detail) VALUES (1.0, ?, ?, ?, '')",
                     [("gw", 2, "bad_signature"), ("gw", 3, "bad_signature"), (None, None, "malformed")])
    conn.commit()
    conn.close()
    db = ReceiverDb(path)
    try:
        assert db.applied_migrations() == ["r001_tables", "r002_sync_streams", "r003_rejection_counts", "r004_derived"]
        # The totals the capped rejection rows no longer carry alone (issue 16): 2 + 1 rows before.
        assert sorted(db.query("SELECT gateway_id, reason, count FROM rejection_counts")) == [
            ("?", "malformed", 1), ("gw", "bad_signature", 2)]
        assert db.query("SELECT gateway_id, stream, seq, count FROM batches") == [("gw", "", 1, 3)]
        assert db.query("SELECT gateway_id, stream, reading_id, value FROM readings") == [("gw", "", 7, 2.5)]
    finally:
        db.close()


def test_a_database_of_a_newer_receiver_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "receiver.db"
    ReceiverDb(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO receiver_migrations VALUES ('r999_future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(ReceiverDbError, match=r"receiver.db: the receiver database has migrations this version does "
                                              r"not know \(r999_future\): upgrade carbon-gateway on the receiver"):
        ReceiverDb(path)


def test_postgresql_gets_the_same_migrations(postgres_url: str) -> None:
    db = ReceiverDb(postgres_url)
    try:
        assert db.applied_migrations() == [name for name, _ in MIGRATIONS]
    finally:
        db.close()
    again = ReceiverDb(postgres_url)
    try:
        assert again.applied_migrations() == [name for name, _ in MIGRATIONS]
    finally:
        again.close()
