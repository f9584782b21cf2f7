"""The local SQLite store: schema and migrations, raw readings, sources, processing.

One file in WAL mode. Each thread gets its own connection (``Store.db``), because sqlite3
connections must not run transactions from two threads at once; WAL lets readers (web UI, sync)
proceed while the writer commits. ``synchronous=FULL``: a reading acknowledged by a meter and
committed here survives a power cut (with WAL, NORMAL may lose the last commits); batching many
readings per transaction keeps the fsync cost small. See docs/models.md, "Store".
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path

import numpy as np
import sqlite_utils
from sqlite_utils.migrations import Migrations

from drivers.model import Quantity, Reading
from local_store import preprocess as pp
from local_store.emissions import EmissionSettings, compute
from local_store.errors import FactorError, ProcessingError, SchemaError, StoreError, UnitError
from local_store.factors import FactorLibrary, default_factor_files, load_library
from local_store.units import ACTIVITIES
from local_store.units import activity as get_activity
from local_store.units import factor_to_canonical



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
migrations = Migrations("local_store")

#: Quantities that may carry an activity when a source names no point, in order of preference
#: (``local_store.units.Activity.quantities``).
DEFAULT_QUANTITIES: dict[str, tuple[Quantity, ...]] = {name: a.quantities for name, a in ACTIVITIES.items()}


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript("""
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,      -- AUTOINCREMENT: ids never reused after pruning
        meter_id TEXT NOT NULL,
        point TEXT NOT NULL,
        timestamp REAL NOT NULL,                   -- UTC epoch seconds
        value REAL,                                -- NULL when quality = 'invalid'
        unit TEXT NOT NULL,
        quantity TEXT NOT NULL,
        quality TEXT NOT NULL DEFAULT 'ok',        -- from the driver: ok | invalid
        reason TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL DEFAULT 'poll',       -- poll | import:<file>
        status TEXT,                               -- preprocessing: measured | estimated | invalid
        flags INTEGER NOT NULL DEFAULT 0           -- preprocessing reasons (preprocess.Reason bits)
    );
    CREATE INDEX readings_series_ts ON readings(meter_id, point, timestamp);
    CREATE INDEX readings_series_id ON readings(meter_id, point, id);
    CREATE TABLE latest_readings (
        meter_id TEXT NOT NULL, point TEXT NOT NULL, reading_id INTEGER NOT NULL,
        timestamp REAL NOT NULL, value REAL, unit TEXT NOT NULL, quantity TEXT NOT NULL,
        quality TEXT NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (meter_id, point)
    );
    CREATE TABLE sources (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,                        -- meter | manual
        activity TEXT NOT NULL,
        meter_id TEXT, point TEXT, quantity TEXT,
        settings TEXT NOT NULL DEFAULT '{}',       -- JSON of SourceSettings
        description TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1,
        processed_reading_id INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE intervals (
        source_id TEXT NOT NULL,
        start_ts INTEGER NOT NULL,
        end_ts INTEGER NOT NULL,
        amount REAL NOT NULL,                      -- canonical unit of the activity
        unit TEXT NOT NULL,
        status TEXT NOT NULL,                      -- measured | estimated | invalid
        measured_fraction REAL NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        covered_s REAL NOT NULL,                   -- seconds between first and last reading inside
        complete INTEGER NOT NULL,                 -- 0 for the still-open interval
        PRIMARY KEY (source_id, start_ts)
    ) WITHOUT ROWID;
    CREATE TABLE activity_data (
        id INTEGER PRIMARY KEY,
        source_id TEXT NOT NULL, activity TEXT NOT NULL,
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        amount REAL NOT NULL, unit TEXT NOT NULL,
        amount_original REAL NOT NULL, unit_original TEXT NOT NULL,
        origin TEXT NOT NULL, row INTEGER
    );
    CREATE TABLE factors (
        id TEXT NOT NULL, version INTEGER NOT NULL, valid_from TEXT NOT NULL, valid_to TEXT,
        activity TEXT NOT NULL, parameter TEXT NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL,
        region TEXT NOT NULL, year INTEGER NOT NULL, source TEXT NOT NULL, file TEXT NOT NULL,
        priority INTEGER NOT NULL, first_loaded_at REAL NOT NULL,
        PRIMARY KEY (id, version, valid_from)
    );
    CREATE TABLE emissions (
        id INTEGER PRIMARY KEY,
        source_id TEXT NOT NULL, activity TEXT NOT NULL,
        origin TEXT NOT NULL,                      -- interval | activity
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        amount REAL NOT NULL, unit TEXT NOT NULL, energy_gj REAL NOT NULL,
        co2_t REAL NOT NULL, ch4_t REAL NOT NULL, n2o_t REAL NOT NULL, co2e_t REAL NOT NULL,
        scope INTEGER NOT NULL, iso_category INTEGER NOT NULL,
        factor_id TEXT NOT NULL, factor_version INTEGER NOT NULL, factor_refs TEXT NOT NULL,
        gwp TEXT NOT NULL, region TEXT NOT NULL,
        status TEXT NOT NULL, measured_fraction REAL NOT NULL,
        calculated_at REAL NOT NULL,
        superseded_at REAL                         -- set when a factor change replaced this row
    );
    CREATE INDEX emissions_current ON emissions(start_ts, source_id) WHERE superseded_at IS NULL;
    CREATE INDEX emissions_source ON emissions(source_id, origin, start_ts);
    CREATE TABLE instruments (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,                        -- certificate | ppa | green_power
        source_id TEXT,                            -- NULL: all electricity of the site
        start_ts INTEGER NOT NULL, end_ts INTEGER NOT NULL,
        mwh REAL NOT NULL, factor_t_per_mwh REAL NOT NULL,
        reference TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)


_HOURLY_SELECT = """
    SELECT source_id, activity, unit, scope, iso_category, factor_refs, (start_ts / 3600) * 3600 AS hour_ts,
           SUM(amount), SUM(energy_gj), SUM(co2_t), SUM(ch4_t), SUM(n2o_t), SUM(co2e_t),
           SUM(amount * measured_fraction), COUNT(*), SUM(status != 'measured'), SUM(status = 'invalid')
    FROM emissions WHERE origin = 'interval' AND superseded_at IS NULL"""
_HOURLY_GROUP = " GROUP BY source_id, activity, factor_refs, hour_ts"


@migrations()
def m002_hourly_rollup(db: sqlite_utils.Database) -> None:
    """Hourly sums of current interval emissions, so a year's report reads 1/4 of the rows.

    Also a partial index on readings that are not plainly measured, for the report's reading counts.
    """
    db.executescript("""
    CREATE TABLE emissions_hourly (
        source_id TEXT NOT NULL, activity TEXT NOT NULL, unit TEXT NOT NULL, scope INTEGER NOT NULL,
        iso_category INTEGER NOT NULL, factor_refs TEXT NOT NULL, hour_ts INTEGER NOT NULL,
        amount REAL NOT NULL, energy_gj REAL NOT NULL, co2_t REAL NOT NULL, ch4_t REAL NOT NULL,
        n2o_t REAL NOT NULL, co2e_t REAL NOT NULL, amount_measured REAL NOT NULL,
        rows INTEGER NOT NULL, rows_estimated INTEGER NOT NULL, rows_invalid INTEGER NOT NULL,
        PRIMARY KEY (source_id, activity, factor_refs, hour_ts)
    );
    CREATE INDEX emissions_hourly_ts ON emissions_hourly(hour_ts);
    CREATE INDEX readings_flagged ON readings(meter_id, point, timestamp, status) WHERE status IS NOT 'measured';
    """)
    db.execute("INSERT INTO emissions_hourly" + _HOURLY_SELECT + _HOURLY_GROUP)


@migrations()
def m003_audit_log(db: sqlite_utils.Database) -> None:
    """The hash-chained audit log (``local_store/audit.py``); its head lives in ``store_meta``."""
    db.executescript("""
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,                    -- contiguous from 1: a gap means a deleted entry
        ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
        detail TEXT NOT NULL,                      -- canonical JSON
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_action ON audit_log(action);
    """)


@migrations()
def m004_web_users(db: sqlite_utils.Database) -> None:
    """Web UI users, server-side sessions and login throttling (``local_store/users.py``)."""
    db.executescript("""
    CREATE TABLE web_users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'technician', 'viewer')),
        created_at REAL NOT NULL, password_changed_at REAL NOT NULL
    );
    CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY,                  -- SHA-256 of the cookie's random id, never the id itself
        user TEXT,                                 -- NULL before login (holds the CSRF token and language)
        data TEXT NOT NULL, created_at REAL NOT NULL, last_seen REAL NOT NULL
    );
    CREATE INDEX web_sessions_user ON web_sessions(user);
    CREATE TABLE web_login_failures (
        name TEXT PRIMARY KEY,                     -- per user name, known or not (no account enumeration)
        failures INTEGER NOT NULL, locked_until REAL NOT NULL
    );
    CREATE TABLE web_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)


def refresh_hourly(db: sqlite_utils.Database, source_id: str, from_ts: float | None = None) -> None:
    """Recompute the hourly rollup of one source from ``from_ts`` (floored to the hour) on."""
    hour = 0 if from_ts is None else int(from_ts // 3600) * 3600
    db.execute("DELETE FROM emissions_hourly WHERE source_id = ? AND hour_ts >= ?", (source_id, hour))
    db.execute("INSERT INTO emissions_hourly" + _HOURLY_SELECT + " AND source_id = ? AND start_ts >= ?" + _HOURLY_GROUP,
               (source_id, hour))


@dataclass(frozen=True)
class SourceSettings:
    """Which activity a meter point measures; ``gateway.config`` builds one per ``[[meters]]`` entry.

    :param meter_id: the meter (``MeterConfig.id``).
    :param activity: electricity, electricity_export, natural_gas, steam, heat, heat_export, ...
    :param point: the profile point to use; None picks the meter's point of the activity's default
        quantity (energy_import for electricity, gas_volume for natural_gas, heat_energy for heat
        and steam) and fails if there are several.
    :param source_id: name in reports; default the meter id (``<meter>-export`` for exports).
    :param rollover_at: the register's wrap value, if known (see ``preprocess.CumulativeRules``).
    :param steam_enthalpy_kj_per_kg: for steam metered in t.
    """

    meter_id: str
    activity: str
    point: str | None = None
    source_id: str | None = None
    description: str = ""
    rollover_at: float | None = None
    max_gap_s: float = 1800.0
    long_gap_s: float = 86_400.0
    frozen_after_s: float | None = 86_400.0
    max_rate_per_h: float | None = None
    steam_enthalpy_kj_per_kg: float = 2763.0

    @property
    def id(self) -> str:
        if self.source_id:
            return self.source_id
        return f"{self.meter_id}-export" if self.activity.endswith("_export") else self.meter_id

    def rules(self) -> pp.CumulativeRules:
        return pp.CumulativeRules(rollover_at=self.rollover_at, max_gap_s=self.max_gap_s,
                                  long_gap_s=self.long_gap_s, frozen_after_s=self.frozen_after_s,
                                  max_rate_per_h=self.max_rate_per_h)


@dataclass(frozen=True)
class StoredReading:
    """A raw reading as stored, with its id (for sync) and preprocessing status."""

    id: int
    meter_id: str
    point: str
    timestamp: float
    value: float | None
    unit: str
    quantity: str
    quality: str
    reason: str
    status: str | None = None


@dataclass(frozen=True)
class ProcessResult:
    """What one :meth:`Store.process` call did."""

    sources: int
    readings: int
    intervals: int
    emission_rows: int
    recalculated_rows: int = 0
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneResult:
    """What one :meth:`Store.prune_synced_readings` call deleted."""

    deleted: int                  # raw readings deleted
    through_id: int               # the highest reading id deleted (0: none)
    until_ts: float | None        # the newest timestamp among them
    used_bytes_before: int
    used_bytes_after: int


@dataclass
class Store:
    """The gateway's SQLite store. Create with :func:`open_store`."""

    path: Path
    settings: EmissionSettings = field(default_factory=EmissionSettings)
    context_s: float = 7200.0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _conns: list[sqlite_utils.Database] = field(default_factory=list, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _library: FactorLibrary | None = field(default=None, repr=False)

    # -- connections -----------------------------------------------------------------------------
    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection to the store file."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = _connect(self.path)
            self._local.db = db
            with self._lock:
                self._conns.append(db)
        return db

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._lock:
            for db in self._conns:
                db.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- readings --------------------------------------------------------------------------------
    def insert_readings(self, readings: Sequence[Reading], origin: str = "poll") -> int:
        """Store readings in one durable transaction; returns how many were stored.

        Invalid readings are kept with their reason (their value is NULL).
        """
        rows = []
        for r in readings:
            value = r.value if r.quality == "ok" and r.value is not None and math.isfinite(r.value) else None
            quality = r.quality if value is not None else "invalid"
            reason = r.reason or ("" if value is not None or r.quality == "invalid" else "value is not a finite number")
            quantity = r.quantity.value if isinstance(r.quantity, Quantity) else str(r.quantity)
            rows.append((r.meter_id, r.point, float(r.timestamp), value, r.unit, quantity, quality, reason, origin))
        if not rows:
            return 0
        db = self.db
        with write_transaction(db):
            cur = db.conn.executemany(
                "INSERT INTO readings (meter_id, point, timestamp, value, unit, quantity, quality, reason, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            last_id = db.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            # Keep a newest-per-point table so the dashboard never scans the readings table.
            first_id = last_id - len(rows) + 1
            db.conn.execute(
                "INSERT INTO latest_readings (meter_id, point, reading_id, timestamp, value, unit, quantity, quality, reason)"
                " SELECT meter_id, point, id, timestamp, value, unit, quantity, quality, reason FROM readings"
                " WHERE id >= ? AND true"
                " ON CONFLICT (meter_id, point) DO UPDATE SET reading_id = excluded.reading_id,"
                " timestamp = excluded.timestamp, value = excluded.value, unit = excluded.unit,"
                " quantity = excluded.quantity, quality = excluded.quality, reason = excluded.reason"
                " WHERE excluded.timestamp >= latest_readings.timestamp", (first_id,))
        return cur.rowcount if cur.rowcount >= 0 else len(rows)

    def latest_readings(self) -> list[StoredReading]:
        """The newest reading per (meter, point), by timestamp."""
        rows = self.db.execute(
            "SELECT l.reading_id, l.meter_id, l.point, l.timestamp, l.value, l.unit, l.quantity, l.quality,"
            " l.reason, r.status FROM latest_readings l LEFT JOIN readings r ON r.id = l.reading_id"
            " ORDER BY l.meter_id, l.point").fetchall()
        return [StoredReading(*row) for row in rows]

    def readings_after(self, reading_id: int, limit: int) -> list[StoredReading]:
        """Stored raw readings with id > ``reading_id``, in id order, at most ``limit``."""
        rows = self.db.execute(
            "SELECT id, meter_id, point, timestamp, value, unit, quantity, quality, reason, status"
            " FROM readings WHERE id > ? ORDER BY id LIMIT ?", (int(reading_id), int(limit))).fetchall()
        return [StoredReading(*row) for row in rows]

    # -- disk budget ---------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes the store occupies: pages in use in ``gateway.db`` plus the WAL file.

        Free pages (left by deletes) are not counted: SQLite reuses them before it grows the file, so
        keeping this number under a budget keeps the file from growing past it (issue 5, "Disk budget").
        """
        db = self.db
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        in_use = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            wal = Path(f"{self.path}-wal").stat().st_size
        except OSError:
            wal = 0
        return int(page_size * in_use + wal)

    def prune_synced_readings(self, synced_through: int, target_bytes: int, chunk: int = 5000,
                              older_than_ts: float | None = None) -> PruneResult:
        """Delete raw readings already committed at the receiver, oldest first, until :meth:`used_bytes`
        is at most ``target_bytes`` or nothing more may go.

        Never deleted: readings with an id above ``synced_through`` (unsynced data is never dropped to
        make room), readings a source has not processed yet, and per series the newest
        :meth:`prune_keep_s` seconds plus the valid reading before them, which the next
        :meth:`process` needs as context (gap bridging, frozen and spike checks). Intervals and
        emissions are kept; the pruned raw readings remain at the receiver. Each chunk is its own
        transaction.

        :param older_than_ts: also keep everything from this time on: age-based retention, which with
            ``target_bytes=0`` prunes every synced reading older than it.
        """
        before = self.used_bytes()
        deleted, through_id, until_ts = 0, 0, None
        if before <= target_bytes or synced_through <= 0:
            return PruneResult(0, 0, None, before, before)
        db = self.db
        keep_s = self.prune_keep_s()
        limits = []
        cursors = dict(db.execute("SELECT meter_id, MIN(processed_reading_id) FROM sources WHERE kind IN"
                                  " ('meter', 'imported') AND enabled = 1 GROUP BY meter_id").fetchall())
        # Future timestamps (a clock jump) must not move the cutoff forward: only plausible ones count.
        plausible_until = time.time() + pp.CumulativeRules().clock_jump_s
        for meter_id, point in db.execute("SELECT meter_id, point FROM latest_readings").fetchall():
            newest = db.execute("SELECT MAX(timestamp) FROM readings WHERE meter_id = ? AND point = ? AND timestamp"
                                " <= ?", (meter_id, point, plausible_until)).fetchone()[0]
            if newest is None:
                continue
            cutoff = newest - keep_s if older_than_ts is None else min(newest - keep_s, older_than_ts)
            anchor = db.execute("SELECT id FROM readings WHERE meter_id = ? AND point = ? AND timestamp < ? AND"
                                " value IS NOT NULL AND timestamp >= 946684800 ORDER BY timestamp DESC LIMIT 1",
                                (meter_id, point, cutoff)).fetchone()
            max_id = min(synced_through, cursors.get(meter_id, synced_through))
            limits.append((meter_id, point, cutoff, anchor[0] if anchor else 0, max_id))
        db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_limits (meter_id TEXT, point TEXT, cutoff REAL,"
                   " anchor_id INTEGER, max_id INTEGER, PRIMARY KEY (meter_id, point))")
        with write_transaction(db):
            db.execute("DELETE FROM temp.prune_limits")
            db.conn.executemany("INSERT INTO temp.prune_limits VALUES (?, ?, ?, ?, ?)", limits)
        used = before
        after = 0      # everything below the last id deleted was examined: do not scan it again
        while used > target_bytes:
            with write_transaction(db):
                rows = db.execute(
                    "SELECT r.id, r.timestamp FROM readings r JOIN temp.prune_limits p ON p.meter_id = r.meter_id"
                    " AND p.point = r.point WHERE r.id > ? AND r.id <= ? AND r.id <= p.max_id AND r.timestamp < p.cutoff"
                    " AND r.id != p.anchor_id ORDER BY r.id LIMIT ?", (after, int(synced_through), int(chunk))).fetchall()
                if not rows:
                    break
                db.conn.executemany("DELETE FROM readings WHERE id = ?", [(r[0],) for r in rows])
            deleted += len(rows)
            through_id = after = rows[-1][0]
            newest = max(r[1] for r in rows)
            until_ts = newest if until_ts is None else max(until_ts, newest)
            # Move the deleted pages out of the WAL so that they count as free (best effort: a reader may
            # hold the WAL; the next call tries again).
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            used = self.used_bytes()
        return PruneResult(deleted, through_id, until_ts, before, used)

    def prune_keep_s(self) -> float:
        """Seconds of raw readings per series that pruning keeps: the context :meth:`process` reads
        before new readings (``context_s``, or the longest frozen limit plus an interval), one interval,
        and the out-of-order tolerance, with an hour to spare."""
        frozen = [json.loads(blob).get("frozen_after_s") or 0.0
                  for (blob,) in self.db.execute("SELECT settings FROM sources WHERE enabled = 1")]
        interval = self.settings.interval_s
        context = max([self.context_s] + [f + interval for f in frozen])
        return context + interval + pp.CumulativeRules().clock_jump_s + 3600.0

    # -- configuration ---------------------------------------------------------------------------
    def configure_sources(self, sources: Iterable[SourceSettings], settings: EmissionSettings | None = None) -> None:
        """Declare which meter point is which activity (from the gateway config), and how to compute.

        A new source, or a source whose meter, point or activity changed, is (re)processed from its
        first reading. Sources no longer configured are disabled; their results stay.

        :raises UnitError: for an unknown activity, naming the meter.
        """
        sources = list(sources)
        if settings is not None:
            self.settings = settings
            self._library = None
        now = time.time()
        seen: dict[str, str] = {}
        for s in sources:
            try:
                get_activity(s.activity)
            except UnitError as exc:
                raise UnitError(f"meter {s.meter_id}: {exc}") from None
            if s.id in seen:
                raise StoreError(f"source id {s.id!r} is used by meters {seen[s.id]} and {s.meter_id}: "
                                 f"give one of them a distinct source_id")
            seen[s.id] = s.meter_id
        db = self.db
        with write_transaction(db):
            for s in sources:
                old = db.execute("SELECT meter_id, point, activity, settings FROM sources WHERE id = ?", (s.id,)).fetchone()
                quantity = DEFAULT_QUANTITIES[s.activity][0].value if s.point is None else None
                blob = json.dumps(asdict(s), sort_keys=True)
                if old is None:
                    db.execute("INSERT INTO sources (id, kind, activity, meter_id, point, quantity, settings, description,"
                               " enabled, processed_reading_id, updated_at) VALUES (?, 'meter', ?, ?, ?, ?, ?, ?, 1, 0, ?)",
                               (s.id, s.activity, s.meter_id, s.point, quantity, blob, s.description, now))
                else:
                    restart = old[0] != s.meter_id or old[1] != s.point or old[2] != s.activity or old[3] != blob
                    db.execute("UPDATE sources SET kind = 'meter', activity = ?, meter_id = ?, point = ?, quantity = ?,"
                               " settings = ?, description = ?, enabled = 1, updated_at = ?"
                               + (", processed_reading_id = 0" if restart else "") + " WHERE id = ?",
                               (s.activity, s.meter_id, s.point, quantity, blob, s.description, now, s.id))
            db.execute("UPDATE sources SET enabled = 0 WHERE kind = 'meter' AND id NOT IN (SELECT value FROM json_each(?))",
                       (json.dumps(list(seen)),))
            self._save_settings(db)

    def _save_settings(self, db: sqlite_utils.Database) -> None:
        db.execute("INSERT INTO store_meta (key, value) VALUES ('emission_settings', ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (json.dumps(asdict(self.settings)),))

    def sources(self) -> list[dict]:
        """Configured sources (meters and manual), as plain rows for the web UI and reports."""
        return [dict(r) for r in self.db.query("SELECT id, kind, activity, meter_id, point, description, enabled FROM sources ORDER BY id")]

    # -- factors ---------------------------------------------------------------------------------
    @property
    def library(self) -> FactorLibrary:
        """The factor library: shipped files plus ``settings.factor_files``."""
        if self._library is None:
            files = default_factor_files() + [Path(p) for p in self.settings.factor_files]
            self._library = load_library(files)
        return self._library

    def reload_factors(self) -> None:
        """Forget the cached library; the next :meth:`process` re-reads the files and recalculates."""
        self._library = None

    def _record_factors(self, db: sqlite_utils.Database, library: FactorLibrary) -> None:
        """Keep every factor version ever used, so old emission rows stay traceable."""
        now = time.time()
        for f in library.factors:
            row = db.execute("SELECT value, unit, valid_to FROM factors WHERE id = ? AND version = ? AND valid_from = ?",
                             (f.id, f.version, f.valid_from.isoformat())).fetchone()
            valid_to = f.valid_to.isoformat() if f.valid_to else None
            if row is None:
                db.execute("INSERT INTO factors (id, version, valid_from, valid_to, activity, parameter, value, unit,"
                           " region, year, source, file, priority, first_loaded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           (f.id, f.version, f.valid_from.isoformat(), valid_to, f.activity, f.parameter, f.value,
                            f.unit, f.region, f.year, f.source, f.file, f.priority, now))
            elif (row[0], row[1], row[2]) != (f.value, f.unit, valid_to):
                raise FactorError(
                    f"{f.file}: factor {f.id!r} version {f.version} (valid from {f.valid_from}) changed from "
                    f"{row[0]} {row[1]} to {f.value} {f.unit} without a new version: set version = {f.version + 1} "
                    f"on the entry (or the file's [library] version) so the old results stay traceable")

    # -- processing ------------------------------------------------------------------------------
    def process(self, until: float | None = None) -> ProcessResult:
        """Preprocess new readings into interval consumption and compute their emissions.

        Each source is processed in its own transaction; a source that fails (unknown unit, missing
        factor) writes nothing and is reported in the raised :class:`ProcessingError` after the other
        sources were committed. When the factor files or emission settings changed since the last
        run, the affected emission rows are recalculated first (old rows kept as superseded).

        :param until: only use readings timestamped up to this epoch second (backfill, tests).
        """
        db = self.db
        library = self.library
        with self._lock:
            recalculated = self._maybe_recalculate(db, library)
            totals = [0, 0, 0, 0]
            errors: list[str] = []
            rows = db.execute("SELECT id, settings FROM sources WHERE kind IN ('meter', 'imported') AND enabled = 1"
                              " ORDER BY id").fetchall()
            for source_id, blob in rows:
                settings = SourceSettings(**json.loads(blob))
                try:
                    with write_transaction(db):
                        n = self._process_source(db, library, settings, until)
                except (ProcessingError, FactorError, UnitError) as exc:
                    errors.append(str(exc))
                    continue
                for i, k in enumerate(n):
                    totals[i] += k
        result = ProcessResult(totals[0], totals[1], totals[2], totals[3], recalculated, tuple(errors))
        if errors:
            raise ProcessingError("; ".join(errors))
        return result

    def instant_means(self, meter_id: str, point: str, start: float, end: float,
                      rules: pp.InstantRules = pp.InstantRules(), interval_s: int | None = None) -> list[dict]:
        """Interval means of an instantaneous point (power, flow...) after range and MAD checks.

        Computed on demand from the raw readings (no emission depends on them, so nothing is stored).
        """
        interval_s = interval_s or self.settings.interval_s
        rows = self.db.execute("SELECT timestamp, value FROM readings WHERE meter_id = ? AND point = ? AND timestamp >= ?"
                               " AND timestamp < ? ORDER BY id", (meter_id, point, start, end)).fetchall()
        t = np.array([r[0] for r in rows], dtype=np.float64)
        v = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        kt, kv, status, _ = pp.clean_instantaneous(t, v, rules)
        starts, means, counts = pp.resample_mean(kt, kv, interval_s)
        return [{"start": int(a), "mean": float(m), "count": int(c)} for a, m, c in zip(starts, means, counts) if c]

    def _series_point(self, db: sqlite_utils.Database, s: SourceSettings) -> str | None:
        if s.point is not None:
            return s.point
        for q in DEFAULT_QUANTITIES[s.activity]:
            quantity = q.value
            points = [r[0] for r in db.execute("SELECT point FROM latest_readings WHERE meter_id = ? AND quantity = ?",
                                               (s.meter_id, quantity))]
            if len(points) > 1:
                raise ProcessingError(f"meter {s.meter_id}: several points measure {quantity} "
                                      f"({', '.join(sorted(points))}): set point = \"<one of them>\" for this "
                                      f"meter's {s.activity} source")
            if points:
                return points[0]
        others = [r[0] for r in db.execute("SELECT point FROM latest_readings WHERE meter_id = ? ORDER BY point",
                                           (s.meter_id,))]
        if others:
            # The meter is polled but none of its points fits the activity: a config error, say so.
            wanted = " or ".join(q.value for q in DEFAULT_QUANTITIES[s.activity])
            raise ProcessingError(f"meter {s.meter_id}: no point measures {wanted} for its {s.activity} source "
                                  f"(points: {', '.join(others)}): set point = \"<one of them>\" or fix the activity")
        return None

    def _process_source(self, db: sqlite_utils.Database, library: FactorLibrary, s: SourceSettings,
                        until: float | None) -> tuple[int, int, int, int]:
        point = self._series_point(db, s)
        if point is None:
            return (0, 0, 0, 0)
        cursor = db.execute("SELECT processed_reading_id FROM sources WHERE id = ?", (s.id,)).fetchone()[0]
        until_sql = "" if until is None else " AND timestamp <= ?"
        params: tuple = (s.meter_id, point, cursor) + (() if until is None else (until,))
        # Readings stamped before 2000 (an RTC that lost power) cannot be placed in time: they are
        # marked invalid below but still move the cursor.
        t_min, max_id = db.execute(
            "SELECT MIN(CASE WHEN timestamp >= 946684800 THEN timestamp END), MAX(id) FROM readings"
            " WHERE meter_id = ? AND point = ? AND id > ?" + until_sql, params).fetchone()
        if max_id is None:
            return (0, 0, 0, 0)
        if t_min is None:
            db.execute("UPDATE readings SET status = 'invalid', flags = ? WHERE meter_id = ? AND point = ? AND id > ?"
                       " AND id <= ?", (int(pp.Reason.CLOCK_JUMP), s.meter_id, point, cursor, int(max_id)))
            db.execute("UPDATE sources SET processed_reading_id = ? WHERE id = ?", (int(max_id), s.id))
            return (0, 0, 0, 0)
        interval = self.settings.interval_s
        context = max(self.context_s, (s.frozen_after_s or 0) + interval)
        window = math.floor(t_min / interval) * interval - context
        before = db.execute("SELECT MAX(timestamp) FROM readings WHERE meter_id = ? AND point = ? AND timestamp < ?"
                            " AND value IS NOT NULL AND timestamp >= 946684800", (s.meter_id, point, window)).fetchone()[0]
        lo = before if before is not None else window
        rows = db.execute(
            "SELECT id, timestamp, value, unit, status, flags FROM readings WHERE meter_id = ? AND point = ?"
            " AND timestamp >= ?" + until_sql + " ORDER BY id",
            (s.meter_id, point, lo) + (() if until is None else (until,))).fetchall()
        if not rows:
            return (0, 0, 0, 0)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        t = np.array([r[1] for r in rows], dtype=np.float64)
        v = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
        units = {r[3] for r in rows if r[2] is not None}
        for unit in units:
            try:
                mult = factor_to_canonical(s.activity, unit, s.steam_enthalpy_kj_per_kg)
            except UnitError as exc:
                raise ProcessingError(f"source {s.id} (meter {s.meter_id}, point {point}): {exc}; readings from "
                                      f"{_fmt_ts(float(t.min()))}: fix the profile's unit or the source's activity") from None
            mask = np.array([r[3] == unit for r in rows])
            v[mask] *= mult
        canonical_unit = get_activity(s.activity).unit
        clean = pp.clean_cumulative(t, v, s.rules(), now=time.time() + 60)
        first_kept = clean.t[0] if len(clean.t) else None
        if first_kept is None:
            replace_from = None
        elif before is None and db.execute("SELECT 1 FROM readings WHERE meter_id = ? AND point = ? AND timestamp < ?"
                                           " AND value IS NOT NULL AND timestamp >= 946684800 LIMIT 1",
                                           (s.meter_id, point, first_kept)).fetchone() is None:
            replace_from = math.floor(first_kept / interval) * interval      # the series starts here
        else:
            replace_from = math.ceil(first_kept / interval) * interval       # earlier intervals keep their value
        iv = pp.to_intervals(clean, interval, start=replace_from)

        # Reading flags: new readings are marked measured in one statement, then only the rows whose
        # status or flags differ (typically a handful) are updated one by one.
        db.execute("UPDATE readings SET status = 'measured', flags = 0 WHERE meter_id = ? AND point = ? AND id > ?"
                   " AND id <= ? AND timestamp >= ?" + until_sql,
                   (s.meter_id, point, cursor, int(max_id), lo) + (() if until is None else (until,)))
        db.execute("UPDATE readings SET status = 'invalid', flags = ? WHERE meter_id = ? AND point = ? AND id > ?"
                   " AND id <= ? AND timestamp < 946684800", (int(pp.Reason.CLOCK_JUMP), s.meter_id, point, cursor,
                                                               int(max_id)))
        old_status = np.array([r[4] if r[0] <= cursor else "measured" for r in rows], dtype=object)
        old_flags = np.array([r[5] if r[0] <= cursor else 0 for r in rows], dtype=np.int64)
        status_names = np.array(pp.STATUS_NAMES, dtype=object)[clean.status]
        diff = np.flatnonzero((old_status != status_names) | (old_flags != clean.reasons))
        if len(diff):
            db.conn.executemany("UPDATE readings SET status = ?, flags = ? WHERE id = ?",
                                [(status_names[i], int(clean.reasons[i]), int(ids[i])) for i in diff])

        n_emis = 0
        if replace_from is not None and len(iv):
            last_t = float(clean.t[-1])
            ends = iv.start + interval
            complete = (ends <= last_t).astype(int)
            status_txt = np.array(pp.STATUS_NAMES)[iv.status]
            db.execute("DELETE FROM intervals WHERE source_id = ? AND start_ts >= ?", (s.id, replace_from))
            db.conn.executemany(
                "INSERT INTO intervals (source_id, start_ts, end_ts, amount, unit, status, measured_fraction, flags,"
                " covered_s, complete) VALUES (?,?,?,?,?,?,?,?,?,?)",
                zip([s.id] * len(iv), iv.start.tolist(), ends.tolist(), iv.amount.tolist(), [canonical_unit] * len(iv),
                    status_txt.tolist(), iv.measured_fraction.tolist(), iv.reasons.tolist(), iv.covered_s.tolist(),
                    complete.tolist()))
            n_emis = self._write_interval_emissions(db, library, s.id, s.activity, iv.start, ends, iv.amount,
                                                    status_txt, iv.measured_fraction, replace_from)
        db.execute("UPDATE sources SET processed_reading_id = ? WHERE id = ?", (int(max_id), s.id))
        return (1, len(rows), len(iv), n_emis)

    def _write_interval_emissions(self, db: sqlite_utils.Database, library: FactorLibrary, source_id: str,
                                  activity_name: str, start: np.ndarray, end: np.ndarray, amount: np.ndarray,
                                  status: np.ndarray, measured_fraction: np.ndarray, replace_from: float) -> int:
        act = get_activity(activity_name)
        res = compute(activity_name, start, amount, library, self.settings, f"source {source_id}")
        db.execute("DELETE FROM emissions WHERE source_id = ? AND origin = 'interval' AND start_ts >= ?"
                   " AND superseded_at IS NULL", (source_id, replace_from))
        now = time.time()
        n = len(start)
        db.conn.executemany(
            "INSERT INTO emissions (source_id, activity, origin, start_ts, end_ts, amount, unit, energy_gj, co2_t, ch4_t,"
            " n2o_t, co2e_t, scope, iso_category, factor_id, factor_version, factor_refs, gwp, region, status,"
            " measured_fraction, calculated_at) VALUES (?,?,'interval',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            zip([source_id] * n, [activity_name] * n, np.asarray(start).tolist(), np.asarray(end).tolist(),
                np.asarray(amount).tolist(), [act.unit] * n, res.energy_gj.tolist(), res.co2_t.tolist(),
                res.ch4_t.tolist(), res.n2o_t.tolist(), res.co2e_t.tolist(), [act.scope] * n,
                [act.iso_category] * n, res.factor_id, res.factor_version, res.factor_refs,
                [self.settings.gwp] * n, [self.settings.region] * n, list(status), np.asarray(measured_fraction).tolist(),
                [now] * n))
        refresh_hourly(db, source_id, replace_from)
        return n

    def _fingerprint(self, library: FactorLibrary) -> str:
        s = self.settings
        return f"{library.fingerprint}|{s.region}|{s.include_ch4_n2o}|{s.gwp}"

    def _maybe_recalculate(self, db: sqlite_utils.Database, library: FactorLibrary) -> int:
        """Recalculate current emission rows when factors or settings changed; keep the old rows."""
        fp = self._fingerprint(library)
        row = db.execute("SELECT value FROM store_meta WHERE key = 'factor_fingerprint'").fetchone()
        if row is not None and row[0] == fp:
            return 0
        with write_transaction(db):
            self._record_factors(db, library)
            n = recalculate(db, library, self.settings) if row is not None else 0
            db.execute("INSERT INTO store_meta (key, value) VALUES ('factor_fingerprint', ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (fp,))
            self._save_settings(db)
        return n


def recalculate(db: sqlite_utils.Database, library: FactorLibrary, settings: EmissionSettings) -> int:
    """Recompute every current emission row; rows whose result changed are superseded, not deleted.

    :returns: the number of rows replaced.
    :raises FactorError: when the new factors leave a period uncovered (nothing is changed).
    """
    replaced = 0
    now = time.time()
    groups = db.execute("SELECT DISTINCT source_id, activity FROM emissions WHERE superseded_at IS NULL").fetchall()
    for source_id, activity_name in groups:
        rows = db.execute(
            "SELECT id, start_ts, amount, co2e_t, factor_refs, region, gwp FROM emissions"
            " WHERE superseded_at IS NULL AND source_id = ? AND activity = ? ORDER BY id",
            (source_id, activity_name)).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        start = np.array([r[1] for r in rows], dtype=np.float64)
        amount = np.array([r[2] for r in rows], dtype=np.float64)
        res = compute(activity_name, start, amount, library, settings, f"source {source_id}")
        old_co2e = np.array([r[3] for r in rows])
        changed = ((np.abs(res.co2e_t - old_co2e) > 1e-12)
                   | np.array([r[4] != ref for r, ref in zip(rows, res.factor_refs)])
                   | np.array([r[5] != settings.region or r[6] != settings.gwp for r in rows]))
        sel = np.flatnonzero(changed)
        if not len(sel):
            continue
        chosen = [int(i) for i in ids[sel]]
        db.conn.executemany("UPDATE emissions SET superseded_at = ? WHERE id = ?", [(now, i) for i in chosen])
        db.conn.executemany(
            "INSERT INTO emissions (source_id, activity, origin, start_ts, end_ts, amount, unit, energy_gj, co2_t, ch4_t,"
            " n2o_t, co2e_t, scope, iso_category, factor_id, factor_version, factor_refs, gwp, region, status,"
            " measured_fraction, calculated_at)"
            " SELECT source_id, activity, origin, start_ts, end_ts, amount, unit, ?, ?, ?, ?, ?, scope, iso_category,"
            " ?, ?, ?, ?, ?, status, measured_fraction, ? FROM emissions WHERE id = ?",
            [(float(res.energy_gj[k]), float(res.co2_t[k]), float(res.ch4_t[k]), float(res.n2o_t[k]),
              float(res.co2e_t[k]), res.factor_id[k], res.factor_version[k], res.factor_refs[k], settings.gwp,
              settings.region, now, int(ids[k])) for k in sel])
        replaced += len(sel)
        refresh_hourly(db, source_id)
    return replaced


def _fmt_ts(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _connect(path: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def open_store(path: Path | str, settings: EmissionSettings | None = None) -> Store:
    """Open (creating or migrating) the store at ``path``, in WAL mode.

    :raises SchemaError: when the file was written by a newer version of this software.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SchemaError(f"{path.parent}: cannot create the data directory ({exc.strerror}): "
                          f"choose a directory that can be created, e.g. --data-dir /var/lib/carbon-gateway") from exc
    store = Store(path=path, settings=settings or EmissionSettings())
    try:
        db = store.db
        if not migrations.applied(db):
            _refuse_foreign(db, path)      # before enable_wal, which would already change the file
        db.enable_wal()
        known = {m.name for m in migrations._migrations}
        # The lock is taken before looking at pending migrations, so the daemon and a CLI command
        # starting together cannot both apply the same migration.
        with store._lock, write_transaction(db):
            unknown = {m.name for m in migrations.applied(db)} - known
            if unknown:
                raise SchemaError(f"{path}: schema has migrations this version does not know "
                                  f"({', '.join(sorted(unknown))}): upgrade carbon-gateway, or restore a backup "
                                  f"made by this version")
            migrations.apply(db)
    except SchemaError:
        store.close()
        raise
    except sqlite3.DatabaseError as exc:
        store.close()
        raise SchemaError(f"{path}: not a usable SQLite database ({exc}): move the file away or restore a backup "
                          f"(see docs/operations.md)") from exc
    if settings is None:
        row = db.execute("SELECT value FROM store_meta WHERE key = 'emission_settings'").fetchone()
        if row is not None:
            saved = json.loads(row[0])
            saved["factor_files"] = tuple(saved.get("factor_files", ()))
            store.settings = EmissionSettings(**saved)
    return store


def _refuse_foreign(db: sqlite_utils.Database, path: Path) -> None:
    """A SQLite file with tables but none of our migrations belongs to another program: never migrate it."""
    foreign = sorted(t for t in db.table_names() if t != migrations.migrations_table)
    if foreign:
        raise SchemaError(f"{path}: a SQLite database of another program (tables {', '.join(foreign[:5])}), "
                          f"not a gateway store; nothing was changed: pass --data-dir pointing at the gateway's "
                          f"state directory, or move the file away")


def schema_version(db: sqlite_utils.Database) -> int:
    """Number of ``local_store`` migrations applied to this file."""
    return len(migrations.applied(db))


@dataclass(frozen=True)
class Instrument:
    """A contractual instrument for the market-based method (green certificate, PPA, green power).

    :param mwh: electricity the instrument covers over [start, end) (local dates, end exclusive).
    :param factor_t_per_mwh: its emission factor; 0 for renewable certificates and PPAs.
    """

    kind: str
    start: date
    end: date
    mwh: float
    factor_t_per_mwh: float = 0.0
    reference: str = ""
    source_id: str | None = None


def add_instruments(store: Store, instruments: Sequence[Instrument], tz: tzinfo | None = None) -> int:
    """Record contractual instruments in one transaction.

    :raises StoreError: for an unknown kind, a negative amount or an empty period (naming the reference).
    """
    tz = tz or datetime.now().astimezone().tzinfo
    rows = []
    for i in instruments:
        place = f"instrument {i.reference or i.kind} {i.start}..{i.end}"
        if i.kind not in ("certificate", "ppa", "green_power"):
            raise StoreError(f"{place}: kind = {i.kind!r}: use certificate, ppa or green_power")
        if not i.mwh >= 0 or not i.factor_t_per_mwh >= 0:
            raise StoreError(f"{place}: mwh and factor_t_per_mwh must be >= 0, got {i.mwh} and {i.factor_t_per_mwh}")
        if i.end <= i.start:
            raise StoreError(f"{place}: end must be after start (end is exclusive)")
        s = datetime(i.start.year, i.start.month, i.start.day, tzinfo=tz).timestamp()
        e = datetime(i.end.year, i.end.month, i.end.day, tzinfo=tz).timestamp()
        rows.append((i.kind, i.source_id, int(s), int(e), i.mwh, i.factor_t_per_mwh, i.reference))
    with store.db.atomic():
        store.db.conn.executemany("INSERT INTO instruments (kind, source_id, start_ts, end_ts, mwh, factor_t_per_mwh,"
                                  " reference) VALUES (?,?,?,?,?,?,?)", rows)
    return len(rows)
