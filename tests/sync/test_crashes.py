"""Crashes and outages: the gateway killed with SIGKILL while publishing, the receiver killed after its
commit and before its acknowledgement, the broker stopped for a minute. At the end the receiver holds
exactly the readings the gateway stored."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, receiver_stats
from sync import outbox
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]

# A gateway process: the real SyncService on the store file, until it is killed.
GATEWAY = textwrap.dedent("""
    import json, sys, time, threading
    from pathlib import Path
    from local_store import open_store
    from sync import BrokerSettings, SyncService, SyncSettings
    a = json.loads(sys.argv[1])
    store = open_store(Path(a["db"]))
    settings = SyncSettings("gw-1", Path(a["keys"]), Path(a["receiver_pub"]), BrokerSettings(port=a["port"],
                            backoff_min_s=0.2), batch_max_readings=a["batch"], batch_max_age_s=0.0,
                            max_inflight=4, ack_timeout_s=2.0, tick_s=0.02, bandwidth_bytes_per_s=a["rate"])
    service = SyncService(settings, store)
    service.start()
    print("started", flush=True)
    threading.Event().wait(120)
""")

# A receiver process that dies (SIGKILL, no cleanup) right after committing its third batch.
RECEIVER_DIES_AFTER_COMMIT = textwrap.dedent("""
    import json, os, signal, sys, threading
    from pathlib import Path
    from sync import BrokerSettings, Receiver, ReceiverSettings
    a = json.loads(sys.argv[1])
    rx = Receiver(ReceiverSettings(Path(a["db"]), Path(a["keys"]), Path(a["trusted"]), BrokerSettings(port=a["port"])))
    handled = []
    original = rx.handle
    def handle(message, topic=None):
        ack = original(message, topic)        # committed to SQLite here
        handled.append(ack)
        if len(handled) == 3:
            os.kill(os.getpid(), signal.SIGKILL)   # before the acknowledgement is published
        return ack
    rx.handle = handle
    rx.start()
    print("started", flush=True)
    threading.Event().wait(120)
""")


def _readings(n: int, start: float = 1_795_000_000.0) -> list[Reading]:
    return [Reading(f"m{i % 7}", "energy_import", start + i // 7, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


def _spawn(script: str, args: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    return process


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


def _received(path: Path) -> list[tuple]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT reading_id, meter_id, timestamp, value FROM readings ORDER BY reading_id").fetchall()


def _keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    return gw_keys, rx_keys, trusted


def test_gateway_killed_during_publish_loses_and_duplicates_nothing(tmp_path: Path, mqtt_broker) -> None:
    gw_keys, rx_keys, trusted = _keys(tmp_path)
    store = open_store(tmp_path / "gateway.db")
    store.insert_readings(_readings(6000))
    rx_db = tmp_path / "receiver.db"
    receiver = Receiver(ReceiverSettings(rx_db, rx_keys, trusted, BrokerSettings(port=mqtt_broker.port)))
    receiver.start()
    args = {"db": str(store.path), "keys": str(gw_keys), "receiver_pub": str(rx_keys / RECEIVER_PUB),
            "port": mqtt_broker.port, "batch": 100, "rate": 4000.0}
    try:
        gateway = _spawn(GATEWAY, args)
        try:
            # Kill it while the (rate-limited) stream is half way: batches in flight, some acknowledged.
            wait_until(lambda: 1000 <= len(_received(rx_db)), timeout_s=30, message="part of the stream arrived")
            store.insert_readings(_readings(700, start=1_795_010_000.0))   # the meters keep going meanwhile
        finally:
            _kill(gateway)
        assert len(_received(rx_db)) < 6700, "the kill came too late to test anything"
        unacked = outbox.backlog(store.db)[0]
        gateway = _spawn(GATEWAY, {**args, "rate": None})
        try:
            wait_until(lambda: outbox.backlog(store.db) == (0, 0) and outbox.pending_readings(store)[0] == 0,
                       timeout_s=60, message="the restarted gateway drained everything")
        finally:
            _kill(gateway)
    finally:
        receiver.stop()
    stored = [(r.id, r.meter_id, r.timestamp, r.value) for r in store.readings_after(0, 10**6)]
    store.close()
    assert _received(rx_db) == stored and len(stored) == 6700
    stats = receiver_stats(rx_db)["gw-1"]
    assert (stats["missing_seqs"], stats["chain_breaks"], stats["rejections"]) == (0, 0, {})
    assert unacked > 0


def test_receiver_killed_after_commit_before_ack(tmp_path: Path, mqtt_broker) -> None:
    gw_keys, rx_keys, trusted = _keys(tmp_path)
    store = open_store(tmp_path / "gateway.db")
    store.insert_readings(_readings(1000))
    rx_db = tmp_path / "receiver.db"
    rx_args = {"db": str(rx_db), "keys": str(rx_keys), "trusted": str(trusted), "port": mqtt_broker.port}
    dying = _spawn(RECEIVER_DIES_AFTER_COMMIT, rx_args)
    gateway = _spawn(GATEWAY, {"db": str(store.path), "keys": str(gw_keys), "receiver_pub": str(rx_keys / RECEIVER_PUB),
                               "port": mqtt_broker.port, "batch": 100, "rate": None})
    try:
        dying.wait(timeout=30)
        assert dying.returncode == -signal.SIGKILL
        committed = {r[0] for r in _received(rx_db)}
        assert len(committed) >= 300   # three batches committed ...
        # ... and at least the last of them is still in the gateway's outbox: its ack never went out.
        in_outbox = {row.seq for row in outbox.unacked(store.db, 100)}
        with sqlite3.connect(rx_db) as conn:
            committed_seqs = {s for (s,) in conn.execute("SELECT seq FROM batches")}
        assert committed_seqs & in_outbox, (committed_seqs, in_outbox)
        receiver = Receiver(ReceiverSettings(rx_db, rx_keys, trusted, BrokerSettings(port=mqtt_broker.port)))
        receiver.start()
        try:
            wait_until(lambda: outbox.backlog(store.db) == (0, 0), timeout_s=30, message="resent batches acknowledged")
        finally:
            receiver.stop()
    finally:
        _kill(dying)
        _kill(gateway)
    stored = [(r.id, r.meter_id, r.timestamp, r.value) for r in store.readings_after(0, 10**6)]
    store.close()
    assert _received(rx_db) == stored and len(stored) == 1000
    assert receiver_stats(rx_db)["gw-1"]["batches"] == 10


OUTAGE_S = 60.0   # issue 5: "the broker stopped for a minute mid-stream and restarted"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_stopped_for_a_minute_mid_stream_and_restarted(tmp_path: Path, mqtt_broker) -> None:
    """The broker is stopped for a full minute while batches stream, as issue 5 asks. The meters keep
    going meanwhile (readings stored every 10 s); the gateway retries with growing, jittered waits and
    keeps everything on disk; after the restart both sides reconnect by themselves and the receiver
    holds every stored reading exactly once, with no gap and no chain break."""
    from sync import SyncService, SyncSettings

    gw_keys, rx_keys, trusted = _keys(tmp_path)
    store = open_store(tmp_path / "gateway.db")
    store.insert_readings(_readings(3000))
    rx_db = tmp_path / "receiver.db"
    # backoff_max_s 5 (not the default 60) only bounds how long the test waits for the reconnect after
    # the restart; over a minute the waits still grow from 0.2 s to the cap several times over.
    broker = BrokerSettings(port=mqtt_broker.port, backoff_min_s=0.2, backoff_max_s=5.0)
    receiver = Receiver(ReceiverSettings(rx_db, rx_keys, trusted, broker))
    receiver.start()
    service = SyncService(SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, broker, batch_max_readings=100,
                                       batch_max_age_s=0.0, max_inflight=3, ack_timeout_s=2.0, tick_s=0.02,
                                       bandwidth_bytes_per_s=3000.0), store)
    service.start()
    try:
        wait_until(lambda: len(_received(rx_db)) >= 500, timeout_s=30, message="the stream under way")
        mqtt_broker.stop()
        stopped_at = time.monotonic()
        wait_until(lambda: "cannot reach broker" in service.status().last_error, timeout_s=15, message="outage seen")
        at_stop = len(_received(rx_db))
        assert at_stop < 3000, "the stream finished before the broker stopped"
        backlog: list[int] = []
        added = 0
        while (left := OUTAGE_S - (time.monotonic() - stopped_at)) > 0:
            store.insert_readings(_readings(100, start=1_795_020_000.0 + 1000 * added))   # the meters keep going
            added += 1
            time.sleep(min(10.0, left))
            status = service.status()
            assert not status.connected and "cannot reach broker" in status.last_error
            backlog.append(status.backlog_readings)
        assert time.monotonic() - stopped_at >= OUTAGE_S
        assert len(_received(rx_db)) == at_stop, "nothing can arrive while the broker is down"
        assert backlog == sorted(backlog) and backlog[-1] >= 3000 + 100 * added - at_stop, backlog
        mqtt_broker.start()
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=60, message="drained after the outage")
        assert service.status().connected and service.status().last_error == ""
    finally:
        service.stop()
        receiver.stop()
    stored = [(r.id, r.meter_id, r.timestamp, r.value) for r in store.readings_after(0, 10**6)]
    store.close()
    assert len(stored) == 3000 + 100 * added and added >= 6
    assert _received(rx_db) == stored
    stats = receiver_stats(rx_db)["gw-1"]
    assert (stats["missing_seqs"], stats["chain_breaks"], stats["rejections"]) == (0, 0, {})


def test_a_failure_while_sealing_consumes_no_sequence_number(tmp_path: Path, monkeypatch) -> None:
    """Counter, cursor, chain and batch row commit together: a crash mid-seal leaves no trace, and the
    number it would have used was never published, so using it for the retried batch is not a reuse."""
    from sync import SyncService, SyncSettings

    gw_keys, rx_keys, _ = _keys(tmp_path)
    store = open_store(tmp_path / "gateway.db")
    store.insert_readings(_readings(50))
    service = SyncService(SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB), store)

    def power_cut(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(outbox, "seal", power_cut)
    try:
        service.fill(force=True)
    except OSError:
        pass
    assert outbox.backlog(store.db) == (0, 0) and outbox.cursor(store.db) == 0
    monkeypatch.undo()
    assert service.fill(force=True) == 1
    assert [row.seq for row in outbox.unacked(store.db, 10)] == [1]
    store.insert_readings(_readings(5, start=1_795_030_000.0))
    service.fill(force=True)
    assert [row.seq for row in outbox.unacked(store.db, 10)] == [1, 2]
    store.close()
