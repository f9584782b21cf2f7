"""Drain a backlog of readings through mosquitto on loopback into the receiver; one command:

    .venv/bin/python bench/bench_sync.py [--readings 1000000] [--batch 10000] [--wire-only]

The gateway side (SyncService on a SQLite store holding the backlog) runs in this process; the receiver
is the real `carbon-gateway receiver` command in its own process, as in production; mosquitto is started
on a free loopback port. Timed: from SyncService.start() until every batch is acknowledged (so committed
at the receiver), which includes sealing the batches. Prints readings/s end to end, bytes per reading on
the wire (batch messages as published, and with MQTT framing), and CPU seconds per process.

First, in the same run, the wire size of the realistic field case (issue 16: 5 meters polled every
second, 30 s batches, clock unsynchronised: at most 4 bytes per reading) beside the reference case.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers import Quantity, Reading  # noqa: E402
from local_store import open_store  # noqa: E402
from sync import BrokerSettings, SyncService, SyncSettings  # noqa: E402
from sync import outbox  # noqa: E402
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def typical_readings(n: int, meters: int = 50) -> list[Reading]:
    """Meters polled every 5 s: a cumulative energy register (u32 x 0.01 kWh) and three float32 values."""
    import numpy as np

    rng = random.Random(1)
    out: list[Reading] = []
    energy = [10_000.0 + 37 * m for m in range(meters)]
    t = 1_795_000_000.0
    while len(out) < n:
        for m in range(meters):
            ts = t + m * 0.02 + rng.uniform(0, 0.03)
            power = 50 + 10 * math.sin(ts / 600 + m)
            energy[m] += power * 5 / 3600
            for point, value, unit, quantity in (
                    ("energy_import", round(energy[m] * 100) * 0.01, "kWh", Quantity.ENERGY_IMPORT),
                    ("active_power", float(np.float32(power)), "kW", Quantity.ACTIVE_POWER),
                    ("voltage_l1", float(np.float32(230 + rng.gauss(0, 0.3))), "V", Quantity.VOLTAGE),
                    ("frequency", float(np.float32(50 + rng.gauss(0, 0.01))), "Hz", Quantity.FREQUENCY)):
                out.append(Reading(f"meter-{m:03d}", point, ts, value, unit, quantity))
        t += 5.0
    return out[:n]


def realistic_readings(minutes: int = 30, meters: int = 5) -> list[Reading]:
    """The field case of issue 16: a few meters polled every second (with the poll loop's jitter), the
    same 4 points as :func:`typical_readings`, and the system clock unsynchronised, so every reading
    carries the reason ``clock_unsynchronised`` (gateway.clock.UNSYNCHRONISED_REASON)."""
    import numpy as np

    rng = random.Random(2)
    out: list[Reading] = []
    energy = [10_000.0 + 37 * m for m in range(meters)]
    t = 1_795_000_000.0
    for _ in range(minutes * 60):
        for m in range(meters):
            ts = t + m * 0.02 + rng.uniform(0, 0.03)
            power = 50 + 10 * math.sin(ts / 600 + m)
            energy[m] += power / 3600
            for point, value, unit, quantity in (
                    ("energy_import", round(energy[m] * 100) * 0.01, "kWh", Quantity.ENERGY_IMPORT),
                    ("active_power", float(np.float32(power + rng.gauss(0, 0.2))), "kW", Quantity.ACTIVE_POWER),
                    ("voltage_l1", float(np.float32(230 + rng.gauss(0, 0.3))), "V", Quantity.VOLTAGE),
                    ("frequency", float(np.float32(50 + rng.gauss(0, 0.01))), "Hz", Quantity.FREQUENCY)):
                out.append(Reading(f"meter-{m:03d}", point, ts, value, unit, quantity, reason="clock_unsynchronised"))
        t += 1.0
    return out


def wire_bytes_per_reading(readings: list[Reading], batch_s: float | None, batch_readings: int = 10_000) -> float:
    """Seal ``readings`` into batches as the outbox does (cut every ``batch_s`` seconds of readings, as
    ``batch_max_age_s`` does on a live link, or every ``batch_readings``) and return the bytes of the
    sealed, signed messages per reading."""
    work = Path(tempfile.mkdtemp(prefix="bench-wire-"))
    try:
        ensure_gateway_key(work / "keys")
        ensure_receiver_key(work / "rx")
        from sync.keys import load_public

        store = open_store(work / "gateway.db")
        receiver, signer = load_public(work / "rx" / RECEIVER_PUB), ensure_gateway_key(work / "keys")
        chunks: list[list[Reading]] = []
        if batch_s is None:
            chunks = [readings[i:i + batch_readings] for i in range(0, len(readings), batch_readings)]
        else:
            start = readings[0].timestamp
            for r in readings:
                k = int((r.timestamp - start) // batch_s)
                while len(chunks) <= k:
                    chunks.append([])
                chunks[k].append(r)
        total = 0
        for chunk in chunks:
            if not chunk:
                continue
            store.insert_readings(chunk)
            seq = outbox.make_batch(store, "bench-gw", len(chunk), receiver, signer)
            assert seq is not None
            total += len(outbox.message(store.db, seq) or b"")
        store.close()
        return total / len(readings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def wire_sizes(minutes: int = 30) -> tuple[float, float]:
    """Print and return bytes per reading of the realistic field case and of the reference case, sealed
    in the same run (issue 16: the field case must stay <= 4)."""
    realistic = wire_bytes_per_reading(realistic_readings(minutes), 30.0)
    reference = wire_bytes_per_reading(typical_readings(100_000), None, 10_000)
    print(f"wire, realistic field:   {realistic:.2f} bytes/reading (5 meters x 4 points, 1 s polls, 30 s batches of "
          f"~600, clock unsynchronised, {minutes} min)")
    print(f"wire, reference:         {reference:.2f} bytes/reading (50 meters x 4 points every 5 s, batches of 10,000)")
    return realistic, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="readings per batch")
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--wire-only", action="store_true",
                        help="only the wire-size cases (realistic field case and reference), no drain")
    args = parser.parse_args()
    wire_sizes()
    if args.wire_only:
        return
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                             "max_inflight_messages 100\nmax_queued_messages 100000\n"
                                             "message_size_limit 0\n")
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(broker)
        wait_for(lambda: port_open(port), 10, "mosquitto")

        gw_keys, rx_dir = work / "gateway" / "keys", work / "receiver"
        ensure_gateway_key(gw_keys)
        ensure_receiver_key(rx_dir / "keys")
        (rx_dir / "trusted").mkdir(parents=True)
        shutil.copy(gw_keys / GATEWAY_PUB, rx_dir / "trusted" / "bench-gw.pub")

        print(f"storing {args.readings} readings ...", flush=True)
        store = open_store(work / "gateway" / "gateway.db")
        readings = typical_readings(args.readings)
        for i in range(0, len(readings), 50_000):
            store.insert_readings(readings[i:i + 50_000])
        del readings

        log = work / "receiver.log"
        receiver = subprocess.Popen([sys.executable, "-c", "from gateway.cli import main; main()", "receiver",
                                     "--broker", f"127.0.0.1:{port}", "--data-dir", str(rx_dir)], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=log.open("w"))
        procs.append(receiver)
        wait_for(lambda: "connected to broker" in log.read_text(), 30, f"the receiver (log: {log})")
        time.sleep(0.3)  # its subscription is sent right after connecting

        settings = SyncSettings("bench-gw", gw_keys, rx_dir / "keys" / RECEIVER_PUB, BrokerSettings(port=port),
                                batch_max_readings=args.batch, batch_max_age_s=0.0, max_inflight=args.inflight,
                                ack_timeout_s=120.0, tick_s=0.05)
        service = SyncService(settings, store)
        me = os.getpid()
        cpu0 = {"gateway": cpu_s(me), "receiver": cpu_s(receiver.pid), "mosquitto": cpu_s(broker.pid)}
        wire = {"bytes": 0, "messages": 0}
        original = outbox.mark_sent

        def counting_mark_sent(db, seq):  # count what goes on the wire, including resends
            wire["bytes"] += len(outbox.message(db, seq) or b"")
            wire["messages"] += 1
            original(db, seq)

        outbox.mark_sent = counting_mark_sent  # type: ignore[assignment]
        started = time.perf_counter()
        service.start()
        try:
            wait_for(lambda: service.status().backlog_readings == 0, 1800, "the backlog to drain")
            elapsed = time.perf_counter() - started
        finally:
            service.stop()
        cpu = {"gateway": cpu_s(me) - cpu0["gateway"], "receiver": cpu_s(receiver.pid) - cpu0["receiver"],
               "mosquitto": cpu_s(broker.pid) - cpu0["mosquitto"]}
        with sqlite3.connect(rx_dir / "receiver.db") as conn:
            received = conn.execute("SELECT COUNT(*), COUNT(DISTINCT reading_id) FROM readings").fetchone()
        store.close()
        topic = len(settings.batch_topic())
        framing = wire["messages"] * (2 + 4 + 2 + topic + 2 + 1)  # fixed header, length, topic, packet id, props
        n = args.readings
        print(f"readings drained:        {n} ({received[0]} stored at the receiver, {received[1]} distinct)")
        print(f"batches:                 {wire['messages']} messages of {args.batch} readings")
        print(f"end to end:              {elapsed:.2f} s = {n / elapsed:,.0f} readings/s")
        print(f"bytes per reading:       {wire['bytes'] / n:.2f} (batch messages), "
              f"{(wire['bytes'] + framing) / n:.2f} (with MQTT PUBLISH framing)")
        print("CPU seconds:             " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        if received[0] != n or received[1] != n:
            raise SystemExit("bench: the receiver does not hold exactly the stored readings")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
