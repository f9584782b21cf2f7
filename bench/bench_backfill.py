"""Backfill end to end (issue 17): 200 meters x 1 year of 15-minute readings, measured in full.

    .venv/bin/python bench/bench_backfill.py [--meters 200] [--days 365] [--batch 35040]

The data is bench_models.py's (rollovers, spikes, decode failures, a one-day gap per meter: 6,988,800
readings for 200 meters). Stages, each timed in process CPU seconds and wall seconds, nothing extrapolated:

1. insert: ``Store.insert_readings`` of every meter's year (``--batch`` readings per transaction);
2. process: ``Store.process()`` (preprocessing, 15-minute intervals, emission rows, hourly rollup);
3. report: ``build_report`` for the year by month.

Beside it, in the same run: a plain SQLite insert loop of the same readings (one table of
(meter, timestamp, value), WAL, synchronous=FULL, the same transactions): the reference for stage 1.
The size of the store on disk (database + WAL) is printed after each stage.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_models import ACTIVITIES, make_meter, rss_mb  # noqa: E402
from drivers.model import Quantity, Reading  # noqa: E402
from local_store import SourceSettings, open_store  # noqa: E402
from local_store.reports import build_report, local_tz  # noqa: E402

QUANTITY = {"electricity": Quantity.ENERGY_IMPORT, "natural_gas": Quantity.GAS_VOLUME, "steam": Quantity.HEAT_ENERGY}
UNITS = {a: u for a, u, _ in ACTIVITIES}


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


class Stage:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Stage:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--batch", type=int, default=35_040, help="readings per insert transaction")
    args = parser.parse_args()
    rng = np.random.default_rng(17)
    meters = [make_meter(rng, args.days, k) for k in range(args.meters)]
    n = sum(len(t) for t, _, _ in meters)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        # The plain reference first, on the same disk.
        plain_path = Path(tmp) / "plain.db"
        plain = sqlite3.connect(plain_path, isolation_level=None)
        plain.execute("PRAGMA journal_mode = WAL")
        plain.execute("PRAGMA synchronous = FULL")
        plain.execute("CREATE TABLE r (meter TEXT, timestamp REAL, value REAL)")
        with Stage("plain") as ref:
            for k, (t, v, _) in enumerate(meters):
                rows = [(f"m{k}", float(a), None if b != b else float(b)) for a, b in zip(t, v)]
                for i in range(0, len(rows), args.batch):
                    plain.execute("BEGIN")
                    plain.executemany("INSERT INTO r VALUES (?, ?, ?)", rows[i:i + args.batch])
                    plain.execute("COMMIT")
        plain.close()
        plain_mb = size_mb(plain_path)

        path = Path(tmp) / "gateway.db"
        with open_store(path) as store:
            store.configure_sources([SourceSettings(f"m{k}", meters[k][2], frozen_after_s=None)
                                     for k in range(args.meters)])
            with Stage("insert") as ins:
                for k, (t, v, activity) in enumerate(meters):
                    q = QUANTITY[activity]
                    batch = [Reading(f"m{k}", q.value, float(a), None if b != b else float(b), UNITS[activity], q,
                                     "ok" if b == b else "invalid", "" if b == b else "NaN") for a, b in zip(t, v)]
                    for i in range(0, len(batch), args.batch):
                        store.insert_readings(batch[i:i + args.batch], origin="import:backfill")
            insert_mb = size_mb(path)
            with Stage("process") as proc:
                result = store.process()
            process_mb = size_mb(path)
            with Stage("report") as rep:
                report = build_report(store, date(2025, 1, 1), date(2026, 1, 1), by="month", tz=local_tz())
    total_cpu = ins.cpu + proc.cpu + rep.cpu
    print(f"{args.meters} meters x {args.days} days of 15-minute readings: {n:,} readings "
          f"(Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version})")
    print(f"{'stage':<44}{'CPU s':>9}{'wall s':>9}{'disk MB':>9}")
    print(f"{'plain SQLite insert loop (reference)':<44}{ref.cpu:>9.1f}{ref.wall:>9.1f}{plain_mb:>9.0f}")
    print(f"{'1. insert (Store.insert_readings)':<44}{ins.cpu:>9.1f}{ins.wall:>9.1f}{insert_mb:>9.0f}"
          f"   {ins.cpu / ref.cpu:.1f}x the reference's CPU")
    print(f"{'2. process (' + str(result.intervals) + ' intervals, ' + str(result.emission_rows) + ' rows)':<44}"
          f"{proc.cpu:>9.1f}{proc.wall:>9.1f}{process_mb:>9.0f}")
    print(f"{'3. yearly report by month':<44}{rep.cpu:>9.1f}{rep.wall:>9.1f}"
          f"   {report['total_tco2e']:,.1f} tCO2e")
    print(f"{'end to end (1 + 2 + 3)':<44}{total_cpu:>9.1f}{ins.wall + proc.wall + rep.wall:>9.1f}{process_mb:>9.0f}")
    print(f"peak RSS {rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
