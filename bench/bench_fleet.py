"""A fleet against a receiver group: 1,000 gateways through 1, 2 and 4 receivers on PostgreSQL; one command:

    .venv/bin/python bench/bench_fleet.py [--gateways 1000] [--batches 2] [--readings 150] [--receivers 1,2,4]

The load generator plays the gateways: each has its own Ed25519 key (trusted by the receivers) and seals
real batches (the outbox's encoding, HPKE to the receiver key, its own signature, a chained hash, seq
1, 2, ...), publishes them on its own topic with QoS 1 and, like a gateway, sends again what is not
acknowledged within ``--ack-timeout`` seconds. The receivers are the real ``carbon-gateway receiver``
command, N processes in one MQTT 5 shared-subscription group with persistent sessions, storing into one
PostgreSQL database (a fresh one per run). mosquitto and PostgreSQL are started on free loopback ports.

Each run publishes in three waves (a third of the batches each): one receiver is stopped (SIGTERM) and
started again while the second wave is in flight, and PostgreSQL is restarted (``pg_ctl restart -m
fast``) while the third is. At the end the
database must hold every reading exactly once: lost = sent - stored, duplicated = stored rows - distinct
(gateway, meter, point, timestamp); both must be 0. Prints readings/s committed (first publish to last
acknowledgement) per receiver count.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from sync.batches import encode_rows  # noqa: E402
from sync.crypto import BatchHeader, message_hash, seal  # noqa: E402
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key, key_id, load_public  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class Postgres:
    """A throwaway PostgreSQL server (as ``nobody`` when run as root: PostgreSQL refuses root)."""

    def __init__(self, base: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise SystemExit("bench: PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.base, self.port = base, free_port()
        base.mkdir(mode=0o700)
        (base / "sock").mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(base, "nobody")
            shutil.chown(base / "sock", "nobody")
            self.as_user = ["runuser", "-u", "nobody", "--"]
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(base / "data"), "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        self.options = ["-o", f"-h 127.0.0.1 -p {self.port} -k {base / 'sock'} -c fsync=off -c max_connections=50"]
        self._ctl("start")

    def _ctl(self, *what: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-l",
                        str(self.base / "log"), "-w", "-t", "60", *self.options, *what], check=True,
                       capture_output=True, timeout=90)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
                        "-w", "-t", "30", "stop"], capture_output=True, timeout=60)


def seal_fleet(work: Path, gateways: int, batches: int, readings: int) -> dict[str, list[bytes]]:
    """Each gateway's batches, sealed and signed as its outbox would (seq 1..batches, chained)."""
    rx_pub = load_public(work / "receiver" / "keys" / RECEIVER_PUB)
    trusted = work / "receiver" / "trusted"
    out: dict[str, list[bytes]] = {}
    for g in range(gateways):
        gateway_id = f"gw-{g:04d}"
        signer = ensure_gateway_key(work / "gateways" / gateway_id)
        shutil.copy(work / "gateways" / gateway_id / GATEWAY_PUB, trusted / f"{gateway_id}.pub")
        prev, messages, reading_id = "", [], 0
        for seq in range(1, batches + 1):
            rows = []
            for i in range(readings):
                reading_id += 1
                meter, point = f"meter-{i % 5}", ("energy_import", "active_power", "voltage_l1")[(i // 5) % 3]
                ts = 1_795_000_000.0 + seq * 1000 + i // 15
                rows.append((reading_id, meter, point, ts, round(1000 + reading_id * 0.01, 2), "kWh",
                             "energy_import", "ok", ""))
            header = BatchHeader(gateway_id, seq, prev, key_id(signer.public_key()), key_id(rx_pub), len(rows),
                                 time.time())
            message = seal(header, encode_rows(rows), rx_pub, signer)  # type: ignore[arg-type]
            prev = message_hash(message)
            messages.append(message)
        out[gateway_id] = messages
    return out


class Fleet:
    """Publishes every gateway's batches and resends what is not acknowledged in time."""

    def __init__(self, port: int, batches: dict[str, list[bytes]], ack_timeout_s: float) -> None:
        self.batches, self.ack_timeout_s = batches, ack_timeout_s
        self.acked: set[tuple[str, int]] = set()
        self.sent_at: dict[tuple[str, int], float] = {}
        self.resends = 0
        self.resent: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)   # the broker's receive maximum (max_inflight_messages)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._ack
        ready = threading.Event()
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_connect = lambda c, *_: c.subscribe("carbon/+/ack", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(15):
            raise SystemExit("bench: the load generator could not subscribe to the acks")

    def _ack(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(message.payload)
        if body.get("status") in ("committed", "duplicate"):
            with self.lock:
                self.acked.add((message.topic.split("/")[1], int(body["seq"])))

    def acked_keys(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.acked)

    def publish_due(self, allowed: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        for gateway_id, messages in self.batches.items():
            for seq, message in enumerate(messages, 1):
                key = (gateway_id, seq)
                if key not in allowed:
                    continue
                with self.lock:
                    if key in self.acked:
                        continue
                    last = self.sent_at.get(key)
                    if last is not None and now - last < self.ack_timeout_s:
                        continue
                    if last is not None:
                        self.resends += 1
                        self.resent.add(key)
                    self.sent_at[key] = now
                self.client.publish(f"carbon/{gateway_id}/batch", message, qos=1)

    def total(self) -> int:
        return sum(len(m) for m in self.batches.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_receiver(work: Path, port: int, url: str, index: int) -> subprocess.Popen:
    log = (work / f"receiver-{index}.log").open("a")
    return subprocess.Popen([sys.executable, "-c", "from gateway.cli import main; main()", "receiver",
                             "--broker", f"127.0.0.1:{port}", "--data-dir", str(work / "receiver"), "--database", url,
                             "--client-id", f"receiver-{index}", "--session-expiry", "600"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)


def run(work: Path, port: int, pg: Postgres, receivers: int, batches: dict[str, list[bytes]],
        readings_per_batch: int, ack_timeout_s: float) -> dict:
    import psycopg

    database = f"fleet_{receivers}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    url = pg.url(database)
    procs = [start_receiver(work, port, url, i) for i in range(receivers)]
    try:
        for i in range(receivers):
            wait_for(lambda i=i: "connected to broker" in (work / f"receiver-{i}.log").read_text(), 60,
                     f"receiver {i}")
        time.sleep(0.5)    # their subscriptions follow the connect
        fleet = Fleet(port, batches, ack_timeout_s)
        total = fleet.total()
        # Three waves (every gateway's batches in seq order, split in thirds); the receiver is restarted
        # while the second is in flight, PostgreSQL while the third is.
        keys = sorted(((g, seq) for g, messages in batches.items() for seq in range(1, len(messages) + 1)),
                      key=lambda k: (k[1], k[0]))
        waves = [set(keys[i * len(keys) // 3:(i + 1) * len(keys) // 3]) for i in range(3)]
        restarted_receiver = restarted_db = False
        allowed: set[tuple[str, int]] = set()
        started = time.perf_counter()
        deadline = time.monotonic() + 1800
        for number, wave in enumerate(waves):
            allowed |= wave
            fleet.publish_due(allowed)
            if number == 1:
                restarted_receiver = True
                procs[0].send_signal(signal.SIGTERM)
                procs[0].wait(timeout=30)
                procs[0] = start_receiver(work, port, url, 0)
            elif number == 2:
                restarted_db = True
                pg.restart()
            while not allowed <= fleet.acked_keys():
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {len(allowed - fleet.acked_keys())} batches never acknowledged")
                fleet.publish_due(allowed)
                if os.environ.get("BENCH_TRACE"):
                    print(f"{time.perf_counter() - started:6.1f} s acked {len(fleet.acked_keys())}/{total}", flush=True)
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
        resends = fleet.resends
        resent_by_wave = [len(fleet.resent & wave) for wave in waves]
        fleet.close()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    with psycopg.connect(url) as conn:
        rows, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (gateway_id, meter_id, point, timestamp)) FROM readings").fetchone()
        stored_batches = conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        table_bytes = conn.execute("SELECT pg_total_relation_size('readings')").fetchone()[0]
    sent = total * readings_per_batch
    return {"receivers": receivers, "gateways": len(batches), "batches": total, "stored_batches": stored_batches,
            "readings": sent, "elapsed_s": round(elapsed, 2), "readings_per_s": round(sent / elapsed),
            "lost": sent - distinct, "duplicated": rows - distinct, "resends": resends,
            "resent_by_wave": resent_by_wave, "pg_bytes_per_reading": round(table_bytes / max(rows, 1)),
            "restarted": {"receiver": restarted_receiver, "database": restarted_db}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=2, help="batches per gateway")
    parser.add_argument("--readings", type=int, default=150, help="readings per batch")
    parser.add_argument("--receivers", default="1,2,4")
    parser.add_argument("--ack-timeout", type=float, default=30.0, help="the gateways' resend timeout (s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = pg = None
    try:
        port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                             "max_inflight_messages 100\nmax_queued_messages 1000000\n")
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
                                   str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, "mosquitto")
        pg = Postgres(Path(f"/tmp/bench-fleet-pg-{os.getpid()}"))
        ensure_receiver_key(work / "receiver" / "keys")
        (work / "receiver" / "trusted").mkdir(parents=True)
        print(f"sealing {args.gateways} gateways x {args.batches} batches x {args.readings} readings ...", flush=True)
        t0 = time.perf_counter()
        batches = seal_fleet(work, args.gateways, args.batches, args.readings)
        print(f"sealed in {time.perf_counter() - t0:.1f} s", flush=True)
        results = []
        for n in (int(x) for x in args.receivers.split(",")):
            result = run(work, port, pg, n, batches, args.readings, args.ack_timeout)
            results.append(result)
            print(json.dumps(result), flush=True)
        base = results[0]["readings_per_s"]
        print("receivers | readings/s committed | scaling | lost | duplicated | resends")
        for r in results:
            print(f"{r['receivers']:9d} | {r['readings_per_s']:20,d} | {r['readings_per_s'] / base:6.2f}x | "
                  f"{r['lost']:4d} | {r['duplicated']:10d} | {r['resends']}")
        if any(r["lost"] or r["duplicated"] or r["stored_batches"] != r["batches"] for r in results):
            raise SystemExit("bench: readings were lost or duplicated")
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.base, ignore_errors=True)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
