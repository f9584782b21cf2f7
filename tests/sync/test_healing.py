"""Issue 16, part 2: a receiver that heals.

A PostgreSQL restart under a running receiver loses no batch and needs no manual step; a receiver
restarted during a drain keeps its MQTT 5 session (and its shared subscription), so the broker holds the
batches published meanwhile and no 30 s ack timeout is waited out; forged messages get no ack; the
rejection record is bounded.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers import Quantity, Reading
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings, outbox, receiver_stats
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import wait_until


def _readings(n: int, start: float = 1_795_000_000.0) -> list[Reading]:
    return [Reading(f"m{i % 5}", "energy_import", start + i // 5, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


@pytest.fixture
def parts(tmp_path: Path, mqtt_broker):
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    broker = BrokerSettings(port=mqtt_broker.port, backoff_min_s=0.2, session_expiry_s=600)
    store = open_store(tmp_path / "gateway.db")
    gateway = SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, broker, batch_max_readings=100,
                           batch_max_age_s=0.0, tick_s=0.05)
    receiver = ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted, broker, client_id="receiver-a")
    yield store, gateway, receiver
    store.close()


def _sqlite_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def test_issue16_postgresql_restart_under_a_running_receiver_loses_no_batch(parts, postgres_server, caplog) -> None:
    import psycopg

    caplog.set_level("INFO", logger="sync.receiver")
    store, gateway, receiver_settings = parts
    receiver = Receiver(replace(receiver_settings, database=postgres_server.url))
    receiver.start()
    store.insert_readings(_readings(3000))
    # Paced (about 1.5 s of batches) so the restart lands mid-stream; resends after 3 s.
    service = SyncService(replace(gateway, ack_timeout_s=3.0, bandwidth_bytes_per_s=4000.0), store)
    service.start()
    try:
        wait_until(lambda: 0 < service.status().backlog_readings < 2500, timeout_s=30, message="part of the stream")
        postgres_server.restart()                   # every connection is cut: AdminShutdown
        store.insert_readings(_readings(500, start=1_795_010_000.0))
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=90,
                   message="everything acknowledged after the restart, without a hand on the receiver")
    finally:
        service.stop()
        receiver.stop()
    with psycopg.connect(postgres_server.url) as conn:
        rows = conn.execute("SELECT reading_id, value FROM readings ORDER BY reading_id").fetchall()
    assert rows == [(r.id, r.value) for r in store.readings_after(0, 10_000)]    # 3500, each once
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("receiver database unreachable (") and "stopped taking batches" in m for m in messages)
    assert any(m.startswith("receiver database reachable again") for m in messages)


def test_issue16_receiver_restarted_during_a_drain_adds_no_ack_timeout_stall(parts) -> None:
    store, gateway, receiver_settings = parts
    store.insert_readings(_readings(4000))
    receiver = Receiver(receiver_settings)
    receiver.start()
    wait_until(lambda: receiver._link is not None and receiver._link.connected.is_set(), timeout_s=10,
               message="receiver connected")
    time.sleep(0.3)   # its subscription request follows the connect
    # 40 batches of 100 at ~6 batches a second: the drain takes several seconds. ack_timeout_s is the
    # default 30 s: a batch lost while the receiver was away would only be resent after it.
    service = SyncService(replace(gateway, ack_timeout_s=30.0, bandwidth_bytes_per_s=3000.0), store)
    started = time.monotonic()
    service.start()
    try:
        wait_until(lambda: service.status().backlog_readings <= 3000, timeout_s=30, message="the drain under way")
        receiver.stop()                             # a normal restart: the broker keeps its session
        time.sleep(1.5)                             # batches are published meanwhile, for its session
        receiver = Receiver(receiver_settings)      # the same client id
        receiver.start()
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=60, message="drained")
        drained_s = time.monotonic() - started
    finally:
        service.stop()
        receiver.stop()
    assert drained_s < 25.0, f"the drain took {drained_s:.1f} s: a batch waited out the 30 s ack timeout"
    assert _sqlite_count(receiver_settings.database) == 4000


def test_issue16_forged_messages_publish_no_ack_and_rejections_are_bounded(parts, mqtt_broker, tmp_path: Path) -> None:
    store, gateway, receiver_settings = parts
    impostor = tmp_path / "impostor-keys"
    ensure_gateway_key(impostor)
    forger = SyncService(replace(gateway, keys_dir=impostor), open_store(tmp_path / "forger.db"))
    forger.store.insert_readings(_readings(10))
    forger.fill(force=True)
    forged = outbox.unacked(forger.store.db, 1)[0].message       # claims gw-1, signed with another key
    forger.store.close()
    store.insert_readings(_readings(10))
    SyncService(gateway, store).fill(force=True)
    genuine = outbox.unacked(store.db, 1)[0].message
    receiver = Receiver(replace(receiver_settings, max_rejections=20))
    receiver.start()
    acks: list[dict] = []
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, message) -> None:
        acks.append(json.loads(message.payload))
        got.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("carbon/gw-1/ack", qos=1)
    client.connect("127.0.0.1", mqtt_broker.port)
    client.loop_start()
    try:
        wait_until(lambda: receiver._link is not None and receiver._link.connected.is_set(), timeout_s=10,
                   message="receiver connected")
        time.sleep(0.5)   # both subscriptions in place
        tampered = bytearray(genuine)
        tampered[-1] ^= 1
        for _ in range(50):                       # a flood of forged and tampered messages ...
            client.publish("carbon/gw-1/batch", forged, qos=1)
            client.publish("carbon/gw-1/batch", bytes(tampered), qos=1)
        client.publish("carbon/gw-1/batch", genuine, qos=1)   # ... then the real one, after them in order
        assert got.wait(20), "no ack for the genuine batch"
        time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()
        receiver.stop()
    assert acks == [{"seq": 1, "status": "committed"}]       # nothing published for the 100 forged ones
    stats = receiver_stats(receiver_settings.database)["gw-1"]
    assert stats["rejections"] == {"unknown_key": 50, "bad_signature": 50}     # every one counted ...
    with sqlite3.connect(receiver_settings.database) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
    assert kept <= 20 + 2          # ... but at most max_rejections rows kept (trimmed every 20 // 10 = 2)


def test_issue16_a_backlog_sealed_during_an_outage_is_resealed_into_large_batches(parts, caplog) -> None:
    caplog.set_level("INFO", logger="sync.service")
    store, gateway, receiver_settings = parts
    settings = replace(gateway, batch_max_readings=1000, ack_timeout_s=30.0)
    service = SyncService(settings, store)
    # An outage of 15 minutes: every 30 s the outbox sealed what was read (20 readings): 30 small batches.
    for k in range(30):
        store.insert_readings(_readings(20, start=1_795_000_000.0 + 30 * k))
        assert service.fill(force=True) == 1
    small_bytes = sum(len(row.message) for row in outbox.unacked(store.db, 100))
    receiver = Receiver(receiver_settings)
    receiver.start()
    service.start()                                  # the link comes back
    try:
        wait_until(lambda: outbox.backlog(store.db) == (0, 0), timeout_s=30, message="the backlog drained")
    finally:
        service.stop()
        receiver.stop()
    stats = receiver_stats(receiver_settings.database)["gw-1"]
    # 600 readings in one batch (600 <= batch_max_readings = 1000), numbered 1 like the first small one.
    assert (stats["batches"], stats["readings"], stats["last_seq"]) == (1, 600, 1)
    assert stats["missing_seqs"] == 0 and stats["chain_breaks"] == 0
    assert _sqlite_count(receiver_settings.database) == 600
    assert "link back: re-sealed 30 unsent batches as 1 (up to 1000 readings each)" in caplog.text
    with sqlite3.connect(receiver_settings.database) as conn:
        (sent,) = conn.execute("SELECT COUNT(*) FROM batches").fetchone()
    assert sent == 1 and small_bytes > 0
