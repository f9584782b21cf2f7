"""The processing pipeline: which meter point is which activity, and how new raw readings become
cleaned interval consumption and emission rows (``Store.process``).

Each source is processed in its own write transaction; emission rows are written by
``local_store.emission_rows``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import sqlite_utils

from drivers.model import Quantity
from local_store import audit
from local_store import preprocess as pp
from local_store import readings as rd
from local_store.connections import write_transaction
from local_store.emission_rows import recalculate, write_interval_emissions
from local_store.emissions import EmissionSettings
from local_store.errors import FactorError, ProcessingError, UnitError
from local_store.factors import FactorLibrary
from local_store.units import ACTIVITIES
from local_store.units import activity as get_activity
from local_store.units import factor_to_canonical



class ProcessingStore(Protocol):
    """What the pipeline needs of a store (``local_store.db.Store``, which calls into this module)."""

    @property
    def db(self) -> sqlite_utils.Database: ...
    @property
    def library(self) -> FactorLibrary: ...
    @property
    def settings(self) -> EmissionSettings: ...
    @property
    def context_s(self) -> float: ...
    @property
    def lock(self) -> threading.RLock: ...


#: Quantities that may carry an activity when a source names no point, in order of preference
#: (a steam meter may total heat in GJ or mass in t; heat is preferred because no enthalpy is assumed).
DEFAULT_QUANTITIES: dict[str, tuple[Quantity, ...]] = {name: a.quantities for name, a in ACTIVITIES.items()}


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
        # The activity's plausibility bound: a step no meter of the kind reaches is never consumption.
        return pp.CumulativeRules(rollover_at=self.rollover_at, max_gap_s=self.max_gap_s,
                                  long_gap_s=self.long_gap_s, frozen_after_s=self.frozen_after_s,
                                  max_rate_per_h=self.max_rate_per_h,
                                  bound_per_h=get_activity(self.activity).max_rate_per_h)



@dataclass(frozen=True)
class ProcessResult:
    """What one :meth:`Store.process` call did."""

    sources: int
    readings: int
    intervals: int
    emission_rows: int
    recalculated_rows: int = 0
    errors: tuple[str, ...] = ()



def save_settings(db: sqlite_utils.Database, settings: EmissionSettings) -> None:
    """Remember the emission settings in the store (``open_store`` without settings reads them back)."""
    db.execute("INSERT INTO store_meta (key, value) VALUES ('emission_settings', ?)"
               " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (json.dumps(asdict(settings)),))


def fingerprint(settings: EmissionSettings, library: FactorLibrary) -> str:
    """What the current emission rows depend on: the factor files and the emission settings."""
    s = settings
    return f"{library.fingerprint}|{s.region}|{s.include_ch4_n2o}|{s.gwp}|{s.vintage_rule}"


def record_factors(db: sqlite_utils.Database, library: FactorLibrary) -> None:
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


def process(store: ProcessingStore, until: float | None = None) -> ProcessResult:
    """Preprocess new readings into interval consumption and compute their emissions.

    Each source is processed in its own transaction; a source that fails (unknown unit, missing
    factor) writes nothing and is reported in the raised :class:`ProcessingError` after the other
    sources were committed. When the factor files or emission settings changed since the last
    run, the affected emission rows are recalculated first (old rows kept as superseded).

    :param until: only use readings timestamped up to this epoch second (backfill, tests).
    """
    db = store.db
    library = store.library
    with store.lock:
        recalculated = maybe_recalculate(store, db, library)
        totals = [0, 0, 0, 0]
        errors: list[str] = []
        rows = db.execute("SELECT id, settings FROM sources WHERE kind IN ('meter', 'imported') AND enabled = 1"
                          " ORDER BY id").fetchall()
        for source_id, blob in rows:
            settings = SourceSettings(**json.loads(blob))
            try:
                with write_transaction(db):
                    n = process_source(store, db, library, settings, until)
            except (ProcessingError, FactorError, UnitError) as exc:
                errors.append(str(exc))
                continue
            for i, k in enumerate(n):
                totals[i] += k
    result = ProcessResult(totals[0], totals[1], totals[2], totals[3], recalculated, tuple(errors))
    if errors:
        raise ProcessingError("; ".join(errors))
    return result


def series_point(db: sqlite_utils.Database, s: SourceSettings) -> str | None:
    if s.point is not None:
        return s.point
    for q in DEFAULT_QUANTITIES[s.activity]:
        quantity = q.value
        points = [r[0] for r in db.execute("SELECT DISTINCT sp.point FROM series_points sp JOIN series x ON"
                                           " x.id = sp.series WHERE x.meter_id = ? AND sp.quantity = ?",
                                           (s.meter_id, quantity))]
        if len(points) > 1:
            raise ProcessingError(f"meter {s.meter_id}: several points measure {quantity} "
                                  f"({', '.join(sorted(points))}): set point = \"<one of them>\" for this "
                                  f"meter's {s.activity} source")
        if points:
            return points[0]
    others = [r[0] for r in db.execute("SELECT DISTINCT sp.point FROM series_points sp JOIN series x ON"
                                       " x.id = sp.series WHERE x.meter_id = ? ORDER BY sp.point", (s.meter_id,))]
    if others:
        # The meter is polled but none of its points fits the activity: a config error, say so.
        wanted = " or ".join(q.value for q in DEFAULT_QUANTITIES[s.activity])
        raise ProcessingError(f"meter {s.meter_id}: no point measures {wanted} for its {s.activity} source "
                              f"(points: {', '.join(others)}): set point = \"<one of them>\" or fix the activity")
    return None


def process_source(store: ProcessingStore, db: sqlite_utils.Database, library: FactorLibrary, s: SourceSettings,
                    until: float | None) -> tuple[int, int, int, int]:
    point = series_point(db, s)
    if point is None:
        return (0, 0, 0, 0)
    cursor = db.execute("SELECT processed_reading_id FROM sources WHERE id = ?", (s.id,)).fetchone()[0]
    layouts = rd.meter_series(db, s.meter_id, point)
    until_sql = "" if until is None else " AND p.timestamp <= ?"
    until_p: tuple = () if until is None else (until,)
    value = "json_extract(p.vals, '$[?idx]')"
    # Readings stamped before 2000 (an RTC that lost power) cannot be placed in time: they are
    # marked invalid below but still move the cursor.
    new = rd.series_rows(db, s.meter_id, point, "p.id > ? - ?idx" + until_sql, (cursor, *until_p),
                         "p.id + ?idx, p.timestamp")
    if not new:
        return (0, 0, 0, 0)
    max_id = max(r[0] for r in new)
    stamps = [r[1] for r in new if r[1] >= rd.PLAUSIBLE_FROM]
    undated = [(int(pp.Reason.CLOCK_JUMP), r[0]) for r in new if r[1] < rd.PLAUSIBLE_FROM]
    if undated:
        db.conn.executemany("INSERT OR REPLACE INTO reading_status (id, status, flags) VALUES (?, 'invalid', ?)",
                            [(i, f) for f, i in undated])
    if not stamps:
        _processed(db, s, point, max_id)
        return (0, 0, 0, 0)
    t_min = min(stamps)
    interval = store.settings.interval_s
    context = max(store.context_s, (s.frozen_after_s or 0) + interval)
    window = math.floor(t_min / interval) * interval - context
    before = None
    for sid, idx in layouts:
        row = db.execute(f"SELECT p.timestamp FROM polls p WHERE p.series = ? AND p.timestamp < ? AND p.timestamp >= ?"
                         f" AND {value.replace('?idx', str(idx))} IS NOT NULL ORDER BY p.timestamp DESC LIMIT 1",
                         (sid, window, rd.PLAUSIBLE_FROM)).fetchone()
        if row is not None and (before is None or row[0] > before):
            before = row[0]
    lo = before if before is not None else window
    rows: list[tuple] = []
    for sid, idx in layouts:
        unit = db.execute("SELECT unit FROM series_points WHERE series = ? AND idx = ?", (sid, idx)).fetchone()[0]
        rows.extend((r[0], r[1], r[2], unit, r[3]) for r in db.execute(
            f"SELECT p.id + {idx}, p.timestamp, {value.replace('?idx', str(idx))}, COALESCE(p.origin, 'poll')"
            f" FROM polls p WHERE p.series = ? AND p.timestamp >= ?" + until_sql, (sid, lo, *until_p)))
    if len(layouts) > 1:
        rows.sort(key=lambda r: r[0])
    if not rows:
        _processed(db, s, point, max_id)
        return (0, 0, 0, 0)
    stored_status = rd.status_between(db, rows[0][0], rows[-1][0]) if len(layouts) == 1 else \
        rd.status_between(db, min(r[0] for r in rows), max(r[0] for r in rows))
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    t = np.array([r[1] for r in rows], dtype=np.float64)
    v = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
    units = {r[3] for r in rows if r[2] is not None}
    rules = s.rules()
    for unit in sorted(units):
        try:
            mult = factor_to_canonical(s.activity, unit, s.steam_enthalpy_kj_per_kg)
        except UnitError as exc:
            raise ProcessingError(f"source {s.id} (meter {s.meter_id}, point {point}): {exc}; readings from "
                                  f"{_fmt_ts(float(t.min()))}: fix the profile's unit or the source's activity") from None
        mask = np.array([r[3] == unit for r in rows])
        v[mask] *= mult
        if s.rollover_at:
            # rollover_at is the register's own wrap value (e.g. 65536 kWh); the rules see canonical values.
            rules = dataclasses.replace(rules, rollover_at=s.rollover_at * mult)
    canonical_unit = get_activity(s.activity).unit
    polled = np.array([r[4] == "poll" for r in rows], dtype=bool)     # imported: time order only
    clean = pp.clean_cumulative(t, v, rules, now=time.time() + 60, polled=polled)
    first_kept = clean.t[0] if len(clean.t) else None
    if first_kept is None:
        replace_from = None
    elif before is None and not any(db.execute(
            f"SELECT 1 FROM polls p WHERE p.series = ? AND p.timestamp < ? AND p.timestamp >= ?"
            f" AND {value.replace('?idx', str(idx))} IS NOT NULL LIMIT 1", (sid, first_kept, rd.PLAUSIBLE_FROM)).fetchone()
            for sid, idx in layouts):
        replace_from = math.floor(first_kept / interval) * interval      # the series starts here
    else:
        replace_from = math.ceil(first_kept / interval) * interval       # earlier intervals keep their value
    iv = pp.to_intervals(clean, interval, start=replace_from)

    # Reading status is sparse: only readings that are not plainly measured have a row; new readings
    # count as measured (processed_points), so only the few that differ are written.
    old = [stored_status.get(int(r[0]), ("measured", 0)) if r[0] <= cursor else ("measured", 0) for r in rows]
    old_status = np.array([o[0] for o in old], dtype=object)
    old_flags = np.array([o[1] for o in old], dtype=np.int64)
    status_names = np.array(pp.STATUS_NAMES, dtype=object)[clean.status]
    diff = np.flatnonzero((old_status != status_names) | (old_flags != clean.reasons))
    plain = [(int(ids[i]),) for i in diff if status_names[i] == "measured" and not clean.reasons[i]]
    if plain:
        db.conn.executemany("DELETE FROM reading_status WHERE id = ?", plain)
    flagged = [(int(ids[i]), status_names[i], int(clean.reasons[i])) for i in diff
               if status_names[i] != "measured" or clean.reasons[i]]
    if flagged:
        db.conn.executemany("INSERT OR REPLACE INTO reading_status (id, status, flags) VALUES (?, ?, ?)", flagged)
    _processed(db, s, point, max_id)

    n_emis = 0
    if replace_from is not None and len(iv):
        last_t = float(clean.t[-1])
        ends = iv.start + interval
        complete = (ends <= last_t).astype(int)
        status_txt = np.array(pp.STATUS_NAMES)[iv.status]
        closed = frozenset(r[0] for r in db.execute("SELECT start_ts FROM intervals WHERE source_id = ? AND start_ts >= ?"
                                                    " AND complete = 1", (s.id, replace_from)))
        db.execute("DELETE FROM intervals WHERE source_id = ? AND start_ts >= ?", (s.id, replace_from))
        db.conn.executemany(
            "INSERT INTO intervals (source_id, start_ts, end_ts, amount, unit, status, measured_fraction, flags,"
            " covered_s, complete) VALUES (?,?,?,?,?,?,?,?,?,?)",
            zip([s.id] * len(iv), iv.start.tolist(), ends.tolist(), iv.amount.tolist(), [canonical_unit] * len(iv),
                status_txt.tolist(), iv.measured_fraction.tolist(), iv.reasons.tolist(), iv.covered_s.tolist(),
                complete.tolist()))
        n_emis, superseded = write_interval_emissions(db, library, store.settings, s.id, s.activity, iv.start, ends,
                                                      iv.amount, status_txt, iv.measured_fraction, replace_from,
                                                      closed)
        if superseded:
            audit.record(db, "gateway", "emissions.supersede", f"source {s.id}", {
                "why": "readings arrived for closed intervals (late data or a backfill); the intervals were "
                       "reprocessed", "from": _fmt_ts(replace_from), "rows_superseded": superseded,
                "superseded_at": db.execute("SELECT MAX(superseded_at) FROM emissions WHERE source_id = ?",
                                            (s.id,)).fetchone()[0]})
    return (1, len(rows), len(iv), n_emis)


def _processed(db: sqlite_utils.Database, s: SourceSettings, point: str, max_id: int) -> None:
    """Move the source's cursor, and mark the point's readings up to ``max_id`` as processed."""
    db.execute("UPDATE sources SET processed_reading_id = ? WHERE id = ?", (int(max_id), s.id))
    db.execute("INSERT INTO processed_points (meter_id, point, through_id) VALUES (?, ?, ?) ON CONFLICT (meter_id,"
               " point) DO UPDATE SET through_id = MAX(through_id, excluded.through_id)", (s.meter_id, point, int(max_id)))


def maybe_recalculate(store: ProcessingStore, db: sqlite_utils.Database, library: FactorLibrary) -> int:
    """Recalculate current emission rows when factors or settings changed; keep the old rows."""
    fp = fingerprint(store.settings, library)
    row = db.execute("SELECT value FROM store_meta WHERE key = 'factor_fingerprint'").fetchone()
    if row is not None and row[0] == fp:
        return 0
    with write_transaction(db):
        record_factors(db, library)
        n = recalculate(db, library, store.settings) if row is not None else 0
        db.execute("INSERT INTO store_meta (key, value) VALUES ('factor_fingerprint', ?)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (fp,))
        save_settings(db, store.settings)
        if n:
            s = store.settings
            audit.record(db, "gateway", "emissions.recalculate", "all sources", {
                "why": "the factor library or the emission settings changed", "rows_superseded": n,
                "factor_files": list(library.files), "region": s.region, "gwp": s.gwp,
                "include_ch4_n2o": s.include_ch4_n2o, "vintage_rule": s.vintage_rule,
                "superseded_at": db.execute("SELECT MAX(superseded_at) FROM emissions").fetchone()[0]})
    return n


def _fmt_ts(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
