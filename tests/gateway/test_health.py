"""``/healthz`` and ``/metrics`` served by the running gateway's web server, over real HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from drivers import load_profiles
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from tests.conftest import free_port, wait_until, with_web
from tests.gateway.conftest import fast_demo

TOKEN = "0123456789abcdef0123"
SAMPLE = re.compile(r'^carbon_gateway_[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|NaN)$')


@pytest.fixture
def gateway(tmp_path: Path):
    config = fast_demo(tmp_path / "data")
    gw = with_web(Gateway(replace(config, web=replace(config.web, enabled=True, port=free_port(),
                                                      metrics_token=TOKEN))))
    gw.start()
    try:
        wait_until(lambda: gw.health()["status"] == "ok", timeout_s=15, message="a healthy gateway")
        yield gw
    finally:
        gw.stop()


def _get(gw: Gateway, path: str, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{gw.config.web.port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_healthz_and_metrics(gateway: Gateway) -> None:
    status, _, body = _get(gateway, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["readings_dropped"] == 0

    status, kind, body = _get(gateway, "/metrics")
    assert (status, body) == (401, "# send Authorization: Bearer <[web] metrics_token>\n")
    assert _get(gateway, "/metrics", token="wrong-token-000000")[0] == 401

    status, kind, body = _get(gateway, "/metrics", token=TOKEN)
    assert status == 200 and kind == "text/plain; version=0.0.4; charset=utf-8"
    lines = body.splitlines()
    samples = [line for line in lines if not line.startswith("#")]
    assert samples and all(SAMPLE.match(line) for line in samples), [s for s in samples if not SAMPLE.match(s)]
    assert "carbon_gateway_up 1" in samples
    assert 'carbon_gateway_meter_ok{meter="main-incomer",bus="demo-bus"} 1' in samples
    assert 'carbon_gateway_meter_errors_total{meter="main-incomer",bus="demo-bus",kind="timeout"} 0' in samples
    assert "carbon_gateway_readings_dropped_total 0" in samples and "carbon_gateway_sync_enabled 0" in samples
    free = [s for s in samples if s.startswith("carbon_gateway_disk_free_bytes{")]
    assert len(free) == 1 and int(free[0].split()[-1]) > 0
    assert "# TYPE carbon_gateway_meter_requests_total counter" in lines
    # Issue 17: read cycles, late and skipped ones are counted per meter.
    polls = [s for s in samples if s.startswith('carbon_gateway_meter_polls_total{meter="main-incomer",')]
    assert len(polls) == 1 and int(polls[0].split()[-1]) >= 1
    assert any(s.startswith('carbon_gateway_meter_polls_late_total{meter="main-incomer",') for s in samples)
    assert "# TYPE carbon_gateway_meter_polls_skipped_total counter" in lines


def test_healthz_says_degraded_while_the_store_refuses_writes(gateway: Gateway) -> None:
    assert gateway.store is not None and gateway._scheduler is not None
    gateway._scheduler.pause_job("store-writer")
    db = gateway.store.db
    db.execute("PRAGMA query_only = ON")
    try:
        wait_until(lambda: gateway._readings.qsize(), timeout_s=10, message="readings to store")
        gateway.flush_readings()
        status, _, body = _get(gateway, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "degraded"
        assert "attempt to write a readonly database" in json.loads(body)["store_error"]
        metrics = _get(gateway, "/metrics", token=TOKEN)[2].splitlines()
        assert "carbon_gateway_up 0" in metrics and "carbon_gateway_store_ok 0" in metrics
    finally:
        db.execute("PRAGMA query_only = OFF")


def test_sync_metrics_with_a_real_broker(tmp_path: Path, mqtt_broker) -> None:  # type: ignore[no-untyped-def]
    from gateway.metrics import render

    config = fast_demo(tmp_path / "data")
    demo_sync = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data").sync
    sync = replace(demo_sync, broker=replace(demo_sync.broker, port=mqtt_broker.port))
    gw = Gateway(replace(config, sync=sync, demo_receiver_key=True))
    gw.start()
    try:
        wait_until(lambda: "carbon_gateway_sync_connected 1" in render(gw).splitlines(), timeout_s=20,
                   message="sync connected in the metrics")
        samples = [line for line in render(gw).splitlines() if not line.startswith("#")]
    finally:
        gw.stop()
    assert all(SAMPLE.match(line) for line in samples), [s for s in samples if not SAMPLE.match(s)]
    names = {line.split("{")[0].split()[0] for line in samples}
    assert {"carbon_gateway_sync_backlog_batches", "carbon_gateway_sync_backlog_readings",
            "carbon_gateway_sync_last_ack_timestamp_seconds", "carbon_gateway_sync_lag_seconds",
            "carbon_gateway_sync_alarm", "carbon_gateway_sync_pruned_readings_total"} <= names
    lag = float(next(line for line in samples if line.startswith("carbon_gateway_sync_lag_seconds")).split()[-1])
    assert lag >= 0


def test_issue16_healthz_is_degraded_while_the_sync_alarm_is_on(tmp_path: Path) -> None:
    """A 1-byte disk budget with no broker to reach: unsynced readings are kept and the alarm is raised;
    /healthz says degraded with the alarm's text, /metrics has sync_alarm 1."""
    config = fast_demo(tmp_path / "data")
    demo_sync = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data").sync
    sync = replace(demo_sync, broker=replace(demo_sync.broker, port=free_port()), disk_budget_bytes=1, tick_s=0.1)
    gw = with_web(Gateway(replace(config, sync=sync, demo_receiver_key=True,
                                  web=replace(config.web, enabled=True, port=free_port(), metrics_token=TOKEN))))
    gw.start()
    try:
        wait_until(lambda: gw.health()["sync_alarm"], timeout_s=20, message="the disk budget alarm")
        status, _, body = _get(gw, "/healthz")
        metrics = _get(gw, "/metrics", token=TOKEN)[2].splitlines()
    finally:
        gw.stop()
    health = json.loads(body)
    assert status == 503 and health["status"] == "degraded"
    assert health["sync_alarm"].startswith("disk budget exceeded:") and "never deleted" in health["sync_alarm"]
    assert "carbon_gateway_sync_alarm 1" in metrics
