"""Fast polling (issue 17): the share of late and skipped polls at 0.1 s and 0.2 s, beside plain pymodbus.

    .venv/bin/python bench/bench_polling.py [--seconds 10] [--meters 10] [--profile eastron-sdm630]

``--meters`` simulated meters (``carbon-gateway simulate``'s simulator, in its own process, so its CPU is not
this process's) on one Modbus TCP endpoint on loopback. For each interval, in one run, one after the other:

1. the real daemon (``gateway.daemon.Gateway``: bus owner, store writer, preprocessing and emissions; web UI,
   sync and backups off) polls every meter for ``--seconds``; its ``MeterStats`` give polls, late polls
   (started more than half an interval after their scheduled time) and skipped polls (scheduled times that
   passed with no poll);
2. a plain pymodbus loop reads the same requests (the daemon's read plan) of the same simulator at the same
   rate on the same kind of monotonic schedule, decoding with ``convert_from_registers``, and is counted
   by the same rules.

Late share = late / polls; skipped share = skipped / (polls + skipped), i.e. of the scheduled times.
Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_sync import free_port, port_open, wait_for  # noqa: E402
from pymodbus.client import ModbusTcpClient  # noqa: E402

from drivers import BusConfig, BusPoller, Profile, load_profile  # noqa: E402
from drivers.planner import ReadRequest  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402

_DATATYPE = {"u16": ModbusTcpClient.DATATYPE.UINT16, "i16": ModbusTcpClient.DATATYPE.INT16,
             "u32": ModbusTcpClient.DATATYPE.UINT32, "i32": ModbusTcpClient.DATATYPE.INT32,
             "u64": ModbusTcpClient.DATATYPE.UINT64, "i64": ModbusTcpClient.DATATYPE.INT64,
             "f32": ModbusTcpClient.DATATYPE.FLOAT32, "f64": ModbusTcpClient.DATATYPE.FLOAT64}

#: serves ``units`` meters of the profile file argv[1] on 127.0.0.1:argv[2] until killed
SIMULATOR = """
import sys, time
from pathlib import Path
from drivers import SimulatedDevice, SimulatorServer, load_profile
profile = load_profile(Path(sys.argv[1]))
devices = [SimulatedDevice(unit, profile) for unit in range(1, int(sys.argv[3]) + 1)]
SimulatorServer(devices, host="127.0.0.1", port=int(sys.argv[2])).start()
while True:
    time.sleep(3600)
"""


def start_simulator(profile_file: Path, meters: int) -> tuple[subprocess.Popen, int]:
    """The simulator in its own process (unit ids 1..meters); (process, port)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SIMULATOR, str(profile_file), str(port), str(meters)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 30, "the simulator")
    except SystemExit:
        process.kill()
        raise
    return process, port


def gateway_toml(data_dir: Path, port: int, meters: int, profile: str, interval_s: float, activity_point: str = "",
                 sync: str = "") -> str:
    """A gateway config: one Modbus TCP bus to the simulator, ``meters`` meters; web UI and backups off.

    :param activity_point: the point counted as electricity (emissions); empty: no activity.
    :param sync: the body of the [sync] table; empty: sync off.
    """
    text = (f'[gateway]\nid = "bench-gw"\ndata_dir = "{data_dir}"\n\n'
            f'[[buses]]\nname = "bench"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = {port}\ntimeout_s = 2.0\n\n')
    for unit in range(1, meters + 1):
        text += (f'[[meters]]\nid = "m{unit:02d}"\nbus = "bench"\ndevice_id = {unit}\nprofile = "{profile}"\n'
                 f'poll_interval_s = {interval_s}\n')
        text += f'activity = "electricity"\npoint = "{activity_point}"\n\n' if activity_point else "\n"
    text += "[sync]\n" + (sync or "enabled = false\n")
    return text + "\n[web]\nenabled = false\n\n[backup]\nenabled = false\n"


def start_gateway(work: Path, toml: str, profile: Profile) -> Gateway:
    path = work / "gateway.toml"
    path.write_text(toml)
    gateway = Gateway(load_config(path, {profile.id: profile}), profiles={profile.id: profile})
    gateway.start()
    return gateway


@dataclass
class Counts:
    polls: int = 0
    late: int = 0
    skipped: int = 0

    def line(self, label: str) -> str:
        late = self.late / self.polls if self.polls else 0.0
        skipped = self.skipped / (self.polls + self.skipped) if self.polls else 0.0
        return f"{label:<18}{self.polls:>8}{self.late:>7}{self.skipped:>9}{late:>10.2%}{skipped:>11.2%}"


def run_daemon(work: Path, port: int, meters: int, profile: Profile, interval_s: float, seconds: float) -> Counts:
    gateway = start_gateway(work, gateway_toml(work / "data", port, meters, profile.id, interval_s), profile)
    try:
        time.sleep(seconds)
        stats = gateway.bus_poller("bench").stats()
    finally:
        gateway.stop()
    failing = {m: s.last_error for m, s in stats.items() if s.state != "ok"}
    if failing:
        raise SystemExit(f"bench: meters failed: {failing}")
    return Counts(sum(s.polls for s in stats.values()), sum(s.late_polls for s in stats.values()),
                  sum(s.skipped_polls for s in stats.values()))


def run_plain(port: int, plans: list[tuple[int, list[ReadRequest]]], interval_s: float, seconds: float) -> Counts:
    """Plain pymodbus on a monotonic schedule per meter, counted like ``BusPoller`` counts."""
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
    client.connect()
    counts = Counts()
    due: dict[int, float | None] = {unit: None for unit, _ in plans}   # None: not yet polled
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for unit, plan in plans:
                started = time.monotonic()
                slot = due[unit]
                if slot is not None:
                    if slot > started:
                        continue
                    late_s = started - slot
                    counts.late += late_s > interval_s / 2
                    missed = int(late_s // interval_s)
                    counts.skipped += missed
                    slot += missed * interval_s
                counts.polls += 1
                for req in plan:
                    read = client.read_input_registers if req.table == "input" else client.read_holding_registers
                    registers = read(req.address, count=req.count, device_id=unit).registers
                    for p in req.points:
                        offset = p.address - req.address
                        client.convert_from_registers(registers[offset:offset + p.count], _DATATYPE[p.data_type],
                                                      word_order=p.word_order)
                due[unit] = (started if slot is None else slot) + interval_s
            pause = min(d for d in due.values() if d is not None) - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, 1.0))
    finally:
        client.close()
    return counts


def read_plans(port: int, meters: int, profile: Profile) -> list[tuple[int, list[ReadRequest]]]:
    """The daemon's read plan for each meter (what the plain loop sends too)."""
    probe = BusPoller(BusConfig("bench", "tcp", port=port), [], {})
    return [(unit, probe.plan(unit, profile)) for unit in range(1, meters + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="polling time of each run")
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--profile", default="eastron-sdm630", help="a profile id from config/profiles/")
    parser.add_argument("--intervals", default="0.1,0.2", help="poll intervals in seconds, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs (daemon, plain, daemon, ...) per interval")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)   # the daemon's warnings (e.g. an unsynchronised clock) are not figures
    profile_file = ROOT / "config" / "profiles" / f"{args.profile}.toml"
    profile = load_profile(profile_file)
    work = Path(tempfile.mkdtemp(prefix="bench-polling-"))
    simulator, port = start_simulator(profile_file, args.meters)
    try:
        plans = read_plans(port, args.meters, profile)
        requests = sum(len(plan) for _, plan in plans)
        print(f"{args.meters} meters ({args.profile}, {len(profile.points)} points, {requests} requests a round) on "
              f"Modbus TCP 127.0.0.1:{port}, {args.seconds:g} s per run, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")
        for interval_s in (float(v) for v in args.intervals.split(",")):
            print(f"\npoll interval {interval_s:g} s: {args.meters * args.seconds / interval_s:,.0f} polls scheduled "
                  f"per run\n{'':<18}{'polls':>8}{'late':>7}{'skipped':>9}{'late %':>10}{'skipped %':>11}")
            totals = {"gateway daemon": Counts(), "plain pymodbus": Counts()}
            for n in range(args.rounds):
                run_dir = work / f"daemon-{interval_s:g}-{n}"
                run_dir.mkdir()
                for label, counts in (("gateway daemon", run_daemon(run_dir, port, args.meters, profile, interval_s,
                                                                    args.seconds)),
                                      ("plain pymodbus", run_plain(port, plans, interval_s, args.seconds))):
                    print(counts.line(label), flush=True)
                    total = totals[label]
                    total.polls, total.late, total.skipped = (total.polls + counts.polls, total.late + counts.late,
                                                              total.skipped + counts.skipped)
            if args.rounds > 1:
                for label, total in totals.items():
                    print(total.line(f"{label.split()[0]}, all runs"))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
