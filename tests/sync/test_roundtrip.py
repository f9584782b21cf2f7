"""Gateway outbox -> real mosquitto -> receiver, with tampering, replays and an outage."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings, receiver_stats
from sync import outbox
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import wait_until


def _readings(n: int, start: float = 1_795_000_000.0) -> list[Reading]:
    return [Reading("main", "energy_import", start + i, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


@pytest.fixture
def setup(tmp_path: Path, mqtt_broker):
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    broker = BrokerSettings(port=mqtt_broker.port)
    store = open_store(tmp_path / "gateway.db")
    gateway = SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, broker, batch_max_readings=100,
                           batch_max_age_s=0.0, ack_timeout_s=2.0, tick_s=0.05)
    receiver = ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted, broker)
    yield store, gateway, receiver, mqtt_broker
    store.close()


def _received(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT reading_id, timestamp, value FROM readings ORDER BY reading_id").fetchall()


def _stored(store) -> list[tuple]:
    return [(r.id, r.timestamp, r.value) for r in store.readings_after(0, 10**9)]


def test_every_reading_arrives_exactly_once_across_a_broker_outage(setup) -> None:
    store, gateway_settings, receiver_settings, broker = setup
    store.insert_readings(_readings(250))
    receiver = Receiver(receiver_settings)
    receiver.start()
    service = SyncService(gateway_settings, store)
    service.start()
    try:
        wait_until(lambda: len(_received(receiver_settings.database)) == 250, timeout_s=20, message="first 250")
        wait_until(lambda: service.status().backlog_batches == 0, timeout_s=20, message="first batches acknowledged")
        broker.stop()
        wait_until(lambda: not service.status().connected, timeout_s=20, message="outage noticed")
        store.insert_readings(_readings(180, start=1_795_001_000.0))
        wait_until(lambda: service.status().backlog_batches == 2, timeout_s=10, message="backlog while offline")
        assert service.status().backlog_readings == 180 and "cannot reach broker" in service.status().last_error
        broker.start()
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=60, message="backlog drained")
    finally:
        service.stop()
        receiver.stop()
    assert _received(receiver_settings.database) == _stored(store)
    stats = receiver_stats(receiver_settings.database)["gw-1"]
    assert stats["readings"] == 430 and stats["missing_seqs"] == 0


def test_tampered_replayed_and_unknown_batches(setup, tmp_path: Path) -> None:
    store, gateway_settings, receiver_settings, _ = setup
    store.insert_readings(_readings(50))
    service = SyncService(gateway_settings, store)
    assert service.fill(force=True) == 1
    message = outbox.unacked(store.db, 1)[0].message
    receiver = Receiver(receiver_settings)

    flipped = bytearray(message)
    flipped[-100] ^= 0x01
    assert receiver.handle(bytes(flipped)) is None      # refused, and no ack for what may be forged (issue 16)
    assert receiver.handle(b"garbage") is None
    assert receiver.handle(message[:-10]) is None
    assert receiver.handle(message) == ("gw-1", {"seq": 1, "status": "committed"})
    assert receiver.handle(message) == ("gw-1", {"seq": 1, "status": "duplicate"})
    assert len(_received(receiver_settings.database)) == 50

    (receiver_settings.trusted_dir / "gw-1.pub").unlink()
    store.insert_readings(_readings(5, start=1_795_002_000.0))
    service.fill(force=True)
    second = outbox.unacked(store.db, 2)[1].message
    assert receiver.handle(second) is None              # no key to check it with: refused without an ack
    receiver.stop()
    reasons = receiver_stats(receiver_settings.database)["gw-1"]["rejections"]
    assert reasons == {"bad_signature": 1, "unknown_gateway": 1}


def test_no_receiver_key_means_readings_wait_unbatched(setup) -> None:
    store, gateway_settings, _, _ = setup
    from dataclasses import replace

    store.insert_readings(_readings(10))
    service = SyncService(replace(gateway_settings, receiver_public_key=None), store)
    service.tick(force=True)
    status = service.status()
    assert (status.backlog_batches, status.backlog_readings) == (0, 10)
    assert "no receiver public key" in status.last_error


def test_unacknowledged_batches_are_resent_at_once_after_a_restart(setup) -> None:
    """Batches sent before a stop (no receiver yet) must not wait a whole ack timeout after the restart."""
    from dataclasses import replace

    store, gateway_settings, receiver_settings, _ = setup
    slow_acks = replace(gateway_settings, ack_timeout_s=120.0)
    store.insert_readings(_readings(40))
    first = SyncService(slow_acks, store)
    first.start()
    try:
        wait_until(lambda: outbox.unacked(store.db, 10) and all(r.sent_at for r in outbox.unacked(store.db, 10)),
                   timeout_s=15, message="batch sent without a receiver")
    finally:
        first.stop()
    receiver = Receiver(receiver_settings)
    receiver.start()
    second = SyncService(slow_acks, store)
    second.start()
    try:
        wait_until(lambda: second.status().backlog_batches == 0 and second.status().backlog_readings == 0,
                   timeout_s=15, message="resent well before the 120 s ack timeout")
    finally:
        second.stop()
        receiver.stop()
    assert len(_received(receiver_settings.database)) == 40


def test_batches_are_cut_by_size_or_age(setup) -> None:
    """Issue 5, outbox: a full batch (batch_max_readings) is sealed at once; a partial one waits until its
    first reading is batch_max_age_s old."""
    from dataclasses import replace

    store, gateway_settings, _, _ = setup
    now = time.time()
    store.insert_readings(_readings(250, start=now - 201.0))   # one a second; the 201st is 1 s old
    by_size = SyncService(replace(gateway_settings, batch_max_age_s=3600.0), store)
    assert by_size.fill() == 2 and by_size.fill() == 0      # two full batches; 50 readings too young
    by_age = SyncService(replace(gateway_settings, batch_max_age_s=3.0), store)
    assert by_age.fill() == 0
    wait_until(lambda: by_age.fill() == 1, timeout_s=10, message="the partial batch once 3 s old")
    assert time.time() - (now - 1.0) >= 3.0                # the first unbatched reading's age
    assert [row.count for row in outbox.unacked(store.db, 10)] == [100, 100, 50]
    assert [row.seq for row in outbox.unacked(store.db, 10)] == [1, 2, 3]


def test_at_most_max_inflight_batches_are_unacknowledged_on_the_wire(setup) -> None:
    """Issue 5, transport: the in-flight window is bounded; without acknowledgements nothing more is sent
    (until ack_timeout_s), and acknowledgements open the window again."""
    from dataclasses import replace

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    store, gateway_settings, receiver_settings, broker = setup
    seen: list[int] = []
    subscribed: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, message: seen.append(len(message.payload))
    client.on_subscribe = lambda *args: subscribed.append(True)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe("carbon/gw-1/batch", qos=1)
    wait_until(lambda: subscribed, timeout_s=10, message="the listener subscribed")
    store.insert_readings(_readings(1000))                  # ten batches
    # No receiver yet, so no acknowledgements; ack_timeout_s 4 s bounds when the window is resent.
    service = SyncService(replace(gateway_settings, max_inflight=3, ack_timeout_s=4.0), store)
    receiver = Receiver(receiver_settings)
    try:
        service.start()
        wait_until(lambda: len(seen) >= 3, timeout_s=15, message="the first window on the wire")
        time.sleep(1.0)                                     # 20 sync ticks: nothing more may go out unacknowledged
        assert len(seen) == 3
        assert sum(1 for row in outbox.unacked(store.db, 20) if row.sent_at is not None) == 3
        receiver.start()                                    # the resent window is acknowledged; the rest drains
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=30, message="all acknowledged")
    finally:
        service.stop()
        receiver.stop()
        client.disconnect()
        client.loop_stop()
    assert len(_received(receiver_settings.database)) == 1000
