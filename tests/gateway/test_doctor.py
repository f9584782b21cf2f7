"""``carbon-gateway doctor`` against real things: a socat pty, a port nobody listens on, mosquitto,
an unwritable directory, key files, a damaged store."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from click.testing import CliRunner

from drivers import load_profiles
from gateway.cli import main
from gateway.clock import ClockState
from gateway.config import GatewayConfig, load_config
from gateway.doctor import (
    Check, check_broker, check_clock, check_config, check_data_dir, check_keys, check_serial_ports, check_store,
)
from gateway.paths import DEFAULT_CONFIG, PROFILES_DIR
from local_store import audit, open_store
from tests.conftest import Broker, PtyPair, foreign_database, free_port

PROFILES = load_profiles(PROFILES_DIR)


def _config(tmp_path: Path, text: str | None = None) -> GatewayConfig:
    path = tmp_path / "gw.toml"
    path.write_text(text or DEFAULT_CONFIG.read_text())
    return load_config(path, PROFILES, data_dir_override=tmp_path / "data")


def _serial_config(tmp_path: Path, port: str) -> GatewayConfig:
    text = DEFAULT_CONFIG.read_text().replace(
        'transport = "tcp"\nsimulated = true', f'transport = "rtu"\nserial_port = "{port}"\nbaudrate = 9600\nparity = "E"')
    return _config(tmp_path, text)


def test_serial_ports(tmp_path: Path, pty_pair: PtyPair) -> None:
    assert check_serial_ports(_serial_config(tmp_path, pty_pair.gateway_side)) == [
        Check(f"serial port {pty_pair.gateway_side} (bus demo-bus)", "OK", "opens read/write (9600 baud, parity E)")]
    missing = str(tmp_path / "ttyUSB9")
    assert check_serial_ports(_serial_config(tmp_path, missing)) == [
        Check(f"serial port {missing} (bus demo-bus)", "FAIL", "no such device",
              "plug in the RS-485 adapter, then see `ls -l /dev/serial/by-id/` for its name and set "
              "buses.serial_port to it (by-id names survive reboots)")]
    plain = tmp_path / "not-a-tty"
    plain.write_text("")
    assert check_serial_ports(_serial_config(tmp_path, str(plain)))[0].message == "not a character device"


def test_broker(tmp_path: Path, mqtt_broker: Broker) -> None:
    config = _config(tmp_path)
    up = replace(config, sync=replace(config.sync, broker=replace(config.sync.broker, port=mqtt_broker.port)))
    assert check_broker(up) == [Check(f"broker 127.0.0.1:{mqtt_broker.port}", "OK", "reachable (TCP)")]
    dead = free_port()
    down = replace(config, sync=replace(config.sync, broker=replace(config.sync.broker, port=dead)))
    assert check_broker(down) == [Check(f"broker 127.0.0.1:{dead}", "FAIL", "cannot connect (Connection refused)",
                                        "check sync.broker_host and sync.broker_port, the network and any firewall; "
                                        "readings wait in the outbox meanwhile")]
    off = replace(config, sync=replace(config.sync, enabled=False))
    assert check_broker(off)[0].status == "OK"


def test_data_directory_that_cannot_be_written(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "data").mkdir()
    assert check_data_dir(config)[0].status == "OK"
    # /sys refuses new files even to root: a real read-only directory in a container.
    rows = check_data_dir(replace(config, data_dir=Path("/sys")))
    assert rows[0].status == "FAIL" and rows[0].message.startswith("/sys is not writable (")
    assert rows[0].fix.startswith("create it and give it to the service user: install -d -o carbon-gateway")


def test_clock(tmp_path: Path) -> None:
    assert check_clock(lambda: ClockState(False, "timedatectl", "timedatectl: NTPSynchronized=no")) == [
        Check("clock", "FAIL", "not synchronised: timedatectl: NTPSynchronized=no",
              "enable network time: timedatectl set-ntp true, and let the box reach an NTP server (UDP 123); "
              "readings are flagged clock_unsynchronised until then")]
    assert check_clock(lambda: ClockState(None, "none", "no source"))[0].status == "WARN"
    assert check_clock(lambda: ClockState(True, "timesyncd", "flag"))[0].status == "OK"


def test_keys_readable_by_others(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.keys_dir.mkdir(parents=True)
    key = config.keys_dir / "gateway-signing.key"
    key.write_text("x")
    os.chmod(key, 0o644)
    rows = check_keys(config)
    assert Check("key gateway-signing.key", "FAIL", f"{key} is readable by others (mode 0644)",
                 f"chmod 600 {key}") in rows
    os.chmod(key, 0o600)
    assert all(r.status != "FAIL" for r in check_keys(config))


def test_store_damaged_or_tampered(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with open_store(config.database) as store:
        audit.record(store.db, "admin", "meter.add", "meter m1")
    assert [r.status for r in check_store(config)] == ["OK", "OK"]
    with open_store(config.database) as store:
        store.db.execute("UPDATE audit_log SET actor = 'x'")
        store.db.conn.commit()
    assert check_store(config)[1].message == "1 problem(s): entry 1 (meter.add by x): content does not match its hash (edited)"
    config.database.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    rows = check_store(config)
    assert rows[0].status == "FAIL" and rows[0].fix == ("stop the gateway and restore the last good backup "
                                                        "(docs/operations.md)")


def test_store_of_another_program(tmp_path: Path) -> None:
    """Bad-input sweep: this said "no such table: audit_log" and advised restoring a backup."""
    config = _config(tmp_path)
    foreign_database(config.database)
    assert check_store(config) == [Check("store", "FAIL", f"{config.database}: not a gateway store (tables: invoices)",
                                         "point --data-dir (gateway.data_dir) at the gateway's state directory, "
                                         "or move the file away")]


def test_doctor_command_reports_each_line_and_fails_with_status_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_CONFIG.read_text().replace("device_id = 2", "device_id = 300"))
    result = CliRunner().invoke(main, ["doctor", "--config", str(bad), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == [
        f"FAIL  config: {bad}: meters[1].device_id = 300: use a Modbus unit id from 1 to 247",
        "      fix: change the key the message names, then run doctor again"]
    good = tmp_path / "good.toml"
    good.write_text(DEFAULT_CONFIG.read_text().replace("[sync]\nenabled = true", "[sync]\nenabled = false"))
    (tmp_path / "d").mkdir()
    result = CliRunner().invoke(main, ["doctor", "--config", str(good), "--data-dir", str(tmp_path / "d"), "--json"])
    rows = json.loads(result.output)
    assert [r["check"] for r in rows] == ["config", "clock", "data directory", "disk space", "broker", "signing key",
                                          "audit key", "backup key", "store"]
    assert result.exit_code == (1 if any(r["status"] == "FAIL" for r in rows) else 0)


def test_a_config_without_meters_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    demo = DEFAULT_CONFIG.read_text()
    text = demo[:demo.index("\n[[meters]]\n")] + demo[demo.index("\n[emissions]\n"):]
    path = tmp_path / "gw.toml"
    path.write_text(text)
    config = load_config(path, PROFILES, data_dir_override=tmp_path / "data")
    assert check_config(path, None, config) == [
        Check("config", "OK", f"{path}: 1 bus(es), 0 meter(s)"),
        Check("meters", "WARN", "no meters configured: nothing is polled and no readings are stored",
              "add a [[meters]] table per meter (bus, device_id, profile; `carbon-gateway scan` finds them, "
              "docs/configuration.md), then reload the gateway (systemctl reload carbon-gateway)")]
