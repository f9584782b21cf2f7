"""Emission factor library: versioned TOML files under ``config/factors/`` plus the user's own.

A file has a ``[library]`` table (``name``, integer ``version``, ``priority``), an optional
``[defaults]`` table merged into every entry, and ``[[factors]]`` entries with ``id``, ``activity``,
``parameter``, ``value``, ``unit``, ``region``, ``year``, ``valid_from``, optional ``valid_to``
(exclusive) and ``source``. A factor's identity is ``(id, version)``; a factor's version is the
entry's ``version`` or else the file's.

Selection for an activity period: among entries with the activity, parameter and region whose
validity covers the time, the highest ``priority`` wins, then the newest ``year``, then the highest
version. A custom file therefore overrides a shipped value by using ``priority = 100``.

Vintages (issue 14): a published factor covers its own data year. For a time no entry covers, the
*vintage rule* decides: ``latest_published`` (provisional reports, the default) takes the newest
vintage published for an earlier time, and reports flag every figure computed that way;
``same_year`` refuses (a missing-factor error) until the year's factor is added. A factor's
identity, ``id/year@version`` (:attr:`Factor.ref`), names its vintage.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from drivers.errors import not_utf8
from local_store.errors import FactorError, UnitError
from local_store.files import write_atomically
from local_store.units import ACTIVITIES, CUSTOM_KINDS, Activity, register_activity
from local_store.units import builtin_activities


def _shipped_factors_dir() -> Path:
    """The shipped library, found as gateway/paths.py finds the shipped config (this library does not import
    the gateway): CARBON_GATEWAY_CONFIG_DIR, else the installed wheel's ``gateway/shipped/factors`` beside this
    package, else the checkout's ``config/factors``."""
    override = os.environ.get("CARBON_GATEWAY_CONFIG_DIR")
    if override:
        return Path(override) / "factors"
    packaged = Path(__file__).resolve().parent.parent / "gateway" / "shipped" / "factors"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "config" / "factors"


DEFAULT_FACTORS_DIR = _shipped_factors_dir()

VintageRule = Literal["latest_published", "same_year"]
VINTAGE_RULES: tuple[str, ...] = ("latest_published", "same_year")

# parameter -> accepted units and the multiplier to the unit the model computes with.
_PARAMETER_UNITS: dict[str, dict[str, float]] = {
    "ef": {"tCO2/MWh": 1.0, "kgCO2/kWh": 1.0, "tCO2/GJ": 1.0, "tCO2/t": 1.0, "tCO2/m3": 1.0},
    "residual_mix": {"tCO2/MWh": 1.0, "kgCO2/kWh": 1.0},
    "ncv": {"GJ/t": 1.0, "GJ/m3": 1.0, "GJ/10^4 Nm3": 1e-4, "GJ/10^4 m3": 1e-4, "MJ/m3": 1e-3, "MJ/kg": 1.0},
    "carbon_content": {"tC/GJ": 1.0, "tC/TJ": 1e-3},
    "oxidation": {"%": 0.01, "fraction": 1.0},
    "ch4": {"kg/TJ": 1e-6, "t/GJ": 1.0},      # -> tCH4 per GJ (1 kg/TJ = 1e-3 t / 1e3 GJ)
    "n2o": {"kg/TJ": 1e-6, "t/GJ": 1.0},
    # Refrigerants: the 100-year GWP of the gas, per the settings' assessment report (tCO2e per t leaked).
    "gwp_ar5": {"tCO2e/t": 1.0},
    "gwp_ar6": {"tCO2e/t": 1.0},
}
# Electricity factors are per MWh, heat per GJ; a wrong pairing is a unit error in the file.
_EF_UNIT_BY_KIND = {"electricity": {"tCO2/MWh", "kgCO2/kWh"}, "heat": {"tCO2/GJ"}, "process": {"tCO2/t", "tCO2/m3"}}
_ENTRY_KEYS = {"id", "activity", "parameter", "value", "unit", "region", "year", "valid_from",
               "valid_to", "source", "version", "gas", "description"}
_REQUIRED = ("id", "activity", "parameter", "value", "unit", "region", "year", "valid_from", "source")


@dataclass(frozen=True)
class Factor:
    """One factor value as read from a file; ``value_si`` is in the unit the model uses."""

    id: str
    version: int
    activity: str
    parameter: str
    value: float
    unit: str
    region: str
    year: int
    valid_from: date
    valid_to: date | None
    source: str
    file: str
    priority: int = 0

    @property
    def value_si(self) -> float:
        return self.value * _PARAMETER_UNITS[self.parameter][self.unit]

    @property
    def ref(self) -> str:
        """``id/year@version``, the reference stored in every emission row: it names the vintage (the data
        year), so ``cn.grid.national/2022@1`` (0.5366) and ``cn.grid.national/2023@1`` (0.5306) differ."""
        return f"{self.id}/{self.year}@{self.version}"

    @property
    def valid_from_ts(self) -> float:
        return _date_ts(self.valid_from)

    @property
    def valid_to_ts(self) -> float:
        return _date_ts(self.valid_to) if self.valid_to else float("inf")

    def covers(self, ts: float) -> bool:
        return self.valid_from_ts <= ts < self.valid_to_ts


def _date_ts(d: date) -> float:
    # Validity dates are calendar dates in China Standard Time, where the published factors apply.
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() - 8 * 3600


@dataclass(frozen=True)
class FactorLibrary:
    """All factors from a set of files, with selection by activity, parameter, region and time."""

    factors: tuple[Factor, ...]
    files: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        """Changes whenever any factor's value, unit, validity or version changes."""
        h = hashlib.sha256()
        for f in sorted(self.factors, key=lambda f: (f.id, f.version, f.valid_from)):
            h.update(repr((f.id, f.version, f.value, f.unit, f.region, f.valid_from, f.valid_to,
                           f.activity, f.parameter, f.priority)).encode())
        return h.hexdigest()[:16]

    def candidates(self, activity: str, parameter: str, region: str) -> list[Factor]:
        """Entries for one activity/parameter/region, least preferred first."""
        found = [f for f in self.factors
                 if f.activity == activity and f.parameter == parameter and f.region == region]
        return sorted(found, key=lambda f: (f.priority, f.year, f.version))

    def select(self, activity: str, parameter: str, region: str, ts: float,
               rule: VintageRule = "latest_published") -> Factor | None:
        """The preferred factor for epoch ``ts`` under the vintage ``rule``, or None."""
        cands, index = self.select_many(activity, parameter, region, np.array([float(ts)]), rule)
        return cands[int(index[0])] if index[0] >= 0 else None

    def select_many(self, activity: str, parameter: str, region: str, ts: np.ndarray,
                    rule: VintageRule = "latest_published") -> tuple[list[Factor], np.ndarray]:
        """Vectorised :meth:`select`: the candidates and, per timestamp, an index into them (-1: none)."""
        cands = self.candidates(activity, parameter, region)
        index = np.full(ts.shape, -1, dtype=np.int32)
        for i, f in enumerate(cands):      # later (preferred) candidates paint over earlier ones
            index[(ts >= f.valid_from_ts) & (ts < f.valid_to_ts)] = i
        if rule == "latest_published" and (index < 0).any():
            # Uncovered times take the newest vintage that started before them (provisional, flagged).
            uncovered = index < 0
            for i in sorted(range(len(cands)), key=lambda k: (cands[k].year, cands[k].priority, cands[k].version)):
                index[uncovered & (ts >= cands[i].valid_from_ts)] = i
        return cands, index

    def require(self, activity: str, parameter: str, region: str, ts: float, place: str,
                rule: VintageRule = "latest_published") -> Factor:
        """Like :meth:`select` but a missing factor is an error that names the place and the fix.

        :raises FactorError: when no factor covers the time.
        """
        f = self.select(activity, parameter, region, ts, rule)
        if f is None:
            raise missing_factor_error(activity, parameter, region, ts, place)
        return f


def missing_factor_error(activity: str, parameter: str, region: str, ts: float, place: str) -> FactorError:
    when = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return FactorError(
        f"{place}: no emission factor {parameter!r} for {activity} in region {region!r} valid at {when}: "
        f"add one to a custom file in config/factors/ (activity = \"{activity}\", parameter = "
        f"\"{parameter}\", region = \"{region}\", valid_from/valid_to covering that date), "
        f"see docs/models.md")


def default_factor_files() -> list[Path]:
    return sorted(DEFAULT_FACTORS_DIR.glob("*.toml"))


def load_library(paths: Iterable[Path] | None = None) -> FactorLibrary:
    """Load factor files (default: every ``*.toml`` in the shipped ``config/factors/``).

    :raises FactorError: naming the file, the entry and the fix for any malformed entry, or two
        entries with the same id, version and validity start.
    """
    files = list(paths) if paths is not None else default_factor_files()
    factors: list[Factor] = []
    contents = [(Path(path), _read_file(Path(path))) for path in files]
    for path, data in contents:          # activities first: a factor may name one declared in any file
        _register_activities(path, data)
    for path, data in contents:
        factors.extend(_parse_factors(path, data))
    seen: dict[tuple[str, int, date], str] = {}
    refs: dict[str, str] = {}
    for f in factors:
        key = (f.id, f.version, f.valid_from)
        if key in seen:
            raise FactorError(f"{f.file}: factor {f.id!r} version {f.version} valid from {f.valid_from} is "
                              f"also defined in {seen[key]}: give the new value a higher version")
        if f.ref in refs:
            raise FactorError(f"{f.file}: factor {f.ref} (id {f.id!r}, data year {f.year}, version {f.version}) is "
                              f"also defined in {refs[f.ref]}: a vintage has one value; give the new value a "
                              f"higher version")
        seen[key] = f.file
        refs[f.ref] = f.file
    return FactorLibrary(tuple(factors), tuple(str(p) for p in files))


def _read_file(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))   # -sig: a byte-order mark is not TOML
    except OSError as exc:
        raise FactorError(f"{path}: cannot read factor file: {exc.strerror}: check the file name (a relative "
                          "path is taken from the working directory)") from exc
    except UnicodeDecodeError as exc:
        raise FactorError(f"{path}: {not_utf8(exc)}: "
                          "save the factor file as UTF-8 (not UTF-16)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FactorError(f"{path}: not valid TOML: {exc}: fix the syntax") from exc
    return data


_ACTIVITY_KEYS = {"name", "unit", "kind", "scope", "iso_category", "description"}


def _register_activities(path: Path, data: dict) -> None:
    """``[[activities]]``: activities a factor file declares (process emissions, refrigerants, more fuels)."""
    entries = data.get("activities", [])
    if not isinstance(entries, list):
        raise FactorError(f"{path}: 'activities' must be an array of tables ([[activities]])")
    for i, raw in enumerate(entries):
        place = f"{path.name}: activities[{i}]" + (f" ({raw.get('name')})" if isinstance(raw, dict) and "name" in raw else "")
        if not isinstance(raw, dict):
            raise FactorError(f"{place}: must be a table with name, unit and kind")
        unknown = set(raw) - _ACTIVITY_KEYS
        if unknown:
            raise FactorError(f"{place}: unknown key {sorted(unknown)[0]!r}: use only {', '.join(sorted(_ACTIVITY_KEYS))}")
        name, unit, kind = raw.get("name"), raw.get("unit", "t"), raw.get("kind")
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name.islower():
            raise FactorError(f"{place}: name = {name!r}: use lower-case letters, digits and _, e.g. limestone_calcination")
        if kind not in CUSTOM_KINDS:
            raise FactorError(f"{place}: kind = {kind!r}: use one of {', '.join(CUSTOM_KINDS)}")
        if unit not in ("t", "m3"):
            raise FactorError(f"{place}: unit = {unit!r}: use t (mass; kg is accepted on import) or m3 (volume)")
        scope, category = raw.get("scope", 1), raw.get("iso_category", 1)
        if scope != 1 or category != 1:
            raise FactorError(f"{place}: a declared activity is direct: scope = 1 and iso_category = 1")
        try:
            register_activity(Activity(name, unit, kind, 1, 1, description=str(raw.get("description", "")),
                                       custom=True))
        except UnitError as exc:
            raise FactorError(f"{place}: {exc}") from None


def _parse_factors(path: Path, data: dict) -> list[Factor]:
    library = data.get("library", {})
    version = library.get("version", 1)
    priority = library.get("priority", 0)
    if not isinstance(version, int) or not isinstance(priority, int):
        raise FactorError(f"{path}: [library] version and priority must be integers, "
                          f"got version = {version!r}, priority = {priority!r}")
    defaults = data.get("defaults", {})
    entries = data.get("factors", [])
    if not isinstance(entries, list):
        raise FactorError(f"{path}: 'factors' must be an array of tables ([[factors]])")
    out = []
    for i, raw in enumerate(entries):
        entry = {**defaults, **raw}
        place = f"{path.name}: factors[{i}]" + (f" ({entry['id']})" if "id" in entry else "")
        out.append(_parse_entry(entry, place, str(path), version, priority))
    return out


def _parse_entry(entry: dict, place: str, file: str, version: int, priority: int) -> Factor:
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise FactorError(f"{place}: unknown key {sorted(unknown)[0]!r}: use only {', '.join(sorted(_ENTRY_KEYS))}")
    for key in _REQUIRED:
        if key not in entry:
            raise FactorError(f"{place}: missing key {key!r}: add it (see docs/models.md)")
    activity, parameter, unit = entry["activity"], entry["parameter"], entry["unit"]
    if activity not in ACTIVITIES:
        raise FactorError(f"{place}: activity = {activity!r}: use one of {', '.join(builtin_activities())}")
    if parameter not in _PARAMETER_UNITS:
        raise FactorError(f"{place}: parameter = {parameter!r}: use one of {', '.join(_PARAMETER_UNITS)}")
    units = _PARAMETER_UNITS[parameter]
    kind = ACTIVITIES[activity].kind
    if parameter == "ef":
        units = {u: m for u, m in units.items() if u in _EF_UNIT_BY_KIND.get(kind, set())}
    if unit not in units:
        raise FactorError(f"{place}: unit = {unit!r}: for {parameter} of {activity} use one of {', '.join(units)}")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise FactorError(f"{place}: value = {value!r}: use a number >= 0")
    valid_from, valid_to = entry["valid_from"], entry.get("valid_to")
    if not isinstance(valid_from, date) or (valid_to is not None and not isinstance(valid_to, date)):
        raise FactorError(f"{place}: valid_from/valid_to must be TOML dates like 2025-01-01")
    if isinstance(valid_from, datetime) or isinstance(valid_to, datetime):
        raise FactorError(f"{place}: valid_from/valid_to must be dates without a time, like 2025-01-01")
    if valid_to is not None and valid_to <= valid_from:
        raise FactorError(f"{place}: valid_to {valid_to} is not after valid_from {valid_from}: fix the period")
    entry_version = entry.get("version", version)
    if not isinstance(entry_version, int) or isinstance(entry_version, bool):
        raise FactorError(f"{place}: version = {entry_version!r}: use an integer")
    if not isinstance(entry["year"], int):
        raise FactorError(f"{place}: year = {entry['year']!r}: use the data year as an integer")
    return Factor(
        id=str(entry["id"]), version=entry_version, activity=activity, parameter=parameter,
        value=float(value), unit=unit, region=str(entry["region"]), year=entry["year"],
        valid_from=valid_from, valid_to=valid_to, source=str(entry["source"]), file=file, priority=priority,
    )


def describe(factors: Sequence[Factor]) -> list[dict]:
    """Plain dicts for reports and the web UI's factor page."""
    return [{"ref": f.ref, "id": f.id, "version": f.version, "activity": f.activity, "parameter": f.parameter,
             "value": f.value, "unit": f.unit, "region": f.region, "year": f.year, "vintage": f.year,
             "valid_from": f.valid_from.isoformat(), "valid_to": f.valid_to.isoformat() if f.valid_to else None,
             "applies_to": applies_to(f), "source": f.source, "file": f.file} for f in factors]


def applies_to(f: Factor) -> str:
    """Which activity years a factor's validity covers, in words: ``2023``, ``2023-2025``, ``2000-``."""
    last = None
    if f.valid_to is not None:
        last = f.valid_to.year - (1 if (f.valid_to.month, f.valid_to.day) == (1, 1) else 0)
    if last == f.valid_from.year:
        return str(last)
    return f"{f.valid_from.year}-{last if last is not None else ''}"


def vintage_note(f: Factor, activity_from_ts: float, activity_to_ts: float, tz_offset_s: int = 8 * 3600) -> str | None:
    """Why a figure's factor is provisional, or None: the factor's validity does not cover the activity
    (the ``latest_published`` rule used an older vintage)."""
    if f.valid_from_ts <= activity_from_ts and activity_to_ts <= f.valid_to_ts:
        return None
    year = datetime.fromtimestamp(activity_to_ts - 1 + tz_offset_s, timezone.utc).year
    return (f"{f.ref} ({f.value} {f.unit}, vintage {f.year}, valid {applies_to(f)}) was applied to activity up to "
            f"{year}, which it does not cover: the newest published vintage is used provisionally; add the "
            f"{year} factor when it is published (carbon-gateway factors add) and the figures are recalculated")


def add_factor(path: Path, entry: dict, other_files: Sequence[Path] = ()) -> Factor:
    """Append one ``[[factors]]`` entry to the custom factor file ``path`` (created with priority 100).

    The whole library (shipped files, ``other_files`` and the new file) is loaded with the entry before
    anything is written, so a bad entry or a clash with another file's vintage changes nothing; the
    file is then replaced atomically (a power cut leaves the old file or the new one).

    :returns: the factor as loaded.
    :raises FactorError: naming the entry and the fix.
    """
    import tempfile

    import tomli_w

    path = Path(path)
    if path.is_file():
        try:
            content = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FactorError(f"{path}: cannot read the custom factor file ({exc}): fix or move it") from exc
    else:
        content = {"library": {"name": "Custom factors", "version": 1, "priority": 100}, "factors": []}
    content.setdefault("factors", []).append({k: v for k, v in entry.items() if v is not None})
    text = tomli_w.dumps(content)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / path.name
        trial.write_text(text, encoding="utf-8")
        others = [Path(p) for p in other_files if Path(p).resolve() != path.resolve()]
        try:
            library = load_library(default_factor_files() + others + [trial])
        except FactorError as exc:
            raise FactorError(str(exc).replace(str(trial), str(path))) from None
        added = [f for f in library.factors if f.file == str(trial)][-1]
    write_atomically(path, text)
    return Factor(**{**added.__dict__, "file": str(path)})


def for_year(library: FactorLibrary, year: int, region: str | None = None, activity: str | None = None,
             rule: VintageRule = "latest_published") -> list[tuple[Factor, str | None]]:
    """What applies to an activity year: per (activity, parameter, region), the factor selected at the
    year's start (China Standard Time) under ``rule`` and, when it does not cover the year, the note why."""
    start = datetime(year, 1, 1, tzinfo=timezone.utc).timestamp() - 8 * 3600
    end = datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp() - 8 * 3600
    out = []
    keys = sorted({(f.activity, f.parameter, f.region) for f in library.factors
                   if (region is None or f.region == region) and (activity is None or f.activity == activity)})
    for act, parameter, reg in keys:
        f = library.select(act, parameter, reg, start, rule)
        if f is not None:
            out.append((f, vintage_note(f, start, end)))
    return out
