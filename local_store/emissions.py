"""The emission metering model: activity data x emission factor, vectorised over intervals.

- Purchased electricity (location-based): E = AD_MWh x EF_grid (tCO2/MWh).        Scope 2, ISO cat. 2
- Purchased heat / steam: E = AD_GJ x EF_heat (tCO2/GJ).                          Scope 2, ISO cat. 2
- Fuel combustion (GB/T 32150, national guidelines):                              Scope 1, ISO cat. 1
    AD_GJ = FC x NCV;  EF = CC (tC/GJ) x OF x 44/12;  E_CO2 = AD_GJ x EF
    optional E_CH4 = AD_GJ x EF_CH4, E_N2O = AD_GJ x EF_N2O, CO2e = CO2 + GWP_CH4 CH4 + GWP_N2O N2O
- Exported electricity / heat: the same factor with a negative sign (net purchase, as the national
  guidelines account it); reports keep the exported rows visible separately.
The market-based method needs the whole period's instruments, so it is in ``reports``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from local_store.errors import FactorError
from local_store.factors import Factor, FactorLibrary, VintageRule, missing_factor_error
from local_store.units import activity as get_activity

#: Global warming potentials (100 years). AR5: IPCC 2013 WG1 Table 8.7. AR6: IPCC 2021 WG1 Table 7.15,
#: with fossil methane (29.8) because the sources here burn fossil fuels.
GWP: dict[str, dict[str, float]] = {
    "AR5": {"CH4": 28.0, "N2O": 265.0},
    "AR6": {"CH4": 29.8, "N2O": 273.0},
}
C_TO_CO2 = 44.0 / 12.0

Method = Literal["location", "market"]


@dataclass(frozen=True)
class EmissionSettings:
    """How the gateway computes emissions; ``gateway.config`` builds it from ``[emissions]``.

    :param region: grid region of the electricity factor (``national``, ``national_ets``, or a
        region a custom factor file defines).
    :param method: which electricity figure goes into ``total_tco2e``; reports show both.
    :param include_ch4_n2o: add CH4 and N2O of combustion as CO2e with ``gwp``.
    :param factor_files: extra factor files (a site's own values), read after the shipped library.
    :param vintage_rule: which factor vintage applies to a year without its own factor:
        ``latest_published`` (provisional, flagged in reports) or ``same_year`` (refused).
    """

    region: str = "national"
    method: Method = "location"
    include_ch4_n2o: bool = False
    gwp: Literal["AR5", "AR6"] = "AR6"
    factor_files: tuple[str, ...] = ()
    interval_s: int = 900
    vintage_rule: VintageRule = "latest_published"
    timezone: str = ""            # [site] timezone (IANA name): days and months of reports; "" = the host's


@dataclass
class EmissionArrays:
    """Per-row results of :func:`compute` (same length as the input).

    Factor references are kept as small tables plus an index per row, so millions of rows cost
    an int array rather than millions of strings; the list properties expand them for SQL.
    """

    energy_gj: np.ndarray
    co2_t: np.ndarray
    ch4_t: np.ndarray
    n2o_t: np.ndarray
    co2e_t: np.ndarray
    ref_table: list[str]
    ref_index: np.ndarray
    primary_table: list[Factor]
    primary_index: np.ndarray
    used: list[Factor]

    @property
    def factor_refs(self) -> list[str]:
        return [self.ref_table[k] for k in self.ref_index.tolist()]

    @property
    def factor_id(self) -> list[str]:
        return [self.primary_table[k].id for k in self.primary_index.tolist()]

    @property
    def factor_version(self) -> list[int]:
        return [self.primary_table[k].version for k in self.primary_index.tolist()]


def _select(library: FactorLibrary, activity: str, parameter: str, region: str, ts: np.ndarray,
            place: str, fallback_national: bool, rule: VintageRule = "latest_published") -> tuple[list[Factor], np.ndarray]:
    cands, idx = library.select_many(activity, parameter, region, ts, rule)
    if fallback_national and region != "national" and (idx < 0).any():
        # Fuel parameters are national defaults; a site region only overrides them when it has its own.
        n_cands, n_idx = library.select_many(activity, parameter, "national", ts, rule)
        missing = idx < 0
        idx = np.where(missing & (n_idx >= 0), n_idx + len(cands), idx)
        cands = cands + n_cands
    if (idx < 0).any():
        first = float(ts[np.flatnonzero(idx < 0)[0]])
        raise missing_factor_error(activity, parameter, region, first, place)
    return cands, idx


def compute(activity_name: str, start_ts: np.ndarray, amount: np.ndarray, library: FactorLibrary,
            settings: EmissionSettings, place: str) -> EmissionArrays:
    """Emissions for amounts (in the activity's canonical unit) of one activity.

    The factor valid at each row's start time is used.

    :param place: names the source for error messages (e.g. ``source boiler-1``).
    :raises FactorError: when a factor is missing for some period; nothing is computed.
    """
    act = get_activity(activity_name)
    ts = np.asarray(start_ts, dtype=np.float64)
    amount = np.asarray(amount, dtype=np.float64)
    n = len(ts)
    sign = -1.0 if act.export else 1.0
    zeros = np.zeros(n)
    base = activity_name.removesuffix("_export")
    if n == 0:
        none = np.zeros(0, dtype=np.int64)
        return EmissionArrays(zeros, zeros, zeros, zeros, zeros, [], none, [], none, [])
    ch4 = n2o = fugitive = zeros
    if act.kind in ("electricity", "heat"):
        cands, idx = _select(library, base, "ef", settings.region, ts, place, fallback_national=act.kind == "heat",
                             rule=settings.vintage_rule)
        ef = np.array([c.value_si for c in cands])[idx]
        co2 = sign * amount * ef
        energy = amount * (3.6 if act.kind == "electricity" else 1.0)
        groups = [(cands, idx)]
        primary = (cands, idx)
    elif act.kind == "process":
        # Process emissions (GB/T 32150 5.2, e.g. carbonate calcination): E = AD x EF.
        cands, idx = _select(library, base, "ef", settings.region, ts, place, True, settings.vintage_rule)
        co2 = amount * np.array([c.value_si for c in cands])[idx]
        energy = zeros
        groups = [(cands, idx)]
        primary = (cands, idx)
    elif act.kind == "refrigerant":
        # Fugitive emissions by mass balance: the leaked mass (t) x the gas's GWP (AR5 or AR6, as set).
        parameter = f"gwp_{settings.gwp.lower()}"
        cands, idx = _select(library, base, parameter, settings.region, ts, place, True, settings.vintage_rule)
        fugitive = amount * np.array([c.value_si for c in cands])[idx]
        co2 = zeros
        energy = zeros
        groups = [(cands, idx)]
        primary = (cands, idx)
    else:
        ncv_c, ncv_i = _select(library, base, "ncv", settings.region, ts, place, True, settings.vintage_rule)
        cc_c, cc_i = _select(library, base, "carbon_content", settings.region, ts, place, True, settings.vintage_rule)
        of_c, of_i = _select(library, base, "oxidation", settings.region, ts, place, True, settings.vintage_rule)
        energy = amount * np.array([c.value_si for c in ncv_c])[ncv_i]
        ef = np.array([c.value_si for c in cc_c])[cc_i] * np.array([c.value_si for c in of_c])[of_i] * C_TO_CO2
        co2 = energy * ef
        groups = [(ncv_c, ncv_i), (cc_c, cc_i), (of_c, of_i)]
        primary = (cc_c, cc_i)
        if settings.include_ch4_n2o:
            ch4_c, ch4_i = _select(library, base, "ch4", settings.region, ts, place, True, settings.vintage_rule)
            n2o_c, n2o_i = _select(library, base, "n2o", settings.region, ts, place, True, settings.vintage_rule)
            ch4 = energy * np.array([c.value_si for c in ch4_c])[ch4_i]
            n2o = energy * np.array([c.value_si for c in n2o_c])[n2o_i]
            groups += [(ch4_c, ch4_i), (n2o_c, n2o_i)]
    gwp = GWP[settings.gwp]
    co2e = co2 + gwp["CH4"] * ch4 + gwp["N2O"] * n2o
    if act.kind == "refrigerant":
        co2e = co2e + fugitive
    # Factor references per row: one string per distinct combination of selected factors. Rows are
    # encoded as one integer per combination (mixed radix) so that np.unique works on a 1-D array.
    code = np.zeros(n, dtype=np.int64)
    for cands_g, idx_g in groups:
        code = code * (len(cands_g) + 1) + idx_g
    combos, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    ref_table = [",".join(g_cands[int(g_idx[i])].ref for g_cands, g_idx in groups) for i in first]
    used = {f.ref + str(f.valid_from): f for g_cands, g_idx in groups for i in first for f in [g_cands[int(g_idx[i])]]}
    p_cands, p_idx = primary
    return EmissionArrays(
        energy_gj=energy, co2_t=co2, ch4_t=ch4, n2o_t=n2o, co2e_t=co2e,
        ref_table=ref_table, ref_index=inverse.reshape(-1), primary_table=p_cands, primary_index=p_idx,
        used=list(used.values()),
    )


def period_text(start_ts: float, end_ts: float) -> str:
    fmt = "%Y-%m-%d %H:%M"
    a = datetime.fromtimestamp(start_ts, timezone.utc).strftime(fmt)
    b = datetime.fromtimestamp(end_ts, timezone.utc).strftime(fmt)
    return f"{a}..{b} UTC"


__all__ = ["GWP", "EmissionSettings", "EmissionArrays", "compute", "FactorError", "period_text"]
