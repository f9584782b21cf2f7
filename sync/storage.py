"""The receiver's database: a SQLite file by default, PostgreSQL when given a ``postgresql://`` URL.

Both speak the same few statements; this module hides the placeholder style, the schema types and the
transaction API, so ``receiver.py`` has one code path. The schema is the receiver's own migration set
(:data:`MIGRATIONS`, recorded in ``receiver_migrations``), apart from the gateway store's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sync.errors import SyncError

_TABLES = """
CREATE TABLE IF NOT EXISTS batches (
    gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL,
    count INTEGER NOT NULL, received_at {real} NOT NULL, chain_ok INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gateway_id TEXT NOT NULL, reading_id BIGINT NOT NULL, seq BIGINT NOT NULL,
    meter_id TEXT NOT NULL, point TEXT NOT NULL, timestamp {real} NOT NULL, value {real},
    unit TEXT NOT NULL, quantity TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (gateway_id, reading_id)
);
CREATE TABLE IF NOT EXISTS rejections (
    id {serial}, at {real} NOT NULL, gateway_id TEXT, seq BIGINT, reason TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id {serial}, at {real} NOT NULL, gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, message {blob} NOT NULL
);
"""

#: The receiver's migrations in order, ``(name, statements)``; ``{real}``, ``{serial}`` and ``{blob}`` are the
#: backend's types. A released migration is never edited: a change is a new entry at the end. The first one
#: keeps ``IF NOT EXISTS``, so databases made before the migration set existed are adopted as they are.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("r001_initial", _TABLES),
)

_MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS receiver_migrations (name TEXT PRIMARY KEY, applied_at {real} NOT NULL)"


class ReceiverDbError(SyncError):
    """The receiver's database cannot be opened."""


class ReceiverDb:
    """One connection; statements use ``?`` placeholders on both backends."""

    def __init__(self, target: Path | str) -> None:
        self.is_postgres = isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
        if self.is_postgres:
            try:
                import psycopg
            except ImportError as exc:
                raise ReceiverDbError("PostgreSQL needs psycopg: pip install 'carbon-edge-gateway[postgres]'") from exc
            self.integrity_errors: tuple[type[Exception], ...] = (psycopg.IntegrityError,)
            try:
                self._conn: Any = psycopg.connect(str(target), autocommit=True)
            except psycopg.Error as exc:
                raise ReceiverDbError(f"cannot connect to the receiver database: {exc}".strip()) from exc
            self._types = {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"}
            self._migrate(str(target).split("@")[-1])
        else:
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReceiverDbError(f"{path.parent}: cannot create the directory ({exc.strerror}): check "
                                      "--data-dir / --database") from exc
            self.integrity_errors = (sqlite3.IntegrityError,)
            try:
                # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction takes the write
                # lock up front and two receivers on one file cannot both read "absent" and then collide.
                self._conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
                tables = {row[0] for row in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
                if tables and "batches" not in tables:   # another program's file (or a gateway.db): leave it as it is
                    self._conn.close()
                    raise ReceiverDbError(f"{path}: a SQLite database of another program (tables "
                                          f"{', '.join(sorted(tables)[:5])}), not a receiver database; nothing was "
                                          "changed: pass --database or --data-dir naming the receiver's own file")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._types = {"real": "REAL", "serial": "INTEGER PRIMARY KEY", "blob": "BLOB"}
                self._migrate(str(path))
            except sqlite3.Error as exc:
                raise ReceiverDbError(f"{path}: cannot open the receiver database ({exc})") from exc

    def _migrate(self, place: str) -> None:
        """Apply the receiver's pending migrations, each in its own transaction.

        :raises ReceiverDbError: the database has migrations this version does not know (a newer receiver).
        """
        self.execute(_MIGRATIONS_TABLE.format(**self._types))
        known = [name for name, _ in MIGRATIONS]
        applied = {row[0] for row in self.query("SELECT name FROM receiver_migrations")}
        unknown = applied - set(known)
        if unknown:
            self.close()
            raise ReceiverDbError(f"{place}: the receiver database has migrations this version does not know "
                                  f"({', '.join(sorted(unknown))}): upgrade carbon-gateway on the receiver")
        for name, statements in MIGRATIONS:
            if name in applied:
                continue
            with self.transaction():
                for statement in filter(str.strip, statements.format(**self._types).split(";")):
                    self.execute(statement)
                self.execute("INSERT INTO receiver_migrations (name, applied_at) VALUES (?, ?)"
                             " ON CONFLICT (name) DO NOTHING", (name, time.time()))

    def applied_migrations(self) -> list[str]:
        """Names of the receiver migrations applied to this database, in order."""
        return [row[0] for row in self.query("SELECT name FROM receiver_migrations ORDER BY name")]

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.is_postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.is_postgres:
            with self._conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        else:
            self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(row) for row in self.execute(sql, params).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit on success, roll back on an exception (which propagates)."""
        if self.is_postgres:
            with self._conn.transaction():
                yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
