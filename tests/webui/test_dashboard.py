"""The dashboard against a real running gateway (simulated meters, real SQLite)."""

from __future__ import annotations

from tests.conftest import wait_until
from tests.webui.conftest import DEMO_TOML, set_up_admin, start_gateway, write_config
from gateway.runtime import Runtime
from webui import create_app


def test_dashboard_shows_live_values_in_english_and_chinese(admin) -> None:
    status = wait_until(lambda: (s := admin.get("/api/status").get_json()) and all(m["points"] for m in s["meters"])
                        and s, timeout_s=15, message="first readings")
    assert {m["id"] for m in status["meters"]} == {"main-incomer", "boiler-gas"}
    assert status["buses"][0]["name"] == "demo-bus" and status["buses"][0]["meters"] == 2
    assert all(p["age_s"] < 10 for m in status["meters"] for p in m["points"])
    page = admin.get("/").get_data(as_text=True)
    assert "Emissions today" in page and 'data-point="energy_import"' in page and "kWh" in page
    assert 'data-bus="demo-bus"' in page and "Timeouts" in page
    assert admin.get("/lang/zh_Hans_CN").status_code == 302
    page = admin.get("/").get_data(as_text=True)
    assert "今日排放" in page and "碳计量边缘网关" in page and "超时" in page


def test_garbage_paths_never_answer_500(admin) -> None:
    for path in ("/nope", "/lang/xx", "/api/status?x=%00", "/../../etc/passwd", "/static/../../x",
                 "/scan/nope", "/meters/%00/edit", "/buses/" + "x" * 5000 + "/edit", "/audit?page=-1&actor=%ff",
                 "/emissions?per=%00", "/reports?start=2026-13-45&end=x&by=nope&format=exe"):
        assert admin.get(path).status_code < 500, path
    assert admin.post("/", data={"a": "b"}).status_code in (400, 405)
    assert admin.put("/meters").status_code == 405


def test_healthz_needs_no_login(client) -> None:
    response = client.get("/healthz")
    assert response.status_code in (200, 503) and "status" in response.get_json()


def test_without_a_runtime_the_ui_says_so() -> None:
    client = create_app({"TESTING": True}).test_client()
    response = client.get("/")
    assert response.status_code == 503 and "The gateway is not running." in response.get_data(as_text=True)


def test_the_demo_shows_its_dashboard_read_only_without_login(tmp_path) -> None:
    """``[web] public_dashboard`` (the demo's config): live values at once, everything else behind a login."""
    config = write_config(tmp_path, DEMO_TOML.replace("[web]\nenabled = false", "[web]\nenabled = false\npublic_dashboard = true"))
    gateway = start_gateway(config, tmp_path / "data")
    try:
        client = create_app({"TESTING": True}, runtime=Runtime(gateway)).test_client()
        wait_until(lambda: all(m["points"] for m in client.get("/api/status").get_json()["meters"]), timeout_s=15,
                   message="first readings without login")
        page = client.get("/").get_data(as_text=True)
        assert 'data-point="energy_import"' in page and 'id="to-setup"' in page
        assert "Set the admin password to commission meters" in page and 'id="logout"' not in page
        for path in ("/meters", "/buses", "/emissions", "/users", "/backup"):
            response = client.get(path)
            assert response.status_code == 302 and response.location.endswith("/setup"), path
        set_up_admin(app_client := create_app({"TESTING": True}, runtime=Runtime(gateway)).test_client())
        assert app_client.get("/meters").status_code == 200
        page = client.get("/").get_data(as_text=True)            # still anonymous: a login link now
        assert 'id="to-login"' in page and 'id="to-setup"' not in page
        assert client.get("/meters").location.startswith("/login")
    finally:
        gateway.stop()


def test_without_public_dashboard_the_dashboard_needs_a_login(client) -> None:
    assert client.get("/").location.endswith("/setup")
    assert client.get("/api/status").status_code in (302, 401)


def test_issue15_one_clock_state_on_the_system_page_the_dashboard_and_healthz(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from drivers import load_profiles
    from gateway.clock import ClockState
    from gateway.config import load_config
    from gateway.daemon import Gateway
    from gateway.paths import PROFILES_DIR

    states = iter([ClockState(False, "timedatectl", "timedatectl: NTPSynchronized=no")]
                  + [ClockState(True, "timedatectl", "timedatectl: NTPSynchronized=yes")] * 100)
    config = load_config(write_config(tmp_path), load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data")
    gateway = Gateway(config, clock_probe=lambda: next(states))
    gateway.start()
    try:
        client = create_app({"TESTING": True, "STATUS_CACHE_S": 0.0}, runtime=Runtime(gateway)).test_client()
        set_up_admin(client)
        assert client.get("/healthz").get_json()["clock_synchronized"] is False
        assert client.get("/api/status").get_json()["clock"] == {
            "synchronized": False, "detail": "timedatectl: NTPSynchronized=no"}
        page = client.get("/").get_data(as_text=True)
        assert '<p id="clock-alarm" class="error" role="alert">' in page and "NTPSynchronized=no" in page
        assert 'id="clock-sync" data-state="no"' in client.get("/system").get_data(as_text=True)
        gateway.check_clock()       # the scheduler's next check: synchronised now, everywhere at once
        assert client.get("/healthz").get_json()["clock_synchronized"] is True
        assert '<p id="clock-alarm" class="error" role="alert" hidden>' in client.get("/").get_data(as_text=True)
        assert 'id="clock-sync" data-state="yes"' in client.get("/system").get_data(as_text=True)
    finally:
        gateway.stop()
