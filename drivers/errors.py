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


class ExceptionResponseError(BusError):
    """The device answered with a Modbus exception response; ``code`` is the exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def from_gateway(self) -> bool:
        """Exception 10 or 11: a Modbus gateway answered for a unit behind it that did not."""
        return self.code in (10, 11)


class RefusedError(ExceptionResponseError):
    """Exception 2 (illegal data address) or 3 (illegal data value): the device refuses the range or length."""


def not_utf8(exc: UnicodeDecodeError) -> str:
    """The start of the message for a text file that is not UTF-8 (a UTF-16 export, a binary file)."""
    return f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
