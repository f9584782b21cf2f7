"""The whole daemon per reading (issue 17): readings per CPU-second, beside plain pymodbus in the same run.

    .venv/bin/python bench/bench_pipeline.py [--seconds 60] [--meters 10] [--no-receiver] [--py-spy]

The block shape: ``--meters`` simulated meters x 20 float32 values (40 registers, one read each) at 1 s, on
one Modbus TCP endpoint on loopback; the simulator runs in its own process. The real daemon
(``gateway.daemon.Gateway``) runs in this process: bus owner, store writer, preprocessing and emissions
(every meter counts as electricity), and sync: mosquitto is started on a free loopback port and the real
``carbon-gateway receiver`` in its own process acknowledges the batches (``--no-receiver``: none, so sync
stops after its in-flight window). After a warm-up, the daemon's CPU (user + system time of this process,
all threads; this process does nothing else meanwhile) is measured over ``--seconds``, with the readings
polled meanwhile. The reference: plain pymodbus block reads of the same requests of the same simulator,
decoded with ``convert_from_registers``, back to back, CPU of this process; run before and after the daemon.

``--py-spy`` samples the daemon's threads (holding the GIL) with py-spy during the measurement and prints
where the CPU goes (``pip install py-spy``). Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_drivers import run_plain  # noqa: E402
from bench_polling import gateway_toml, read_plans, start_gateway, start_simulator  # noqa: E402
from bench_sync import free_port, port_open, wait_for  # noqa: E402

from drivers import BusConfig, load_profile  # noqa: E402
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key  # noqa: E402

POINTS = [("energy_import", "energy_import", "kWh"), ("energy_export", "energy_export", "kWh"),
          ("reactive_energy", "reactive_energy", "kvarh"),
          *[(f"voltage_l{i}", "voltage", "V") for i in (1, 2, 3)], *[(f"current_l{i}", "current", "A") for i in (1, 2, 3)],
          *[(f"power_l{i}", "active_power", "kW") for i in (1, 2, 3)], ("power_total", "active_power", "kW"),
          ("reactive_power", "reactive_power", "kvar"), ("apparent_power", "apparent_power", "kVA"),
          ("power_factor", "power_factor", ""), ("frequency", "frequency", "Hz"), ("current_n", "current", "A"),
          ("demand_kw", "active_power", "kW"), ("max_demand_kw", "active_power", "kW")]
assert len(POINTS) == 20


def block_profile() -> str:
    """20 float32 values in one block of 40 input registers (a three-phase meter's main map)."""
    text = ('id = "bench-block20"\nmanufacturer = "Bench"\nmodel = "20 float32 in one block"\n'
            'source = "bench/bench_pipeline.py"\n\n[defaults]\ntable = "input"\ndata_type = "f32"\n')
    for i, (name, quantity, unit) in enumerate(POINTS):
        text += f'\n[[points]]\nname = "{name}"\naddress = {2 * i}\nquantity = "{quantity}"\nunit = "{unit}"\n'
    return text


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain_rate(port: int, plans: list, seconds: float) -> float:
    """Plain pymodbus block reads, back to back, for about ``seconds`` of CPU: readings per CPU-second."""
    bus = BusConfig("bench", "tcp", port=port, timeout_s=2.0)
    n, cpu = run_plain(bus, plans, 50)                     # calibrate
    cycles = max(50, int(50 * seconds / max(cpu, 1e-3)))
    n, cpu = run_plain(bus, plans, cycles)
    return n / cpu


#: py-spy frame file prefix -> layer; the innermost match on a stack wins (SQLite and numpy count for their caller)
LAYERS = (("pymodbus/", "pymodbus (requests, framing)"), ("drivers/", "drivers (bus owner, decode, Reading objects)"),
          ("paho/", "paho-mqtt"), ("sync/", "sync (seal, sign, publish, acks)"),
          ("local_store/", "local_store (store writer, preprocessing, emissions; SQLite inside)"),
          ("gateway/", "gateway (daemon loops, scheduler jobs)"))


def summarise_py_spy(raw: Path, top: int = 18) -> None:
    """Where the samples are: by layer (the innermost frame of ours or of a library) and by function (self)."""
    layers: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        functions[frames[-1]] += n
        layer = "other (threads, scheduler, stdlib)"
        for frame in reversed(frames):
            where = frame[frame.rfind("(") + 1:]
            hit = next((name for key, name in LAYERS if where.startswith(key)), None)
            if hit:
                layer = hit
                break
        layers[layer] += n
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\npy-spy: {total} samples of threads holding the GIL; by the innermost layer on the stack:")
    for layer, n in layers.most_common():
        print(f"  {n / total:6.1%}  {layer}")
    print("by function (self):")
    for function, n in functions.most_common(top):
        print(f"  {n / total:6.1%}  {function[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured daemon time")
    parser.add_argument("--warmup", type=float, default=5.0, help="daemon time before measuring")
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval (s)")
    parser.add_argument("--batch-age", type=float, default=5.0, help="[sync] batch_max_age_s")
    parser.add_argument("--no-receiver", action="store_true", help="no receiver: sync stops at its in-flight window")
    parser.add_argument("--py-spy", action="store_true", help="profile the daemon with py-spy during the measurement")
    parser.add_argument("--py-spy-raw", type=Path, help="with --py-spy: keep py-spy's collapsed stacks in this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)   # the daemon's warnings (e.g. an unsynchronised clock) are not figures
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    procs: list[subprocess.Popen] = []
    try:
        (work / "bench-block20.toml").write_text(block_profile())
        profile = load_profile(work / "bench-block20.toml")
        simulator, port = start_simulator(work / "bench-block20.toml", args.meters)
        procs.append(simulator)
        broker_port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                                             "persistence false\n")
        procs.append(subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                       str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(broker_port), 10, "mosquitto")
        data, rx = work / "data", work / "receiver"
        ensure_receiver_key(rx / "keys")
        ensure_gateway_key(data / "keys")
        (rx / "trusted").mkdir(parents=True)
        shutil.copy(data / "keys" / GATEWAY_PUB, rx / "trusted" / "bench-gw.pub")
        if not args.no_receiver:
            log = work / "receiver.log"
            procs.append(subprocess.Popen([sys.executable, "-c", "from gateway.cli import main; main()", "receiver",
                                           "--broker", f"127.0.0.1:{broker_port}", "--data-dir", str(rx)], cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=log.open("w")))
            wait_for(lambda: "connected to broker" in log.read_text(), 30, f"the receiver (log: {log})")
            time.sleep(0.3)   # its subscription is sent right after connecting

        plans = read_plans(port, args.meters, profile)
        print(f"{args.meters} meters x {len(profile.points)} float32 values ({sum(len(p) for _, p in plans)} requests "
              f"a round) every {args.interval:g} s; Modbus TCP on loopback; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        before = plain_rate(port, plans, min(args.seconds, 10.0) / 5)

        sync = (f'enabled = true\nbroker_host = "127.0.0.1"\nbroker_port = {broker_port}\n'
                f'receiver_public_key = "{rx / "keys" / RECEIVER_PUB}"\nbatch_max_age_s = {args.batch_age}\n')
        gateway = start_gateway(work, gateway_toml(data, port, args.meters, profile.id, args.interval,
                                                   activity_point="energy_import", sync=sync), profile)
        spy = None
        try:
            poller = gateway.bus_poller("bench")
            time.sleep(args.warmup)
            polls0, cpu0, t0 = sum(s.polls for s in poller.stats().values()), cpu_s(), time.monotonic()
            if args.py_spy:
                spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                        "--pid", str(os.getpid()), "--gil", "--nonblocking", "--rate", "1000",
                                        "--format", "raw", "-o", str(work / "spy.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(args.seconds)
            stats = poller.stats()
            polls1, cpu1, t1 = sum(s.polls for s in stats.values()), cpu_s(), time.monotonic()
            if spy is not None:
                spy.send_signal(signal.SIGINT)   # py-spy writes what it recorded and exits
                spy.wait(timeout=60)
            status = gateway.sync_status()
        finally:
            gateway.stop()
        failing = {m: s.last_error for m, s in stats.items() if s.state != "ok"}
        if failing:
            raise SystemExit(f"bench: meters failed: {failing}")
        after = plain_rate(port, plans, min(args.seconds, 10.0) / 5)

        readings = (polls1 - polls0) * len(profile.points)
        polled = sum(s.polls for s in poller.stats().values()) * len(profile.points)
        cpu = cpu1 - cpu0
        daemon = readings / cpu
        plain = (before + after) / 2
        print(f"\ndaemon: {readings:,} readings polled in {t1 - t0:.1f} s, {cpu:.2f} CPU-s "
              f"({cpu / (t1 - t0):.1%} of a core): {daemon:,.0f} readings per CPU-second")
        if status is not None:
            print(f"  sync at the end: connected {status.connected}, {status.backlog_readings} readings not yet "
                  f"acknowledged (batches every {args.batch_age:g} s)")
        if not args.no_receiver and (rx / "receiver.db").exists():
            with sqlite3.connect(rx / "receiver.db") as conn:
                received = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            print(f"  polled since the start (warm-up included): {polled:,}; committed at the receiver: {received:,} (the rest "
                  f"were not yet sealed or acknowledged when the daemon stopped: they stay in its store)")
        print(f"plain pymodbus block reads: {before:,.0f} (before) and {after:,.0f} (after) readings per CPU-second")
        print(f"ratio daemon / plain pymodbus: {daemon / plain:.2f} (target: at least 0.5, and 40,000 readings "
              "per CPU-second)")
        if spy is not None:
            summarise_py_spy(work / "spy.txt")
            if args.py_spy_raw:
                shutil.copy(work / "spy.txt", args.py_spy_raw)
    finally:
        for process in reversed(procs):
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
