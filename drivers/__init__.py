"""Meter drivers: register maps, decoding, read planning, bus owners, commissioning, simulator."""

from drivers.bus import BusPoller, MeterStats, read_meter
from drivers.errors import BusError, DecodeError, DriverError, ExceptionResponseError, ProfileError, RefusedError
from drivers.model import (BusConfig, MeterConfig, Point, Profile, Quantity, Ratios, Reading, SerialSettings,
                           parse_ratio)
from drivers.profiles import ProfileSet, load_profile, load_profile_set, load_profiles
from drivers.simulator import SimulatedDevice, SimulatorServer

__all__ = [
    "BusConfig", "BusError", "BusPoller", "DecodeError", "DriverError", "ExceptionResponseError", "MeterConfig",
    "MeterStats", "Point", "Profile", "ProfileError", "ProfileSet", "Quantity", "Ratios", "Reading", "RefusedError", "SerialSettings",
    "SimulatedDevice", "SimulatorServer",
    "load_profile", "load_profile_set", "load_profiles", "parse_ratio", "read_meter",
]
