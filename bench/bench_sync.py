"""Drain a backlog of readings through a real mosquitto on loopback into the receiver.

Usage: .venv/bin/python bench/bench_sync.py [--readings 1000000] [--batch 20000]
Prints readings/s end to end (from the first seal to the last acknowledgement), bytes per reading on
the wire and CPU seconds (gateway and receiver run in this one process).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import Quantity, Reading  # noqa: E402
from local_store import open_store  # noqa: E402
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings  # noqa: E402
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key  # noqa: E402

POINTS = [("energy_import", Quantity.ENERGY_IMPORT, "kWh"), ("active_power", Quantity.ACTIVE_POWER, "kW"),
          ("voltage_l1", Quantity.VOLTAGE, "V"), ("current_l1", Quantity.CURRENT, "A"),
          ("frequency", Quantity.FREQUENCY, "Hz")]


def typical_readings(n: int, meters: int = 40, period_s: float = 5.0) -> list[Reading]:
    """Meter-like data: counters that grow, values with realistic resolution (f32 from the meter)."""
    rng = np.random.default_rng(1)
    cycles = n // (meters * len(POINTS)) + 1
    out: list[Reading] = []
    t0 = 1_790_000_000.0
    for cycle in range(cycles):
        for m in range(meters):
            ts = t0 + cycle * period_s + m * 0.01
            power = 100 + 20 * np.sin(cycle / 60 + m)
            values = (10_000 + m * 100 + cycle * power * period_s / 3600, power, 230 + rng.normal(0, 0.3),
                      power * 1000 / 690, 50 + rng.normal(0, 0.01))
            for (name, quantity, unit), value in zip(POINTS, values):
                out.append(Reading(f"meter-{m:02d}", name, ts, float(np.float32(value)), unit, quantity))
                if len(out) == n:
                    return out
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                         "max_inflight_messages 100\nmessage_size_limit 0\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        ensure_gateway_key(work / "gw")
        ensure_receiver_key(work / "rx")
        (work / "trusted").mkdir()
        shutil.copy(work / "gw" / GATEWAY_PUB, work / "trusted" / "bench.pub")
        store = open_store(work / "gateway.db")
        started = time.perf_counter()
        readings = typical_readings(args.readings)
        for i in range(0, len(readings), 50_000):
            store.insert_readings(readings[i:i + 50_000])
        print(f"backlog of {len(readings):,} readings stored in {time.perf_counter() - started:.1f} s")
        broker_settings = BrokerSettings(port=port)
        receiver = Receiver(ReceiverSettings(work / "receiver.db", work / "rx", work / "trusted", broker_settings))
        receiver.start()
        service = SyncService(SyncSettings("bench", work / "gw", work / "rx" / RECEIVER_PUB, broker_settings,
                                           batch_max_readings=args.batch, batch_max_age_s=0, tick_s=0.01,
                                           max_inflight=20), store)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        service.start()
        deadline = t0 + 600
        while time.perf_counter() < deadline:
            status = service.status()
            if status.backlog_readings == 0 and status.last_ack_at is not None:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        service.stop()
        receiver.stop()
        with sqlite3.connect(work / "receiver.db") as conn:
            received = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            batches = conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        # The drained outbox is empty, so seal one more batch of the same data to measure its size.
        from sync import outbox
        store.insert_readings(readings[: args.batch])
        service.fill(force=True)
        sample = outbox.unacked(store.db, 1)[0]
        bytes_per_reading = len(sample.message) / sample.count
        cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        print(f"drained {received:,} readings in {batches} batches: {elapsed:.1f} s, "
              f"{received / elapsed:,.0f} readings/s end to end, {cpu:.1f} CPU s, "
              f"{bytes_per_reading:.2f} bytes/reading on the wire (batch of {sample.count:,})")
        store.close()
        if received != len(readings):
            sys.exit(f"receiver holds {received} readings, expected {len(readings)}")
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
