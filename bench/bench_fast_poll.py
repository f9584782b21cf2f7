"""Fast polling (issue 17): the share of late and skipped polls at 0.1 s and 0.2 s with 10 meters.

    .venv/bin/python bench/bench_fast_poll.py [--seconds 20] [--meters 10] [--profile eastron-sdm120]

A simulator runs in its own process (``carbon-gateway simulate``, Modbus TCP on loopback) with ``--meters``
devices. For each interval, two loops poll every meter on a fixed rhythm for ``--seconds``, the way the
daemon's bus thread does (poll what is due, then wait until the next poll is due):

1. ``BusPoller.poll_due`` — the gateway's poller (plan, checks, decoding, ``Reading`` objects); its own
   counters (``MeterStats.polls``, ``late_polls``, ``skipped_polls``, also in /metrics) are reported;
2. the reference: plain pymodbus, the same requests (the poller's plan), the same rhythm and the same
   definitions, counted by the loop itself.

A poll is late when it starts more than half an interval after it was due; a skipped poll is a whole
interval that passed without one. Readings per CPU-second of each loop are printed too.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import ModbusTcpClient  # noqa: E402

from bench.bench_drivers import free_port, start_simulator  # noqa: E402
from drivers import BusConfig, BusPoller, MeterConfig, load_profiles  # noqa: E402

PROFILES = load_profiles(ROOT / "config" / "profiles")


def run_ours(bus: BusConfig, meters: list[MeterConfig], seconds: float) -> dict:
    poller = BusPoller(bus, meters, PROFILES)
    stop = threading.Event()
    readings = 0
    try:
        cpu, end = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < end:
            readings += len(poller.poll_due())
            stop.wait(min(poller.next_due_in(), 1.0))
        cpu = time.process_time() - cpu
        stats = poller.stats().values()
        return {"polls": sum(s.polls for s in stats), "late": sum(s.late_polls for s in stats),
                "skipped": sum(s.skipped_polls for s in stats), "readings": readings, "cpu": cpu,
                "failed": sum(s.state != "ok" for s in stats)}
    finally:
        poller.close()


def run_plain(bus: BusConfig, meters: list[MeterConfig], seconds: float) -> dict:
    plans = {m.device_id: BusPoller(bus, [m], PROFILES).plan(m.device_id, PROFILES[m.profile]) for m in meters}
    client = ModbusTcpClient(bus.host, port=bus.port, timeout=bus.timeout_s)
    client.connect()
    stop = threading.Event()
    due = {m.device_id: 0.0 for m in meters}
    counts = {"polls": 0, "late": 0, "skipped": 0, "readings": 0, "failed": 0}
    interval = meters[0].poll_interval_s
    try:
        cpu, end = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < end:
            now = time.monotonic()
            for unit, plan in plans.items():
                if due[unit] > now:
                    continue
                counts["polls"] += 1
                missed = 0
                if due[unit] > 0:
                    lag = now - due[unit]
                    missed = int(lag // interval) if lag >= interval else 0
                    counts["late"] += lag > 0.5 * interval
                    counts["skipped"] += missed
                for req in plan:
                    read = client.read_input_registers if req.table == "input" else client.read_holding_registers
                    reply = read(req.address, count=req.count, device_id=unit)
                    counts["readings"] += len(req.points) if not reply.isError() else 0
                due[unit] = due[unit] + (missed + 1) * interval if due[unit] > 0 else now + interval
            stop.wait(max(0.0, min(min(due.values()) - time.monotonic(), 1.0)))
        counts["cpu"] = time.process_time() - cpu
        return counts
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--profile", default="eastron-sdm120")
    args = parser.parse_args()
    port = free_port()
    simulator = start_simulator(port, [args.profile] * args.meters)
    try:
        bus = BusConfig("bench", "tcp", host="127.0.0.1", port=port, timeout_s=2.0)
        print(f"{args.meters} meters ({args.profile}, {len(PROFILES[args.profile].points)} points) on one Modbus TCP "
              f"bus, simulator in its own process, {args.seconds:g} s per run")
        print(f"{'interval':>9} {'loop':<22} {'polls':>7} {'late':>7} {'skipped':>8} {'readings/CPU-s':>15}")
        for interval in (0.2, 0.1):
            meters = [MeterConfig(f"m{u}", "bench", u, args.profile, interval) for u in range(1, args.meters + 1)]
            for name, run in (("gateway BusPoller", run_ours), ("plain pymodbus (ref)", run_plain)):
                r = run(bus, meters, args.seconds)
                rate = r["readings"] / r["cpu"] if r["cpu"] else 0.0
                print(f"{interval:>8g}s {name:<22} {r['polls']:>7} {r['late'] / max(r['polls'], 1):>6.2%} "
                      f"{r['skipped'] / max(r['polls'] + r['skipped'], 1):>8.2%} {rate:>15,.0f}"
                      + (f"  ({r['failed']} meters failing)" if r["failed"] else ""))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


if __name__ == "__main__":
    main()
