"""Issue 16, part 5: TLS with per-gateway broker identities and the ACL `receiver acl` writes, enforced
by a real mosquitto with its dynamic security plugin: a gateway publishes only on its own batch topic
and reads only its own acks; the receiver takes every batch through its shared subscription."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from drivers import Quantity, Reading
from gateway.cli import main
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import Broker, LOOPBACK, make_broker, wait_until

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
PASSWORDS = {"gw-1": "gw1-s3cret", "gw-2": "gw2-s3cret", "receiver": "rx-s3cret"}


@pytest.fixture
def acl_broker(tmp_path: Path, pki):  # type: ignore[no-untyped-def]
    """Receiver data dir trusting gw-1 and gw-2, the ACL made by `receiver acl`, and mosquitto enforcing it
    over TLS only (server certificate from the throwaway CA, passwords)."""
    if not Path(DYNSEC).exists():
        pytest.skip(f"{DYNSEC} is missing: apt-get install mosquitto (2.0 or later ships the plugin)")
    rx_dir = tmp_path / "receiver-data"
    ensure_receiver_key(rx_dir / "keys")
    (rx_dir / "trusted").mkdir(parents=True)
    for gateway_id in ("gw-1", "gw-2"):
        ensure_gateway_key(tmp_path / gateway_id)
        shutil.copy(tmp_path / gateway_id / GATEWAY_PUB, rx_dir / "trusted" / f"{gateway_id}.pub")
    passwords = tmp_path / "passwords"
    passwords.write_text("".join(f"{user}:{password}\n" for user, password in PASSWORDS.items()))
    dynsec = tmp_path / "mosquitto-acl" / "dynamic-security.json"
    dynsec.parent.mkdir()
    result = CliRunner().invoke(main, ["receiver", "--data-dir", str(rx_dir), "acl", "--passwords", str(passwords),
                                       "--output", str(dynsec)])
    assert result.exit_code == 0, result.output
    assert dynsec.stat().st_mode & 0o777 == 0o600
    written = json.loads(dynsec.read_text())
    assert "gw1-s3cret" not in dynsec.read_text()                     # stored hashed
    assert {c["username"] for c in written["clients"]} == {"gw-1", "gw-2", "receiver"}
    for path in (pki.server_key, pki.ca, pki.server_cert):
        path.chmod(0o644)
    broker = make_broker(tmp_path / "mosquitto-acl")
    config = broker.config_path.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    config += (f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\ntls_version tlsv1.2\n"
               f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n")
    if os.geteuid() == 0:
        config += "user root\n"     # as root mosquitto drops to "mosquitto", who cannot enter pytest's tmp dirs
    broker.config_path.write_text(config)
    broker.start()
    try:
        yield broker, rx_dir
    finally:
        broker.stop()


def _tls(broker: Broker, pki, user: str) -> BrokerSettings:  # type: ignore[no-untyped-def]
    return BrokerSettings(host=LOOPBACK, port=broker.port, tls=True, ca_file=pki.ca, username=user,
                          password=PASSWORDS[user], backoff_min_s=0.2)


def test_issue16_gateways_deliver_over_tls_with_their_own_identity_under_the_acl(acl_broker, pki,
                                                                                 tmp_path: Path) -> None:
    broker, rx_dir = acl_broker
    receiver = Receiver(ReceiverSettings(tmp_path / "receiver.db", rx_dir / "keys", rx_dir / "trusted",
                                         _tls(broker, pki, "receiver"), client_id="receiver-a"))
    receiver.start()
    stores, services = [], []
    try:
        for k, gateway_id in enumerate(("gw-1", "gw-2")):
            store = open_store(tmp_path / f"{gateway_id}.db")
            store.insert_readings([Reading("main", "energy_import", 1_795_000_000.0 + i, 100.0 * k + i, "kWh",
                                           Quantity.ENERGY_IMPORT) for i in range(150)])
            service = SyncService(SyncSettings(gateway_id, tmp_path / gateway_id, rx_dir / "keys" / RECEIVER_PUB,
                                               _tls(broker, pki, gateway_id), batch_max_readings=50,
                                               batch_max_age_s=0.0, ack_timeout_s=3.0, tick_s=0.05), store)
            stores.append(store)
            services.append(service)
            service.start()
        wait_until(lambda: all(s.status().backlog_readings == 0 and s.status().last_ack_at for s in services),
                   timeout_s=30, message="both gateways' batches acknowledged over TLS")
        assert all(s.status().last_error == "" for s in services)
    finally:
        for service in services:
            service.stop()
        receiver.stop()
        for store in stores:
            store.close()
    with sqlite3.connect(tmp_path / "receiver.db") as conn:
        counts = dict(conn.execute("SELECT gateway_id, COUNT(*) FROM readings GROUP BY gateway_id").fetchall())
    assert counts == {"gw-1": 150, "gw-2": 150}


def test_issue16_a_gateway_cannot_publish_for_another_or_read_its_acks(acl_broker, pki) -> None:
    broker, _ = acl_broker
    results: dict[str, object] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gateway-gw-1", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(pki.ca))
    client.username_pw_set("gw-1", PASSWORDS["gw-1"])

    def on_subscribe(c, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        results[f"sub{mid}"] = [int(r.value) for r in reason_codes]

    def on_publish(c, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        results[f"pub{mid}"] = int(reason_code.value)

    client.on_subscribe, client.on_publish = on_subscribe, on_publish
    client.on_connect = lambda *_: done.set()
    client.connect(LOOPBACK, broker.port)
    client.loop_start()
    try:
        assert done.wait(15), "gw-1 could not connect"
        subscriptions = {topic: client.subscribe(topic, qos=1)[1] for topic in
                         ("carbon/gw-1/ack", "carbon/gw-2/ack", "carbon/+/ack", "$share/receivers/carbon/+/batch")}
        publishes = {topic: client.publish(topic, b"x", qos=1).mid for topic in
                     ("carbon/gw-1/batch", "carbon/gw-2/batch", "carbon/gw-2/ack")}
        wait_until(lambda: len(results) == len(subscriptions) + len(publishes), timeout_s=15,
                   message="the broker's answers")
    finally:
        client.disconnect()
        client.loop_stop()
    # MQTT 5 reason codes: 1 granted QoS 1; 135 not authorized; 16 "no matching subscribers" (accepted:
    # nobody subscribes in this test).
    granted, refused, accepted = 1, 0x87, 16
    assert {t: results[f"sub{mid}"] for t, mid in subscriptions.items()} == {
        "carbon/gw-1/ack": [granted], "carbon/gw-2/ack": [refused], "carbon/+/ack": [refused],
        "$share/receivers/carbon/+/batch": [refused]}
    assert {t: results[f"pub{mid}"] for t, mid in publishes.items()} == {
        "carbon/gw-1/batch": accepted, "carbon/gw-2/batch": refused, "carbon/gw-2/ack": refused}
