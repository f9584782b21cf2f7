"""Emission rows: the one place that writes the ``emissions`` table and its hourly rollup.

Interval rows (from metered sources, via the processing pipeline), activity rows (imported activity
data) and recalculated rows (a factor or setting changed) all come through here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import sqlite_utils

from local_store.emissions import EmissionArrays, EmissionSettings, compute
from local_store.factors import FactorLibrary
from local_store.units import activity as get_activity

HOURLY_SELECT = """
    SELECT source_id, activity, unit, scope, iso_category, factor_refs, (start_ts / 3600) * 3600 AS hour_ts,
           SUM(amount), SUM(energy_gj), SUM(co2_t), SUM(ch4_t), SUM(n2o_t), SUM(co2e_t),
           SUM(amount * measured_fraction), COUNT(*), SUM(status != 'measured'), SUM(status = 'invalid')
    FROM emissions WHERE origin = 'interval' AND superseded_at IS NULL"""
HOURLY_GROUP = " GROUP BY source_id, activity, factor_refs, hour_ts"


def refresh_hourly(db: sqlite_utils.Database, source_id: str, from_ts: float | None = None) -> None:
    """Recompute the hourly rollup of one source from ``from_ts`` (floored to the hour) on."""
    hour = 0 if from_ts is None else int(from_ts // 3600) * 3600
    db.execute("DELETE FROM emissions_hourly WHERE source_id = ? AND hour_ts >= ?", (source_id, hour))
    db.execute("INSERT INTO emissions_hourly" + HOURLY_SELECT + " AND source_id = ? AND start_ts >= ?" + HOURLY_GROUP,
               (source_id, hour))


_INSERT = ("INSERT INTO emissions (source_id, activity, origin, start_ts, end_ts, amount, unit, energy_gj, co2_t,"
           " ch4_t, n2o_t, co2e_t, scope, iso_category, factor_id, factor_version, factor_refs, gwp, region, status,"
           " measured_fraction, calculated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


def _insert(db: sqlite_utils.Database, settings: EmissionSettings, origin: str, source_ids: Sequence[str],
            activity_name: str, start: np.ndarray, end: np.ndarray, amount: np.ndarray, res: EmissionArrays,
            status: Sequence[str], measured_fraction: np.ndarray) -> int:
    """Insert computed emission rows of one activity; the one INSERT into ``emissions`` besides recalculation."""
    act = get_activity(activity_name)
    n = len(start)
    now = time.time()
    db.conn.executemany(_INSERT, zip(
        source_ids, [activity_name] * n, [origin] * n, np.asarray(start).astype(np.int64).tolist(),
        np.asarray(end).astype(np.int64).tolist(), np.asarray(amount, dtype=np.float64).tolist(), [act.unit] * n,
        res.energy_gj.tolist(), res.co2_t.tolist(), res.ch4_t.tolist(), res.n2o_t.tolist(), res.co2e_t.tolist(),
        [act.scope] * n, [act.iso_category] * n, res.factor_id, res.factor_version, res.factor_refs,
        [settings.gwp] * n, [settings.region] * n, list(status),
        np.asarray(measured_fraction, dtype=np.float64).tolist(), [now] * n))
    return n


def write_interval_emissions(db: sqlite_utils.Database, library: FactorLibrary, settings: EmissionSettings,
                             source_id: str, activity_name: str, start: np.ndarray, end: np.ndarray,
                             amount: np.ndarray, status: np.ndarray, measured_fraction: np.ndarray,
                             replace_from: float, closed: frozenset[int] = frozenset()) -> tuple[int, int]:
    """Replace a source's current interval emissions from ``replace_from`` on.

    A closed interval whose figure changes (late or backfilled readings) keeps its old row, marked
    superseded, so the history of a reported figure stays (issue 14); the still-open newest interval,
    which changes with every poll, and unchanged rows are simply replaced.

    :param closed: start times of the intervals that were complete before this run.

    :returns: (rows written, rows superseded).
    """
    res = compute(activity_name, start, amount, library, settings, f"source {source_id}")
    now = time.time()
    old = db.execute("SELECT id, start_ts, amount, co2e_t, factor_refs FROM emissions WHERE source_id = ?"
                     " AND origin = 'interval' AND start_ts >= ? AND superseded_at IS NULL ORDER BY start_ts",
                     (source_id, replace_from)).fetchall()
    new = {int(a): (float(m), float(c), r) for a, m, c, r in zip(np.asarray(start).tolist(), np.asarray(amount).tolist(),
                                                                 res.co2e_t.tolist(), res.factor_refs)}
    keep = [row[0] for row in old if row[1] in closed and (row[1] not in new or abs(new[row[1]][0] - row[2]) > 1e-9 or abs(new[row[1]][1] - row[3]) > 1e-12
            or new[row[1]][2] != row[4])]
    if keep:
        db.conn.executemany("UPDATE emissions SET superseded_at = ? WHERE id = ?", [(now, i) for i in keep])
    db.execute("DELETE FROM emissions WHERE source_id = ? AND origin = 'interval' AND start_ts >= ?"
               " AND superseded_at IS NULL", (source_id, replace_from))
    n = _insert(db, settings, "interval", [source_id] * len(start), activity_name, start, end, amount, res,
                list(status), measured_fraction)
    refresh_hourly(db, source_id, replace_from)
    return n, len(keep)


def write_activity_emissions(db: sqlite_utils.Database, settings: EmissionSettings, source_ids: Sequence[str],
                             activity_name: str, start: np.ndarray, end: np.ndarray, amount: np.ndarray,
                             res: EmissionArrays) -> int:
    """Add the emission rows of imported activity data (``origin = 'activity'``, measured), already computed."""
    n = len(start)
    return _insert(db, settings, "activity", source_ids, activity_name, start, end, amount, res,
                   ["measured"] * n, np.ones(n))


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
