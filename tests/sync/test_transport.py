"""The MQTT link against real mosquitto: TLS with client certificates and passwords, refused
certificates, bad credentials, wrong addresses, live data ahead of a backlog, the bandwidth cap."""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import free_port, wait_until


def _readings(n: int, start: float = 1_795_000_000.0) -> list[Reading]:
    return [Reading("main", "energy_import", start + i, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


@pytest.fixture
def parts(tmp_path: Path):
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    store = open_store(tmp_path / "gateway.db")
    gateway = SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, batch_max_readings=100, batch_max_age_s=0.0,
                           ack_timeout_s=3.0, tick_s=0.05)
    receiver = ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted)
    yield store, gateway, receiver
    store.close()


def _received(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT reading_id, timestamp, value FROM readings ORDER BY reading_id").fetchall()


def _run_until(service: SyncService, predicate, message: str, timeout_s: float = 20.0) -> None:
    service.start()
    try:
        wait_until(predicate, timeout_s=timeout_s, message=message)
    finally:
        service.stop()


def _delivers_over_tls(parts, broker: BrokerSettings, count: int) -> None:
    """``count`` stored readings reach the receiver through ``broker``, and no error is left in status."""
    store, gateway, receiver_settings = parts
    store.insert_readings(_readings(count))
    receiver = Receiver(replace(receiver_settings, broker=replace(broker, username="receiver", password="rx-s3cret")))
    receiver.start()
    service = SyncService(replace(gateway, broker=broker), store)
    try:
        _run_until(service, lambda: service.status().backlog_readings == 0, "all batches acknowledged over TLS")
    finally:
        receiver.stop()
    assert _received(receiver_settings.database) == [(r.id, r.timestamp, r.value) for r in store.readings_after(0, 1000)]
    assert service.status().last_error == ""


def test_tls_with_client_certificate_and_password_end_to_end(parts, tls_broker, pki) -> None:
    _delivers_over_tls(parts, BrokerSettings(port=tls_broker.port, tls=True, ca_file=pki.ca, client_cert=pki.client_cert,
                                             client_key=pki.client_key, username="gw-1", password="s3cret",
                                             backoff_min_s=0.2), count=250)


def test_tls_without_a_client_certificate_verifies_the_server_and_delivers(parts, tls_password_broker, pki) -> None:
    """Client certificates are optional: server verification and a password are enough where the broker allows."""
    _delivers_over_tls(parts, BrokerSettings(port=tls_password_broker.port, tls=True, ca_file=pki.ca, username="gw-1",
                                             password="s3cret", backoff_min_s=0.2), count=120)


@pytest.mark.parametrize("case, expected", [
    ("untrusted CA", "TLS: broker 127.0.0.1:{port} presented a certificate that was refused (self-signed certificate in certificate chain); check sync.ca_file"),
    ("wrong password", "refused the connection: Not authorized; check the username, password or client certificate"),
    ("no client certificate", "TLS handshake with broker 127.0.0.1:{port} failed (TLSV13_ALERT_CERTIFICATE_REQUIRED); "
                              "check sync.client_cert and sync.client_key; data waits on disk until it can"),
])
def test_refused_certificate_and_bad_credentials_are_reported_and_data_waits(parts, tls_broker, pki, case,
                                                                               expected) -> None:
    store, gateway, _ = parts
    broker = BrokerSettings(port=tls_broker.port, tls=True, ca_file=pki.ca, client_cert=pki.client_cert,
                            client_key=pki.client_key, username="gw-1", password="s3cret", backoff_min_s=0.2)
    broker = {"untrusted CA": replace(broker, ca_file=pki.other_ca), "wrong password": replace(broker, password="wrong"),
              "no client certificate": replace(broker, client_cert=None, client_key=None)}[case]
    store.insert_readings(_readings(150))
    service = SyncService(replace(gateway, broker=broker), store)
    expected = expected.format(port=tls_broker.port)
    _run_until(service, lambda: expected in service.status().last_error, f"the {case} error in status")
    status = service.status()
    assert (status.connected, status.backlog_batches, status.backlog_readings) == (False, 2, 150)
    assert "data waits on disk" in status.last_error or case == "wrong password"


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", "cannot reach broker 127.0.0.1:{port} (Connection refused); data waits on disk until it can"),
    ("no-such-broker.invalid", "cannot resolve broker no-such-broker.invalid:{port}"),
])
def test_wrong_broker_address_is_reported(parts, host: str, expected: str) -> None:
    store, gateway, _ = parts
    port = free_port()
    store.insert_readings(_readings(30))
    service = SyncService(replace(gateway, broker=BrokerSettings(host=host, port=port, backoff_min_s=0.2)), store)
    _run_until(service, lambda: expected.format(port=port) in service.status().last_error, "address error in status")
    assert service.status().backlog_readings == 30


def test_live_batches_go_ahead_of_the_backlog_which_drains_oldest_first_within_the_bandwidth_cap(
        parts, mqtt_broker) -> None:
    store, gateway, receiver_settings = parts
    broker = BrokerSettings(port=mqtt_broker.port, backoff_min_s=0.2)
    # The backlog: 20 batches sealed while the broker was down.
    mqtt_broker.stop()
    store.insert_readings(_readings(2000))
    rate = 2500.0  # bytes per second; each batch is a few hundred bytes, so the drain takes seconds
    settings = replace(gateway, broker=broker, max_inflight=2, bandwidth_bytes_per_s=rate)
    service = SyncService(settings, store)
    service.tick()
    backlog_bytes = store.db.execute("SELECT SUM(LENGTH(message)) FROM sync_outbox").fetchone()[0]
    assert service.status().backlog_batches == 20
    receiver = Receiver(replace(receiver_settings, broker=broker))
    mqtt_broker.start()
    receiver.start()
    service.start()
    try:
        wait_until(lambda: service.status().connected, timeout_s=15, message="gateway reconnected")
        started = time.monotonic()
        wait_until(lambda: _batches(receiver_settings.database), timeout_s=15, message="first backlog batch")
        store.insert_readings(_readings(100, start=1_795_100_000.0))   # live data after the link returned
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=60, message="everything acknowledged")
        elapsed = time.monotonic() - started
    finally:
        service.stop()
        receiver.stop()
    order = [seq for seq, _ in sorted(_batches(receiver_settings.database), key=lambda b: b[1])]
    assert sorted(order) == list(range(1, 22))
    live = order.index(21)
    assert live < 20, f"the live batch waited behind the whole backlog: {order}"
    assert [s for s in order if s != 21] == list(range(1, 21)), "the backlog did not drain oldest first"
    # One second of burst is allowed, the rest is paced by the cap.
    assert elapsed >= (backlog_bytes - rate) / rate * 0.8, (elapsed, backlog_bytes)


def _batches(database: Path) -> list[tuple[int, float]]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT seq, received_at FROM batches").fetchall()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_receivers_split_the_load_with_a_shared_subscription(parts, mqtt_broker, backend, request) -> None:
    from sync import receiver_stats
    from sync.storage import ReceiverDb

    store, gateway, receiver_settings = parts
    broker = BrokerSettings(port=mqtt_broker.port)
    store.insert_readings(_readings(2000))
    database = request.getfixturevalue("postgres_url") if backend == "postgresql" else receiver_settings.database
    receivers = [Receiver(replace(receiver_settings, broker=broker, database=database)) for _ in range(2)]
    handled = [0, 0]
    for i, rx in enumerate(receivers):
        original = rx.handle

        def counting(message: bytes, topic: str | None = None, i: int = i, original=original):
            handled[i] += 1
            return original(message, topic)

        rx.handle = counting  # type: ignore[method-assign]
        rx.start()
    service = SyncService(replace(gateway, broker=broker), store)
    try:
        _run_until(service, lambda: service.status().backlog_readings == 0, "20 batches via two receivers")
    finally:
        for rx in receivers:
            rx.stop()
    assert all(handled) and sum(handled) >= 20, handled   # both got work; resends may add a few
    db = ReceiverDb(database)
    try:
        received = db.query("SELECT reading_id, timestamp, value FROM readings ORDER BY reading_id")
    finally:
        db.close()
    assert received == [(r.id, r.timestamp, r.value) for r in store.readings_after(0, 10**6)]
    stats = receiver_stats(database)["gw-1"]
    assert (stats["batches"], stats["readings"], stats["missing_seqs"], stats["chain_breaks"]) == (20, 2000, 0, 0)


def test_receiver_survives_garbage_on_the_wire_and_a_rejected_batch_waits_in_the_outbox(parts, mqtt_broker,
                                                                                        tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from sync import receiver_stats

    store, gateway, receiver_settings = parts
    broker = BrokerSettings(port=mqtt_broker.port, backoff_min_s=0.2)
    trusted_key = receiver_settings.trusted_dir / "gw-1.pub"
    hidden = tmp_path / "gw-1.pub.hidden"
    trusted_key.rename(hidden)                       # the receiver does not trust gw-1 yet
    receiver = Receiver(replace(receiver_settings, broker=broker))
    receiver.start()
    wait_until(lambda: receiver._link is not None and receiver._link.connected.is_set(), timeout_s=10,
               message="receiver connected")
    time.sleep(0.3)   # its subscription request follows the connect
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mqtt_broker.port)
    client.loop_start()
    try:
        for payload in (b"", b"\x00garbage", b"CEG1" + b"\xff" * (16 * 1024 * 1024 + 10)):
            client.publish("carbon/gw-1/batch", payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
    store.insert_readings(_readings(100))
    service = SyncService(replace(gateway, broker=broker, ack_timeout_s=0.5), store)
    service.start()
    try:
        # Issue 16: refused without an ack (nothing proves the gateway sent it); the receiver counts it.
        wait_until(lambda: receiver_stats(receiver_settings.database).get("gw-1", {}).get("rejections", {}).get(
            "unknown_gateway"), timeout_s=15, message="the rejection counted at the receiver")
        assert service.status().backlog_readings == 100 and "rejected" not in service.status().last_error
        hidden.rename(trusted_key)                   # the operator fixes the trust store: the resend is taken
        wait_until(lambda: service.status().backlog_readings == 0, timeout_s=15, message="accepted after the fix")
        assert service.status().last_error == ""
    finally:
        service.stop()
        receiver.stop()
    assert len(_received(receiver_settings.database)) == 100
    stats = receiver_stats(receiver_settings.database)
    assert stats["?"]["rejections"] == {"malformed": 2, "oversized": 1}
    assert stats["gw-1"]["rejections"]["unknown_gateway"] >= 1


def test_disk_budget_alarm_keeps_unsynced_data(parts, caplog) -> None:
    store, gateway, _ = parts
    store.insert_readings(_readings(500))
    service = SyncService(replace(gateway, disk_budget_bytes=10_000), store)
    service.tick()
    store.insert_readings(_readings(300))           # the store grows while the alarm stands: logged once only
    service.tick()
    status = service.status()
    assert status.disk_bytes > 10_000
    assert status.alarm == (f"disk budget exceeded: {status.disk_bytes / 1e6:.1f} MB used of 0.0 MB after pruning 0 "
                            "synced raw readings; 800 unsynced readings are kept (never deleted): restore the link to "
                            "the receiver or raise sync.disk_budget_mb")
    assert (status.backlog_readings, status.synced_through, status.pruned_readings) == (800, 0, 0)
    assert len(store.readings_after(0, 1000)) == 800
    assert [r.levelname for r in caplog.records if "disk budget exceeded" in r.getMessage()] == ["ERROR"]
    assert SyncService(replace(gateway, disk_budget_bytes=10**9), store).status().alarm == ""


def test_disk_budget_prunes_synced_raw_data_first_and_never_unsynced(parts, mqtt_broker, caplog) -> None:
    """Issue 5, disk budget: over the budget, raw readings the receiver committed go, oldest first, and the
    log says so; readings not yet at the receiver stay, and the alarm says so."""
    store, gateway, receiver_settings = parts
    broker = BrokerSettings(port=mqtt_broker.port, backoff_min_s=0.2)
    start = 1_795_000_000.0

    def every_10_s(first: int, n: int) -> list[Reading]:
        return [Reading("main", "energy_import", start + 10 * i, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
                for i in range(first, first + n)]

    store.insert_readings(every_10_s(0, 5000))
    receiver = Receiver(replace(receiver_settings, broker=broker))
    receiver.start()
    try:
        service = SyncService(replace(gateway, broker=broker), store)
        _run_until(service, lambda: service.status().backlog_readings == 0, "the first 5000 readings synced")
    finally:
        receiver.stop()
    store.insert_readings(every_10_s(5000, 1000))     # the link is down now: these stay unsynced
    service = SyncService(replace(gateway, broker=broker, disk_budget_bytes=10_000), store)
    with caplog.at_level("WARNING", logger="sync.service"):
        service.tick()
    status = service.status()
    # Kept per series: the last context (7 200 s) + interval + clock tolerance + an hour = 12 000 s before
    # the newest reading (59 990 s), and the reading before that: ids 4799.. of the synced ones.
    assert store.prune_keep_s() == 12_000.0
    assert [r.id for r in store.readings_after(0, 10_000)] == list(range(4799, 6001))
    assert status.pruned_readings == 4798 and status.synced_through == 5000
    assert status.backlog_readings == 1000
    pruned_log = [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]
    assert len(pruned_log) == 1 and pruned_log[0].startswith(
        "disk budget 0.0 MB: pruned 4798 raw readings already committed at the receiver (ids <= 4798, up to "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start + 10 * 4797))} UTC); ")
    assert status.alarm == (f"disk budget exceeded: {status.disk_bytes / 1e6:.1f} MB used of 0.0 MB after pruning "
                            "4798 synced raw readings; 1000 unsynced readings are kept (never deleted): restore the "
                            "link to the receiver or raise sync.disk_budget_mb")
    calls: list[int] = []
    prune = store.prune_synced_readings
    store.prune_synced_readings = lambda *a, **k: calls.append(1) or prune(*a, **k)   # type: ignore[method-assign]
    service.tick()
    assert service.status().pruned_readings == 4798   # nothing more may go ...
    assert calls == []                                # ... so the next ticks do not rescan until more is acked
    assert len(_received(receiver_settings.database)) == 5000

