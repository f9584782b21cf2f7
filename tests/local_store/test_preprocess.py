"""The preprocessing model: hand-worked cases per rule, and property tests of energy conservation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local_store import preprocess as pp
from local_store.preprocess import ESTIMATED, INVALID, MEASURED, CumulativeRules, InstantRules, Reason

T0 = 1_790_000_100.0        # 100 s into a 15-minute interval (1_790_000_000 is 1_989_-- aligned below)
GRID = 1_790_000_100.0 - (1_790_000_100.0 % 900)


def minutes(*k: float) -> np.ndarray:
    return GRID + 60.0 * np.array(k, dtype=float)


def test_delta_per_interval_and_the_open_interval() -> None:
    t = minutes(0, 5, 10, 15, 20, 22)
    v = np.array([100.0, 105.0, 110.0, 115.0, 120.0, 122.0])
    iv = pp.to_intervals(pp.clean_cumulative(t, v))
    # [0, 15 min): 115 - 100 = 15; [15, 30 min): open, 122 - 115 = 7 so far.
    assert iv.start.tolist() == [GRID, GRID + 900]
    assert iv.amount.tolist() == [15.0, 7.0]
    assert iv.status.tolist() == [MEASURED, MEASURED]


def test_interval_boundaries_are_interpolated_linearly() -> None:
    # Readings at 10 and 20 min: 100 and 110. The boundary at 15 min gets 105.
    iv = pp.to_intervals(pp.clean_cumulative(minutes(10, 20), np.array([100.0, 110.0])))
    assert iv.amount.tolist() == [5.0, 5.0]
    assert iv.covered_s.tolist() == [300.0, 300.0]


def test_rollover_at_the_register_maximum() -> None:
    # A 16-bit counter of 0.1 kWh (max 65535 -> wraps at 65536): 65530 -> 4 is 65536 - 65530 + 4 = 10.
    s = pp.clean_cumulative(minutes(0, 1, 2), np.array([65_520.0, 65_530.0, 4.0]), CumulativeRules(rollover_at=65_536))
    assert s.c[-1] - s.c[0] == 10.0 + 10.0
    assert s.reasons[2] & Reason.ROLLOVER and s.status[2] == MEASURED


def test_rollover_detected_near_a_power_of_ten() -> None:
    # 99 998.5 -> 1.5 on an unknown 5-digit register: 100 000 - 99 998.5 + 1.5 = 3.0.
    s = pp.clean_cumulative(minutes(0, 1, 2), np.array([99_997.0, 99_998.5, 1.5]))
    assert s.c[-1] - s.c[0] == pytest.approx(1.5 + 3.0)
    assert s.counts == {"rollover": 1}


def test_meter_replacement_restarts_from_zero_and_is_estimated() -> None:
    # Old meter at 5000, the new one reads 3 at the next poll: 3 kWh counted since the swap.
    t = minutes(0, 1, 2, 3)
    s = pp.clean_cumulative(t, np.array([4_990.0, 5_000.0, 3.0, 8.0]))
    assert s.c[-1] - s.c[0] == 10.0 + 3.0 + 5.0
    assert s.status.tolist() == [MEASURED, MEASURED, ESTIMATED, MEASURED]
    iv = pp.to_intervals(s)
    assert iv.status[0] == ESTIMATED and iv.reasons[0] & Reason.RESET


def test_spike_that_comes_back_is_dropped_and_energy_kept() -> None:
    v = np.array([100.0, 101.0, 9_999.0, 103.0, 104.0])
    s = pp.clean_cumulative(minutes(0, 1, 2, 3, 4), v)
    assert s.status.tolist() == [MEASURED, MEASURED, INVALID, MEASURED, MEASURED]
    assert s.reasons[2] == Reason.SPIKE
    assert s.c[-1] - s.c[0] == 4.0


def test_dip_that_comes_back_is_a_spike_not_a_reset() -> None:
    s = pp.clean_cumulative(minutes(0, 1, 2, 3), np.array([100.0, 101.0, 2.0, 103.0]))
    assert s.reasons[2] == Reason.SPIKE and s.c[-1] - s.c[0] == 3.0


def test_small_negative_steps_are_dropped_not_counted_twice() -> None:
    # 201 -> 199.5 -> 199.8 -> 202: two readings under the running maximum (register noise), not a reset.
    s = pp.clean_cumulative(minutes(0, 1, 2, 3, 4, 5), np.array([199.0, 200.0, 201.0, 199.5, 199.8, 202.0]))
    assert s.reasons.tolist() == [0, 0, 0, Reason.NEGATIVE, Reason.NEGATIVE, 0]
    assert s.c[-1] - s.c[0] == 3.0
    # A single high reading between lower neighbours is read as a spike instead; the total is the same.
    s = pp.clean_cumulative(minutes(0, 1, 2, 3), np.array([199.0, 200.0, 199.5, 201.0]))
    assert s.reasons[1] == Reason.SPIKE and s.c[-1] - s.c[0] == 2.0


def test_rate_limit_drops_an_implausible_step() -> None:
    # 10 kWh per minute = 600 kWh/h over a 100 kWh/h limit; the later readings continue from the jump.
    rules = CumulativeRules(max_rate_per_h=100.0)
    s = pp.clean_cumulative(minutes(0, 1, 2, 3), np.array([0.0, 1.0, 11.0, 12.0]), rules)
    assert s.reasons[2] & Reason.SPIKE
    assert s.c[-1] - s.c[0] == 12.0        # energy is still conserved: the step is spread, not lost


def test_gap_is_interpolated_conserving_energy_and_flagged() -> None:
    # Readings at 0..10 min, then none until 60 min: 100 -> 110 at 10 min, 160 at 60 min.
    t = minutes(0, 5, 10, 60, 65)
    v = np.array([100.0, 105.0, 110.0, 160.0, 165.0])
    iv = pp.to_intervals(pp.clean_cumulative(t, v))
    # Gap 10..60 min, 50 kWh over 50 min = 1 kWh/min: [0,15) = 10 + 5; [15,30) 15; [30,45) 15; [45,60) 15; [60,75) 5.
    assert iv.amount.tolist() == [15.0, 15.0, 15.0, 15.0, 5.0]
    assert iv.status.tolist() == [ESTIMATED, ESTIMATED, ESTIMATED, ESTIMATED, MEASURED]
    assert iv.measured_fraction[0] == pytest.approx(10 / 15)
    assert iv.reasons[1] == Reason.GAP
    assert iv.amount.sum() == v[-1] - v[0]


def test_long_gap_is_flagged() -> None:
    t = GRID + np.array([0.0, 60.0, 60.0 + 2 * 86_400, 120.0 + 2 * 86_400])
    iv = pp.to_intervals(pp.clean_cumulative(t, np.array([0.0, 1.0, 1_001.0, 1_002.0])))
    assert iv.amount.sum() == 1_002.0
    assert (iv.reasons[1:-1] & Reason.LONG_GAP).all()


def test_frozen_value_is_dropped_and_the_span_estimated() -> None:
    rules = CumulativeRules(frozen_after_s=1_800, max_gap_s=3_600)
    k = np.arange(0, 61, 5)                     # every 5 min for an hour
    v = np.where(k <= 45, 50.0, 50.0 + (k - 45) * 2.0)   # stuck at 50 for 45 min, then +2/min
    s = pp.clean_cumulative(minutes(*k), v, rules)
    assert s.status.tolist().count(INVALID) == 9   # the frozen run after its first reading (5..45 min)
    assert (s.reasons[1:10] == Reason.FROZEN).all()
    iv = pp.to_intervals(s)
    assert iv.amount.sum() == 30.0
    assert iv.status[0] == ESTIMATED and iv.reasons[0] & Reason.FROZEN


def test_duplicates_out_of_order_and_clock_jumps() -> None:
    t = np.array([GRID + 60, GRID + 120, GRID + 120, GRID + 90, GRID - 86_400, GRID + 180, 1_000.0])
    v = np.array([1.0, 3.0, 3.0, 2.0, 0.5, 4.0, 9.0])
    s = pp.clean_cumulative(t, v, now=GRID + 200)
    assert s.reasons[2] == Reason.DUPLICATE
    assert s.reasons[3] == Reason.OUT_OF_ORDER and s.status[3] == MEASURED      # 30 s late: sorted in
    assert s.reasons[4] == Reason.CLOCK_JUMP and s.status[4] == INVALID          # a day behind: dropped
    assert s.reasons[6] == Reason.CLOCK_JUMP                                     # 1970: RTC lost power
    assert s.t.tolist() == [GRID + 60, GRID + 90, GRID + 120, GRID + 180]
    assert s.c[-1] - s.c[0] == 3.0
    future = pp.clean_cumulative(np.array([GRID, GRID + 7_200]), np.array([1.0, 2.0]), now=GRID + 60)
    assert future.reasons[1] == Reason.CLOCK_JUMP


def test_invalid_driver_readings_are_skipped() -> None:
    s = pp.clean_cumulative(minutes(0, 1, 2), np.array([1.0, np.nan, 3.0]))
    assert s.reasons[1] == Reason.DECODE and s.c[-1] - s.c[0] == 2.0


def test_instantaneous_range_mad_and_interval_means() -> None:
    t = GRID + np.arange(12) * 150.0            # 2.5 min apart: 6 per interval
    v = np.array([10.0, 11.0, 10.5, 500.0, 10.0, 11.5, 12.0, 12.5, -3.0, 12.0, 13.0, 12.5])
    kt, kv, status, reasons = pp.clean_instantaneous(t, v, InstantRules(min_value=0.0, max_value=1_000.0))
    assert reasons[8] == Reason.RANGE          # -3 below the minimum
    assert reasons[3] == Reason.OUTLIER        # 500: robust z = 0.6745 x |500 - 11.75| / MAD >> 3.5
    assert status.tolist().count(INVALID) == 2
    start, mean, count = pp.resample_mean(kt, kv)
    assert start.tolist() == [GRID, GRID + 900]
    assert mean[0] == pytest.approx((10 + 11 + 10.5 + 10 + 11.5) / 5)
    assert mean[1] == pytest.approx((12 + 12.5 + 12 + 13 + 12.5) / 5)
    assert count.tolist() == [5, 5]


def test_aggregate_to_hour_day_month_in_local_time() -> None:
    # 2026-01-31 23:00 to 2026-02-01 01:00 in UTC+8, one 15-minute value of 1.0 each.
    start = np.arange(1_769_871_600, 1_769_871_600 + 8 * 900, 900)   # 2026-01-31T15:00Z = 23:00 +08:00
    labels, sums = pp.aggregate(start, np.ones(8), "month", utc_offset_s=8 * 3600)
    assert [str(x) for x in labels] == ["2026-01", "2026-02"] and sums.tolist() == [4.0, 4.0]
    labels, sums = pp.aggregate(start, np.ones(8), "hour", utc_offset_s=8 * 3600)
    assert len(labels) == 2 and sums.tolist() == [4.0, 4.0]
    labels, sums = pp.aggregate(start, np.ones(8), "day", utc_offset_s=0)
    assert [str(x) for x in labels] == ["2026-01-31"] and sums.tolist() == [8.0]


# -- properties ----------------------------------------------------------------------------------

M = 1_000_000.0    # register wraps here


@st.composite
def messy_series(draw):
    """A true cumulative series, stored modulo M, with readings removed (gaps) and spikes injected."""
    n = draw(st.integers(min_value=3, max_value=120))
    steps = draw(st.lists(st.floats(min_value=0.0, max_value=M / 20, allow_nan=False), min_size=n - 1, max_size=n - 1))
    dt = draw(st.lists(st.integers(min_value=1, max_value=7_200), min_size=n - 1, max_size=n - 1))
    start = draw(st.floats(min_value=0.0, max_value=M - 1))
    true = start + np.concatenate(([0.0], np.cumsum(steps)))
    t = T0 + np.concatenate(([0.0], np.cumsum(dt))).astype(float)
    stored = np.mod(true, M)
    keep = np.ones(n, dtype=bool)
    drop = draw(st.lists(st.integers(min_value=1, max_value=n - 2), max_size=n // 3)) if n > 2 else []
    keep[drop] = False
    t, stored, true = t[keep], stored[keep], true[keep]
    # Spikes: only where neither neighbour is a wrap, and never next to another spike.
    wrapped = np.concatenate(([False], np.diff(stored) < 0, [False]))
    v = stored.copy()
    spikes = draw(st.lists(st.integers(min_value=1, max_value=max(len(v) - 2, 1)), max_size=3, unique=True))
    used: set[int] = set()
    for i in sorted(spikes):
        if i >= len(v) - 1 or wrapped[i] or wrapped[i + 1] or {i - 1, i, i + 1} & used:
            continue
        up = draw(st.booleans())
        if up and v[i + 1] + 1_000 < M / 2 and v[i - 1] <= v[i + 1]:
            v[i] = v[i + 1] + 1_000
        elif not up and v[i - 1] > 1_000 and v[i - 1] <= v[i + 1]:
            v[i] = v[i - 1] - 1_000
        else:
            continue
        used.add(i)
    return t, v, float(true[-1] - true[0])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_series())
def test_interval_totals_conserve_the_register_across_gaps_rollovers_and_spikes(case) -> None:
    t, v, true_total = case
    rules = CumulativeRules(rollover_at=M, frozen_after_s=None)
    s = pp.clean_cumulative(t, v, rules)
    iv = pp.to_intervals(s)
    assert iv.amount.sum() == pytest.approx(true_total, rel=1e-9, abs=1e-6)
    assert (iv.amount >= -1e-9).all()
    assert ((iv.measured_fraction >= 0) & (iv.measured_fraction <= 1)).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=50, allow_nan=False), min_size=2, max_size=80),
       st.integers(min_value=1, max_value=40))
def test_splitting_the_readings_in_two_runs_gives_the_same_intervals(steps, cut) -> None:
    """Processing in two batches (with the earlier readings as context) equals processing at once."""
    v = 1_000.0 + np.concatenate(([0.0], np.cumsum(steps)))
    t = T0 + 137.0 * np.arange(len(v))
    whole = pp.to_intervals(pp.clean_cumulative(t, v))
    cut = min(cut, len(v) - 1)
    first = pp.to_intervals(pp.clean_cumulative(t[:cut + 1], v[:cut + 1]))
    replace_from = np.ceil(t[0] / 900) * 900
    second = pp.to_intervals(pp.clean_cumulative(t, v), start=replace_from)
    merged = {int(k): a for k, a in zip(first.start, first.amount)}
    merged.update({int(k): a for k, a in zip(second.start, second.amount)})
    assert sorted(merged) == whole.start.tolist()
    assert np.allclose([merged[int(k)] for k in whole.start], whole.amount)


def test_a_frozen_meters_catch_up_is_spread_over_the_run_and_estimated() -> None:
    """Issue 14: the catch-up landed in one interval flagged measured; docs/models.md says it is spread."""
    # Hourly readings stuck at 1000 kWh from 0 h to 25 h (a run of 25 h > 24 h), then 1260 kWh at 26 h.
    t = GRID + 3600.0 * np.arange(27)
    v = np.array([1000.0] * 26 + [1260.0])
    s = pp.clean_cumulative(t, v)
    assert (s.reasons[1:26] & Reason.FROZEN).all() and s.status.tolist().count(INVALID) == 25
    iv = pp.to_intervals(s)
    # Kept: 1000 at 0 h and 1260 at 26 h: 260 kWh over 26 h = 104 quarter hours of 2.5 kWh each, all estimated.
    assert len(iv) == 104 and iv.amount == pytest.approx(np.full(104, 2.5))
    assert (iv.status == ESTIMATED).all() and (iv.reasons & Reason.FROZEN).all()
    # A frozen run that is still going at the newest reading keeps its last reading (nothing to spread yet).
    s = pp.clean_cumulative(t[:26], v[:26])
    assert s.status[25] == pp.MEASURED
