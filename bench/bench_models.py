"""Benchmark of the models: 200 meters x one year of 15-minute readings (7 million intervals).

    .venv/bin/python bench/bench_models.py [--meters 200] [--days 365] [--loop-meters 4] [--store-meters 10]

Stages timed:
1. preprocessing: cleaning (rollovers, spikes, gaps, ...) and 15-minute interval consumption, per meter;
2. emissions: activity x factor for every interval (per activity, vectorised);
3. a monthly report: tCO2e per month and scope;
4. for comparison, a plain per-row Python loop doing steps 1-2 on ``--loop-meters`` meters,
   extrapolated linearly to all meters (it is too slow to run on all of them);
5. the SQLite path (``Store.insert_readings`` + ``Store.process`` + ``build_report``) on
   ``--store-meters`` meters, extrapolated, because writing 7 million rows is I/O-bound.
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.model import Quantity, Reading  # noqa: E402
from local_store import SourceSettings, open_store  # noqa: E402
from local_store import preprocess as pp  # noqa: E402
from local_store.emissions import EmissionSettings, compute  # noqa: E402
from local_store.factors import load_library  # noqa: E402
from local_store.reports import build_report, local_tz  # noqa: E402

START = 1_735_660_800.0          # 2024-12-31T16:00Z = 2025-01-01 00:00 in China
INTERVAL = 900
ACTIVITIES = [("electricity", "kWh", 1e-3), ("natural_gas", "m3", 1.0), ("steam", "GJ", 1.0)]


def make_meter(rng: np.random.Generator, days: int, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One meter's register readings every 15 minutes with a few faults of each kind."""
    n = days * 96
    t = START + INTERVAL * np.arange(n) + rng.uniform(0, 20, n)        # polling jitter
    hour = (t // 3600) % 24
    load = (1.0 + 0.6 * np.sin((hour - 6) / 24 * 2 * math.pi)) * rng.uniform(5, 50)
    activity = ACTIVITIES[k % 3][0]
    load *= {"electricity": 20.0, "natural_gas": 1.0, "steam": 0.02}[activity]   # kWh, m3, GJ per 15 min
    v = 50_000.0 + np.cumsum(load * rng.uniform(0.8, 1.2, n))
    v = np.mod(v, 10 ** math.ceil(math.log10(v[n // 2])))               # the register rolls over once
    spikes = rng.choice(n - 2, 5, replace=False) + 1
    v[spikes] *= 3.0                                                   # spikes that come back
    v[rng.choice(n, 20, replace=False)] = np.nan                       # decode failures
    keep = np.ones(n, dtype=bool)
    g = int(rng.integers(100, n - 200))
    keep[g:g + 96] = False                                             # a one-day gap
    return t[keep], v[keep], activity


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def loop_model(t: np.ndarray, v: np.ndarray, ef: float) -> tuple[dict[int, float], float]:
    """The same steps as a plain per-row Python loop (for the speed-up figure)."""
    pts = sorted((float(a), float(b)) for a, b in zip(t, v) if b == b)
    clean: list[tuple[float, float]] = []
    for i, (ti, vi) in enumerate(pts):
        if 0 < i < len(pts) - 1:
            prev, nxt = pts[i - 1][1], pts[i + 1][1]
            if prev <= nxt and (vi > nxt or vi < prev):
                continue
        clean.append((ti, vi))
    cum = [0.0]
    for (_, a), (_, b) in zip(clean, clean[1:]):
        d = b - a
        if d < 0:
            boundary = 10 ** math.ceil(math.log10(max(a, 1.0)))
            d = boundary - a + b if a >= 0.9 * boundary and b <= 0.1 * boundary else (b if b < 0.1 * a else 0.0)
        cum.append(cum[-1] + d)
    out: dict[int, float] = {}
    for (t0, _), (t1, _), c0, c1 in zip(clean, clean[1:], cum, cum[1:]):
        x = t0
        while x < t1:
            b = (math.floor(x / INTERVAL) + 1) * INTERVAL
            y = min(b, t1)
            k = int(math.floor(x / INTERVAL) * INTERVAL)
            out[k] = out.get(k, 0.0) + (c1 - c0) * (y - x) / (t1 - t0)
            x = y
    co2 = 0.0
    for amount in out.values():
        co2 += amount * ef
    return out, co2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--loop-meters", type=int, default=4)
    ap.add_argument("--store-meters", type=int, default=10)
    args = ap.parse_args()

    rng = np.random.default_rng(42)
    t_gen = time.perf_counter()
    meters = [make_meter(rng, args.days, k) for k in range(args.meters)]
    n_readings = sum(len(m[0]) for m in meters)
    print(f"generated {args.meters} meters x {args.days} days: {n_readings:,} readings "
          f"in {time.perf_counter() - t_gen:.1f} s (not timed below)")
    library = load_library()
    settings = EmissionSettings()

    # Streamed per meter, as the store does per source: memory stays at the input plus one meter.
    pre_s = emis_s = rep_s = 0.0
    n_intervals = 0
    monthly: dict[str, float] = {}
    mult = {a: m for a, _, m in ACTIVITIES}
    for t, v, activity in meters:
        a = time.perf_counter()
        s = pp.clean_cumulative(t, v * mult[activity], pp.CumulativeRules(frozen_after_s=None))
        iv = pp.to_intervals(s, INTERVAL)
        b = time.perf_counter()
        res = compute(activity, iv.start, iv.amount, library, settings, f"bench {activity}")
        c = time.perf_counter()
        labels, sums = pp.aggregate(iv.start, res.co2e_t, "month", utc_offset_s=8 * 3600)
        for label, x in zip(labels.astype(str), sums.tolist()):
            monthly[label] = monthly.get(label, 0.0) + x
        d = time.perf_counter()
        pre_s, emis_s, rep_s = pre_s + b - a, emis_s + c - b, rep_s + d - c
        n_intervals += len(iv)
    total_models = pre_s + emis_s + rep_s
    print(f"preprocessing: {pre_s:6.2f} s  ({n_intervals:,} intervals)")
    print(f"emissions:     {emis_s:6.2f} s")
    print(f"monthly report:{rep_s:6.2f} s  ({len(monthly)} months, {sum(monthly.values()):,.1f} tCO2e)")
    print(f"models total:  {total_models:6.2f} s, peak RSS {rss_mb():,.0f} MB (input arrays {n_readings * 16 / 1e6:,.0f} MB)")

    # Plain Python loop on a subset, extrapolated.
    lm = min(args.loop_meters, args.meters)
    grid = library.select("electricity", "ef", "national", START)
    assert grid is not None
    ef = grid.value_si
    tl = time.perf_counter()
    for t, v, activity in meters[:lm]:
        loop_model(t, v * 1e-3, ef)
    loop_s = (time.perf_counter() - tl) / lm * args.meters
    print(f"plain Python loop: {(time.perf_counter() - tl):.2f} s for {lm} meters -> extrapolated {loop_s:,.0f} s "
          f"for {args.meters}; speed-up x{loop_s / (pre_s + emis_s):,.1f} (preprocessing + emissions)")

    # The SQLite path on a subset, extrapolated.
    sm = min(args.store_meters, args.meters)
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(Path(tmp) / "gateway.db") as store:
            store.configure_sources([SourceSettings(f"m{k}", meters[k][2], frozen_after_s=None) for k in range(sm)])
            units = {a: u for a, u, _ in ACTIVITIES}
            quantity = {"electricity": Quantity.ENERGY_IMPORT, "natural_gas": Quantity.GAS_VOLUME,
                        "steam": Quantity.HEAT_ENERGY}
            ts = time.perf_counter()
            for k in range(sm):
                t, v, activity = meters[k]
                batch = [Reading(f"m{k}", quantity[activity].value, float(a), None if b != b else float(b),
                                 units[activity], quantity[activity], "ok" if b == b else "invalid", "" if b == b else "NaN")
                         for a, b in zip(t, v)]
                for i in range(0, len(batch), 5_000):
                    store.insert_readings(batch[i:i + 5_000])
            ti = time.perf_counter()
            store.process()
            tp = time.perf_counter()
            report = build_report(store, date(2025, 1, 1), date(2026, 1, 1), by="month", tz=local_tz())
            tr = time.perf_counter()
    scale = args.meters / sm
    print(f"SQLite path, {sm} meters: insert {ti - ts:.2f} s, process {tp - ti:.2f} s, monthly report {tr - tp:.2f} s "
          f"({report['total_tco2e']:,.1f} tCO2e) -> extrapolated to {args.meters} meters: insert {(ti - ts) * scale:.0f} s, "
          f"process {(tp - ti) * scale:.0f} s, report {(tr - tp) * scale:.1f} s")
    print(f"peak RSS {rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
