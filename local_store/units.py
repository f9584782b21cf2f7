"""Activities, their canonical units and unit conversion.

Every amount is converted once, at the border (polled reading, CSV row), to the canonical unit of
its activity; factors in ``config/factors/`` are expressed per canonical unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.model import Quantity
from local_store.errors import UnitError

Scope = Literal[1, 2]


@dataclass(frozen=True)
class Activity:
    """One kind of activity data and how it is accounted."""

    name: str
    unit: str                 # canonical unit of the amount
    kind: Literal["electricity", "fuel", "heat", "process", "refrigerant"]
    scope: Scope
    iso_category: int         # ISO 14064-1:2018 clause 5.2.4: 1 direct, 2 imported energy
    export: bool = False      # exported energy is subtracted (net purchase, national guidelines)
    #: Plausibility bound: the most of this activity, in ``unit`` per hour, that any one meter or
    #: installation can consume (docs/models.md, "Plausibility bounds"). An imported amount or a
    #: register step above it is refused; a polled step above it is flagged ``spike`` and dropped.
    max_rate_per_h: float = 1e6
    #: quantities a meter point may measure to carry this activity when a source names no point, in order
    #: of preference (a steam meter may total heat in GJ or mass in t; heat first: no enthalpy is assumed)
    quantities: tuple[Quantity, ...] = ()
    label: str = ""           # what a person reads (web UI, reports), English ...
    label_zh: str = ""        # ... and Chinese
    description: str = ""
    custom: bool = False      # declared in a factor file ([[activities]]), not built in


#: The one list of activities (issue 12): the config's [[meters]] activity, the web forms, factor files and
#: CSV import all take their choices from here.
ACTIVITIES: dict[str, Activity] = {a.name: a for a in (
    # Bounds are a rate no meter of the kind can reach, not a site's normal load: 2 000 MWh/h is a
    # 2 GW draw (more than the largest single industrial consumers); 10 000 GJ/h is 2.8 GW of heat;
    # 500 000 m3/h of natural gas is about 5 GW; 1 000 t/h of coal or 200 t/h of a liquid fuel is
    # more than a large power station burns.
    Activity("electricity", "MWh", "electricity", 2, 2, max_rate_per_h=2000.0, quantities=(Quantity.ENERGY_IMPORT,),
             label="purchased electricity", label_zh="外购电力"),
    Activity("electricity_export", "MWh", "electricity", 2, 2, export=True, max_rate_per_h=2000.0, quantities=(Quantity.ENERGY_EXPORT,),
             label="exported electricity", label_zh="输出电力"),
    Activity("natural_gas", "m3", "fuel", 1, 1, max_rate_per_h=500_000.0, quantities=(Quantity.GAS_VOLUME,),
             label="natural gas", label_zh="天然气"),
    Activity("raw_coal", "t", "fuel", 1, 1, max_rate_per_h=1000.0, quantities=(Quantity.OTHER,), label="raw coal", label_zh="原煤"),
    Activity("diesel", "t", "fuel", 1, 1, max_rate_per_h=200.0, quantities=(Quantity.OTHER,), label="diesel", label_zh="柴油"),
    Activity("gasoline", "t", "fuel", 1, 1, max_rate_per_h=200.0, quantities=(Quantity.OTHER,), label="gasoline", label_zh="汽油"),
    Activity("lpg", "t", "fuel", 1, 1, max_rate_per_h=200.0, quantities=(Quantity.OTHER,), label="LPG", label_zh="液化石油气"),
    Activity("fuel_oil", "t", "fuel", 1, 1, max_rate_per_h=200.0, quantities=(Quantity.OTHER,), label="fuel oil", label_zh="燃料油"),
    Activity("heat", "GJ", "heat", 2, 2, max_rate_per_h=10_000.0, quantities=(Quantity.HEAT_ENERGY,),
             label="purchased heat", label_zh="外购热力"),
    Activity("heat_export", "GJ", "heat", 2, 2, export=True, max_rate_per_h=10_000.0, quantities=(Quantity.HEAT_ENERGY,),
             label="exported heat", label_zh="输出热力"),
    Activity("steam", "GJ", "heat", 2, 2, max_rate_per_h=10_000.0, quantities=(Quantity.HEAT_ENERGY, Quantity.STEAM_MASS),
             label="purchased steam", label_zh="外购蒸汽"),
)}

#: The largest register value accepted from a file or a meter, in the register's own unit: past 2**53
#: (about 9e15) a float64 cannot hold a step of 1, so a larger value is a decoding error, not a reading.
MAX_REGISTER_VALUE = 1e15

# Multipliers to the canonical unit, per dimension. Units are matched case-sensitively after
# trimming, with a few spellings accepted (Nm3 = m3 at standard conditions, as the guidelines use).
_ENERGY_TO_MWH = {"Wh": 1e-6, "kWh": 1e-3, "MWh": 1.0, "GWh": 1e3}
_HEAT_TO_GJ = {"MJ": 1e-3, "GJ": 1.0, "TJ": 1e3, "kWh": 0.0036, "MWh": 3.6}
_VOLUME_TO_M3 = {"m3": 1.0, "Nm3": 1.0, "m³": 1.0, "L": 1e-3, "l": 1e-3, "10^4 m3": 1e4, "10^4 Nm3": 1e4}
_MASS_TO_T = {"t": 1.0, "kg": 1e-3}

#: Liquid fuels bought by volume: density in t/m3. Typical values (diesel 0.84, gasoline 0.73,
#: fuel oil 0.94, LPG 0.54 as liquid); a site with a delivery note should import tonnes instead.
LIQUID_DENSITY_T_PER_M3 = {"diesel": 0.84, "gasoline": 0.73, "fuel_oil": 0.94, "lpg": 0.54}

#: Steam metered by mass: heat = mass x (enthalpy - 83.74 kJ/kg) as in the national guidelines for
#: purchased steam (83.74 kJ/kg is feed water at 20 degC). 2763 kJ/kg is saturated steam at ~1 MPa;
#: set a measured enthalpy in SourceSettings when the steam conditions are known.
DEFAULT_STEAM_ENTHALPY_KJ_PER_KG = 2763.0
FEED_WATER_ENTHALPY_KJ_PER_KG = 83.74


#: Kinds a factor file may declare in ``[[activities]]`` (issue 14, "custom activities"): a fuel
#: (NCV x carbon content x oxidation, like the built-in ones), a process emission (amount x ef, e.g.
#: tCO2 per t of limestone calcined) or a refrigerant (leaked mass x GWP of the settings' AR).
CUSTOM_KINDS = ("fuel", "process", "refrigerant")


def builtin_activities() -> list[str]:
    """The built-in activity names, sorted (messages list these; declared ones are in the factor files)."""
    return sorted(name for name, act in ACTIVITIES.items() if not act.custom)


def register_activity(act: Activity) -> None:
    """Add an activity declared in a factor file; the same declaration again is harmless.

    :raises UnitError: when it would change a built-in activity or another declaration.
    """
    known = ACTIVITIES.get(act.name)
    if known is not None and known != act:
        raise UnitError(f"activity {act.name!r} is already defined ({'in another factor file' if known.custom else 'built in'})"
                        f" as {known.kind} in {known.unit}: use another name")
    ACTIVITIES[act.name] = act


def activity(name: str) -> Activity:
    """The :class:`Activity` called ``name``.

    :raises UnitError: for an unknown activity, listing the known ones.
    """
    try:
        return ACTIVITIES[name]
    except KeyError:
        raise UnitError(f"unknown activity {name!r}: use one of {', '.join(builtin_activities())}") from None


def accepted_units(activity_name: str) -> list[str]:
    """Units :func:`to_canonical` accepts for an activity."""
    act = activity(activity_name)
    if act.kind == "electricity":
        return list(_ENERGY_TO_MWH)
    if act.kind == "heat":
        return list(_HEAT_TO_GJ) + (["t"] if activity_name == "steam" else [])
    if activity_name == "natural_gas":
        return list(_VOLUME_TO_M3)
    if activity_name in LIQUID_DENSITY_T_PER_M3:
        return list(_MASS_TO_T) + ["L", "m3"]
    if act.unit == "m3":
        return list(_VOLUME_TO_M3)
    return list(_MASS_TO_T)


def factor_to_canonical(activity_name: str, unit: str,
                        steam_enthalpy_kj_per_kg: float = DEFAULT_STEAM_ENTHALPY_KJ_PER_KG) -> float:
    """Multiplier that converts an amount in ``unit`` to the activity's canonical unit.

    :raises UnitError: naming the activity, the unit and the accepted units.
    """
    act = activity(activity_name)
    u = unit.strip()
    table: dict[str, float]
    if act.kind == "electricity":
        table = _ENERGY_TO_MWH
    elif act.kind == "heat":
        table = dict(_HEAT_TO_GJ)
        if activity_name == "steam":
            table["t"] = (steam_enthalpy_kj_per_kg - FEED_WATER_ENTHALPY_KJ_PER_KG) / 1000.0
    elif activity_name == "natural_gas" or act.unit == "m3":
        table = _VOLUME_TO_M3
    else:
        table = dict(_MASS_TO_T)
        density = LIQUID_DENSITY_T_PER_M3.get(activity_name)
        if density is not None:
            table["m3"] = density
            table["L"] = density / 1000.0
    if u not in table:
        raise UnitError(f"unit {unit!r} is not valid for {activity_name}: "
                        f"use one of {', '.join(accepted_units(activity_name))}")
    return table[u]


def to_canonical(activity_name: str, amount: float, unit: str,
                 steam_enthalpy_kj_per_kg: float = DEFAULT_STEAM_ENTHALPY_KJ_PER_KG) -> float:
    """``amount`` in ``unit`` converted to the canonical unit of ``activity_name``."""
    return amount * factor_to_canonical(activity_name, unit, steam_enthalpy_kj_per_kg)
