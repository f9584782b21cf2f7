"""Traceability: walk one figure back to its raw readings (``carbon-gateway trace``, issue 14).

raw readings (value, origin, preprocessing status and flags) -> interval (amount, status, flags,
measured share) -> factor row with its vintage and source -> tCO2e. Links are by key: an interval
emission row is the ``intervals`` row of the same source and start; an interval is computed from the
source's readings bracketing it (the last one at or before its start to the first one at or after its
end); an emission row's ``factor_refs`` name the exact factor rows (``id/year@version``). Superseded
rows of the same period are listed with when they were replaced; the audit log says who and why.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from local_store import preprocess as pp
from local_store.db import Store
from local_store.errors import ReportError
from local_store.factors import Factor, vintage_note
from local_store.pipeline import SourceSettings, series_point
from local_store.reports import stored_factor


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _factor(f: dict) -> Factor:
    from datetime import date

    return Factor(id=f["id"], version=f["version"], activity=f["activity"], parameter=f["parameter"],
                  value=f["value"], unit=f["unit"], region=f["region"], year=f["year"],
                  valid_from=date.fromisoformat(f["valid_from"]),
                  valid_to=date.fromisoformat(f["valid_to"]) if f["valid_to"] else None, source=f["source"], file="")


def trace(store: Store, source_id: str, ts: float) -> dict:
    """The chain behind the emission figure of ``source_id`` at epoch ``ts``.

    :raises ReportError: for an unknown source or a time without an emission row (naming what exists).
    """
    db = store.db
    src = db.execute("SELECT id, kind, activity, meter_id, point, settings FROM sources WHERE id = ?",
                     (source_id,)).fetchone()
    if src is None:
        known = [r[0] for r in db.execute("SELECT id FROM sources ORDER BY id LIMIT 20")]
        raise ReportError(f"no source {source_id!r}: use one of {', '.join(known) or '(none yet)'}")
    rows = db.execute(
        "SELECT id, origin, start_ts, end_ts, amount, unit, co2_t, ch4_t, n2o_t, co2e_t, status, measured_fraction,"
        " factor_refs, region, gwp, calculated_at, superseded_at FROM emissions WHERE source_id = ? AND start_ts <= ?"
        " AND end_ts > ? ORDER BY superseded_at IS NULL, superseded_at, id", (source_id, ts, ts)).fetchall()
    current = [r for r in rows if r[16] is None]
    if not current:
        lo, hi = db.execute("SELECT MIN(start_ts), MAX(end_ts) FROM emissions WHERE source_id = ? AND superseded_at"
                            " IS NULL", (source_id,)).fetchone()
        held = f"it has emissions from {_iso(lo)} to {_iso(hi)}" if lo is not None else "it has no emissions yet"
        raise ReportError(f"source {source_id}: no emission row at {_iso(ts)}: {held}; choose --at inside that range")
    keys = ("id", "origin", "start", "end", "amount", "unit", "co2_t", "ch4_t", "n2o_t", "co2e_t", "status",
            "measured_fraction", "factor_refs", "region", "gwp", "calculated_at", "superseded_at")

    def emission(r: tuple) -> dict:
        d = dict(zip(keys, r))
        d["start"], d["end"] = _iso(r[2]), _iso(r[3])
        d["calculated_at"], d["superseded_at"] = _iso(r[15]), _iso(r[16])
        return d

    row = current[0]
    factors = []
    for ref in row[12].split(","):
        f = stored_factor(db, ref)
        if f is not None:
            factors.append({**f, "vintage": f["year"], "vintage_note": vintage_note(_factor(f), row[2], row[3])})
    out: dict = {"source": {"id": src[0], "kind": src[1], "activity": src[2], "meter_id": src[3], "point": src[4]},
                 "at": _iso(ts), "emission": emission(row), "factors": factors,
                 "superseded": [emission(r) for r in rows if r[16] is not None]}
    if row[1] == "interval":
        iv = db.execute("SELECT start_ts, end_ts, amount, unit, status, measured_fraction, flags, covered_s, complete"
                        " FROM intervals WHERE source_id = ? AND start_ts = ?", (source_id, row[2])).fetchone()
        if iv is not None:
            out["interval"] = {"start": _iso(iv[0]), "end": _iso(iv[1]), "amount": iv[2], "unit": iv[3],
                               "status": iv[4], "measured_fraction": iv[5], "flags": pp.reason_names(iv[6]),
                               "covered_s": iv[7], "complete": bool(iv[8])}
        point = src[4] or series_point(db, SourceSettings(**json.loads(src[5])))
        out["readings"] = _bracketing_readings(store, src[3], point, row[2], row[3]) if point else []
    else:
        out["activity_data"] = [
            {"id": a[0], "start": _iso(a[1]), "end": _iso(a[2]), "amount": a[3], "unit": a[4],
             "amount_as_written": a[5], "unit_as_written": a[6], "origin": a[7], "line": a[8]}
            for a in db.execute("SELECT id, start_ts, end_ts, amount, unit, amount_original, unit_original, origin, row"
                                " FROM activity_data WHERE source_id = ? AND start_ts <= ? AND end_ts > ?",
                                (source_id, ts, ts))]
    return out


def _bracketing_readings(store: Store, meter_id: str, point: str, start: float, end: float) -> list[dict]:
    db = store.db
    lo = db.execute("SELECT MAX(timestamp) FROM readings WHERE meter_id = ? AND point = ? AND timestamp <= ?"
                    " AND value IS NOT NULL", (meter_id, point, start)).fetchone()[0]
    hi = db.execute("SELECT MIN(timestamp) FROM readings WHERE meter_id = ? AND point = ? AND timestamp >= ?"
                    " AND value IS NOT NULL", (meter_id, point, end)).fetchone()[0]
    rows = db.execute("SELECT id, timestamp, value, unit, quality, reason, origin, status, flags FROM readings"
                      " WHERE meter_id = ? AND point = ? AND timestamp >= ? AND timestamp <= ? ORDER BY timestamp, id",
                      (meter_id, point, start if lo is None else lo, end if hi is None else hi)).fetchall()
    return [{"id": r[0], "timestamp": _iso(r[1]), "value": r[2], "unit": r[3], "quality": r[4], "reason": r[5],
             "origin": r[6], "status": r[7], "flags": pp.reason_names(r[8] or 0)} for r in rows]


def render_text(t: dict) -> str:
    """The chain as text: readings -> flags -> interval -> factor with vintage -> tCO2e."""
    e = t["emission"]
    src = t["source"]
    lines = [f"source {src['id']} ({src['kind']}, {src['activity']}" +
             (f", meter {src['meter_id']} point {src['point'] or ''}" if src["meter_id"] else "") + f") at {t['at']}"]
    if "readings" in t:
        lines.append("raw readings:")
        for r in t["readings"]:
            flags = f" flags {','.join(r['flags'])}" if r["flags"] else ""
            lines.append(f"  #{r['id']} {r['timestamp']} {r['value']} {r['unit']} ({r['origin']}) -> "
                         f"{r['status'] or 'unprocessed'}{flags}")
    if "interval" in t:
        iv = t["interval"]
        flags = f", flags {','.join(iv['flags'])}" if iv["flags"] else ""
        lines.append(f"interval {iv['start']}..{iv['end']}: {iv['amount']:.6g} {iv['unit']}, {iv['status']}, "
                     f"measured share {iv['measured_fraction']:.1%}{flags}")
    for a in t.get("activity_data", []):
        lines.append(f"activity data {a['start']}..{a['end']}: {a['amount_as_written']:g} {a['unit_as_written']} "
                     f"= {a['amount']:.6g} {a['unit']} from {a['origin']} line {a['line']}")
    for f in t["factors"]:
        lines.append(f"factor {f['ref']}: {f['value']:g} {f['unit']} ({f['parameter']}, region {f['region']}, "
                     f"vintage {f['vintage']}, valid {f['valid_from']}..{f['valid_to'] or 'open'}); source: {f['source']}")
        if f["vintage_note"]:
            lines.append(f"  ! {f['vintage_note']}")
    lines.append(f"emission row #{e['id']} {e['start']}..{e['end']}: {e['amount']:.6g} {e['unit']} -> "
                 f"{e['co2e_t']:.6g} tCO2e ({e['status']}, calculated {e['calculated_at']})")
    for s in t["superseded"]:
        lines.append(f"  superseded row #{s['id']}: {s['co2e_t']:.6g} tCO2e with {s['factor_refs']}, replaced "
                     f"{s['superseded_at']} (who and why: `carbon-gateway audit list --action emissions`)")
    return "\n".join(lines) + "\n"
