"""CSV import of activity data and of meter readings, all or nothing (docs/import.md).

Every row is checked first and every problem is reported with its line number; only a file without
errors is written, in one transaction together with its emissions.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path

import numpy as np

from drivers.errors import not_utf8
from drivers.model import Quantity, Reading
from local_store.db import ActivityData, SourceSettings, Store
from local_store.emissions import compute
from local_store.errors import DataImportError, FactorError, UnitError
from local_store.reports import site_tz
from local_store.units import ACTIVITIES, MAX_REGISTER_VALUE, factor_to_canonical
from local_store.units import builtin_activities
from local_store.units import activity as get_activity

ACTIVITY_HEADER = ["source", "activity", "start", "end", "amount", "unit"]
READINGS_HEADER = ["source", "timestamp", "register", "value", "unit"]
INSTRUMENTS_HEADER = ["instrument", "kind", "start", "end", "amount", "unit", "emission_factor"]
INSTRUMENT_KINDS = ("certificate", "green_power", "ppa")
_INSTRUMENT_UNITS = {"MWh": 1.0, "kWh": 1e-3}
#: No electricity is generated at more than this (lignite units emit about 1.2 tCO2/MWh).
MAX_INSTRUMENT_FACTOR_T_PER_MWH = 2.0

#: Cumulative registers a readings file may carry, and the activity each measures.
REGISTER_ACTIVITY = {
    Quantity.ENERGY_IMPORT.value: "electricity",
    Quantity.ENERGY_EXPORT.value: "electricity_export",
    Quantity.GAS_VOLUME.value: "natural_gas",
    Quantity.HEAT_ENERGY.value: "heat",
    Quantity.STEAM_MASS.value: "steam",
}


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote."""

    path: str
    kind: str              # "activity", "readings" or "instruments"
    rows: int
    sources: tuple[str, ...]
    emission_rows: int
    tco2e: float
    repeated: int = 0          # exact repeats of a row of the same file, skipped
    already_stored: int = 0    # rows identical to data stored before (a re-import), skipped

    def summary(self) -> str:
        what = {"activity": "activity rows", "readings": "meter readings", "instruments": "instruments"}[self.kind]
        skipped = []
        if self.repeated:
            skipped.append(f"{self.repeated} repeated {'row' if self.repeated == 1 else 'rows'} of the file")
        if self.already_stored:
            skipped.append(f"{self.already_stored} already stored")
        note = f" (skipped: {', '.join(skipped)})" if skipped else ""
        if not self.rows:
            return (f"{self.path}: nothing to import, every row is already stored{note}: "
                    f"the store was not changed")
        if self.kind == "instruments":
            return (f"{self.path}: imported {self.rows} instruments ({', '.join(self.sources)}){note}; "
                    f"market-based reports count them")
        return (f"{self.path}: imported {self.rows} {what} for {', '.join(self.sources)}; "
                f"{self.emission_rows} emission rows, {self.tco2e:.6g} tCO2e{note}")


def _period(start_s: str, end_s: str, tz: tzinfo, problems: list[str]) -> tuple[float | None, float | None]:
    """A row's start and exclusive end; each that cannot be read is None, with its problem appended."""
    start = end = None
    try:
        start = _parse_when(start_s, tz, need_offset=False)
    except ValueError as exc:
        problems.append(f"start = {start_s!r}: {exc}; use a date like 2025-01-01")
    try:
        end = _parse_when(end_s, tz, need_offset=False)
    except ValueError as exc:
        problems.append(f"end = {end_s!r}: {exc}; use a date like 2026-01-01")
    if start is not None and end is not None and end <= start:
        problems.append(f"end {end_s} is not after start {start_s}: the end is exclusive, "
                        f"e.g. 2025-01-01,2026-01-01 is the year 2025")
    return start, end


def _parse_when(text: str, tz: tzinfo, need_offset: bool) -> float:
    text = text.strip()
    if len(text) == 10:
        if need_offset:
            raise ValueError("needs a time and a UTC offset, like 2026-01-05T08:00:00+08:00")
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        if need_offset:
            raise ValueError("has no UTC offset: write it like 2026-01-05T08:00:00+08:00")
        dt = dt.replace(tzinfo=tz)
    return dt.timestamp()


@dataclass(frozen=True)
class _Row:
    """One CSV record and the line of the file it starts on (a quoted field may hold line breaks)."""

    line: int
    fields: list[str]


def _rows(path: Path, text: str) -> list[_Row]:
    """Parse the whole text with the csv module, so a quoted field with a line break stays one field and
    every later row keeps its true line number (splitting lines first broke both).

    :raises DataImportError: a record the csv module cannot read (e.g. a field over its size limit).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[_Row] = []
    line = 1
    try:
        for fields in reader:
            rows.append(_Row(line, fields))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataImportError(str(path), [f"line {line}: cannot read the CSV ({exc}): check the quotes on this "
                                          "line; nothing was imported"]) from None
    return rows


def _records(rows: list[_Row], header: list[str], errors: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line, stripped fields) of each data row with the header's number of fields; blank rows are skipped and
    a wrong field count is added to ``errors``."""
    for row in rows:
        if not any(c.strip() for c in row.fields):
            continue
        if len(row.fields) != len(header):
            spans = ('; a quoted field runs on past the end of the line: check that every opening " is closed'
                     if any("\n" in c for c in row.fields) else "")
            errors.append(f"line {row.line}: {len(row.fields)} fields, expected {len(header)} ({','.join(header)})"
                          f"{spans}")
            continue
        yield row.line, [c.strip() for c in row.fields]


def _at(line: int, source: str, period: str) -> str:
    """Where a row's problem is: its line, source and period, as the issue asks every message to say."""
    return f"line {line} ({source or 'no source'}, {period})"


def _number(text: str) -> float:
    x = float(text.strip())
    if not math.isfinite(x):
        raise ValueError("not a finite number")
    return x


def import_csv(store: Store, path: Path, tz: tzinfo | None = None) -> ImportResult:
    """Import ``path``; the header decides whether it holds activity data or meter readings.

    :param tz: time zone for dates without an offset in activity files (default: local).
    :raises DataImportError: listing every bad line; nothing was written.
    """
    path = Path(path)
    tz = tz or site_tz(store.settings)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataImportError(str(path), [f"cannot read the file ({exc.strerror}): check the path"]) from None
    except UnicodeDecodeError as exc:
        raise DataImportError(str(path), [f"{not_utf8(exc)}: save "
                                          "it as UTF-8 CSV (Excel: \"CSV UTF-8\"; not UTF-16 or \"Unicode text\")"]
                              ) from None
    rows = _rows(path, text)
    if not rows:
        raise DataImportError(str(path), ["line 1: the file is empty: the first line must be a header"])
    header = [h.strip() for h in rows[0].fields]
    if header == ACTIVITY_HEADER:
        return _import_activity(store, path, rows[1:], tz)
    if header in (READINGS_HEADER, READINGS_HEADER + ["rollover_at"]):
        return _import_readings(store, path, rows[1:], header)
    if header == INSTRUMENTS_HEADER:
        return _import_instruments(store, path, rows[1:], tz)
    raise DataImportError(str(path), [
        f"line 1: header {','.join(header)!r} is not recognised: use {','.join(ACTIVITY_HEADER)!r} for activity "
        f"data, {','.join(READINGS_HEADER)!r} for meter readings or {','.join(INSTRUMENTS_HEADER)!r} for "
        f"contractual instruments (green certificates, green power, PPAs)"])


@dataclass(frozen=True)
class _ActivityRow:
    line: int
    source: str
    activity: str
    start: float
    end: float
    amount: float          # canonical unit
    amount_original: float
    unit_original: str
    period: str            # start..end as written, for messages


def _import_activity(store: Store, path: Path, rows: list[_Row], tz: tzinfo) -> ImportResult:
    try:
        store.library      # loads the factor files, which may declare activities ([[activities]])
    except FactorError as exc:
        raise DataImportError(str(path), [str(exc)]) from None
    errors: list[str] = []
    good: list[_ActivityRow] = []
    for n, fields in _records(rows, ACTIVITY_HEADER, errors):
        source, act, start_s, end_s, amount_s, unit = fields
        problems = []
        if not source:
            problems.append("source is empty: name the meter or installation, e.g. boiler-1")
        if act not in ACTIVITIES:
            problems.append(f"activity = {act!r}: use one of {', '.join(builtin_activities())}")
        start, end = _period(start_s, end_s, tz, problems)
        try:
            amount = _number(amount_s)
            if amount < 0:
                problems.append(f"amount = {amount_s!r}: must be >= 0 (report exports as electricity_export or heat_export)")
        except ValueError:
            problems.append(f"amount = {amount_s!r}: not a number; write it like 250000 or 1234.5")
            amount = None
        mult = None
        if act in ACTIVITIES:
            try:
                mult = factor_to_canonical(act, unit)
            except UnitError as exc:
                problems.append(str(exc))
        if problems:
            errors.extend(f"{_at(n, source, f'{start_s}..{end_s}')}: {p}" for p in problems)
            continue
        assert start is not None and end is not None and amount is not None and mult is not None
        row = _ActivityRow(n, source, act, start, end, amount * mult, amount, unit, f"{start_s}..{end_s}")
        bound = ACTIVITIES[act].max_rate_per_h * (end - start) / 3600.0
        if row.amount > bound:
            errors.append(f"{_at(n, source, row.period)}: amount = {amount_s!r} {unit} is more than the "
                          f"{ACTIVITIES[act].max_rate_per_h:g} {ACTIVITIES[act].unit} per hour no {act} installation "
                          f"exceeds ({bound:.6g} {ACTIVITIES[act].unit} over the period): check the amount and the unit")
            continue
        good.append(row)

    # Exact repeats (in the file, or identical to a row imported before: a re-import) are skipped and
    # counted; everything else that overlaps would count twice and is refused below.
    repeated = already = 0
    fresh: list[_ActivityRow] = []
    keys: set[tuple] = set()
    for r in good:
        key = (r.source, r.activity, int(r.start), int(r.end), r.amount_original, r.unit_original)
        if key in keys:
            repeated += 1
        elif store.activity_stored(*key):
            already += 1
        else:
            fresh.append(r)
        keys.add(key)
    if not errors and good and not fresh:
        return ImportResult(str(path), "activity", 0, tuple(sorted({r.source for r in good})), 0, 0.0,
                            repeated=repeated, already_stored=already)
    good = fresh

    # Overlaps with data already imported, and between rows of this file, would count twice.
    seen: list[_ActivityRow] = []
    for r in good:
        clash = store.activity_overlap(r.source, r.activity, r.start, r.end)
        if clash:
            errors.append(f"line {r.line}: {r.source} {r.activity} {_day(r.start, tz)}..{_day(r.end, tz)} overlaps data "
                          f"already imported from {clash[0]} line {clash[1]}: remove the row or the earlier import")
        metered = store.metered_overlap(r.source, r.activity, r.start, r.end)
        if clash is None and metered:
            errors.append(f"line {r.line}: {r.source} {r.activity} {_day(r.start, tz)}..{_day(r.end, tz)} overlaps "
                          f"metered data of the same source: use another source name or drop the row")
        for o in seen:
            if o.source == r.source and o.activity == r.activity and o.start < r.end and o.end > r.start:
                errors.append(f"line {r.line}: {r.source} {r.activity} overlaps line {o.line} of this file: "
                              f"merge the rows or fix the periods")
                break
        seen.append(r)

    # Split each row at local midnights so that reports by day attribute it to the right days.
    pieces: list[tuple[_ActivityRow, float, float, float]] = []
    for r in good:
        for a, b in _day_pieces(r.start, r.end, tz):
            pieces.append((r, a, b, r.amount * (b - a) / (r.end - r.start)))
    # Every piece needs its factor: check all before writing anything.
    results = {}
    for act in sorted({r.activity for r in good}):
        sel = [p for p in pieces if p[0].activity == act]
        try:
            results[act] = (sel, compute(act, np.array([p[1] for p in sel]), np.array([p[3] for p in sel]),
                                         store.library, store.settings, "import"))
        except FactorError:
            for r in [g for g in good if g.activity == act]:
                try:
                    compute(act, np.array([p[1] for p in pieces if p[0] is r]),
                            np.ones(sum(1 for p in pieces if p[0] is r)), store.library, store.settings,
                            f"{path.name} line {r.line} (source {r.source})")
                except FactorError as exc:
                    errors.append(f"{_at(r.line, r.source, r.period)}: {str(exc).split(': ', 1)[1]}")
    if errors:
        raise DataImportError(str(path), errors)
    if not good:
        raise DataImportError(str(path), ["the file has a header but no data rows: add rows below the header"])

    n_emis = 0
    tco2e = 0.0
    with store.transaction():
        store.recalculate_if_changed()
        store.add_activity_data([ActivityData(r.source, r.activity, r.start, r.end, r.amount, r.amount_original,
                                              r.unit_original, r.line) for r in good],
                                f"import:{path.name}", f"imported from {path.name}")
        for act, (sel, res) in results.items():
            n_emis += store.add_activity_emissions([p[0].source for p in sel], act, np.array([p[1] for p in sel]),
                                                   np.array([p[2] for p in sel]), np.array([p[3] for p in sel]), res)
            tco2e += float(res.co2e_t.sum())
        store.record_factors()
    return ImportResult(str(path), "activity", len(good), tuple(sorted({r.source for r in good})), n_emis, tco2e,
                        repeated=repeated, already_stored=already)


def _day(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).date().isoformat()


def _day_pieces(start: float, end: float, tz: tzinfo) -> list[tuple[float, float]]:
    out = []
    a = start
    while a < end:
        d = datetime.fromtimestamp(a, tz).date() + timedelta(days=1)
        b = min(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp(), end)
        out.append((a, b))
        a = b
    return out


@dataclass(frozen=True)
class _ReadingRow:
    line: int
    source: str
    register: str
    ts: float
    ts_text: str
    value: float           # as written, in ``unit``
    unit: str
    canonical: float       # in the activity's canonical unit, for the plausibility bound


def _import_readings(store: Store, path: Path, rows: list[_Row], header: list[str] = READINGS_HEADER) -> ImportResult:
    """Readings are checked, de-duplicated, put in time order per source and register, then stored.

    The file's row order means nothing (exports are often newest first): only the timestamps order a
    series. Exact repeats of a row (in the file or already stored) are skipped and counted; the same
    timestamp with another value is refused naming both lines (issue 14).
    """
    errors: list[str] = []
    parsed: list[_ReadingRow] = []
    first: dict[tuple[str, str, float], _ReadingRow] = {}   # (source, register, timestamp) -> its first row
    repeated = 0
    rollover: dict[tuple[str, str], tuple[float, int]] = {}    # (source, register) -> (wrap value, line)
    for n, fields in _records(rows, header, errors):
        source, ts_s, register, value_s, unit = fields[:5]
        problems = []
        if len(fields) > 5 and fields[5]:
            # The register's wrap value (a preprocessing rule of the imported source, docs/import.md).
            try:
                wrap = _number(fields[5])
                if not 1 <= wrap <= MAX_REGISTER_VALUE:
                    raise ValueError
                known = rollover.setdefault((source, register), (wrap, n))
                if known[0] != wrap:
                    problems.append(f"rollover_at = {fields[5]!r}: line {known[1]} gives {known[0]:g} for the same "
                                    "source and register; a register has one wrap value")
            except ValueError:
                problems.append(f"rollover_at = {fields[5]!r}: use the register's wrap value, a number from 1 to "
                                f"{MAX_REGISTER_VALUE:g} (e.g. 65536 for a 16-bit counter), or leave it empty")
        if not source:
            problems.append("source is empty: name the meter, e.g. main-incomer")
        activity = REGISTER_ACTIVITY.get(register)
        if activity is None:
            problems.append(f"register = {register!r}: use one of {', '.join(REGISTER_ACTIVITY)} (cumulative registers)")
        try:
            ts = _parse_when(ts_s, site_tz(store.settings), need_offset=True)
        except ValueError as exc:
            problems.append(f"timestamp = {ts_s!r}: {exc}")
            ts = None
        try:
            value = _number(value_s)
            if value < 0:
                problems.append(f"value = {value_s!r}: a cumulative register is never negative")
            elif value > MAX_REGISTER_VALUE:
                problems.append(f"value = {value_s!r}: above {MAX_REGISTER_VALUE:g}, more than any meter register "
                                "holds: check the column and the decimal separator")
        except ValueError:
            problems.append(f"value = {value_s!r}: not a number; write the register value like 123456.7")
            value = None
        mult = None
        if activity is not None:
            try:
                mult = factor_to_canonical(activity, unit)
            except UnitError as exc:
                problems.append(str(exc))
        if problems:
            errors.extend(f"{_at(n, source, ts_s)}: {p}" for p in problems)
            continue
        assert ts is not None and value is not None and mult is not None
        row = _ReadingRow(n, source, register, ts, ts_s, value, unit, value * mult)
        earlier = first.get((source, register, ts))
        if earlier is None:
            first[source, register, ts] = row
            parsed.append(row)
        elif (earlier.value, earlier.unit) == (value, unit):
            repeated += 1           # an exact repeat, as meter exports often write: skip it
        else:
            errors.append(f"{_at(n, source, ts_s)}: the same source, register and timestamp as line {earlier.line} "
                          f"with another value ({value_s} {unit} here, {earlier.value:g} {earlier.unit} there): "
                          "a register has one value at a time; remove the wrong row")
    if not errors and not parsed:
        errors.append("the file has a header but no data rows: add rows below the header")

    # One series per source and register, in time order whatever the file's order.
    series: dict[tuple[str, str], list[_ReadingRow]] = {}
    for r in sorted(parsed, key=lambda r: (r.source, r.register, r.ts)):
        series.setdefault((r.source, r.register), []).append(r)
    for (src, register), rs in series.items():
        act = get_activity(REGISTER_ACTIVITY[register])
        wrap_at = rollover.get((src, register), (None, 0))[0]
        for a, b in zip(rs, rs[1:]):
            step, hours = b.canonical - a.canonical, (b.ts - a.ts) / 3600.0
            if wrap_at is not None and b.value < a.value:
                step = (wrap_at - a.value + b.value) * factor_to_canonical(act.name, b.unit)
            if step > act.max_rate_per_h * hours:
                errors.append(
                    f"{_at(b.line, b.source, b.ts_text)}: the register rises by {step:.6g} {act.unit} in {hours:.4g} h "
                    f"since line {a.line} ({a.ts_text}), more than the {act.max_rate_per_h:g} {act.unit} per hour "
                    f"no {act.name} meter exceeds: check the value and the unit of both lines")

    # Readings already stored (an earlier import of this file, or the poller): the same value is skipped,
    # another value is refused, because it would be counted and synced twice.
    already = 0
    new: list[_ReadingRow] = []
    for rs in series.values():
        for r in rs:
            stored = store.stored_reading(r.source, r.register, r.ts)
            if stored is None:
                new.append(r)
            elif (stored[1], stored[2]) == (r.value, r.unit):
                already += 1
            else:
                errors.append(f"{_at(r.line, r.source, r.ts_text)}: already stored with another value ({stored[1]} "
                              f"{stored[2]}, origin {stored[0]}): remove the row, or correct the earlier data first")
    if errors:
        raise DataImportError(str(path), errors)
    if not new:
        return ImportResult(str(path), "readings", 0, tuple(sorted({r.source for r in parsed})), 0, 0.0,
                            repeated=repeated, already_stored=already)

    # Each series needs factors over its whole time span.
    settings = []
    for (meter, register) in sorted({(r.source, r.register) for r in new}):
        stamps = [r.ts for r in series[meter, register]]
        activity = REGISTER_ACTIVITY[register]
        s = SourceSettings(meter_id=meter, activity=activity, point=register,
                           rollover_at=rollover.get((meter, register), (None, 0))[0])
        grid = np.arange(math.floor(min(stamps) / 900) * 900, max(stamps) + 900, 900.0)
        try:
            compute(activity, grid, np.ones(len(grid)), store.library, store.settings, f"source {s.id}")
        except FactorError as exc:
            errors.append(f"{path.name}: {exc}")
        settings.append(s)
    if errors:
        raise DataImportError(str(path), errors)

    readings = [Reading(r.source, r.register, r.ts, r.value, r.unit, Quantity(r.register)) for r in new]
    totals = [0, 0]
    with store.transaction():
        store.recalculate_if_changed()
        store.add_imported_sources(settings, f"imported from {path.name}")
        store.insert_readings(readings, origin=f"import:{path.name}")
        for s in settings:
            current = store.source_settings(s.id) or s
            try:
                totals[0] += store.process_source(current).emission_rows
            except Exception as exc:   # rolls back the whole import; re-raised as a row-less error
                raise DataImportError(str(path), [f"source {s.id}: {exc}"]) from exc
        tco2e = store.current_tco2e([s.id for s in settings])
    return ImportResult(str(path), "readings", len(readings), tuple(s.id for s in settings), totals[0], float(tco2e),
                        repeated=repeated, already_stored=already)


def _import_instruments(store: Store, path: Path, rows: list[_Row], tz: tzinfo) -> ImportResult:
    """Contractual instruments for the market-based method (docs/import.md, "Contractual instruments").

    An instrument is claimed once: its reference identifies it, an identical row (in the file or stored
    before) is skipped and counted, the same reference with other data is refused.
    """
    errors: list[str] = []
    parsed: list[tuple[int, str, str, float, float, float, float, str, str, str]] = []
    seen: dict[str, tuple] = {}
    repeated = already = 0
    for n, fields in _records(rows, INSTRUMENTS_HEADER, errors):
        ref, kind, start_s, end_s, amount_s, unit, factor_s = fields
        problems = []
        if not ref:
            problems.append("instrument is empty: give the certificate or contract number, e.g. GEC-2025-000123")
        if kind not in INSTRUMENT_KINDS:
            problems.append(f"kind = {kind!r}: use one of {', '.join(INSTRUMENT_KINDS)}")
        start, end = _period(start_s, end_s, tz, problems)
        mult = _INSTRUMENT_UNITS.get(unit)
        if mult is None:
            problems.append(f"unit = {unit!r}: use MWh or kWh")
        mwh = None
        try:
            amount = _number(amount_s)
            if amount < 0:
                problems.append(f"amount = {amount_s!r}: must be >= 0")
            elif mult is not None:
                mwh = amount * mult
                bound = get_activity("electricity").max_rate_per_h
                if start is not None and end is not None and end > start and mwh > bound * (end - start) / 3600:
                    problems.append(f"amount = {amount_s!r} {unit} is more than {bound:g} MWh per hour over the "
                                    "period, more than any site consumes: check the amount and the unit")
        except ValueError:
            problems.append(f"amount = {amount_s!r}: not a number; write it like 1200 or 1200.5")
        try:
            factor = _number(factor_s)
            if not 0 <= factor <= MAX_INSTRUMENT_FACTOR_T_PER_MWH:
                problems.append(f"emission_factor = {factor_s!r}: use tCO2/MWh from 0 (renewable) to "
                                f"{MAX_INSTRUMENT_FACTOR_T_PER_MWH:g}")
        except ValueError:
            problems.append(f"emission_factor = {factor_s!r}: not a number; write it in tCO2/MWh, 0 for renewables")
            factor = None
        if problems:
            errors.extend(f"{_at(n, ref, f'{start_s}..{end_s}')}: {p}" for p in problems)
            continue
        assert start is not None and end is not None and mwh is not None and factor is not None
        key = (kind, int(start), int(end), mwh, factor)
        if ref in seen:
            if seen[ref][1:] == key:
                repeated += 1
            else:
                errors.append(f"{_at(n, ref, f'{start_s}..{end_s}')}: instrument {ref} is also on line {seen[ref][0]} "
                              "with other data: an instrument is claimed once; remove the wrong row")
            continue
        seen[ref] = (n, *key)
        stored = store.db.execute("SELECT kind, start_ts, end_ts, mwh, factor_t_per_mwh FROM instruments"
                                  " WHERE reference = ?", (ref,)).fetchone()
        if stored is not None:
            if tuple(stored) == key:
                already += 1
            else:
                errors.append(f"{_at(n, ref, f'{start_s}..{end_s}')}: instrument {ref} is already stored with other "
                              f"data ({stored[0]}, {stored[3]:g} MWh): an instrument is claimed once; use another "
                              "reference or correct the stored one")
            continue
        parsed.append((n, ref, kind, start, end, mwh, factor, unit, start_s, end_s))
    if not errors and not parsed and not (repeated or already):
        errors.append("the file has a header but no data rows: add rows below the header")
    if errors:
        raise DataImportError(str(path), errors)
    if parsed:
        with store.transaction() as db:
            db.conn.executemany(
                "INSERT INTO instruments (kind, source_id, start_ts, end_ts, mwh, factor_t_per_mwh, reference)"
                " VALUES (?, NULL, ?, ?, ?, ?, ?)",
                [(kind, int(start), int(end), mwh, factor, ref) for _, ref, kind, start, end, mwh, factor, *_ in parsed])
    return ImportResult(str(path), "instruments", len(parsed), tuple(sorted(r[1] for r in parsed)), 0, 0.0,
                        repeated=repeated, already_stored=already)


def list_instruments(store: Store, start: float | None = None, end: float | None = None) -> list[dict]:
    """Stored instruments overlapping [start, end) (all when None), oldest first."""
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    rows = store.db.execute("SELECT reference, kind, start_ts, end_ts, mwh, factor_t_per_mwh, source_id FROM instruments"
                            " ORDER BY start_ts, reference").fetchall()
    return [{"instrument": r[0], "kind": r[1], "start_ts": r[2], "end_ts": r[3], "mwh": r[4],
             "emission_factor_t_per_mwh": r[5], "source": r[6]} for r in rows if r[2] < hi and r[3] > lo]


def add_instrument(store: Store, fields: list[str], tz: tzinfo | None = None, place: str = "command line") -> ImportResult:
    """One instrument given as the CSV's fields (``INSTRUMENTS_HEADER`` order), checked like an imported row.

    :raises DataImportError: naming every problem; nothing was written.
    """
    return _import_instruments(store, Path(place), [_Row(1, list(fields))], tz or site_tz(store.settings))
