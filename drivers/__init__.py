"""Meter drivers: register maps, decoding, read planning, bus owners, commissioning, simulator."""

from drivers.model import (
    BusConfig, MeterConfig, Point, Profile, Quantity, Reading, SerialSettings,
)

__all__ = ["BusConfig", "MeterConfig", "Point", "Profile", "Quantity", "Reading", "SerialSettings"]
