"""Registers -> values, and back (for the simulator), for every data type a profile may name."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from drivers.errors import DecodeError
from drivers.model import REGISTER_COUNT, Point

_STRUCT = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}


def _ordered_bytes(registers: Sequence[int], word_order: str, byte_order: str) -> bytes:
    words = list(registers) if word_order == "big" else list(reversed(registers))
    out = bytearray()
    for word in words:
        pair = word.to_bytes(2, "big")
        out += pair if byte_order == "big" else pair[::-1]
    return bytes(out)


def _bcd(raw: bytes) -> int:
    value = 0
    for byte in raw:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise DecodeError(f"0x{raw.hex()} is not BCD (nibble above 9)")
        value = value * 100 + hi * 10 + lo
    return value


def decode_raw(point: Point, registers: Sequence[int]) -> float:
    """The unscaled number held in ``registers``.

    :raises DecodeError: wrong register count, a NaN sentinel, a non-finite float or bad BCD.
    """
    if len(registers) != point.count:
        raise DecodeError(f"expected {point.count} registers for {point.data_type}, got {len(registers)}")
    raw = _ordered_bytes(registers, point.word_order, point.byte_order)
    if point.data_type.startswith("bcd"):
        return float(_bcd(raw))
    value = struct.unpack(">" + _STRUCT[point.data_type], raw)[0]
    if point.nan_values and not point.data_type.startswith("f") and int(value) in point.nan_values:
        raise DecodeError(f"meter reports 'not available' ({value})")
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f"meter sent a non-finite float ({value})")
    return float(value)


def decode_point(point: Point, registers: Sequence[int], exponent: int = 0) -> float:
    """The scaled value in the point's unit: ``raw * scale * 10**exponent``."""
    return decode_raw(point, registers) * point.scale * (10.0 ** exponent)


def make_decoder(point: Point) -> Callable[[Sequence[int]], float]:
    """A function registers -> scaled value for ``point`` (without a scale-factor register), for polling.

    The common case (big-endian words and bytes, no sentinels) packs the words with one precompiled struct;
    every other case goes through :func:`decode_point`. Both raise :class:`DecodeError` the same way.
    """
    if (point.data_type.startswith("bcd") or point.nan_values or point.word_order != "big"
            or point.byte_order != "big"):
        return lambda registers: decode_point(point, registers)
    words = struct.Struct(">" + "H" * point.count)
    number = struct.Struct(">" + _STRUCT[point.data_type])
    scale, count, is_float = point.scale, point.count, point.data_type.startswith("f")

    def decode(registers: Sequence[int]) -> float:
        if len(registers) != count:
            raise DecodeError(f"expected {count} registers for {point.data_type}, got {len(registers)}")
        value = number.unpack(words.pack(*registers))[0]
        if is_float and not math.isfinite(value):
            raise DecodeError(f"meter sent a non-finite float ({value})")
        return value * scale
    return decode


def encode_point(point: Point, value: float) -> list[int]:
    """Registers a meter would send for ``value`` (in the point's unit); the simulator's inverse of decode."""
    raw_number = value / point.scale
    if point.data_type.startswith("bcd"):
        digits = REGISTER_COUNT[point.data_type] * 4
        n = max(0, min(int(round(raw_number)), 10 ** digits - 1))
        raw = bytes.fromhex(f"{n:0{digits}d}")
    elif point.data_type.startswith("f"):
        raw = struct.pack(">" + _STRUCT[point.data_type], raw_number)
    else:
        fmt = _STRUCT[point.data_type]
        bits = 8 * struct.calcsize(fmt)
        n = int(round(raw_number))
        if fmt.isupper():
            n %= 1 << bits  # counters wrap like the real register does
        else:
            n = max(-(1 << (bits - 1)), min(n, (1 << (bits - 1)) - 1))
        raw = struct.pack(">" + fmt, n)
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    words = [w if point.byte_order == "big" else w[::-1] for w in words]
    registers = [int.from_bytes(w, "big") for w in words]
    return registers if point.word_order == "big" else list(reversed(registers))
