"""Emission reports by period, scope, ISO 14064-1 category and source; dashboard summaries.

Every figure comes from the current (not superseded) rows of the ``emissions`` table. A row that
straddles the report's edge counts with the share of its time inside the period, so yearly activity
data and the still-open 15-minute interval both add up correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from local_store.charts import bar_chart_svg
from local_store.errors import NoReportDataError, ReportError
from local_store.factors import Factor, applies_to, vintage_note
from local_store.readings import reading_counts

if TYPE_CHECKING:
    from local_store.db import Store
    from local_store.emissions import EmissionSettings

By = Literal["day", "month", "source", "scope"]
BY_CHOICES = ("day", "month", "source", "scope")
ISO_CATEGORY_NAMES = {
    1: "Category 1: direct GHG emissions and removals",
    2: "Category 2: indirect GHG emissions from imported energy",
}

_OVERLAP = ("(MIN(end_ts, :e) - MAX(start_ts, :s)) * 1.0 / MAX(end_ts - start_ts, 1)")


def local_tz() -> tzinfo:
    """The machine's local time zone (the gateway's site time)."""
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


def site_tz(settings: EmissionSettings) -> tzinfo:
    """The site's time zone (``[site] timezone``), which defines days and months for reports and imports;
    the machine's own when none is set."""
    return ZoneInfo(settings.timezone) if settings.timezone else local_tz()


def _epoch(d: date, tz: tzinfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def _r(x: float | None, digits: int = 6) -> float:
    """A figure for a report, rounded; never NaN or infinite (that would not be JSON, issue 14).

    :raises ReportError: for a non-finite figure (stored before the plausibility bounds existed).
    """
    v = float(x or 0.0)
    if not math.isfinite(v):
        raise ReportError(f"a stored figure is {v}: the store holds an implausible amount from before the "
                          "plausibility bounds; find its day with `carbon-gateway report --by day` and re-import corrected data")
    return round(v, digits)


_FIRST_DAY, _LAST_DAY = date(1970, 1, 2), date(9998, 12, 31)


def build_report(store: Store, start: date, end: date, by: By = "source", tz: tzinfo | None = None,
                 method: Literal["location", "market"] | None = None) -> dict:
    """Emissions from ``start`` (inclusive) to ``end`` (exclusive), local dates.

    :returns: a dict with ``total_tco2e`` (by ``method``, default the store's setting),
        ``location_based_tco2e``, ``market_based_tco2e``, ``by_scope``, ``by_iso_category``,
        ``by_source`` (consumption and unit per source), ``breakdown`` (rows per ``by``),
        ``factors`` (id, version, value, unit, source) and ``data_quality``.
    :raises ReportError: for an empty or reversed period, or a period without data (the message
        says which period the store does hold).
    """
    if by not in BY_CHOICES:
        raise ReportError(f"by = {by!r}: use one of {', '.join(BY_CHOICES)}")
    if end <= start:
        raise ReportError(f"period {start}..{end} is empty: --to must be after --from (the end date is exclusive)")
    # Readings are epoch seconds; dates at the ends of Python's calendar overflow in the UTC conversions.
    if start < _FIRST_DAY or end > _LAST_DAY:
        raise ReportError(f"period {start}..{end}: use dates from {_FIRST_DAY} to {_LAST_DAY}")
    tz = tz or site_tz(store.settings)
    s, e = _epoch(start, tz), _epoch(end, tz)
    offset = int(datetime(start.year, start.month, start.day, tzinfo=tz).utcoffset().total_seconds())  # type: ignore[union-attr]
    method = method or store.settings.method
    db = store.db
    p = {"s": s, "e": e, "off": offset}
    key = None if by in ("source", "scope") else ("%Y-%m-%d" if by == "day" else "%Y-%m")
    grouped = _grouped(db, p, key)
    if not grouped:
        raise NoReportDataError(*_no_data_message(store, start, end, tz))
    merged: dict[tuple, list] = {}
    by_key: dict[str, dict] = {}
    refs: set[str] = set()
    source_refs: dict[tuple[str, str], set[str]] = {}
    for src, act, unit, scope, cat, frefs, k, *nums in grouped:
        acc = merged.setdefault((src, act, unit, scope, cat), [0.0] * len(nums))
        source_refs.setdefault((src, act), set()).update(x for x in frefs.split(",") if x)
        for i, x in enumerate(nums):
            acc[i] += x or 0
        refs.update(x for x in frefs.split(",") if x)
        if k:
            row = by_key.setdefault(k, {"key": k, "tco2e": 0.0, "scope_1": 0.0, "scope_2": 0.0, "exported_tco2e": 0.0})
            if act.endswith("_export"):       # scopes are gross (GHG Protocol); the net total deducts exports
                row["exported_tco2e"] -= nums[5]
            else:
                row[f"scope_{scope}"] += nums[5]
            row["tco2e"] += nums[5]
    per_source = [(*key, *vals) for key, vals in sorted(merged.items())]

    by_source = []
    by_scope = {"scope_1": 0.0, "scope_2": 0.0}
    by_cat = {1: 0.0, 2: 0.0}
    by_gas = {"co2_t": 0.0, "ch4_t": 0.0, "n2o_t": 0.0}
    total = 0.0
    weighted_measured = weighted_all = 0.0
    intervals = estimated = invalid = 0
    electricity_mwh = electricity_loc_t = 0.0
    exported: dict[str, float] = {}
    for (src, act, unit, scope, cat, amount, gj, co2, ch4, n2o, co2e, amount_measured, count, n_est, n_inv) in per_source:
        share = (amount_measured / amount) if amount else 1.0
        by_source.append({"source": src, "activity": act, "consumption": _r(amount), "unit": unit,
                          "energy_gj": _r(gj), "co2_t": _r(co2), "ch4_t": _r(ch4, 9), "n2o_t": _r(n2o, 9),
                          "tco2e": _r(co2e), "scope": scope, "iso_category": cat,
                          "share_measured": _r(share, 4), "factor_refs": sorted(source_refs.get((src, act), ()))})
        if act.endswith("_export"):
            exported[act] = exported.get(act, 0.0) - co2e
        else:
            by_scope[f"scope_{scope}"] += co2e
            by_cat[cat] += co2e
        by_gas["co2_t"] += co2
        by_gas["ch4_t"] += ch4
        by_gas["n2o_t"] += n2o
        total += co2e
        weighted_all += abs(co2e)
        weighted_measured += abs(co2e) * share
        intervals += count
        estimated += n_est
        invalid += n_inv
        if act == "electricity":
            electricity_mwh += amount
            electricity_loc_t += co2e

    market_total, market = _market_based(store, s, e, electricity_mwh, electricity_loc_t, total, tz)
    if method == "market" and market_total is None:
        raise ReportError(f"market-based total for {start}..{end}: {market['note']}")
    conventions = _conventions(by_scope, by_cat, exported, total, electricity_loc_t, market, per_source)
    breakdown = _breakdown(by, by_key, by_source, by_scope)
    factors = _factors_used(db, p, refs)
    vintage_flags = _vintage_flags(db, p, factors)
    share_measured = weighted_measured / weighted_all if weighted_all else 1.0
    return {
        "period": {"from": start.isoformat(), "to": end.isoformat(), "end_exclusive": True,
                   "utc_offset": _offset_text(offset)},
        "generated_at": datetime.now(tz).isoformat(timespec="seconds"),
        "method": method,
        "region": store.settings.region,
        "gwp": store.settings.gwp,
        "total_tco2e": _r(market_total if method == "market" and market_total is not None else total),
        "location_based_tco2e": _r(total),
        "market_based_tco2e": None if market_total is None else _r(market_total),
        "market_based": market,
        "conventions": conventions,
        "by_scope": {k: _r(v) for k, v in by_scope.items()},
        "by_iso_category": {ISO_CATEGORY_NAMES[k]: _r(v) for k, v in by_cat.items()},
        "by_gas": {k: _r(v, 9) for k, v in by_gas.items()},
        "by_source": by_source,
        "by": by,
        "breakdown": breakdown,
        "factors": factors,
        "vintage_rule": store.settings.vintage_rule,
        "vintage_flags": vintage_flags,
        "data_quality": {
            "share_measured": _r(share_measured, 4),
            "share_estimated": _r(1.0 - share_measured, 4),
            "intervals": intervals,
            "intervals_estimated": estimated - invalid,
            "intervals_invalid": invalid,
            "readings": _reading_counts(db, s, e),
        },
    }


def _grouped(db, p: dict, key_fmt: str | None) -> list[tuple]:
    """Sums per (source, activity, unit, scope, category, factor set, breakdown key) over [s, e).

    Interval rows come from the hourly rollup when the period is made of whole hours (any time zone
    with a whole-hour offset); imported activity rows, split per day, are pro-rated by overlap.
    """
    def key_sql(col: str) -> str:
        return "''" if key_fmt is None else f"strftime('{key_fmt}', MAX({col}, :s) + :off, 'unixepoch')"

    sums = ("SUM(amount * f), SUM(energy_gj * f), SUM(co2_t * f), SUM(ch4_t * f), SUM(n2o_t * f), SUM(co2e_t * f),"
            " SUM(amount * f * measured_fraction), COUNT(*), SUM(status != 'measured'), SUM(status = 'invalid')")
    cols = "source_id, activity, unit, scope, iso_category, factor_refs"
    group = " GROUP BY source_id, activity, factor_refs, k"
    whole_hours = p["s"] % 3600 == 0 and p["e"] % 3600 == 0
    rows_where = "superseded_at IS NULL AND start_ts < :e AND end_ts > :s" + (" AND origin != 'interval'" if whole_hours else "")
    sql = (f"SELECT {cols}, {key_sql('start_ts')} AS k, {sums}"
           f" FROM (SELECT *, {_OVERLAP} AS f FROM emissions WHERE {rows_where}){group}")
    if whole_hours:
        sql += (f" UNION ALL SELECT {cols}, {key_sql('hour_ts')} AS k, SUM(amount), SUM(energy_gj), SUM(co2_t),"
                f" SUM(ch4_t), SUM(n2o_t), SUM(co2e_t), SUM(amount_measured), SUM(rows), SUM(rows_estimated),"
                f" SUM(rows_invalid) FROM emissions_hourly WHERE hour_ts >= :s AND hour_ts < :e{group}")
    return db.execute(sql, p).fetchall()


GBT_32150 = "GB/T 32150-2015 and the national enterprise GHG accounting guidelines"
GHG_PROTOCOL = "GHG Protocol Corporate Standard and Scope 2 Guidance; ISO 14064-1:2018"


def _conventions(by_scope: dict, by_cat: dict, exported: dict[str, float], net_total: float,
                 electricity_loc_t: float, market: dict, per_source: list[tuple]) -> dict:
    """The two accounting conventions side by side, each under the name of the standard it follows (issue 14).

    GB/T 32150 counts *net* purchased electricity and heat (purchased minus exported); the GHG Protocol and
    ISO 14064-1 count *gross* imported energy in Scope 2 / Category 2 and never deduct exports there, so the
    exports stand on their own lines.
    """
    def summed(activities: tuple[str, ...]) -> float:
        return sum(row[10] for row in per_source if row[1] in activities)

    elec_export = exported.get("electricity_export", 0.0)
    heat_export = exported.get("heat_export", 0.0)
    scope2 = by_scope["scope_2"]
    market_electricity = market.get("electricity_tco2e")
    return {
        "gb_t_32150": {
            "standard": GBT_32150,
            "basis": "net purchased electricity and heat: purchased minus exported",
            "direct_emissions_tco2e": _r(by_scope["scope_1"]),
            "net_purchased_electricity_tco2e": _r(summed(("electricity",)) - elec_export),
            "net_purchased_heat_tco2e": _r(summed(("heat", "steam")) - heat_export),
            "total_tco2e": _r(net_total),
        },
        "ghg_protocol_iso_14064_1": {
            "standard": GHG_PROTOCOL,
            "basis": "gross imported energy; exported energy is not deducted and is reported on its own lines",
            "scope_1_tco2e": _r(by_scope["scope_1"]),
            "scope_2_location_based_tco2e": _r(scope2),
            "scope_2_market_based_tco2e": None if market_electricity is None else
            _r(scope2 - electricity_loc_t + market_electricity),
            "iso_14064_1_category_1_tco2e": _r(by_cat[1]),
            "iso_14064_1_category_2_tco2e": _r(by_cat[2]),
            "exported_electricity_tco2e": _r(elec_export),
            "exported_heat_tco2e": _r(heat_export),
            "total_location_based_tco2e": _r(by_scope["scope_1"] + scope2),
        },
    }


def _offset_text(offset_s: int) -> str:
    sign = "+" if offset_s >= 0 else "-"
    h, m = divmod(abs(offset_s) // 60, 60)
    return f"{sign}{h:02d}:{m:02d}"


def _breakdown(by: str, by_key: dict[str, dict], by_source: list[dict], by_scope: dict) -> list[dict]:
    if by == "source":
        return [{"key": r["source"], "activity": r["activity"], "tco2e": r["tco2e"]} for r in by_source]
    if by == "scope":
        return [{"key": k, "tco2e": _r(v)} for k, v in by_scope.items()]
    return [{key: (_r(val) if isinstance(val, float) else val) for key, val in by_key[k].items()} for k in sorted(by_key)]


_FACTOR_COLS = ("id", "version", "activity", "parameter", "value", "unit", "region", "year", "valid_from",
                "valid_to", "source")


def stored_factor(db, ref: str) -> dict | None:
    """The factor row an emission row's reference ``id/year@version`` names (kept even after the file changed)."""
    head, _, version = ref.rpartition("@")
    fid, _, year = head.rpartition("/")
    if not (version.isdigit() and year.isdigit()):
        return None
    row = db.execute(f"SELECT {', '.join(_FACTOR_COLS)} FROM factors WHERE id = ? AND year = ? AND version = ?"
                     " ORDER BY valid_from LIMIT 1", (fid, int(year), int(version))).fetchone()
    return None if row is None else {"ref": ref, **dict(zip(_FACTOR_COLS, row))}


def _factors_used(db, p: dict, refs: set[str]) -> list[dict]:
    """Exactly the factor rows the period's emission rows name (issue 14: no factor that was not applied)."""
    return [f for f in (stored_factor(db, ref) for ref in sorted(refs)) if f is not None]


def _vintage_flags(db, p: dict, factors: list[dict]) -> list[dict]:
    """Figures computed with a factor whose validity does not cover their activity time: the vintage rule
    ``latest_published`` used an older vintage provisionally (issue 14)."""
    by_ref = {f["ref"]: f for f in factors}
    spans: dict[str, list[float]] = {}
    for refs, lo, hi in db.execute("SELECT factor_refs, MIN(MAX(start_ts, :s)), MAX(MIN(end_ts, :e)) FROM emissions"
                                   " WHERE superseded_at IS NULL AND start_ts < :e AND end_ts > :s"
                                   " GROUP BY factor_refs", p):
        for ref in refs.split(","):
            span = spans.setdefault(ref, [lo, hi])
            span[0], span[1] = min(span[0], lo), max(span[1], hi)
    flags = []
    for ref, (lo, hi) in sorted(spans.items()):
        f = by_ref.get(ref)
        if f is None:
            continue
        factor = Factor(id=f["id"], version=f["version"], activity=f["activity"], parameter=f["parameter"],
                        value=f["value"], unit=f["unit"], region=f["region"], year=f["year"],
                        valid_from=date.fromisoformat(f["valid_from"]),
                        valid_to=date.fromisoformat(f["valid_to"]) if f["valid_to"] else None, source=f["source"],
                        file="")
        note = vintage_note(factor, lo, hi)
        if note is not None:
            flags.append({"factor": ref, "vintage": f["year"], "valid": applies_to(factor),
                          "activity_from": datetime.fromtimestamp(lo, timezone.utc).isoformat(),
                          "activity_to": datetime.fromtimestamp(hi, timezone.utc).isoformat(), "note": note})
    return flags


def _reading_counts(db, s: float, e: float) -> dict[str, int]:
    """Readings in the period by preprocessing status (the store's sparse status, ``local_store/readings.py``)."""
    return reading_counts(db, s, e)


def _market_based(store: Store, s: float, e: float, electricity_mwh: float, electricity_loc_t: float,
                  location_total: float, tz: tzinfo) -> tuple[float | None, dict]:
    """Market-based electricity: instruments first (their own factor), the rest at the residual mix."""
    db = store.db
    rows = db.execute(
        f"SELECT kind, reference, mwh * {_OVERLAP} AS mwh_in, factor_t_per_mwh, start_ts, end_ts, mwh"
        f" FROM instruments WHERE start_ts < :e AND end_ts > :s ORDER BY start_ts, reference", {"s": s, "e": e}).fetchall()
    claimed = sum(r[2] for r in rows)
    covered = min(claimed, electricity_mwh)
    scale = covered / claimed if claimed else 0.0
    instrument_t = sum(r[2] * r[3] for r in rows) * scale
    residual = store.library.select("electricity", "residual_mix", store.settings.region, s,
                                    store.settings.vintage_rule)
    detail: dict = {"electricity_mwh": _r(electricity_mwh), "covered_by_instruments_mwh": _r(covered),
                    "instruments": [{"kind": r[0], "reference": r[1], "mwh_in_period": _r(r[2]),
                                     "factor_t_per_mwh": r[3], "tco2e_in_period": _r(r[2] * r[3] * scale),
                                     "start": datetime.fromtimestamp(r[4], tz).date().isoformat(),
                                     "end": datetime.fromtimestamp(r[5], tz).date().isoformat(), "mwh": _r(r[6])}
                                    for r in rows]}
    if residual is None:
        detail["note"] = (f"no residual-mix factor for region {store.settings.region!r} at the period start: add one "
                          f"(parameter = \"residual_mix\") to a custom factor file")
        return None, detail
    residual_t = (electricity_mwh - covered) * residual.value_si
    detail["residual_mwh"] = _r(electricity_mwh - covered)
    detail["residual_tco2e"] = _r(residual_t)
    detail["residual_mix_factor"] = {"ref": residual.ref, "id": residual.id, "version": residual.version,
                                     "vintage": residual.year, "value": residual.value, "unit": residual.unit,
                                     "valid": applies_to(residual), "source": residual.source}
    note = vintage_note(residual, s, e)
    if note is not None:
        detail["residual_mix_vintage_note"] = note
    detail["electricity_tco2e"] = _r(instrument_t + residual_t)
    return location_total - electricity_loc_t + instrument_t + residual_t, detail


def _no_data_message(store: Store, start: date, end: date, tz: tzinfo) -> tuple[str, tuple[date, date] | None]:
    lo, hi = store.db.execute("SELECT MIN(start_ts), MAX(end_ts) FROM emissions WHERE superseded_at IS NULL").fetchone()
    if lo is None:
        held = "the store has no emissions yet: run the gateway (it processes readings every minute), run " \
               "`carbon-gateway import` for activity data, or check --data-dir"
        span = None
    else:
        span = (datetime.fromtimestamp(lo, tz).date(), datetime.fromtimestamp(hi, tz).date())
        held = f"the store holds emissions from {span[0]} to {span[1]}: choose --from/--to inside that range"
    return f"no emissions data from {start} to {end} (end exclusive) in {store.path}: {held}", span


@dataclass(frozen=True)
class ScopeTotals:
    """tCO2e of one period."""

    scope_1_t: float
    scope_2_t: float

    @property
    def total_t(self) -> float:
        return self.scope_1_t + self.scope_2_t


@dataclass(frozen=True)
class EmissionsSummary:
    """Today's and this month's emissions (local time), for the dashboard."""

    today: ScopeTotals
    month: ScopeTotals
    day_start: datetime
    month_start: datetime
    last_calculated_at: float | None


def _totals(store: Store, s: float, e: float) -> ScopeTotals:
    d = {1: 0.0, 2: 0.0}
    for row in _grouped(store.db, {"s": s, "e": e, "off": 0}, None):
        d[row[3]] += row[12] or 0.0
    return ScopeTotals(_r(d[1]), _r(d[2]))


def emissions_summary(store: Store, now: datetime | None = None) -> EmissionsSummary:
    """tCO2e by scope for today and this month so far (never raises for an empty store)."""
    tz = site_tz(store.settings)
    now = (now or datetime.now(tz))
    now = now.astimezone(tz) if now.tzinfo else now.replace(tzinfo=tz)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_day = (day + timedelta(days=1, hours=2)).replace(hour=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    last = store.db.execute("SELECT MAX(calculated_at) FROM emissions").fetchone()[0]
    return EmissionsSummary(
        today=_totals(store, day.timestamp(), next_day.timestamp()),
        month=_totals(store, month.timestamp(), next_month.timestamp()),
        day_start=day, month_start=month, last_calculated_at=last,
    )


def consumption(store: Store, source_id: str, start: float, end: float, resolution: str = "hour",
                utc_offset_s: int | None = None) -> list[dict]:
    """Interval consumption of one source re-summed to ``15min``, ``hour``, ``day`` or ``month``."""
    import numpy as np

    from local_store.preprocess import aggregate

    rows = store.db.execute("SELECT start_ts, amount, unit FROM intervals WHERE source_id = ? AND start_ts >= ?"
                            " AND start_ts < ? ORDER BY start_ts", (source_id, start, end)).fetchall()
    if not rows:
        return []
    unit = rows[0][2]
    t = np.array([r[0] for r in rows], dtype=np.int64)
    a = np.array([r[1] for r in rows], dtype=np.float64)
    if resolution == "15min":
        tz = site_tz(store.settings)
        return [{"start": datetime.fromtimestamp(int(x), tz).isoformat(), "amount": float(y), "unit": unit}
                for x, y in zip(t, a)]
    if utc_offset_s is None:
        offset = datetime.fromtimestamp(start, site_tz(store.settings)).utcoffset()
        utc_offset_s = int(offset.total_seconds()) if offset else 0
    labels, sums = aggregate(t, a, resolution, utc_offset_s)
    return [{"start": str(lab), "amount": float(v), "unit": unit} for lab, v in zip(labels, sums)]


# -- rendering -----------------------------------------------------------------------------------

_CSV_COLUMNS = {
    "source": ["source", "activity", "consumption", "unit", "energy_gj", "co2_t", "ch4_t", "n2o_t", "tco2e",
               "scope", "iso_category", "share_measured"],
    "day": ["key", "tco2e", "scope_1", "scope_2", "exported_tco2e"],
    "month": ["key", "tco2e", "scope_1", "scope_2", "exported_tco2e"],
    "scope": ["key", "tco2e"],
}


def render_csv(report: dict) -> str:
    """The report's breakdown as CSV (one row per source, day, month or scope) plus a total row."""
    import csv
    import io

    by = report["by"]
    cols = _CSV_COLUMNS[by]
    rows = report["by_source"] if by == "source" else report["breakdown"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow([row.get(c, "") for c in cols])
    total = {"source": "TOTAL", "key": "TOTAL", "tco2e": report["total_tco2e"],
             "scope_1": report["by_scope"]["scope_1"], "scope_2": report["by_scope"]["scope_2"]}
    w.writerow([total.get(c, "") for c in cols])
    for label, value in convention_lines(report):
        w.writerow([{"source": label, "key": label, "tco2e": value}.get(c, "") for c in cols])
    return buf.getvalue()


def convention_lines(report: dict) -> list[tuple[str, float | None]]:
    """The two conventions as labelled lines (CSV rows, HTML table), each naming its standard."""
    g, p = report["conventions"]["gb_t_32150"], report["conventions"]["ghg_protocol_iso_14064_1"]
    return [
        ("GB/T 32150: direct emissions", g["direct_emissions_tco2e"]),
        ("GB/T 32150: net purchased electricity (purchased - exported)", g["net_purchased_electricity_tco2e"]),
        ("GB/T 32150: net purchased heat (purchased - exported)", g["net_purchased_heat_tco2e"]),
        ("GB/T 32150: total (net)", g["total_tco2e"]),
        ("GHG Protocol: Scope 1", p["scope_1_tco2e"]),
        ("GHG Protocol: Scope 2 location-based (gross imports)", p["scope_2_location_based_tco2e"]),
        ("GHG Protocol: Scope 2 market-based (gross imports)", p["scope_2_market_based_tco2e"]),
        ("ISO 14064-1: Category 1 direct", p["iso_14064_1_category_1_tco2e"]),
        ("ISO 14064-1: Category 2 imported energy (gross)", p["iso_14064_1_category_2_tco2e"]),
        ("GHG Protocol / ISO 14064-1: exported electricity (not deducted)", p["exported_electricity_tco2e"]),
        ("GHG Protocol / ISO 14064-1: exported heat (not deducted)", p["exported_heat_tco2e"]),
    ]


def render_html(report: dict) -> str:
    """A self-contained, printable HTML page with server-rendered SVG charts."""
    from html import escape

    colors = {"scope 1": "#c0504d", "scope 2": "#4f81bd", "tCO2e": "#4f81bd"}
    if report["by"] in ("day", "month"):
        rows = report["breakdown"]
        chart = bar_chart_svg([r["key"] for r in rows],
                              {"scope 1": [r["scope_1"] for r in rows], "scope 2": [r["scope_2"] for r in rows]},
                              colors, f"tCO2e by {report['by']}")
    else:
        chart = bar_chart_svg([r["source"] for r in report["by_source"]],
                              {"tCO2e": [r["tco2e"] for r in report["by_source"]]}, colors, "tCO2e by source")
    scope_chart = bar_chart_svg(["Scope 1", "Scope 2"], {"scope 1": [report["by_scope"]["scope_1"], 0.0],
                                                         "scope 2": [0.0, report["by_scope"]["scope_2"]]},
                                colors, "tCO2e by scope")

    def table(headers: list[str], rows: list[list]) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    src = table(["Source", "Activity", "Consumption", "Unit", "Energy (GJ)", "tCO2e", "Scope", "Measured share"],
                [[r["source"], r["activity"], r["consumption"], r["unit"], r["energy_gj"], r["tco2e"], r["scope"],
                  f"{r['share_measured']:.1%}"] for r in report["by_source"]])
    fac = table(["Factor", "Vintage", "Version", "Parameter", "Value", "Unit", "Valid for activity", "Source"],
                [[f["id"], f["year"], f["version"], f["parameter"], f["value"], f["unit"],
                  f"{f['valid_from']} – {f['valid_to'] or ''}", f["source"]] for f in report["factors"]])
    mb = report.get("market_based") or {}
    inst = table(["Instrument", "Kind", "Valid", "MWh", "MWh in period", "tCO2/MWh", "tCO2e"],
                 [[i["reference"], i["kind"], f"{i.get('start', '')} – {i.get('end', '')}", i.get("mwh", ""),
                   i["mwh_in_period"], i["factor_t_per_mwh"], i.get("tco2e_in_period", "")]
                  for i in mb.get("instruments", [])]) if mb.get("instruments") else "<p>No contractual instruments.</p>"
    rf = mb.get("residual_mix_factor")
    residual = (f"<p>Residual mix: {escape(str(mb.get('residual_mwh', '')))} MWh × {rf['value']} {escape(rf['unit'])} "
                f"({escape(rf['ref'])}, vintage {rf['vintage']}; {escape(rf['source'])}) = "
                f"{escape(str(mb.get('residual_tco2e', '')))} tCO2e</p>") if rf else (
                f"<p>{escape(mb.get('note', ''))}</p>" if mb.get("note") else "")
    flags = report.get("vintage_flags") or []
    vintage = ("<p class=\"flag\"><b>Provisional factor vintages</b> (vintage rule "
               f"{escape(str(report.get('vintage_rule')))}):</p><ul>"
               + "".join(f"<li>{escape(f['note'])}</li>" for f in flags) + "</ul>") if flags else ""
    cat = table(["ISO 14064-1 category", "tCO2e"], [[k, v] for k, v in report["by_iso_category"].items()])
    conv = table(["Figure (standard)", "tCO2e"], [[k, "n/a" if v is None else v] for k, v in convention_lines(report)])
    dq = report["data_quality"]
    market = report["market_based_tco2e"]
    p = report["period"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Emissions report {escape(p['from'])} to {escape(p['to'])}</title>
<style>
body {{ font-family: "Noto Sans CJK SC", "Noto Sans", Arial, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.85em; }}
th, td {{ border: 1px solid #bbb; padding: 4px 6px; text-align: left; vertical-align: top; }}
.kpi {{ display: flex; gap: 2em; flex-wrap: wrap; }} .kpi div {{ border: 1px solid #bbb; padding: 0.6em 1em; }}
.kpi b {{ display: block; font-size: 1.4em; }}
.chart {{ width: 100%; max-width: 480px; height: auto; }}
@media print {{ body {{ margin: 1cm; }} h2 {{ page-break-after: avoid; }} table, svg {{ page-break-inside: avoid; }} }}
</style></head><body>
<h1>Emissions report: {escape(p['from'])} to {escape(p['to'])} (end exclusive, UTC{escape(p['utc_offset'])})</h1>
<p>Method for the total: {escape(report['method'])}-based; grid region {escape(report['region'])}; GWP {escape(report['gwp'])}.
Generated {escape(report['generated_at'])}.</p>
<div class="kpi">
<div>Total<b>{report['total_tco2e']:.6g} tCO2e</b></div>
<div>Scope 1<b>{report['by_scope']['scope_1']:.6g}</b></div>
<div>Scope 2<b>{report['by_scope']['scope_2']:.6g}</b></div>
<div>Location-based<b>{report['location_based_tco2e']:.6g}</b></div>
<div>Market-based<b>{'n/a' if market is None else f'{market:.6g}'}</b></div>
<div>Measured share<b>{dq['share_measured']:.1%}</b></div>
</div>
<h2>Breakdown</h2>
{chart}
{scope_chart}
<h2>By source</h2>
{src}
<h2>Market-based electricity</h2>
<p>Electricity {escape(str(mb.get('electricity_mwh', '')))} MWh, of which {escape(str(mb.get('covered_by_instruments_mwh', '')))} MWh covered by contractual instruments.</p>
{inst}
{residual}
<h2>ISO 14064-1 categories (gross imported energy)</h2>
{cat}
<h2>Two accounting conventions</h2>
<p>{escape(GBT_32150)}: net purchased electricity and heat (exports deducted). {escape(GHG_PROTOCOL)}: gross
imported energy, exports on their own lines and never deducted.</p>
{conv}
<h2>Emission factors used</h2>
{fac}
{vintage}
<h2>Data quality</h2>
<p>{dq['intervals']} interval rows, {dq['intervals_estimated']} estimated, {dq['intervals_invalid']} invalid;
readings: {', '.join(f'{k} {v}' for k, v in dq['readings'].items())}.</p>
</body></html>
"""
