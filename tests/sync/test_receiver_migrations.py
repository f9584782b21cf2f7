"""The receiver's tables come from its own migration set (``sync/storage.py``), apart from the gateway's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sync.storage import _TABLES, MIGRATIONS, ReceiverDb, ReceiverDbError


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
    conn.executescript(_TABLES.format(real="REAL", serial="INTEGER PRIMARY KEY", blob="BLOB"))
    conn.execute("INSERT INTO batches VALUES ('gw', 1, 'h', '', 3, 1.0, 1)")
    conn.commit()
    conn.close()
    db = ReceiverDb(path)
    try:
        assert db.applied_migrations() == ["r001_initial"]
        assert db.query("SELECT gateway_id, seq, count FROM batches") == [("gw", 1, 3)]
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
