"""The preprocessing model: raw readings -> cleaned series -> interval consumption (numpy, vectorised).

Every reading gets a status (measured / estimated / invalid) and a bit set of reasons; every
interval gets a quality and the fraction of its time covered by measured data. The formulas are
in docs/models.md. Functions here are pure (arrays in, arrays out) so the store, the importer and
the benchmark share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

import numpy as np

MEASURED, ESTIMATED, INVALID = 0, 1, 2
STATUS_NAMES = ("measured", "estimated", "invalid")

#: Earliest timestamp accepted (2000-01-01 UTC): an RTC that lost power restarts near 1970.
MIN_VALID_TS = 946_684_800.0


class Reason(IntFlag):
    """Why a reading or an interval is not plainly measured. Stored as an integer bit set."""

    NONE = 0
    DECODE = 1            # the driver could not decode the value
    DUPLICATE = 2         # same timestamp as an earlier reading
    OUT_OF_ORDER = 4      # arrived after a later reading, within the clock tolerance
    CLOCK_JUMP = 8        # timestamp far behind earlier readings, in the future or before 2000
    SPIKE = 16            # off the trend and the next reading comes back
    NEGATIVE = 32         # cumulative register went down (not a rollover or reset)
    ROLLOVER = 64         # counter wrapped at its maximum
    RESET = 128           # meter reset or replaced: the register restarted near zero
    FROZEN = 256          # value unchanged for longer than the frozen limit
    GAP = 512             # interval estimated by interpolating the cumulative register
    LONG_GAP = 1024       # the gap is longer than the long-gap limit
    RANGE = 2048          # instantaneous value outside the configured range
    OUTLIER = 4096        # instantaneous value a robust outlier (median / MAD)
    NO_DATA = 8192        # instantaneous: no valid value in the interval


def reason_names(bits: int) -> list[str]:
    return [r.name.lower() for r in Reason if r and bits & r and r.name]


class Kind(IntEnum):
    CUMULATIVE = 0
    INSTANTANEOUS = 1


@dataclass(frozen=True)
class CumulativeRules:
    """Rules for a cumulative register (energy, volume, heat, mass). Times in seconds.

    :param rollover_at: the register's maximum + 1 where it wraps to 0 (e.g. 1e8 for an 8-digit
        counter); None detects a wrap near a power of ten (from >= 90 % to <= 10 % of it).
    :param reset_ratio: a drop to below this share of the previous value, not a rollover, is a
        meter reset or replacement; the new register is assumed to have started at 0.
    :param max_gap_s: readings further apart than this leave a gap whose intervals are estimated.
    :param long_gap_s: gaps longer than this are also flagged ``long_gap``.
    :param frozen_after_s: a value unchanged for longer than this is frozen; the readings of the run
        after its first are dropped (its last too, unless it is the newest) and the span from the run's
        start to the next reading interpolated and estimated (None: never).
    :param clock_jump_s: a reading older than the newest earlier-arrived one by more than this is a
        clock jump and is dropped; smaller disorder is sorted out.
    :param max_rate_per_h: optional plausibility limit on consumption per hour; a step above it that
        does not come back is dropped as a spike.
    :param bound_per_h: the activity's hard bound (``units.Activity.max_rate_per_h``): a step above it,
        after every other rule, is no consumption at all (a misread or replaced register). It counts 0,
        the reading after it is flagged ``spike`` and estimated, and its span estimated.
    """

    rollover_at: float | None = None
    reset_ratio: float = 0.1
    max_gap_s: float = 1800.0
    long_gap_s: float = 86_400.0
    frozen_after_s: float | None = 86_400.0
    clock_jump_s: float = 300.0
    max_rate_per_h: float | None = None
    bound_per_h: float | None = None


@dataclass(frozen=True)
class InstantRules:
    """Rules for instantaneous values (power, flow, temperature...).

    :param mad_threshold: a value whose robust z-score 0.6745 |x - median| / MAD exceeds this is an
        outlier (Iglewicz and Hoaglin use 3.5).
    """

    min_value: float | None = None
    max_value: float | None = None
    mad_threshold: float = 3.5
    frozen_after_s: float | None = None
    clock_jump_s: float = 300.0


@dataclass
class CleanSeries:
    """A cumulative series after cleaning, in time order (only kept readings)."""

    t: np.ndarray                 # float64 epoch seconds, strictly increasing
    c: np.ndarray                 # float64 corrected cumulative (monotone, rollovers unwrapped)
    est_after: np.ndarray         # bool per kept reading: the span to the next reading is estimated
    reasons_after: np.ndarray     # int per kept reading: reasons of the span to the next reading
    status: np.ndarray            # int8 per *input* reading (input order): MEASURED/ESTIMATED/INVALID
    reasons: np.ndarray           # int32 per input reading
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Intervals:
    """Consumption per interval. ``start`` is an int64 epoch second on the interval grid."""

    start: np.ndarray
    amount: np.ndarray
    measured_fraction: np.ndarray     # share of the covered time backed by measured readings
    status: np.ndarray                # int8
    reasons: np.ndarray               # int32
    covered_s: np.ndarray             # seconds of the interval between the first and last reading

    def __len__(self) -> int:
        return len(self.start)


def _order_and_timestamps(t: np.ndarray, valid: np.ndarray, clock_jump_s: float,
                          now: float | None, reasons: np.ndarray, polled: np.ndarray | None = None) -> np.ndarray:
    """Flag clock faults and duplicates; return the input indices of usable readings in time order.

    :param polled: per reading, whether its arrival order means something (a live poll). Readings from a
        file or a backfill arrive in any order; only the timestamps order them, so the arrival-order
        clock-jump rule never applies to them (issue 14). None: all are polled.
    """
    n = len(t)
    bad_time = ~np.isfinite(t) | (t < MIN_VALID_TS)
    if now is not None:
        bad_time |= t > now + clock_jump_s
    reasons[bad_time] |= Reason.CLOCK_JUMP
    ok = valid & ~bad_time
    live = ok if polled is None else ok & polled
    # In arrival order, a timestamp far behind the newest polled one seen is a clock jump (an RTC
    # reset); a little behind is ordinary out-of-order delivery.
    tt = np.where(live, t, -np.inf)
    newest_before = np.maximum.accumulate(np.concatenate(([-np.inf], tt[:-1]))) if n else tt
    behind = live & (t < newest_before)
    jump = behind & (t < newest_before - clock_jump_s)
    reasons[behind & ~jump] |= Reason.OUT_OF_ORDER
    reasons[jump] |= Reason.CLOCK_JUMP
    ok &= ~jump
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(t[idx], kind="stable")]
    if len(idx) > 1:
        dup = np.concatenate(([False], np.diff(t[idx]) == 0))
        reasons[idx[dup]] |= Reason.DUPLICATE
        idx = idx[~dup]
    return idx


def _spikes(v: np.ndarray) -> np.ndarray:
    """Readings outside [previous, next] while previous <= next: off the trend and coming back."""
    s = np.zeros(len(v), dtype=bool)
    if len(v) >= 3:
        prev, cur, nxt = v[:-2], v[1:-1], v[2:]
        s[1:-1] = (prev <= nxt) & ((cur > nxt) | (cur < prev))
    return s


def _wrap_deltas(prev: np.ndarray, cur: np.ndarray, rules: CumulativeRules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For drops prev > cur: (is_rollover, is_reset, delta). delta is the consumption across the drop."""
    if rules.rollover_at:
        m = rules.rollover_at
        roll = (prev >= 0.5 * m) & (cur < 0.5 * m)
        roll_delta = m - prev + cur
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            boundary = 10.0 ** np.ceil(np.log10(np.maximum(prev, 1.0)))
        boundary = np.where(boundary <= prev, boundary * 10, boundary)
        roll = (prev >= 0.9 * boundary) & (cur <= 0.1 * boundary)
        roll_delta = boundary - prev + cur
    reset = ~roll & (cur < rules.reset_ratio * prev)
    delta = np.where(roll, roll_delta, np.where(reset, cur, 0.0))
    return roll, reset, delta


def clean_cumulative(t: np.ndarray, v: np.ndarray, rules: CumulativeRules = CumulativeRules(),
                     now: float | None = None, polled: np.ndarray | None = None) -> CleanSeries:
    """Clean a cumulative register given in arrival order (NaN value = invalid reading).

    :param polled: which readings came from live polling (see :func:`_order_and_timestamps`); None: all.

    Energy is conserved: the corrected cumulative ``c`` rises by exactly the register's own rise
    between kept readings, plus the wrap-around at a rollover, plus the new register's value after a
    reset. Dropped readings (spikes, negative steps, frozen runs) do not change that total.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n = len(t)
    reasons = np.zeros(n, dtype=np.int32)
    valid = np.isfinite(v)
    reasons[~valid] |= Reason.DECODE
    idx = _order_and_timestamps(t, valid, rules.clock_jump_s, now, reasons,
                                None if polled is None else np.asarray(polled, dtype=bool))

    # Single-reading spikes and dips (a reading that comes back) go first, so that a spike is not
    # mistaken for a rollover or a reset.
    sp = _spikes(v[idx])
    reasons[idx[sp]] |= Reason.SPIKE
    idx = idx[~sp]

    # Drops that are neither rollover nor reset (small backward steps, register glitches): keep a
    # running maximum within each segment between wraps, drop the readings under it.
    vv = v[idx]
    if len(vv) > 1:
        prev, cur = vv[:-1], vv[1:]
        di = np.flatnonzero(cur < prev)          # drops are rare: classify only those
        roll, reset, _ = _wrap_deltas(prev[di], cur[di], rules)
        event = np.zeros(len(vv), dtype=bool)
        event[di[roll | reset] + 1] = True
        seg = np.cumsum(event)
        span = float(np.nanmax(vv) - np.nanmin(vv)) + 1.0
        w = vv + seg * 2.0 * span           # offsets make the running max restart per segment
        below = w < np.maximum.accumulate(w)
        reasons[idx[below]] |= Reason.NEGATIVE
        idx = idx[~below]
        vv = v[idx]

    tt = t[idx]
    est_after = np.zeros(len(idx), dtype=bool)
    reasons_after = np.zeros(len(idx), dtype=np.int32)
    if len(idx) > 1:
        # Rate plausibility: a jump above the limit that stays is dropped as a spike, once.
        if rules.max_rate_per_h is not None:
            d = np.diff(vv)
            rate = d / np.maximum(np.diff(tt), 1.0) * 3600.0
            high = np.concatenate(([False], (d > 0) & (rate > rules.max_rate_per_h)))
            if high.any():
                reasons[idx[high]] |= Reason.SPIKE
                idx = idx[~high]
                vv, tt = v[idx], t[idx]
                est_after = np.zeros(len(idx), dtype=bool)
                reasons_after = np.zeros(len(idx), dtype=np.int32)

    if len(idx) > 1 and rules.frozen_after_s is not None:
        # Runs of identical values longer than the limit: keep the run's first and last readings,
        # drop the inside, and mark the span estimated (the rise after it is spread by interpolation).
        same = np.concatenate(([False], np.diff(vv) == 0))
        run_start = np.flatnonzero(~same)
        run_id = np.cumsum(~same) - 1
        run_end = np.concatenate((run_start[1:], [len(vv)])) - 1
        run_len_s = tt[run_end] - tt[run_start]
        frozen_run = run_len_s > rules.frozen_after_s
        pos = np.arange(len(vv))
        # The run's last reading goes too (unless it is the newest reading), so the catch-up rise after a
        # frozen meter recovers is spread over the whole run, not put into the interval where it arrives.
        last = len(vv) - 1
        inside = frozen_run[run_id] & (pos != run_start[run_id]) & (pos != last)
        reasons[idx[inside]] |= Reason.FROZEN
        first_of_frozen = frozen_run[run_id] & (pos == run_start[run_id])
        idx, vv, tt = idx[~inside], vv[~inside], tt[~inside]
        est_after = first_of_frozen[~inside]
        reasons_after = np.where(est_after, int(Reason.FROZEN), 0).astype(np.int32)

    c = vv.copy()
    if len(idx) > 1:
        prev, cur = vv[:-1], vv[1:]
        d = cur - prev
        ni = np.flatnonzero(d < 0)
        roll, reset, wrap = _wrap_deltas(prev[ni], cur[ni], rules)
        d[ni] = wrap                        # after the filters above, a drop is a wrap or a reset
        reasons[idx[1:][ni[roll]]] |= Reason.ROLLOVER
        reasons[idx[1:][ni[reset]]] |= Reason.RESET
        est_after[ni[reset]] = True         # consumption lost at a replacement is unknown
        reasons_after[ni[reset]] |= int(Reason.RESET)
        dt = np.diff(tt)
        if rules.bound_per_h is not None:
            over = d > rules.bound_per_h * np.maximum(dt, 1.0) / 3600.0
            d[over] = 0.0
            reasons[idx[1:][over]] |= Reason.SPIKE
            est_after[:-1] |= over
            reasons_after[:-1] |= np.where(over, int(Reason.SPIKE), 0).astype(np.int32)
        gap = dt > rules.max_gap_s
        est_after[:-1] |= gap
        reasons_after[:-1] |= np.where(gap, int(Reason.GAP), 0).astype(np.int32)
        reasons_after[:-1] |= np.where(dt > rules.long_gap_s, int(Reason.LONG_GAP), 0).astype(np.int32)
        c = vv[0] + np.concatenate(([0.0], np.cumsum(d)))

    # Kept readings are measured (a rollover or out-of-order note does not change that); the first
    # reading after a reset is estimated because the consumption before it is assumed.
    status = np.full(n, INVALID, dtype=np.int8)
    status[idx] = MEASURED
    status[idx[(reasons[idx] & (Reason.RESET | Reason.SPIKE)) != 0]] = ESTIMATED
    counts = {}
    for bit in Reason:
        n_bit = int(np.count_nonzero(reasons & bit)) if bit else 0
        if n_bit and bit.name:
            counts[bit.name.lower()] = n_bit
    return CleanSeries(tt, c, est_after, reasons_after, status, reasons, counts)


def to_intervals(series: CleanSeries, interval_s: int = 900, start: float | None = None) -> Intervals:
    """Consumption per interval by interpolating the corrected cumulative at interval boundaries.

    Interval k gets C(min(b_k+1, t_last)) - C(max(b_k, t_first)), so the intervals telescope to
    exactly C(t_last) - C(t_first): no energy is created or lost across gaps. The last interval is
    the still-open one, with the consumption up to the newest reading.

    :param start: drop intervals that start before this (they lack context for a full value).
    """
    t, c = series.t, series.c
    empty = np.zeros(0)
    if len(t) < 2:
        return Intervals(empty.astype(np.int64), empty, empty, empty.astype(np.int8),
                         empty.astype(np.int32), empty)
    first = np.floor(t[0] / interval_s) * interval_s
    last = np.floor(t[-1] / interval_s) * interval_s
    if t[-1] == last and last > first:
        last -= interval_s          # a reading exactly on a boundary closes the previous interval
    b = np.arange(first, last + 2 * interval_s, interval_s, dtype=np.float64)
    bc = np.clip(b, t[0], t[-1])
    cb = np.interp(bc, t, c)
    amount = np.diff(cb)
    covered = np.diff(bc)
    # Estimated time as a piecewise-linear cumulative function over the readings, evaluated at the
    # boundaries: the same telescoping trick gives each interval its estimated seconds.
    dt = np.diff(t)
    est_cum = np.concatenate(([0.0], np.cumsum(np.where(series.est_after[:-1], dt, 0.0))))
    est_s = np.diff(np.interp(bc, t, est_cum))
    with np.errstate(divide="ignore", invalid="ignore"):
        measured_fraction = np.where(covered > 0, 1.0 - est_s / covered, 0.0)
    measured_fraction = np.clip(measured_fraction, 0.0, 1.0)
    # Reasons of the spans that overlap each interval: bitwise OR via the span index range.
    span_first = np.searchsorted(t, bc[:-1], side="right") - 1
    span_last = np.searchsorted(t, bc[1:], side="left") - 1
    span_first = np.clip(span_first, 0, len(t) - 2)
    span_last = np.clip(span_last, 0, len(t) - 2)
    ra = series.reasons_after[:-1]
    reasons = ra[span_first] | ra[span_last]
    multi = span_last - span_first > 1
    if multi.any():   # rare: an interval holding more than two spans with reasons inside
        for k in np.flatnonzero(multi):
            reasons[k] = np.bitwise_or.reduce(ra[span_first[k]:span_last[k] + 1])
    status = np.where(measured_fraction >= 0.999, MEASURED, ESTIMATED).astype(np.int8)
    status[covered <= 0] = INVALID
    reasons = np.where(status == MEASURED, reasons & ~int(Reason.GAP | Reason.LONG_GAP | Reason.FROZEN | Reason.RESET),
                       reasons).astype(np.int32)
    out = Intervals(b[:-1].astype(np.int64), amount, measured_fraction, status, reasons, covered)
    if start is not None:
        keep = out.start >= start
        out = Intervals(out.start[keep], out.amount[keep], out.measured_fraction[keep], out.status[keep],
                        out.reasons[keep], out.covered_s[keep])
    return out


def clean_instantaneous(t: np.ndarray, v: np.ndarray, rules: InstantRules = InstantRules(),
                        now: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Range, outlier (median / MAD) and frozen checks for instantaneous values.

    :returns: (t, v) of kept readings in time order, and status and reasons per input reading.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    reasons = np.zeros(len(t), dtype=np.int32)
    valid = np.isfinite(v)
    reasons[~valid] |= Reason.DECODE
    idx = _order_and_timestamps(t, valid, rules.clock_jump_s, now, reasons)
    vv = v[idx]
    out = np.zeros(len(idx), dtype=bool)
    if rules.min_value is not None:
        r = vv < rules.min_value
        reasons[idx[r]] |= Reason.RANGE
        out |= r
    if rules.max_value is not None:
        r = vv > rules.max_value
        reasons[idx[r]] |= Reason.RANGE
        out |= r
    inside = vv[~out]
    if len(inside) >= 5:
        med = np.median(inside)
        mad = np.median(np.abs(inside - med))
        if mad > 0:
            z = 0.6745 * np.abs(vv - med) / mad
            o = ~out & (z > rules.mad_threshold)
            reasons[idx[o]] |= Reason.OUTLIER
            out |= o
    if rules.frozen_after_s is not None and len(vv) > 1:
        tt = t[idx]
        same = np.concatenate(([False], np.diff(vv) == 0))
        run_id = np.cumsum(~same) - 1
        run_start = np.flatnonzero(~same)
        run_end = np.concatenate((run_start[1:], [len(vv)])) - 1
        frozen_run = (tt[run_end] - tt[run_start]) > rules.frozen_after_s
        fr = frozen_run[run_id] & same
        reasons[idx[fr]] |= Reason.FROZEN
        out |= fr
    keep = idx[~out]
    status = np.where(reasons & ~int(Reason.OUT_OF_ORDER), INVALID, MEASURED).astype(np.int8)
    return t[keep], v[keep], status, reasons


def resample_mean(t: np.ndarray, v: np.ndarray, interval_s: int = 900) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of kept instantaneous values per interval: (start, mean, count). Empty intervals are NaN."""
    if len(t) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64)
    k = np.floor(t / interval_s).astype(np.int64)
    k0 = k.min()
    n = int(k.max() - k0 + 1)
    sums = np.bincount(k - k0, weights=v, minlength=n)
    counts = np.bincount(k - k0, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return (np.arange(n, dtype=np.int64) + k0) * interval_s, means, counts


def aggregate(start: np.ndarray, amount: np.ndarray, resolution: str, utc_offset_s: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sum 15-minute amounts into ``hour``, ``day`` or ``month`` buckets in a fixed UTC offset.

    :returns: (bucket labels as numpy datetime64 in local time, sums).
    """
    unit = {"hour": "h", "day": "D", "month": "M"}.get(resolution)
    if unit is None:
        raise ValueError(f"resolution {resolution!r}: use hour, day or month")
    if len(start) == 0:
        return np.zeros(0, dtype=f"datetime64[{unit}]"), np.zeros(0)
    local = (np.asarray(start, dtype=np.int64) + utc_offset_s).astype("datetime64[s]")
    # Integer bucket numbers and bincount: linear time, no sort (7 million rows in well under a second).
    keys = local.astype(f"datetime64[{unit}]").astype(np.int64)
    k0 = int(keys.min())
    sums = np.bincount(keys - k0, weights=amount)
    present = np.bincount(keys - k0) > 0
    labels = (np.flatnonzero(present) + k0).astype(f"datetime64[{unit}]")
    return labels, sums[present]
