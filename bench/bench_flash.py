"""Flash wear: bytes written to disk per stored reading (issue 17), beside reference runs in the same process.

    .venv/bin/python bench/bench_flash.py [--meters 10] [--points 20] [--history-s 1800] [--seconds 300]

Each run stores ``--meters`` meters x ``--points`` values every (simulated) second, one transaction per
second as the daemon's store writer does, into a store that already holds ``--history-s`` seconds, and
reads the process's ``write_bytes`` from /proc/self/io before and after (WAL writes, checkpoints into the
database file, everything the kernel sends to the disk for this process); a final checkpoint is included.
Runs, interleaved in one process on the same disk:

1. ``Store.insert_readings`` (the gateway's store: one row per poll, WAL, synchronous=FULL);
2. the v0.1 store (one row per value, three per-series indexes, ``latest_readings``), by v0.1's statements;
3. a plain SQLite insert loop: one table (ts, meter, point, value), no index, WAL, synchronous=FULL,
   one ``executemany`` per second — the floor any row-per-value store starts from.

CPU per reading is the process CPU time of the timed loop. Figures and ratios: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.model import Quantity, Reading  # noqa: E402
from local_store import open_store  # noqa: E402
from tests.local_store.v01_store import create_v01_store, insert_v01  # noqa: E402

T0 = 1_790_000_000.0


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes: run on Linux")


def measure(name: str, flush: Callable[[float], None], checkpoint: Callable[[], None], history_s: int, seconds: int,
            per_second: int, path: Path) -> dict:
    for s in range(history_s):
        flush(T0 + s)
    checkpoint()
    os.sync()
    before, cpu = write_bytes(), time.process_time()
    for s in range(history_s, history_s + seconds):
        flush(T0 + s)
    checkpoint()
    os.sync()
    written, cpu = write_bytes() - before, time.process_time() - cpu
    n = seconds * per_second
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"name": name, "bytes_per_reading": written / n, "us_per_reading": cpu / n * 1e6, "file_mb": size / 1e6}


def run(meters: int, points: int, history_s: int, seconds: int, work: Path) -> list[dict]:
    names = [(f"point_{p:02d}", "kWh" if p == 0 else "V", "energy_import" if p == 0 else "voltage")
             for p in range(points)]
    results = []

    # 1. the gateway's store
    store = open_store(work / "gateway.db")

    def store_flush(ts: float) -> None:
        store.insert_readings([Reading(f"meter-{m:02d}", point, ts, 1000.0 + ts % 997 + p, unit, Quantity(q))
                               for m in range(meters) for p, (point, unit, q) in enumerate(names)])

    results.append(measure("gateway store (one row per poll)", store_flush,
                           lambda: store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(),
                           history_s, seconds, meters * points, work / "gateway.db"))
    store.close()

    # 2. the v0.1 store
    v01 = create_v01_store(work / "v01.db")

    def v01_flush(ts: float) -> None:
        insert_v01(v01, [(f"meter-{m:02d}", point, ts, 1000.0 + ts % 997 + p, unit, q, "ok", "", "poll")
                         for m in range(meters) for p, (point, unit, q) in enumerate(names)])

    results.append(measure("v0.1 store (one row per value)", v01_flush,
                           lambda: v01.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(),
                           history_s, seconds, meters * points, work / "v01.db"))
    v01.close()

    # 3. the plain SQLite reference
    plain = sqlite3.connect(work / "plain.db", isolation_level=None)
    plain.execute("PRAGMA journal_mode = WAL")
    plain.execute("PRAGMA synchronous = FULL")
    plain.execute("CREATE TABLE r (ts REAL, meter TEXT, point TEXT, value REAL)")

    def plain_flush(ts: float) -> None:
        plain.execute("BEGIN")
        plain.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", [(ts, f"meter-{m:02d}", point, 1000.0 + ts % 997 + p)
                                                               for m in range(meters)
                                                               for p, (point, _, _) in enumerate(names)])
        plain.execute("COMMIT")

    results.append(measure("plain SQLite insert loop (reference)", plain_flush,
                           lambda: plain.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(),
                           history_s, seconds, meters * points, work / "plain.db"))
    plain.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--history-s", type=int, default=1800, help="seconds stored before the timed part")
    parser.add_argument("--seconds", type=int, default=300, help="seconds (commits) timed")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary directory "
                        "under the repository, on the same disk as a data directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or ROOT) as tmp:
        results = run(args.meters, args.points, args.history_s, args.seconds, Path(tmp))
    ref = results[-1]["bytes_per_reading"]
    print(f"{args.meters} meters x {args.points} values, one commit per second, {args.seconds} s timed after "
          f"{args.history_s} s stored (Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version})")
    print(f"{'run':40s} {'bytes/reading':>14s} {'vs plain':>9s} {'CPU us/reading':>15s} {'files MB':>9s}")
    for r in results:
        print(f"{r['name']:40s} {r['bytes_per_reading']:14.1f} {r['bytes_per_reading'] / ref:8.2f}x "
              f"{r['us_per_reading']:15.1f} {r['file_mb']:9.1f}")


if __name__ == "__main__":
    main()
