"""Web UI fixtures: a real running gateway on simulated meters, real SQLite in tmp_path, Flask test clients."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from drivers import SimulatedDevice, SimulatorServer, load_profiles
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from gateway.runtime import Runtime
from webui import create_app

PASSWORDS = {"admin": "admin-pass-123", "tech": "tech-pass-1234", "viewer": "viewer-pass-12"}
ROLES = {"admin": "admin", "tech": "technician", "viewer": "viewer"}

DEMO_TOML = """
[gateway]
id = "test-gw"

[[buses]]
name = "demo-bus"
transport = "tcp"
simulated = true
timeout_s = 0.5

[[meters]]
id = "main-incomer"
bus = "demo-bus"
device_id = 1
profile = "eastron-sdm630"
poll_interval_s = 1
activity = "electricity"

[[meters]]
id = "boiler-gas"
bus = "demo-bus"
device_id = 2
profile = "generic-gas-totaliser"
poll_interval_s = 1
activity = "natural_gas"

[emissions]
region = "national"

[sync]
enabled = false

[web]
enabled = false
"""


def write_config(tmp_path: Path, text: str = DEMO_TOML) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start_gateway(config_path: Path, data_dir: Path) -> Gateway:
    config = load_config(config_path, load_profiles(PROFILES_DIR), data_dir_override=data_dir)
    gw = Gateway(config)
    gw.start()
    return gw


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = start_gateway(write_config(tmp_path), tmp_path / "data")
    yield gw
    gw.stop()


@pytest.fixture
def app(gateway: Gateway):  # type: ignore[no-untyped-def]
    return create_app({"TESTING": True, "CLOUD_TEST_TIMEOUT_S": 1.0}, runtime=Runtime(gateway))


@pytest.fixture
def client(app) -> FlaskClient:  # type: ignore[no-untyped-def]
    return app.test_client()


def csrf_token(client: FlaskClient, url: str = "/login") -> str:
    """The CSRF token of the form on ``url`` (every form carries one)."""
    page = client.get(url).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or \
        re.search(r'type="hidden" name="csrf_token" value="([^"]+)"', page) or \
        re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def post(client: FlaskClient, url: str, data: dict | None = None, form_url: str | None = None, **kwargs):  # type: ignore[no-untyped-def]
    """POST like a browser: with the CSRF token from the page the form is on."""
    token = csrf_token(client, form_url or url)
    return client.post(url, data={**(data or {}), "csrf_token": token}, **kwargs)


def set_up_admin(client: FlaskClient) -> None:
    response = post(client, "/setup", {"name": "admin", "password": PASSWORDS["admin"],
                                       "confirm": PASSWORDS["admin"]})
    assert response.status_code == 302, response.get_data(as_text=True)


def login(client: FlaskClient, name: str) -> None:
    response = post(client, "/login", {"name": name, "password": PASSWORDS[name]})
    assert response.status_code == 302, response.get_data(as_text=True)


def add_users(client: FlaskClient) -> None:
    """With the admin logged in: a technician and a viewer."""
    for name in ("tech", "viewer"):
        response = post(client, "/users", {"name": name, "role": ROLES[name], "password": PASSWORDS[name]})
        assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def admin(app) -> FlaskClient:  # type: ignore[no-untyped-def]
    """A client logged in as the administrator (first boot done)."""
    client = app.test_client()
    set_up_admin(client)
    return client


@pytest.fixture
def field_sim() -> Iterator[SimulatorServer]:
    """A second line with one meter nobody has configured yet: unit 7, an Eastron SDM630."""
    profiles = load_profiles(PROFILES_DIR)
    sim = SimulatorServer([SimulatedDevice(7, profiles["eastron-sdm630"])], host="127.0.0.1").start()
    yield sim
    sim.stop()


@pytest.fixture
def field_gateway(tmp_path: Path, field_sim: SimulatorServer):  # type: ignore[no-untyped-def]
    toml = DEMO_TOML + f"""
[[buses]]
name = "line-2"
transport = "tcp"
host = "127.0.0.1"
port = {field_sim.port}
timeout_s = 0.2
"""
    gw = start_gateway(write_config(tmp_path, toml), tmp_path / "data")
    yield gw
    gw.stop()
