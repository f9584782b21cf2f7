"""The receiver's database: a SQLite file by default, PostgreSQL when given a ``postgresql://`` URL.

Both speak the same few statements; this module hides the placeholder style, the schema types and the
transaction API, so ``receiver.py`` has one code path. The schema is the receiver's own migration set
(:data:`MIGRATIONS`, recorded in ``receiver_migrations``), apart from the gateway store's.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sync.errors import SyncError

# ``stream`` (issue 16): a gateway's sync stream; "" is its first, a restore starts another. A batch is
# (gateway, stream, seq); a reading is (gateway, stream it was first written in, reading id).
_TABLES = """
CREATE TABLE IF NOT EXISTS batches (
    gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL,
    count INTEGER NOT NULL, received_at {real} NOT NULL, chain_ok INTEGER NOT NULL, stream TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (gateway_id, stream, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gateway_id TEXT NOT NULL, reading_id BIGINT NOT NULL, seq BIGINT NOT NULL,
    meter_id TEXT NOT NULL, point TEXT NOT NULL, timestamp {real} NOT NULL, value {real},
    unit TEXT NOT NULL, quantity TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL,
    stream TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (gateway_id, stream, reading_id)
);
CREATE TABLE IF NOT EXISTS streams (
    gateway_id TEXT NOT NULL, stream TEXT NOT NULL, parent TEXT, first_seq BIGINT NOT NULL,
    first_reading_id BIGINT NOT NULL, first_seen {real} NOT NULL,
    PRIMARY KEY (gateway_id, stream)
);
CREATE TABLE IF NOT EXISTS rejections (
    id {serial}, at {real} NOT NULL, gateway_id TEXT, seq BIGINT, reason TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id {serial}, at {real} NOT NULL, gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, message {blob} NOT NULL
);
"""


# A receiver database made before sync streams (issue 16) is rebuilt once with the stream column in
# the primary keys; its rows belong to stream "".
_ADD_STREAM = """
ALTER TABLE batches RENAME TO batches_before_streams;
ALTER TABLE readings RENAME TO readings_before_streams;
{tables};
INSERT INTO batches (gateway_id, seq, hash, prev_hash, count, received_at, chain_ok, stream)
    SELECT gateway_id, seq, hash, prev_hash, count, received_at, chain_ok, '' FROM batches_before_streams;
INSERT INTO readings (gateway_id, reading_id, seq, meter_id, point, timestamp, value, unit, quantity, quality,
                      reason, stream)
    SELECT gateway_id, reading_id, seq, meter_id, point, timestamp, value, unit, quantity, quality, reason, ''
    FROM readings_before_streams;
DROP TABLE batches_before_streams;
DROP TABLE readings_before_streams
"""


def _statements(db: ReceiverDb, script: str) -> None:
    for statement in filter(str.strip, script.format(tables=_TABLES, **db.types).format(**db.types).split(";")):
        db.execute(statement)


def _r001_tables(db: ReceiverDb) -> None:
    """The tables (``IF NOT EXISTS``: a database made before the migration set keeps its tables and rows)."""
    _statements(db, _TABLES)


def _r002_sync_streams(db: ReceiverDb) -> None:
    """A database made before sync streams is rebuilt with the stream column in the primary keys."""
    if "stream" not in db.columns("batches"):
        _statements(db, _ADD_STREAM)


def _r003_rejection_counts(db: ReceiverDb) -> None:
    """Totals of rejections by gateway and reason (the ``rejections`` rows are capped, issue 16); a database
    from before keeps its totals."""
    _statements(db, """CREATE TABLE IF NOT EXISTS rejection_counts (
        gateway_id TEXT NOT NULL, reason TEXT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (gateway_id, reason))""")
    totals: dict[tuple[str, str], int] = {}
    for gateway_id, reason, count in db.query("SELECT gateway_id, reason, COUNT(*) FROM rejections GROUP BY 1, 2"):
        key = (gateway_id or "?", reason)     # "?": too broken to name its gateway
        totals[key] = totals.get(key, 0) + int(count)
    for (gateway_id, reason), count in totals.items():
        db.execute("INSERT INTO rejection_counts (gateway_id, reason, count) VALUES (?, ?, ?)",
                   (gateway_id, reason, count))


# Derived data (issue 14 part 8): one row per emission *version* (a recalculation adds a version; the
# current one of a figure is the newest by calculated_at), and the rows that explain it.
_DERIVED = """
CREATE TABLE IF NOT EXISTS derived_emissions (
    gateway_id TEXT NOT NULL, source_id TEXT NOT NULL, activity TEXT NOT NULL, origin TEXT NOT NULL,
    start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL, amount {real} NOT NULL, unit TEXT NOT NULL,
    energy_gj {real} NOT NULL, co2_t {real} NOT NULL, ch4_t {real} NOT NULL, n2o_t {real} NOT NULL,
    co2e_t {real} NOT NULL, scope INTEGER NOT NULL, iso_category INTEGER NOT NULL, factor_refs TEXT NOT NULL,
    gwp TEXT NOT NULL, region TEXT NOT NULL, status TEXT NOT NULL, measured_fraction {real} NOT NULL,
    calculated_at {real} NOT NULL, superseded_at {real}, seq BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, source_id, activity, origin, start_ts, calculated_at)
);
CREATE TABLE IF NOT EXISTS derived_intervals (
    gateway_id TEXT NOT NULL, source_id TEXT NOT NULL, start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL,
    amount {real} NOT NULL, unit TEXT NOT NULL, status TEXT NOT NULL, measured_fraction {real} NOT NULL,
    flags BIGINT NOT NULL, covered_s {real} NOT NULL, complete INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, source_id, start_ts)
);
CREATE TABLE IF NOT EXISTS derived_factors (
    gateway_id TEXT NOT NULL, ref TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, valid_from TEXT NOT NULL,
    valid_to TEXT, activity TEXT NOT NULL, parameter TEXT NOT NULL, value {real} NOT NULL, unit TEXT NOT NULL,
    region TEXT NOT NULL, year INTEGER NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (gateway_id, ref)
);
CREATE TABLE IF NOT EXISTS derived_activity (
    gateway_id TEXT NOT NULL, activity_id BIGINT NOT NULL, source_id TEXT NOT NULL, activity TEXT NOT NULL,
    start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL, amount {real} NOT NULL, unit TEXT NOT NULL,
    amount_original {real} NOT NULL, unit_original TEXT NOT NULL, origin TEXT NOT NULL, line BIGINT,
    PRIMARY KEY (gateway_id, activity_id)
);
CREATE TABLE IF NOT EXISTS derived_instruments (
    gateway_id TEXT NOT NULL, instrument_id BIGINT NOT NULL, kind TEXT NOT NULL, source_id TEXT,
    start_ts BIGINT NOT NULL, end_ts BIGINT NOT NULL, mwh {real} NOT NULL, factor_t_per_mwh {real} NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (gateway_id, instrument_id)
)
"""


def _r004_derived(db: ReceiverDb) -> None:
    """Tables for the derived data of ``derived`` batches (issue 14 part 8)."""
    _statements(db, _DERIVED)


#: The receiver's migrations in order. A released migration is never edited: a change is a new entry at the
#: end. Each runs once per database, inside the transaction that records it in ``receiver_migrations``.
MIGRATIONS: tuple[tuple[str, Callable[[ReceiverDb], None]], ...] = (
    ("r001_tables", _r001_tables),
    ("r002_sync_streams", _r002_sync_streams),
    ("r003_rejection_counts", _r003_rejection_counts),
    ("r004_derived", _r004_derived),
)


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
            # The server went away (restart, failover, network): reconnect, the batch is not lost.
            self.connection_errors: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
            try:
                self._conn: Any = psycopg.connect(str(target), autocommit=True)
            except psycopg.Error as exc:
                raise ReceiverDbError(f"cannot connect to the receiver database: {exc}".strip()) from exc
            self.types = {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"}
            self._migrate(str(target).split("@")[-1])
        else:
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReceiverDbError(f"{path.parent}: cannot create the directory ({exc.strerror}): check "
                                      "--data-dir / --database") from exc
            self.integrity_errors = (sqlite3.IntegrityError,)
            self.connection_errors = (sqlite3.OperationalError,)   # disk I/O error, file gone, locked too long
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
                self.types = {"real": "REAL", "serial": "INTEGER PRIMARY KEY", "blob": "BLOB"}
                self._migrate(str(path))
            except sqlite3.Error as exc:
                raise ReceiverDbError(f"{path}: cannot open the receiver database ({exc})") from exc

    def _migrate(self, place: str) -> None:
        """Apply the receiver's pending migrations, in one transaction.

        :raises ReceiverDbError: the database has migrations this version does not know (a newer receiver).
        """
        known = [name for name, _ in MIGRATIONS]
        with self.transaction():
            if self.is_postgres:
                self.execute("SELECT pg_advisory_xact_lock(7216016)")   # receivers starting together
            self.execute("CREATE TABLE IF NOT EXISTS receiver_migrations (name TEXT PRIMARY KEY, applied_at {real} "
                         "NOT NULL)".format(**self.types))
            applied = {row[0] for row in self.query("SELECT name FROM receiver_migrations")}
            unknown = applied - set(known)
            if not unknown:
                for name, step in MIGRATIONS:
                    if name not in applied:
                        step(self)
                        self.execute("INSERT INTO receiver_migrations (name, applied_at) VALUES (?, ?)",
                                     (name, time.time()))
        if unknown:
            self.close()
            raise ReceiverDbError(f"{place}: the receiver database has migrations this version does not know "
                                  f"({', '.join(sorted(unknown))}): upgrade carbon-gateway on the receiver")

    def applied_migrations(self) -> list[str]:
        """Names of the receiver migrations applied to this database, in order."""
        return [row[0] for row in self.query("SELECT name FROM receiver_migrations ORDER BY name")]

    def columns(self, table: str) -> set[str]:
        """Column names of ``table`` (empty: no such table)."""
        if self.is_postgres:
            return {row[0] for row in self.query("SELECT column_name FROM information_schema.columns WHERE "
                                                 "table_name = ? AND table_schema = current_schema()", (table,))}
        return {row[1] for row in self.query(f"PRAGMA table_info({table})")}

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
