"""Issue 2: simulated meters -> poll -> store -> emissions -> batch -> mosquitto -> receiver.

At the end the receiver holds exactly the readings the gateway stored: none lost, none twice.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

from drivers import load_profiles
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from local_store import open_store
from local_store.reports import build_report
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService
from tests.conftest import free_port, port_open, trusted_pair, wait_until, with_web
from tests.webui.http_session import web_session

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, broker_port: int, web_port: int, receiver_pub: Path) -> Path:
    text = (ROOT / "config" / "gateway.toml").read_text()
    text = text.replace("poll_interval_s = 2", "poll_interval_s = 0.5")
    text = text.replace("broker_port = 1883", f"broker_port = {broker_port}")
    text = text.replace("demo_receiver_key = true", f'receiver_public_key = "{receiver_pub}"')
    text = text.replace("batch_max_age_s = 30", "batch_max_age_s = 1")
    text = text.replace("port = 8080", f"port = {web_port}")
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _receiver_readings(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT reading_id, meter_id, point, ROUND(timestamp, 3), value, quality FROM readings "
                            "ORDER BY reading_id").fetchall()


def test_simulated_meters_reach_the_receiver_exactly_once(tmp_path: Path, mqtt_broker) -> None:
    rx_dir, data_dir = tmp_path / "receiver", tmp_path / "gateway-data"
    receiver_pub = trusted_pair(rx_dir, data_dir)
    web_port = free_port()
    config = load_config(_config(tmp_path, mqtt_broker.port, web_port, receiver_pub),
                         load_profiles(PROFILES_DIR), data_dir_override=data_dir)
    receiver = Receiver(ReceiverSettings(rx_dir / "receiver.db", rx_dir / "keys", rx_dir / "trusted",
                                         BrokerSettings(port=mqtt_broker.port)))
    receiver.start()
    gateway = with_web(Gateway(config))      # the web server, handed over as `carbon-gateway run` does
    gateway.start()
    try:
        wait_until(lambda: len(_receiver_readings(rx_dir / "receiver.db")) >= 60, timeout_s=30,
                   message="readings at the receiver")
        web = web_session(f"http://127.0.0.1:{web_port}", "admin", "end-to-end-pw", first_boot=True)
        with web.open(f"http://127.0.0.1:{web_port}/api/status", timeout=5) as response:
            status = json.load(response)
        assert {m["id"] for m in status["meters"]} == {"main-incomer", "boiler-gas", "steam-header"}
        assert all(m["state"] == "ok" and m["points"] for m in status["meters"])
    finally:
        gateway.stop()
    # Whatever was stored after the last batch drains now, through the same outbox.
    store = open_store(data_dir / "gateway.db")
    drain = SyncService(config.sync, store)
    drain.start()
    try:
        wait_until(lambda: (drain.tick(force=True) or True) and drain.status().backlog_readings == 0,
                   timeout_s=30, message="outbox drained")
    finally:
        drain.stop()
        receiver.stop()
    # Timestamps travel with millisecond resolution (docs/sync-protocol.md).
    stored = [(r.id, r.meter_id, r.point, round(r.timestamp, 3), r.value, r.quality) for r in store.readings_after(0, 10**9)]
    assert len(stored) >= 60
    assert _receiver_readings(rx_dir / "receiver.db") == stored

    report = build_report(store, date.today() - timedelta(days=1), date.today() + timedelta(days=1))
    assert report["total_tco2e"] > 0
    assert {s["source"] if "source" in s else s.get("source_id") for s in report["by_source"]} >= {"main-incomer"}
    store.close()


def test_demo_command_serves_live_values_and_report_is_non_zero(tmp_path: Path) -> None:
    """The README's promise, as a user runs it: `carbon-gateway run`, then `carbon-gateway report`."""
    web_port = free_port()
    config = tmp_path / "demo.toml"
    config.write_text((ROOT / "config" / "gateway.toml").read_text().replace("port = 8080", f"port = {web_port}")
                      .replace("broker_port = 1883", f"broker_port = {free_port()}"))
    exe = Path(sys.executable).parent / "carbon-gateway"
    process = subprocess.Popen([str(exe), "run", "--config", str(config), "--data-dir", "var"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: port_open(web_port) or process.poll() is not None, timeout_s=30, message="web UI port")
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        # first start: the README's step of choosing the administrator's password (no default exists)
        web = web_session(f"http://127.0.0.1:{web_port}", "admin", "end-to-end-pw", first_boot=True)

        def live_values() -> bool:
            with web.open(f"http://127.0.0.1:{web_port}/", timeout=5) as response:
                page = response.read().decode()
            return page.count('data-point="') >= 15

        wait_until(live_values, timeout_s=20, message="live values on the dashboard")
        wait_until(lambda: (tmp_path / "var" / "gateway.db").exists(), timeout_s=10, message="database")
        def report_total() -> float:
            result = subprocess.run([str(exe), "report", "--data-dir", "var", "--from", "today", "--to", "tomorrow",
                                     "--format", "json"],   # the README's command
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60)
            return json.loads(result.stdout)["total_tco2e"] if result.returncode == 0 else 0.0

        wait_until(lambda: report_total() > 0, timeout_s=40, interval_s=1.0, message="a non-zero report")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0
