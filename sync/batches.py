"""Batch payloads: stored readings <-> compact, columnar, delta-encoded, compressed bytes.

Layout of the plaintext (before sealing), all little-endian, then zlib-compressed as a whole:
``u32 meta_len | meta (UTF-8 JSON: series keys, invalid reasons) | columns``, where the columns are
``n`` x i64 reading-id deltas, ``n`` x u16 series index, ``n`` x i64 timestamp deltas in ms,
``n`` x f64 values (NaN for none) and ``n`` x u8 quality (0 ok, 1 invalid). Deltas make the id and time
columns runs of small, repeating numbers, which zlib squeezes well. See ``docs/sync-protocol.md``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sync.errors import BatchRejected

MAX_PLAINTEXT_BYTES = 64 * 1024 * 1024  # refuse decompression bombs


@dataclass(frozen=True)
class WireReading:
    reading_id: int
    meter_id: str
    point: str
    timestamp: float
    value: float | None
    unit: str
    quantity: str
    quality: str
    reason: str = ""


def encode_readings(readings: Sequence[WireReading]) -> bytes:
    series: dict[tuple[str, str, str, str], int] = {}
    index = np.empty(len(readings), dtype="<u2")
    for i, r in enumerate(readings):
        index[i] = series.setdefault((r.meter_id, r.point, r.unit, r.quantity), len(series))
    ids = np.array([r.reading_id for r in readings], dtype="<i8")
    ts = np.array([round(r.timestamp * 1000) for r in readings], dtype="<i8")
    values = np.array([np.nan if r.value is None else r.value for r in readings], dtype="<f8")
    quality = np.array([0 if r.quality == "ok" else 1 for r in readings], dtype="u1")
    meta = json.dumps({
        "series": [list(k) for k in series],
        "reasons": {str(i): r.reason for i, r in enumerate(readings) if r.reason},
    }, separators=(",", ":")).encode()
    body = b"".join([
        struct.pack("<I", len(meta)), meta,
        np.diff(ids, prepend=0).astype("<i8").tobytes(), index.tobytes(),
        np.diff(ts, prepend=0).astype("<i8").tobytes(), values.tobytes(), quality.tobytes(),
    ])
    return zlib.compress(body, 9)


def decode_readings(blob: bytes) -> list[WireReading]:
    """Inverse of :func:`encode_readings`; raises :class:`BatchRejected` ("malformed") on any inconsistency."""
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(blob, MAX_PLAINTEXT_BYTES)
        if inflater.unconsumed_tail:
            raise BatchRejected("oversized", f"payload inflates beyond {MAX_PLAINTEXT_BYTES} bytes")
        (meta_len,) = struct.unpack_from("<I", body, 0)
        meta = json.loads(body[4:4 + meta_len])
        columns = memoryview(body)[4 + meta_len:]
        n, rest = divmod(len(columns), 8 + 2 + 8 + 8 + 1)
        if rest:
            raise ValueError("column bytes are not a whole number of rows")
        offset = 0

        def take(dtype: str, size: int) -> np.ndarray:
            nonlocal offset
            array = np.frombuffer(columns[offset:offset + n * size], dtype=dtype)
            offset += n * size
            return array

        ids = np.cumsum(take("<i8", 8))
        index = take("<u2", 2)
        ts = np.cumsum(take("<i8", 8))
        values = take("<f8", 8)
        quality = take("u1", 1)
        series = [tuple(s) for s in meta["series"]]
        reasons = meta.get("reasons", {})
        return [
            WireReading(int(ids[i]), *series[index[i]][:2], float(ts[i]) / 1000.0,
                        None if np.isnan(values[i]) else float(values[i]), *series[index[i]][2:],
                        "ok" if quality[i] == 0 else "invalid", reasons.get(str(i), ""))
            for i in range(n)
        ]
    except BatchRejected:
        raise
    except (zlib.error, struct.error, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BatchRejected("malformed", f"payload does not decode: {exc}") from exc
