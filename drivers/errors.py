"""Exceptions of the drivers package; ``DriverError`` is the root."""

from __future__ import annotations


class DriverError(Exception):
    """Something about meters, buses or profiles went wrong."""


class ProfileError(DriverError):
    """A profile file is unreadable or invalid; the message names file, point and fix."""


class DecodeError(DriverError):
    """Registers could not be turned into a value."""


class BusError(DriverError):
    """A bus could not be opened or a meter did not answer."""
