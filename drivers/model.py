"""Typed values that cross the drivers -> local_store -> sync border.

These are the contract between packages: ``local_store`` stores :class:`Reading`
objects, ``gateway.config`` builds :class:`BusConfig` and :class:`MeterConfig`.
Nothing here touches the network, SQLite or MQTT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

DataType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bcd16", "bcd32"]
RegisterTable = Literal["holding", "input"]
Order = Literal["big", "little"]
Transport = Literal["tcp", "rtu", "rtu_over_tcp"]
Parity = Literal["N", "E", "O"]
#: Which instrument-transformer ratios a point's value still lacks (issue 13): "current" (scaled by the CT
#: ratio), "voltage" (the PT ratio), "both" (power and energy: CT x PT), or "none" (already primary, or not
#: electrical).
Secondary = Literal["none", "current", "voltage", "both"]

#: 16-bit registers occupied by each data type.
REGISTER_COUNT: dict[str, int] = {
    "u16": 1, "i16": 1, "bcd16": 1,
    "u32": 2, "i32": 2, "f32": 2, "bcd32": 2,
    "u64": 4, "i64": 4, "f64": 4,
}

#: Modbus allows at most 125 registers in one read (function codes 3 and 4).
MAX_REGISTERS_PER_READ = 125


class Quantity(str, Enum):
    """What a point measures. Cumulative quantities are counters that only grow."""

    ENERGY_IMPORT = "energy_import"          # kWh, cumulative active energy imported
    ENERGY_EXPORT = "energy_export"          # kWh, cumulative active energy exported
    REACTIVE_ENERGY = "reactive_energy"      # kvarh, cumulative
    GAS_VOLUME = "gas_volume"                # m3 (standard), cumulative
    HEAT_ENERGY = "heat_energy"              # GJ, cumulative (heat / steam meters)
    STEAM_MASS = "steam_mass"                # t, cumulative
    WATER_VOLUME = "water_volume"            # m3, cumulative
    PULSE_COUNT = "pulse_count"              # pulses, cumulative
    ACTIVE_POWER = "active_power"            # kW
    REACTIVE_POWER = "reactive_power"        # kvar
    APPARENT_POWER = "apparent_power"        # kVA
    VOLTAGE = "voltage"                      # V
    CURRENT = "current"                      # A
    FREQUENCY = "frequency"                  # Hz
    POWER_FACTOR = "power_factor"            # -
    FLOW_RATE = "flow_rate"                  # m3/h or t/h
    TEMPERATURE = "temperature"              # degC
    PRESSURE = "pressure"                    # kPa
    OTHER = "other"

    @property
    def cumulative(self) -> bool:
        return self in CUMULATIVE_QUANTITIES


CUMULATIVE_QUANTITIES = frozenset({
    Quantity.ENERGY_IMPORT, Quantity.ENERGY_EXPORT, Quantity.REACTIVE_ENERGY,
    Quantity.GAS_VOLUME, Quantity.HEAT_ENERGY, Quantity.STEAM_MASS,
    Quantity.WATER_VOLUME, Quantity.PULSE_COUNT,
})


@dataclass(frozen=True)
class Point:
    """One named value of a meter model: where it lives and how to decode it."""

    name: str                       # e.g. "energy_import", "voltage_l1"
    address: int                    # 0-based register address as sent on the wire
    data_type: DataType
    quantity: Quantity
    unit: str                       # unit of the value *after* scaling, e.g. "kWh"
    table: RegisterTable = "holding"
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0              # value = raw * scale (* 10**scale_register if set)
    scale_register: int | None = None  # address of a signed power-of-ten exponent (SunSpec style)
    nan_values: tuple[int, ...] = ()   # raw integers the meter uses for "not available"
    description: str = ""
    secondary: Secondary = "none"      # secondary-side value: the meter's CT/PT ratios turn it into primary

    @property
    def count(self) -> int:
        return REGISTER_COUNT[self.data_type]


@dataclass(frozen=True)
class Signature:
    """A register whose value identifies the meter model (a model code, a fixed firmware id), for ``scan``."""

    address: int
    values: tuple[int, ...]         # any of these identifies the model
    data_type: Literal["u16", "u32"] = "u16"
    table: RegisterTable = "holding"


@dataclass(frozen=True)
class Profile:
    """A meter model's register map, loaded from ``config/profiles/<id>.toml``."""

    id: str
    manufacturer: str
    model: str
    points: tuple[Point, ...]
    source: str = ""                # the public document the map was taken from
    description: str = ""
    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    vendor_name: str = ""           # what the meter answers to Read Device Identification (FC 43/14),
    product_code: str = ""          # empty when the model does not implement it
    signatures: tuple[Signature, ...] = ()

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def secondary_side(self) -> frozenset[str]:
        """Which ratios the profile's values need ("current", "voltage"); empty when every value is primary."""
        sides: set[str] = set()
        for p in self.points:
            if p.secondary in ("current", "both"):
                sides.add("current")
            if p.secondary in ("voltage", "both"):
                sides.add("voltage")
        return frozenset(sides)


@dataclass(frozen=True)
class Ratios:
    """A meter's instrument-transformer ratios: primary value = secondary value x ratio."""

    ct: float = 1.0                 # current transformer, e.g. 100/5 A -> 20
    pt: float = 1.0                 # voltage (potential) transformer, e.g. 10000/100 V -> 100

    def factor(self, secondary: Secondary) -> float:
        """What a value of a point marked ``secondary`` is multiplied by to be primary."""
        if secondary == "current":
            return self.ct
        if secondary == "voltage":
            return self.pt
        if secondary == "both":
            return self.ct * self.pt
        return 1.0


def parse_ratio(value: object, what: str = "ct_ratio") -> float:
    """A transformer ratio written as ``"100/5"``, ``"20"`` or a number, as a positive float.

    :raises ValueError: with the fix, e.g. for ``"100:5"``, ``0`` or ``"5/0"``.
    """
    example = '"100/5"' if what.startswith("ct") else '"10000/100"'
    fix = f"write the ratio as primary/secondary, e.g. {example}, or as a number; 1 for a direct connection"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(fix)
    try:
        if isinstance(value, str):
            primary, slash, secondary = value.strip().partition("/")
            ratio = float(primary) / float(secondary) if slash else float(primary)
        else:
            ratio = float(value)
    except (ValueError, ZeroDivisionError):
        raise ValueError(fix) from None
    if not (ratio > 0 and math.isfinite(ratio) and ratio <= 1e6):
        raise ValueError(fix)
    return ratio


@dataclass(frozen=True)
class SerialSettings:
    port: str                       # e.g. "/dev/ttyUSB0"
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8


@dataclass(frozen=True)
class BusConfig:
    """One physical or logical bus: a serial line, or one TCP endpoint."""

    name: str
    transport: Transport
    host: str = "127.0.0.1"          # tcp / rtu_over_tcp
    port: int = 502
    serial: SerialSettings | None = None  # rtu
    timeout_s: float = 1.0
    retries: int = 0
    inter_request_delay_s: float = 0.0  # pause between requests on the wire (slow RS-485 devices)
    max_gap_registers: int = 10      # read planner: bridge holes up to this many registers


@dataclass(frozen=True)
class MeterConfig:
    id: str                         # stable name, e.g. "main-incomer"
    bus: str                        # BusConfig.name
    device_id: int                  # Modbus unit id, 1..247
    profile: str                    # Profile.id
    poll_interval_s: float = 5.0
    enabled: bool = True
    description: str = ""
    ct_ratio: float | None = None    # None: not set in the config (1 is used, and doctor flags the meter)
    pt_ratio: float | None = None    # None: not set (1, a direct low-voltage connection)

    @property
    def ratios(self) -> Ratios:
        return Ratios(self.ct_ratio or 1.0, self.pt_ratio or 1.0)


Quality = Literal["ok", "invalid"]


@dataclass(frozen=True)
class Reading:
    """One decoded value as read from a meter.

    ``timestamp`` is UTC seconds since the epoch (wall clock at the moment of the reply).
    A reading the driver could not decode has ``quality="invalid"``, ``value=None`` and a
    ``reason``; it is never a silent zero.
    """

    meter_id: str
    point: str
    timestamp: float
    value: float | None
    unit: str
    quantity: Quantity
    quality: Quality = "ok"
    reason: str = ""
    raw: tuple[int, ...] = field(default=(), compare=False)  # the registers, for commissioning
