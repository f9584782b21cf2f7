"""The store: the ``Store`` object that owns ``gateway.db`` (raw readings, sources, pruning) and
``open_store``.

The rest of the store lives beside it, one responsibility per module:

- ``local_store.schema``: every migration (the outbox's and sync state's too), foreign-file check;
- ``local_store.connections``: connections and the one write-transaction helper (``BEGIN IMMEDIATE``);
- ``local_store.pipeline``: sources and processing (raw readings -> intervals -> emissions);
- ``local_store.emission_rows``: the one place that writes emission rows and the hourly rollup.

The names callers used from here are re-exported.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, tzinfo
from pathlib import Path

import numpy as np
import sqlite_utils

from drivers.model import Reading
from local_store import pipeline
from local_store import preprocess as pp
from local_store import readings as rd
from local_store.connections import connect, write_transaction
from local_store.emission_rows import recalculate, refresh_hourly, write_activity_emissions
from local_store.emissions import EmissionArrays, EmissionSettings
from local_store.errors import SchemaError, StoreError, UnitError
from local_store.factors import FactorLibrary, default_factor_files, load_library
from local_store.pipeline import DEFAULT_QUANTITIES, ProcessResult, SourceSettings, save_settings
from local_store.schema import apply_migrations, migrations, refuse_foreign, schema_version
from local_store.units import activity as get_activity

__all__ = [
    "Store", "open_store", "ActivityData", "StoredReading", "PruneResult", "SourceSettings", "ProcessResult", "Instrument",
    "add_instruments", "write_transaction", "migrations", "schema_version", "recalculate", "refresh_hourly",
    "DEFAULT_QUANTITIES",
]


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
class PruneResult:
    """What one :meth:`Store.prune_synced_readings` call deleted."""

    deleted: int                  # raw readings deleted
    through_id: int               # the highest reading id deleted (0: none)
    until_ts: float | None        # the newest timestamp among them
    used_bytes_before: int
    used_bytes_after: int


class _ThreadConnection:
    """Holds one thread's connection in the thread's locals; its finalizer closes the connection."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db


@dataclass(frozen=True)
class ActivityData:
    """One imported activity data row (amount in the activity's canonical unit)."""

    source_id: str
    activity: str
    start_ts: float
    end_ts: float
    amount: float
    amount_original: float
    unit_original: str
    row: int                      # the line of the file


def _rules_of(settings_json: str) -> dict:
    """A source's settings as stored, without what is only shown (the description)."""
    settings = json.loads(settings_json)
    settings.pop("description", None)
    return settings


@dataclass
class Store:
    """The gateway's SQLite store. Create with :func:`open_store`."""

    path: Path
    settings: EmissionSettings = field(default_factory=EmissionSettings)
    context_s: float = 7200.0
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _conns: dict[threading.Thread, sqlite_utils.Database] = field(default_factory=dict, repr=False)
    _conns_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: serialises processing, source configuration and migrations within this process
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _library: FactorLibrary | None = field(default=None, repr=False)
    _series: rd.SeriesCache = field(default_factory=rd.SeriesCache, repr=False)
    _recent: rd.RecentPolls = field(default_factory=rd.RecentPolls, repr=False)

    # -- connections -----------------------------------------------------------------------------
    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection to the store file.

        Opened on first use in a thread and closed when that thread finishes (a reload's old sync
        thread, a finished request thread), so the store holds one connection per live thread that
        used it. Threads that end while something still holds their connection are swept whenever a new
        connection is opened.
        """
        holder = getattr(self._local, "holder", None)
        if holder is None:
            db = connect(self.path)
            thread = threading.current_thread()
            holder = _ThreadConnection(db)
            # The thread's locals are dropped when it finishes: then the holder goes, and the connection with it.
            weakref.finalize(holder, self._forget, thread, db)
            self._local.holder = holder
            with self._conns_lock:
                for done in [t for t in self._conns if not t.is_alive()]:
                    self._conns.pop(done).close()
                self._conns[thread] = db
        return holder.db

    def _forget(self, thread: threading.Thread, db: sqlite_utils.Database) -> None:
        with self._conns_lock:
            if self._conns.get(thread) is db:
                del self._conns[thread]
        db.close()

    def connection_count(self) -> int:
        """Connections this store holds open (one per live thread that used it, at most)."""
        with self._conns_lock:
            return len(self._conns)

    def release_thread(self) -> None:
        """Close the calling thread's connection now (a thread about to finish); the next use reopens one."""
        holder = getattr(self._local, "holder", None)
        if holder is None:
            return
        self._local.holder = None
        self._forget(threading.current_thread(), holder.db)

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        with self._conns_lock:
            for db in self._conns.values():
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

        Readings of one meter at one time are stored as one poll row (``local_store/readings.py``).
        Invalid readings are kept with their reason (their value is NULL).
        """
        polls = rd.group_polls(readings)
        if not polls:
            return 0
        db = self.db
        # Series ids made inside a caller's transaction are not remembered: it may still roll back. Nor are
        # the polls for sync, for the same reason.
        nested = db.conn.in_transaction
        cache = self._series if not nested else rd.SeriesCache()
        ids: list[int] = []
        kind = None if origin == "poll" else origin
        try:
            with write_transaction(db):
                count = rd.insert_polls(db, cache, polls, kind, ids)
        except BaseException:
            cache.forget()
            raise
        if nested:
            self._recent.clear()
        else:
            self._recent.add(ids, polls, kind)
        return count

    def latest_readings(self) -> list[StoredReading]:
        """The newest reading per (meter, point), by timestamp."""
        db = self.db
        polls = db.execute("SELECT p.id, p.series, p.timestamp, p.n, p.vals, p.bad, p.origin FROM series_latest s"
                           " JOIN polls p ON p.id = s.last_id ORDER BY p.id").fetchall()
        newest: dict[tuple[str, str], tuple] = {}
        for row in rd.expand(db, polls, with_status=True):
            key = (row[1], row[2])
            if key not in newest or row[3] >= newest[key][3]:
                newest[key] = row
        return [StoredReading(*newest[k]) for k in sorted(newest)]

    def readings_after(self, reading_id: int, limit: int) -> list[StoredReading]:
        """Stored raw readings with id > ``reading_id``, in id order, at most ``limit``."""
        return [StoredReading(*row) for row in rd.readings_after(self.db, int(reading_id), int(limit), with_status=True)]

    # -- for sync: what is stored and not yet batched ------------------------------------------------
    def last_reading_id(self) -> int:
        """The highest reading id stored (0: none). Ids only grow and are never reused."""
        row = self.db.execute("SELECT id + n - 1 FROM polls ORDER BY id DESC LIMIT 1").fetchone()
        return int(row[0]) if row else 0

    def first_timestamp_after(self, reading_id: int) -> float | None:
        """Timestamp of the first reading with an id above ``reading_id`` (None: there is none)."""
        db = self.db
        poll = rd.poll_of(db, int(reading_id) + 1)
        if poll is not None:
            return float(poll[2])
        row = db.execute("SELECT timestamp FROM polls WHERE id > ? ORDER BY id LIMIT 1", (int(reading_id),)).fetchone()
        return None if row is None else float(row[0])

    def sync_rows(self, reading_id: int, limit: int) -> list[tuple]:
        """Readings with id > ``reading_id`` in id order, at most ``limit``, as the wire's plain tuples
        ``(id, meter_id, point, timestamp, value, unit, quantity, quality, reason)`` (no per-reading objects).

        Read on the calling thread's connection, so inside the caller's transaction (the outbox seals a
        batch and moves its cursor in one).
        """
        held = self._recent.rows(int(reading_id), int(limit), self.last_reading_id())
        return held if held is not None else rd.readings_after(self.db, int(reading_id), int(limit))

    # -- disk budget ---------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes the store's data takes: pages in use in ``gateway.db`` plus the WAL frames not yet copied
        back into it.

        Free pages (left by deletes) are not counted: SQLite reuses them before it grows the file, so
        keeping this number under a budget keeps the file from growing past it (issue 5, "Disk budget").
        The WAL file's size is not counted either: SQLite reuses a checkpointed WAL from its start, so
        its size is only the high-water mark of some past burst (issue 16); a passive checkpoint (it
        never waits for readers) tells how many frames are still live.
        """
        db = self.db
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        in_use = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        live_frames = 0
        row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if row is not None and row[1] > 0:          # (busy, frames in the WAL, frames checkpointed); -1: no WAL
            live_frames = max(0, row[1] - row[2])
        return int(page_size * in_use + live_frames * (page_size + 24))    # a WAL frame: 24-byte header + page

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
        all_series = db.execute("SELECT id, meter_id FROM series").fetchall()
        newest_of: dict[str, float] = {}      # per meter: its live polls and its imports are one history
        for series, meter_id in all_series:
            newest = db.execute("SELECT timestamp FROM polls WHERE series = ? AND timestamp <= ? ORDER BY timestamp"
                                " DESC LIMIT 1", (series, plausible_until)).fetchone()
            if newest is not None:
                newest_of[meter_id] = max(newest_of.get(meter_id, newest[0]), newest[0])
        for series, meter_id in all_series:
            newest = newest_of.get(meter_id)
            if newest is None:
                continue
            cutoff = newest - keep_s if older_than_ts is None else min(newest - keep_s, older_than_ts)
            # The poll before the cutoff stays: the next run bridges from it.
            anchor = db.execute("SELECT id FROM polls WHERE series = ? AND timestamp < ? AND timestamp >= ?"
                                " ORDER BY timestamp DESC LIMIT 1", (series, cutoff, rd.PLAUSIBLE_FROM)).fetchone()
            max_id = min(synced_through, cursors.get(meter_id, synced_through))
            limits.append((series, cutoff, anchor[0] if anchor else 0, max_id))
        db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_polls (series INTEGER PRIMARY KEY, cutoff REAL,"
                   " anchor_id INTEGER, max_id INTEGER)")
        with write_transaction(db):
            db.execute("DELETE FROM temp.prune_polls")
            db.conn.executemany("INSERT INTO temp.prune_polls VALUES (?, ?, ?, ?)", limits)
        used = before
        after = 0      # everything below the last id deleted was examined: do not scan it again
        while used > target_bytes:
            with write_transaction(db):
                rows = db.execute(
                    "SELECT p.id, p.timestamp, p.n FROM polls p JOIN temp.prune_polls l ON l.series = p.series"
                    " WHERE p.id > ? AND p.id + p.n - 1 <= ? AND p.id + p.n - 1 <= l.max_id AND p.timestamp < l.cutoff"
                    " AND p.id != l.anchor_id ORDER BY p.id LIMIT ?", (after, int(synced_through), int(chunk))).fetchall()
                if not rows:
                    break
                db.conn.executemany("DELETE FROM polls WHERE id = ?", [(r[0],) for r in rows])
                db.conn.executemany("DELETE FROM reading_status WHERE id >= ? AND id < ?",
                                    [(r[0], r[0] + r[2]) for r in rows])
            deleted += sum(r[2] for r in rows)
            after = rows[-1][0]
            through_id = rows[-1][0] + rows[-1][2] - 1
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
                    # a new description is shown, not computed: it does not reprocess the source (issue 12)
                    restart = (old[0] != s.meter_id or old[1] != s.point or old[2] != s.activity
                               or _rules_of(old[3]) != _rules_of(blob))
                    db.execute("UPDATE sources SET kind = 'meter', activity = ?, meter_id = ?, point = ?, quantity = ?,"
                               " settings = ?, description = ?, enabled = 1, updated_at = ?"
                               + (", processed_reading_id = 0" if restart else "") + " WHERE id = ?",
                               (s.activity, s.meter_id, s.point, quantity, blob, s.description, now, s.id))
            db.execute("UPDATE sources SET enabled = 0 WHERE kind = 'meter' AND id NOT IN (SELECT value FROM json_each(?))",
                       (json.dumps(list(seen)),))
            save_settings(db, self.settings)

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
    # -- processing (local_store.pipeline) ---------------------------------------------------------
    def process(self, until: float | None = None) -> ProcessResult:
        """Preprocess new readings into interval consumption and compute their emissions.

        Each source is processed in its own transaction; a source that fails (unknown unit, missing
        factor) writes nothing and is reported in the raised :class:`ProcessingError` after the other
        sources were committed. When the factor files or emission settings changed since the last
        run, the affected emission rows are recalculated first (old rows kept as superseded).

        :param until: only use readings timestamped up to this epoch second (backfill, tests).
        """
        return pipeline.process(self, until)

    def transaction(self) -> contextlib.AbstractContextManager[sqlite_utils.Database]:
        """A write transaction on this thread's connection (``BEGIN IMMEDIATE``; nested: a savepoint)."""
        return write_transaction(self.db)

    def recalculate_if_changed(self) -> int:
        """Record the factors in use and, when factor files or emission settings changed since the last
        run, recalculate the current emission rows (old rows kept as superseded); returns rows replaced."""
        return pipeline.maybe_recalculate(self, self.db, self.library)

    def record_factors(self) -> None:
        """Keep every factor version of the library in the store, so emission rows stay traceable.

        :raises FactorError: a factor changed without a new version.
        """
        pipeline.record_factors(self.db, self.library)

    def process_source(self, settings: SourceSettings, until: float | None = None) -> ProcessResult:
        """Process one source now, inside the caller's transaction if there is one (an import does this
        so the readings and their emissions commit together)."""
        with self.transaction() as db:
            n = pipeline.process_source(self, db, self.library, settings, until)
        return ProcessResult(*n)

    # -- imports ----------------------------------------------------------------------------------
    def source_settings(self, source_id: str) -> SourceSettings | None:
        """The stored settings of a meter or imported source (None: no such source, or a manual one)."""
        row = self.db.execute("SELECT settings FROM sources WHERE id = ? AND kind IN ('meter', 'imported')",
                              (source_id,)).fetchone()
        return None if row is None else SourceSettings(**json.loads(row[0]))

    def add_imported_sources(self, sources: Iterable[SourceSettings], description: str) -> None:
        """Declare the sources of imported meter readings (enabled again if they were there)."""
        now = time.time()
        with self.transaction() as db:
            for s in sources:
                db.execute("INSERT INTO sources (id, kind, activity, meter_id, point, settings, description, enabled,"
                           " processed_reading_id, updated_at) VALUES (?, 'imported', ?, ?, ?, ?, ?, 1, 0, ?)"
                           " ON CONFLICT (id) DO UPDATE SET enabled = 1",
                           (s.id, s.activity, s.meter_id, s.point, json.dumps(asdict(s), sort_keys=True),
                            description, now))
                if s.rollover_at is not None:
                    # A file that declares the register's wrap value sets it; a changed value reprocesses the source.
                    db.execute("UPDATE sources SET settings = json_set(settings, '$.rollover_at', ?),"
                               " processed_reading_id = CASE WHEN json_extract(settings, '$.rollover_at') IS ? THEN"
                               " processed_reading_id ELSE 0 END WHERE id = ? AND kind = 'imported'",
                               (s.rollover_at, s.rollover_at, s.id))

    def add_activity_data(self, rows: Sequence[ActivityData], origin: str, description: str) -> None:
        """Store imported activity data rows and declare their sources (manual), in one transaction."""
        now = time.time()
        with self.transaction() as db:
            for r in rows:
                db.execute("INSERT INTO activity_data (source_id, activity, start_ts, end_ts, amount, unit,"
                           " amount_original, unit_original, origin, row) VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (r.source_id, r.activity, int(r.start_ts), int(r.end_ts), r.amount,
                            get_activity(r.activity).unit, r.amount_original, r.unit_original, origin, r.row))
                db.execute("INSERT INTO sources (id, kind, activity, description, enabled, updated_at)"
                           " VALUES (?, 'manual', ?, ?, 1, ?) ON CONFLICT (id) DO NOTHING",
                           (r.source_id, r.activity, description, now))

    def add_activity_emissions(self, source_ids: Sequence[str], activity: str, start: np.ndarray, end: np.ndarray,
                               amount: np.ndarray, result: EmissionArrays) -> int:
        """Store the computed emission rows of imported activity data; returns how many."""
        with self.transaction() as db:
            return write_activity_emissions(db, self.settings, source_ids, activity, start, end, amount, result)

    def activity_overlap(self, source_id: str, activity: str, start: float, end: float) -> tuple[str, int] | None:
        """(origin, row) of imported activity data of the source overlapping [start, end), if any."""
        row = self.db.execute("SELECT origin, row FROM activity_data WHERE source_id = ? AND activity = ?"
                              " AND start_ts < ? AND end_ts > ? LIMIT 1", (source_id, activity, end, start)).fetchone()
        return None if row is None else (row[0], row[1])

    def metered_overlap(self, source_id: str, activity: str, start: float, end: float) -> bool:
        """Whether current metered (interval) emissions of the source overlap [start, end)."""
        return self.db.execute("SELECT 1 FROM emissions WHERE source_id = ? AND origin = 'interval' AND activity = ?"
                               " AND superseded_at IS NULL AND start_ts < ? AND end_ts > ? LIMIT 1",
                               (source_id, activity, end, start)).fetchone() is not None

    def stored_reading(self, meter_id: str, point: str, timestamp: float) -> tuple[str, float | None, str] | None:
        """(origin, value, unit) of a stored reading of the series at that timestamp, if there is one."""
        rows = rd.series_rows(self.db, meter_id, point, "p.timestamp = ?", (float(timestamp),),
                              "p.id + ?idx, COALESCE(p.origin, 'poll'), json_extract(p.vals, '$[?idx]'),"
                              " (SELECT unit FROM series_points WHERE series = p.series AND idx = ?idx)")
        return None if not rows else (rows[0][1], rows[0][2], rows[0][3])

    def activity_stored(self, source_id: str, activity: str, start: float, end: float, amount_original: float,
                        unit_original: str) -> bool:
        """Whether exactly this activity data row (as written in its file) was imported before."""
        return self.db.execute("SELECT 1 FROM activity_data WHERE source_id = ? AND activity = ? AND start_ts = ?"
                               " AND end_ts = ? AND amount_original = ? AND unit_original = ? LIMIT 1",
                               (source_id, activity, int(start), int(end), amount_original,
                                unit_original)).fetchone() is not None

    def current_tco2e(self, source_ids: Sequence[str]) -> float:
        """Sum of the current (not superseded) emissions of these sources, tCO2e."""
        row = self.db.execute("SELECT COALESCE(SUM(co2e_t), 0) FROM emissions WHERE superseded_at IS NULL AND"
                              " source_id IN (SELECT value FROM json_each(?))", (json.dumps(list(source_ids)),))
        return float(row.fetchone()[0])

    def instant_means(self, meter_id: str, point: str, start: float, end: float,
                      rules: pp.InstantRules = pp.InstantRules(), interval_s: int | None = None) -> list[dict]:
        """Interval means of an instantaneous point (power, flow...) after range and MAD checks.

        Computed on demand from the raw readings (no emission depends on them, so nothing is stored).
        """
        interval_s = interval_s or self.settings.interval_s
        rows = rd.series_rows(self.db, meter_id, point, "p.timestamp >= ? AND p.timestamp < ?", (start, end))
        t = np.array([r[1] for r in rows], dtype=np.float64)
        v = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
        kt, kv, status, _ = pp.clean_instantaneous(t, v, rules)
        starts, means, counts = pp.resample_mean(kt, kv, interval_s)
        return [{"start": int(a), "mean": float(m), "count": int(c)} for a, m, c in zip(starts, means, counts) if c]



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
            refuse_foreign(db, path)      # before enable_wal, which would already change the file
            # A new store gets 1 KiB pages: each commit rewrites whole pages in the WAL, and the poll rows
            # of one second fill a fraction of one (docs/performance.md, "Flash"). Set before the first table.
            if not db.table_names():
                db.execute("PRAGMA page_size = 1024")
        db.enable_wal()
        # The lock is taken before looking at pending migrations, so the daemon and a CLI command
        # starting together cannot both apply the same migration.
        with store.lock, write_transaction(db):
            apply_migrations(db, path)
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
    with write_transaction(store.db):
        store.db.conn.executemany("INSERT INTO instruments (kind, source_id, start_ts, end_ts, mwh, factor_t_per_mwh,"
                                  " reference) VALUES (?,?,?,?,?,?,?)", rows)
    return len(rows)
