"""Read planner and polling cost on a bus of 8 three-phase meters; one command:

    .venv/bin/python bench/bench_drivers.py [--cycles 300]

(a) requests and bytes per poll cycle: the planner's plan against the optimum (every way of cutting each
    meter's sorted points into reads, enumerated, costed by modelled bus time), against the plan with the
    fewest requests (holes bridged regardless of cost) and against one request per point;
(b) the modelled RS-485 wire time of one cycle at 9600 baud 8N1 (``BusCost``: frames, 3.5-character
    silences, 5 ms device turnaround);
(c) readings per CPU-second of this process polling the meters through ``BusPoller`` over Modbus TCP,
    against plain pymodbus block reads of the same requests decoded with ``convert_from_registers`` (and the
    same again building the ``Reading`` objects the gateway stores), in the same run. The simulator runs as ``carbon-gateway simulate`` in its own process, so its CPU is not
    counted; runs alternate (ours, plain, ours, plain, ...); the best of each and the median of the paired
    ratios are reported (the machine is shared, so single runs vary by tens of per cent).
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymodbus.client import ModbusTcpClient  # noqa: E402

from drivers import BusConfig, BusPoller, MeterConfig, Reading, SerialSettings, load_profiles  # noqa: E402
from drivers.model import Profile  # noqa: E402
from drivers.planner import (RTU_REPLY_OVERHEAD_BYTES, RTU_REQUEST_BYTES, BusCost, ReadRequest,  # noqa: E402
                             fewest_requests, one_request_per_point, plan_reads)

PROFILES = load_profiles(ROOT / "config" / "profiles")
#: 8 three-phase meters of six brands on one line, as in a factory's low-voltage switchboard.
BUS_PROFILES = ["eastron-sdm630", "chint-dtsu666", "acrel-adl400", "schneider-iem3255", "abb-b23",
                "janitza-umg604", "eastron-sdm630", "chint-dtsu666"]
MAX_GAP = 10  # the default of [[buses]] max_gap_registers
RTU_9600 = BusCost.for_bus(BusConfig("rs485", "rtu", serial=SerialSettings("/dev/ttyUSB0", 9600)))

_DATATYPE = {"u16": ModbusTcpClient.DATATYPE.UINT16, "i16": ModbusTcpClient.DATATYPE.INT16,
             "u32": ModbusTcpClient.DATATYPE.UINT32, "i32": ModbusTcpClient.DATATYPE.INT32,
             "u64": ModbusTcpClient.DATATYPE.UINT64, "i64": ModbusTcpClient.DATATYPE.INT64,
             "f32": ModbusTcpClient.DATATYPE.FLOAT32, "f64": ModbusTcpClient.DATATYPE.FLOAT64}


def wire_bytes(plan: list[ReadRequest]) -> int:
    return sum(RTU_REQUEST_BYTES + RTU_REPLY_OVERHEAD_BYTES + 2 * r.count for r in plan)


def optimum_chars(profile: Profile, cost: BusCost, max_gap: int | None) -> tuple[float, int]:
    """(cost, requests) of the cheapest way to cut the sorted points into reads, by enumeration."""
    spans = sorted((p.table, p.address, p.count) for p in profile.points)
    best = (float("inf"), 0)
    for cuts in itertools.product((False, True), repeat=len(spans) - 1):
        total, requests, group = 0.0, 0, [spans[0]]
        for span, cut in itertools.chain(zip(spans[1:], cuts), [(None, True)]):
            if cut:
                start, end, ok = group[0][1], group[0][1] + group[0][2], True
                for table, a, c in group[1:]:
                    ok &= table == group[0][0] and (max_gap is None or a - end <= max_gap)
                    end = max(end, a + c)
                if not ok or end - start > 125:
                    total = float("inf")
                    break
                total += cost.request_chars(end - start)
                requests += 1
                group = []
            if span is not None:
                group.append(span)
        best = min(best, (total, requests))
    return best


def plans_table() -> None:
    rows: dict[str, list[list[ReadRequest]]] = {"planner (max_gap 10)": [], "optimum, holes up to 10": [], "optimum, any hole": [],
            "fewest requests": [], "one request per point": []}
    for pid in BUS_PROFILES:
        profile = PROFILES[pid]
        rows["planner (max_gap 10)"].append(plan_reads(profile, MAX_GAP, cost=RTU_9600))
        rows["fewest requests"].append(fewest_requests(profile))
        rows["one request per point"].append(one_request_per_point(profile))
    optimum = {label: [optimum_chars(PROFILES[pid], RTU_9600, gap) for pid in BUS_PROFILES]
               for label, gap in (("optimum, holes up to 10", MAX_GAP), ("optimum, any hole", None))}
    print(f"bus: {len(BUS_PROFILES)} meters ({', '.join(BUS_PROFILES)}), "
          f"{sum(len(PROFILES[p].points) for p in BUS_PROFILES)} points")
    print(f"{'plan':<26}{'requests':>9}{'registers':>10}{'RTU bytes':>10}{'wire time @9600':>17}")
    for label, plans in rows.items():
        if label in optimum:
            chars = sum(c for c, _ in optimum[label])
            requests = sum(n for _, n in optimum[label])
            print(f"{label:<26}{requests:>9}{'':>10}{'':>10}{chars * RTU_9600.char_s * 1000:>14.1f} ms")
            continue
        flat = [r for plan in plans for r in plan]
        print(f"{label:<26}{len(flat):>9}{sum(r.count for r in flat):>10}{wire_bytes(flat):>10}"
              f"{RTU_9600.plan_seconds(flat) * 1000:>14.1f} ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulator(port: int) -> subprocess.Popen:
    args = [str(Path(sys.executable).parent / "carbon-gateway"), "simulate", "--tcp", f"127.0.0.1:{port}"]
    for unit, pid in enumerate(BUS_PROFILES, start=1):
        args += ["--profile", pid, "--unit", str(unit)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("simulator did not start within 30 s")


def run_ours(bus: BusConfig, meters: list[MeterConfig], cycles: int) -> tuple[int, float]:
    poller = BusPoller(bus, meters, PROFILES)
    try:
        poller.poll_due(0.0)  # connect, plan
        readings = 0
        cpu = time.process_time()
        for cycle in range(1, cycles + 1):
            readings += len(poller.poll_due(cycle * 1000.0))
        cpu = time.process_time() - cpu
        assert all(s.state == "ok" for s in poller.stats().values()), poller.stats()
        return readings, cpu
    finally:
        poller.close()


def run_plain(bus: BusConfig, plans: list[tuple[int, list[ReadRequest]]], cycles: int,
              make_readings: bool = False) -> tuple[int, float]:
    client = ModbusTcpClient(bus.host, port=bus.port, timeout=bus.timeout_s, retries=0)
    client.connect()
    try:
        readings = 0
        cpu = time.process_time()
        for _ in range(cycles):
            for unit, plan in plans:
                for req in plan:
                    read = client.read_input_registers if req.table == "input" else client.read_holding_registers
                    registers = read(req.address, count=req.count, device_id=unit).registers
                    for p in req.points:
                        offset = p.address - req.address
                        raw = registers[offset:offset + p.count]
                        value = client.convert_from_registers(raw, _DATATYPE[p.data_type], word_order=p.word_order)
                        if make_readings:  # what the gateway needs downstream: a Reading per value
                            Reading(f"m{unit}", p.name, time.time(), value * p.scale, p.unit, p.quantity,  # type: ignore[operator]
                                    raw=tuple(raw))
                        readings += 1
        return readings, time.process_time() - cpu
    finally:
        client.close()


def cpu_table(cycles: int, rounds: int) -> None:
    port = free_port()
    simulator = start_simulator(port)
    try:
        bus = BusConfig("bench", "tcp", port=port, timeout_s=2.0)
        meters = [MeterConfig(f"m{u}", "bench", u, pid, 1.0) for u, pid in enumerate(BUS_PROFILES, start=1)]
        probe = BusPoller(bus, [], {})
        plans = [(m.device_id, probe.plan(m.device_id, PROFILES[m.profile])) for m in meters]
        requests = sum(len(p) for _, p in plans)
        results: dict[str, list[float]] = {"BusPoller": [], "plain pymodbus": [], "plain + Reading": []}
        for _ in range(rounds):
            n, cpu = run_ours(bus, meters, cycles)
            results["BusPoller"].append(n / cpu)
            n_plain, cpu = run_plain(bus, plans, cycles)
            results["plain pymodbus"].append(n_plain / cpu)
            n_plain, cpu = run_plain(bus, plans, cycles, make_readings=True)
            results["plain + Reading"].append(n_plain / cpu)
            assert n == n_plain, (n, n_plain)
        print(f"\nModbus TCP on loopback, {cycles} cycles x {requests} requests x {rounds} rounds "
              f"({n} readings per round); readings per CPU-second of this process:")
        for label, rates in results.items():
            print(f"{label:<16} best {max(rates):>9,.0f}   median {statistics.median(rates):>9,.0f}   "
                  f"all: {', '.join(f'{r:,.0f}' for r in rates)}")
        best = 1 - max(results["BusPoller"]) / max(results["plain pymodbus"])
        paired = statistics.median(1 - o / p for o, p in zip(results["BusPoller"], results["plain pymodbus"]))
        print(f"BusPoller CPU overhead over plain pymodbus: {best:.1%} best vs best, {paired:.1%} median of the "
              "paired rounds (target: within 15%)")
        best_r = 1 - max(results["BusPoller"]) / max(results["plain + Reading"])
        paired_r = statistics.median(1 - o / p for o, p in zip(results["BusPoller"], results["plain + Reading"]))
        print(f"... over plain pymodbus building the same Reading objects: {best_r:.1%} best vs best, {paired_r:.1%} "
              "median of the paired rounds")
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300, help="poll cycles per timed run")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed runs of each")
    args = parser.parse_args()
    plans_table()
    cpu_table(args.cycles, args.rounds)


if __name__ == "__main__":
    main()
