"""Batch payloads: stored readings <-> compact, columnar, delta-encoded, compressed bytes.

Version 2 (written now) is described byte by byte in ``docs/sync-protocol.md``: rows grouped by series,
values turned into integers where that is exact (decimal scale or float32 bits), per-series deltas
(delta-of-delta for time), zigzag, split into byte planes, then zlib. Version 1 (below) is still read.

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


def encode_readings_v1(readings: Sequence[WireReading]) -> bytes:
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
    if blob[:1] in (bytes([FORMAT_V2]), bytes([FORMAT_V3])):
        return _decode_v2(blob)
    return _decode_v1(blob)


def _decode_v1(blob: bytes) -> list[WireReading]:
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
        keys = [(str(s[0]), str(s[1]), str(s[2]), str(s[3])) for s in series]
        return [
            WireReading(int(ids[i]), keys[index[i]][0], keys[index[i]][1], float(ts[i]) / 1000.0,
                        None if np.isnan(values[i]) else float(values[i]), keys[index[i]][2], keys[index[i]][3],
                        "ok" if quality[i] == 0 else "invalid", reasons.get(str(i), ""))
            for i in range(n)
        ]
    except BatchRejected:
        raise
    except (zlib.error, struct.error, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BatchRejected("malformed", f"payload does not decode: {exc}") from exc


# -- version 2 -------------------------------------------------------------------------------------------
FORMAT_V2 = 2
FORMAT_V3 = 3       # format 2 with flags and reasons dictionary-encoded per batch (issue 16)
MODE_DECIMAL, MODE_F32, MODE_F64 = 0, 1, 2     # how a series' values became integers
_ROW_FLAG_INVALID, _ROW_FLAG_NO_VALUE = 1, 2


def _zigzag(x: np.ndarray) -> np.ndarray:
    return ((x << 1) ^ (x >> 63)).view("<u8")


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return ((u >> np.uint64(1)).view("<i8")) ^ -((u & np.uint64(1)).view("<i8"))


def _planes(x: np.ndarray) -> bytes:
    """i64 column -> zigzag -> 8 byte planes (all low bytes, then the next ...): small numbers leave
    runs of zero bytes that the compressor removes almost for free."""
    return np.ascontiguousarray(_zigzag(x.astype("<i8")).view("u1").reshape(-1, 8).T).tobytes()


def _unplanes(data: memoryview, n: int) -> np.ndarray:
    planes = np.frombuffer(data, dtype="u1", count=8 * n).reshape(8, n)
    return _unzigzag(np.ascontiguousarray(planes.T).view("<u8").reshape(n))


def _group_deltas(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Differences within each group (rows already grouped); each group's first element stays as is."""
    d = np.diff(x, prepend=np.int64(0))
    d[starts] = x[starts]
    return d


def _group_cumsum(d: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = np.cumsum(d)
    offsets = np.repeat(total[starts] - d[starts], lengths)
    return total - offsets


def _series_ints(values: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(mode, decimals, integers) that reproduce ``values`` bit for bit."""
    finite = values.size > 0 and bool(np.all(np.isfinite(values))) and bool(np.all(np.abs(values) < 2**52 / 1e6))
    # Whole numbers first (counters), then float32 (most meters' floats), then 0.1 ... 1e-6 steps.
    for decimals in (0, None, 1, 2, 3, 4, 5, 6):
        if decimals is None:
            with np.errstate(over="ignore"):   # out of float32 range: the comparison says "not f32"
                as32 = values.astype("<f4")
            if np.array_equal(as32.astype("<f8"), values, equal_nan=True):
                return MODE_F32, 0, as32.view("<i4").astype("<i8")
        elif finite:
            ints = np.round(values * 10.0 ** decimals)
            # Drivers compute raw * scale (e.g. * 0.001); check that exact operation round-trips.
            if np.array_equal(ints * float(f"1e-{decimals}") if decimals else ints, values):
                return MODE_DECIMAL, decimals, ints.astype("<i8")
    return MODE_F64, 0, values.view("<i8")


def encode_readings(readings: Sequence[WireReading], payload_format: int = FORMAT_V3) -> bytes:
    """Readings (in reading-id order) -> payload bytes (format 3 unless told)."""
    return encode_rows([(r.reading_id, r.meter_id, r.point, r.timestamp, r.value, r.unit, r.quantity, r.quality,
                         r.reason) for r in readings], payload_format)


def encode_rows(rows: Sequence[tuple], payload_format: int = FORMAT_V3) -> bytes:
    """Rows ``(id, meter_id, point, timestamp, value, unit, quantity, quality, reason)`` in id order ->
    payload bytes, format 3 (the outbox passes SQLite rows straight in: no per-reading objects).

    :param payload_format: 2 writes the older format (for tests of receivers that must still read it).
    """
    n = len(rows)
    if n == 0:
        raise ValueError("a batch needs at least one reading")
    id_c, meter_c, point_c, ts_c, value_c, unit_c, quantity_c, quality_c, reason_c = zip(*rows)
    series: dict[tuple[str, str, str, str], int] = {}
    index = np.array([series.setdefault(k, len(series)) for k in zip(meter_c, point_c, unit_c, quantity_c)],
                     dtype="<i8")
    ids = np.array(id_c, dtype="<i8")
    ts = np.round(np.array(ts_c, dtype="<f8") * 1000).astype("<i8")
    values = np.array(value_c, dtype="<f8")         # None -> NaN
    no_value = np.array([v is None for v in value_c], dtype=bool)
    flags = (np.array([q != "ok" for q in quality_c], dtype="u1") * _ROW_FLAG_INVALID
             + no_value.astype("u1") * _ROW_FLAG_NO_VALUE).astype("u1")
    order = np.argsort(index, kind="stable")            # rows grouped by series, id order within
    g_index = index[order]
    starts = np.flatnonzero(np.diff(g_index, prepend=-1))
    lengths = np.diff(np.append(starts, n))
    g_ts = ts[order]
    ts_dd = _group_deltas(_group_deltas(g_ts, starts), starts)   # delta of delta: steady polling -> ~0
    g_values, g_flags = values[order], flags[order]
    has_value = (g_flags & _ROW_FLAG_NO_VALUE) == 0
    modes: list[list[int]] = []
    value_parts = []
    for s_start, s_len in zip(starts.tolist(), lengths.tolist()):
        mask = has_value[s_start:s_start + s_len]
        v = g_values[s_start:s_start + s_len][mask]
        mode, decimals, ints = _series_ints(v)
        modes.append([mode, decimals])
        deltas = np.bitwise_xor(ints, np.concatenate(([0], ints[:-1])).astype("<i8")) if mode == MODE_F64 \
            else np.diff(ints, prepend=np.int64(0))
        value_parts.append(deltas.astype("<i8"))
    value_col = np.concatenate(value_parts) if value_parts else np.zeros(0, "<i8")
    # Flags and reason per row, dictionary-encoded per batch (issue 16): a table of the distinct
    # (flags, reason) pairs and a u16 index per row. An unsynchronised clock puts the same reason on every
    # reading; format 2 spelt it out once per row.
    meta_fields: dict = {"series": [list(k) for k in series], "counts": lengths.tolist(), "modes": modes}
    if payload_format == FORMAT_V2:
        meta_fields["reasons"] = {str(i): r for i, r in enumerate(reason_c) if r}
        row_column = g_flags.tobytes()
    else:
        kinds: dict[tuple[int, str], int] = {}
        g_reasons = [reason_c[i] for i in order.tolist()]
        kind_index = np.array([kinds.setdefault((f, r), len(kinds)) for f, r in zip(g_flags.tolist(), g_reasons)])
        if len(kinds) > 65_536:
            raise ValueError("more than 65 536 distinct (flags, reason) pairs in one batch")
        meta_fields["kinds"] = [[f, r] for f, r in kinds]
        row_column = np.ascontiguousarray(kind_index.astype("<u2").view("u1").reshape(-1, 2).T).tobytes()
    meta = json.dumps(meta_fields, separators=(",", ":")).encode()
    body = b"".join([
        struct.pack("<IIQ", len(meta), n, len(value_col)), meta,
        _planes(np.diff(ids, prepend=np.int64(0))), _planes(np.diff(index, prepend=np.int64(0))),
        _planes(ts_dd), row_column, _planes(value_col),
    ])
    return bytes([payload_format]) + zlib.compress(body, 9)


def _decode_v2(blob: bytes) -> list[WireReading]:
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(blob[1:], MAX_PLAINTEXT_BYTES)
        if inflater.unconsumed_tail:
            raise BatchRejected("oversized", f"payload inflates beyond {MAX_PLAINTEXT_BYTES} bytes")
        meta_len, n, n_values = struct.unpack_from("<IIQ", body, 0)
        meta = json.loads(body[16:16 + meta_len])
        columns = memoryview(body)[16 + meta_len:]
        v3 = blob[0] == FORMAT_V3
        row_bytes = 2 if v3 else 1          # v3: a u16 index into meta "kinds" (2 byte planes); v2: flags
        if len(columns) != 8 * n * 3 + row_bytes * n + 8 * n_values:
            raise ValueError("column bytes do not match the row counts (truncated or padded)")
        ids = np.cumsum(_unplanes(columns[:8 * n], n))
        index = np.cumsum(_unplanes(columns[8 * n:16 * n], n))
        ts_dd = _unplanes(columns[16 * n:24 * n], n)
        g_reasons: list[str] | None = None
        if v3:
            planes = np.frombuffer(columns[24 * n:26 * n], dtype="u1").reshape(2, n)
            kind_index = np.ascontiguousarray(planes.T).view("<u2").reshape(n).astype("<i8")
            kinds = meta["kinds"]
            if not all(isinstance(k, list) and len(k) == 2 and isinstance(k[0], int) and isinstance(k[1], str)
                       and 0 <= k[0] < 256 for k in kinds):
                raise ValueError("kinds must be [flags, reason] pairs")
            if n and (kind_index.max() >= len(kinds)):
                raise ValueError("a row names a kind that is not in the table")
            kind_flags = np.array([k[0] for k in kinds] or [0], dtype="u1")
            g_flags = kind_flags[kind_index]
            g_reasons = [kinds[k][1] for k in kind_index.tolist()]
        else:
            g_flags = np.frombuffer(columns[24 * n:25 * n], dtype="u1")
        value_col = _unplanes(columns[24 * n + row_bytes * n:], n_values)
        series = [tuple(str(x) for x in s) for s in meta["series"]]
        lengths = np.array(meta["counts"], dtype="<i8")
        modes = meta["modes"]
        if len(series) != len(lengths) or len(modes) != len(series) or int(lengths.sum()) != n or \
                (n and (index.min() < 0 or index.max() >= len(series))):
            raise ValueError("series table does not match the rows")
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype("<i8")
        g_ts = _group_cumsum(_group_cumsum(ts_dd, starts, lengths), starts, lengths)
        g_values = np.full(n, np.nan)
        has_value = (g_flags & _ROW_FLAG_NO_VALUE) == 0
        if int(has_value.sum()) != n_values:
            raise ValueError("value count does not match the flags")
        pos = 0
        for (mode, decimals), s_start, s_len in zip(modes, starts, lengths):
            mask = has_value[s_start:s_start + s_len]
            k = int(mask.sum())
            d = value_col[pos:pos + k]
            pos += k
            if mode == MODE_F64:
                ints = np.bitwise_xor.accumulate(d) if k else d
                v = ints.view("<f8")
            elif mode == MODE_F32:
                v = np.cumsum(d).astype("<i4").view("<f4").astype("<f8")
            elif mode == MODE_DECIMAL and 0 <= decimals <= 6:
                ints = np.cumsum(d).astype("<f8")
                v = ints * float(f"1e-{decimals}") if decimals else ints
            else:
                raise ValueError(f"unknown value mode {mode}")
            g_values[s_start:s_start + s_len][mask] = v
        # Back from series-grouped order to reading-id order.
        order = np.argsort(index, kind="stable")
        if not np.array_equal(index[order], np.repeat(np.arange(len(series)), lengths)):
            raise ValueError("series counts do not match the series column")
        ts = np.empty(n, "<i8")
        ts[order] = g_ts
        values = np.empty(n)
        values[order] = g_values
        flags = np.empty(n, "u1")
        flags[order] = g_flags
        if g_reasons is not None:
            by_row = [""] * n
            for k, row in enumerate(order.tolist()):
                by_row[row] = g_reasons[k]
            reasons = {str(i): r for i, r in enumerate(by_row) if r}
        else:
            reasons = meta.get("reasons", {})
        id_list, ts_list, value_list, flag_list, index_list = (ids.tolist(), ts.tolist(), values.tolist(),
                                                               flags.tolist(), index.tolist())
        out = []
        for i in range(n):
            s = series[index_list[i]]
            f = flag_list[i]
            out.append(WireReading(id_list[i], s[0], s[1], ts_list[i] / 1000.0,
                                   None if f & _ROW_FLAG_NO_VALUE else value_list[i], s[2], s[3],
                                   "invalid" if f & _ROW_FLAG_INVALID else "ok", reasons.get(str(i), "")))
        return out
    except BatchRejected:
        raise
    except (zlib.error, struct.error, ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise BatchRejected("malformed", f"payload does not decode: {exc}") from exc


# -- derived data (issue 14 part 8) ---------------------------------------------------------------------
#: Tables of a ``derived`` batch and their columns, in order (docs/sync-protocol.md, "Derived data").
DERIVED_TABLES: dict[str, int] = {"emissions": 21, "intervals": 10, "factors": 12, "activity_data": 11,
                                  "instruments": 8}


def encode_derived(payload: dict) -> bytes:
    """A ``derived`` payload: ``b"D1"`` + zlib of compact JSON ``{table: [rows]}`` (no NaN, no infinity)."""
    body = {name: payload.get(name, []) for name in DERIVED_TABLES}
    return b"D1" + zlib.compress(json.dumps(body, separators=(",", ":"), allow_nan=False).encode(), 6)


def decode_derived(blob: bytes) -> dict:
    """:raises ValueError: for anything but a well-formed ``derived`` payload."""
    if blob[:2] != b"D1":
        raise ValueError("not a derived payload (expected version D1)")
    try:
        body = json.loads(zlib.decompressobj().decompress(blob[2:], MAX_PLAINTEXT_BYTES))
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"derived payload does not decode: {exc}") from None
    if not isinstance(body, dict) or set(body) != set(DERIVED_TABLES):
        raise ValueError(f"derived payload must hold exactly the tables {', '.join(DERIVED_TABLES)}")
    for name, width in DERIVED_TABLES.items():
        rows = body[name]
        if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != width for r in rows):
            raise ValueError(f"derived payload: every row of {name} must be a list of {width} values")
    return body
