"""Derived data for the platform (issue 14 part 8): emissions with their factor rows, intervals with flags,
imported activity data and contractual instruments, so the cloud can reproduce every figure.

``sync`` ships what :func:`derived_since` returns in batches of kind ``derived`` (docs/sync-protocol.md).
Emission rows are sent when calculated or superseded after the watermark, with a margin that re-sends
rows of a transaction that committed late (the receiver keeps one row per emission version, so a
repeat is harmless). Activity data and instruments are append-only and go by id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from local_store.db import Store

#: Rows calculated this long before the watermark are sent again: a processing transaction takes its
#: time before it commits, and its rows carry the time it started.
RESEND_MARGIN_S = 120.0

EMISSION_COLUMNS = ("source_id", "activity", "origin", "start_ts", "end_ts", "amount", "unit", "energy_gj", "co2_t",
                    "ch4_t", "n2o_t", "co2e_t", "scope", "iso_category", "factor_refs", "gwp", "region", "status",
                    "measured_fraction", "calculated_at", "superseded_at")
INTERVAL_COLUMNS = ("source_id", "start_ts", "end_ts", "amount", "unit", "status", "measured_fraction", "flags",
                    "covered_s", "complete")
FACTOR_COLUMNS = ("id", "version", "valid_from", "valid_to", "activity", "parameter", "value", "unit", "region",
                  "year", "source")
ACTIVITY_COLUMNS = ("id", "source_id", "activity", "start_ts", "end_ts", "amount", "unit", "amount_original",
                    "unit_original", "origin", "row")
INSTRUMENT_COLUMNS = ("id", "kind", "source_id", "start_ts", "end_ts", "mwh", "factor_t_per_mwh", "reference")


@dataclass(frozen=True)
class Cursor:
    """How far derived data has been batched."""

    emissions_ts: float = 0.0
    activity_id: int = 0
    instrument_id: int = 0


def derived_since(store: Store, cursor: Cursor, max_rows: int = 20_000) -> tuple[dict, Cursor]:
    """The derived rows changed after ``cursor`` (at most about ``max_rows`` emission rows), and the next cursor.

    :returns: ({"emissions": [...], "intervals": [...], "factors": [...], "activity_data": [...],
        "instruments": [...]} as lists of rows in the ``*_COLUMNS`` order, the cursor after them).
        All lists are empty when nothing changed.
    """
    db = store.db
    now = time.time()
    fresh = db.execute("SELECT 1 FROM emissions WHERE calculated_at > ? OR superseded_at > ? LIMIT 1",
                       (cursor.emissions_ts, cursor.emissions_ts)).fetchone() is not None
    # Only when something changed after the watermark are the rows of the margin before it sent again.
    since = (cursor.emissions_ts - RESEND_MARGIN_S if cursor.emissions_ts else -1.0) if fresh else now
    rows = db.execute(f"SELECT {', '.join(EMISSION_COLUMNS)}, MAX(calculated_at, COALESCE(superseded_at, 0)) AS changed"
                      " FROM emissions WHERE calculated_at > ? OR superseded_at > ? ORDER BY changed LIMIT ?",
                      (since, since, max_rows)).fetchall()
    emissions = [list(r[:-1]) for r in rows]
    # The watermark never passes "now" (rows of a transaction still open carry an earlier time).
    emissions_ts = min(max([r[-1] for r in rows], default=cursor.emissions_ts), now)
    if len(rows) < max_rows:
        emissions_ts = max(emissions_ts, cursor.emissions_ts)
    keys = {(r[0], r[3]) for r in rows if r[2] == "interval"}
    intervals = []
    for source_id, start_ts in sorted(keys):
        iv = db.execute(f"SELECT {', '.join(INTERVAL_COLUMNS)} FROM intervals WHERE source_id = ? AND start_ts = ?",
                        (source_id, start_ts)).fetchone()
        if iv is not None:
            intervals.append(list(iv))
    refs = sorted({ref for r in rows for ref in r[14].split(",") if ref})
    factors = []
    for ref in refs:
        head, _, version = ref.rpartition("@")
        fid, _, year = head.rpartition("/")
        if version.isdigit() and year.isdigit():
            f = db.execute(f"SELECT {', '.join(FACTOR_COLUMNS)} FROM factors WHERE id = ? AND year = ? AND version = ?"
                           " ORDER BY valid_from LIMIT 1", (fid, int(year), int(version))).fetchone()
            if f is not None:
                factors.append([ref, *f])
    activity = [list(r) for r in db.execute(f"SELECT {', '.join(ACTIVITY_COLUMNS)} FROM activity_data WHERE id > ?"
                                            " ORDER BY id", (cursor.activity_id,))]
    instruments = [list(r) for r in db.execute(f"SELECT {', '.join(INSTRUMENT_COLUMNS)} FROM instruments WHERE id > ?"
                                               " ORDER BY id", (cursor.instrument_id,))]
    payload = {"emissions": emissions, "intervals": intervals, "factors": factors, "activity_data": activity,
               "instruments": instruments}
    nxt = Cursor(emissions_ts, max([r[0] for r in activity], default=cursor.activity_id),
                 max([r[0] for r in instruments], default=cursor.instrument_id))
    return payload, nxt


def is_empty(payload: dict) -> bool:
    return not any(payload[k] for k in ("emissions", "activity_data", "instruments"))
