"""The dashboard against a real running gateway (simulated meters, real SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import load_profiles
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from tests.conftest import wait_until
from webui import create_app


@pytest.fixture
def gateway(tmp_path: Path):
    config = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data")
    from dataclasses import replace

    config = replace(config, web=replace(config.web, enabled=False), sync=replace(config.sync, enabled=False))
    gw = Gateway(config)
    gw.start()
    yield gw
    gw.stop()


def test_dashboard_shows_live_values_in_english_and_chinese(gateway) -> None:
    client = create_app({"TESTING": True}, runtime=gateway).test_client()
    wait_until(lambda: client.get("/api/status").get_json()["meters"][0]["points"], timeout_s=15,
               message="first readings")
    page = client.get("/").get_data(as_text=True)
    assert "Emissions today" in page and 'data-point="energy_import"' in page and "kWh" in page
    assert client.get("/lang/zh_Hans_CN").status_code == 302
    page = client.get("/").get_data(as_text=True)
    assert "今日排放" in page and "碳计量边缘网关" in page


def test_security_headers_and_no_500_for_garbage(gateway) -> None:
    client = create_app({"TESTING": True}, runtime=gateway).test_client()
    response = client.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    for path in ("/nope", "/lang/xx", "/api/status?x=%00", "/../../etc/passwd", "/static/../../x"):
        assert client.get(path).status_code < 500, path
    assert client.post("/", data={"a": "b"}).status_code == 405


def test_without_a_runtime_the_ui_says_so() -> None:
    client = create_app({"TESTING": True}).test_client()
    response = client.get("/")
    assert response.status_code == 503 and "The gateway is not running." in response.get_data(as_text=True)
