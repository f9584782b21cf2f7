"""Buses, meters, scan, test-read and config export/import against a running gateway and a real simulator."""

from __future__ import annotations

import html
import io
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest



from local_store import audit
from tests.conftest import wait_until
from tests.webui.conftest import DEMO_TOML, post, set_up_admin, start_gateway, write_config
from gateway.runtime import Actor, Runtime
from webui import create_app


def text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


@pytest.fixture
def admin2(field_gateway):  # type: ignore[no-untyped-def]
    client = create_app({"TESTING": True}, runtime=Runtime(field_gateway)).test_client()
    set_up_admin(client)
    return client


def test_scan_finds_the_meter_add_it_test_read_it_and_see_it_polled(admin2, field_gateway, tmp_path) -> None:
    response = post(admin2, "/scan", {"bus": "line-2", "units": "5-8"})
    assert response.status_code == 302
    job_url = response.location
    page = wait_until(lambda: "scanning…" not in (t := text(admin2.get(job_url))) and t, timeout_s=30,
                      message="scan finished")
    assert 'data-unit="7"' in page and "eastron-sdm630 (100 %)" in page and "Add this meter" in page
    add_url = html.unescape(page.split('href="/meters/new?')[1].split('"')[0])
    form = text(admin2.get("/meters/new?" + add_url))
    assert 'value="eastron-sdm630"' in form and 'value="7"' in form
    # issue 15: the found meter's activity comes pre-filled from its profile (an Eastron measures imported energy)
    assert "activity=electricity" in add_url and '<option selected value="electricity">' in form
    response = post(admin2, "/meters/new", {"id": "line2-meter", "bus": "line-2", "device_id": "7",
                                            "profile": "eastron-sdm630", "poll_interval_s": "1",
                                            "activity": "electricity", "enabled": "y"})
    assert response.status_code == 302, text(response)
    assert "Meter line2-meter was saved and is being polled." in text(admin2.get("/meters"))
    saved = tomllib.loads((tmp_path / "gateway.toml").read_text())
    assert saved["meters"][-1]["id"] == "line2-meter" and saved["meters"][-1]["device_id"] == 7
    page = text(post(admin2, "/test-read", {"bus": "line-2", "device_id": "7", "profile": "eastron-sdm630"}))
    assert 'data-point="voltage_l1"' in page and "V" in page and "invalid" not in page
    status = wait_until(lambda: [m for m in admin2.get("/api/status").get_json()["meters"]
                                 if m["id"] == "line2-meter" and m["points"]], timeout_s=15, message="polled")
    assert status[0]["state"] == "ok"
    actions = [e.action for e in audit.entries(field_gateway.store.db)]
    assert {"bus.scan", "meter.add", "meter.test_read"} <= set(actions)


def test_test_read_of_a_silent_unit_says_so(admin2) -> None:
    page = text(post(admin2, "/test-read", {"bus": "line-2", "device_id": "9", "profile": "eastron-sdm630"}))
    assert "No answer from unit 9:" in page


def test_meter_form_messages_beside_the_fields(admin) -> None:
    response = post(admin, "/meters/new", {"id": "bad id", "bus": "nope", "device_id": "300", "profile": "nope",
                                           "poll_interval_s": "0", "activity": "plutonium"})
    assert response.status_code == 400
    page = text(response)
    for message in ("Use 1-40 letters, digits, '-', '_' or '.'.", "Not a valid choice.",
                    "Use a unit id from 1 to 247.", "Unknown profile: pick one from the list.",
                    "Use a value from 0.1 to 86400."):
        assert f'">{message}</span>' in page, message
    page = text(post(admin, "/meters/new", {"id": "x", "bus": "demo-bus", "device_id": "1", "profile": "eastron-sdm630",
                                            "poll_interval_s": "5", "activity": "none"}))
    assert "Another meter on this bus has this unit id." in page
    page = text(post(admin, "/meters/new", {"id": "main-incomer", "bus": "demo-bus", "device_id": "9",
                                            "profile": "eastron-sdm630", "poll_interval_s": "5", "activity": "none"}))
    assert "This meter id is taken: choose another." in page


def test_bus_edit_delete_and_messages(admin, gateway, tmp_path) -> None:
    page = text(post(admin, "/buses/new", {"name": "rs485-1", "transport": "rtu", "timeout_s": "1"}))
    assert "A serial bus needs its serial port." in page
    page = text(post(admin, "/buses/new", {"name": "tcp-1", "transport": "tcp", "timeout_s": "99"}))
    assert "A TCP bus needs a host." in page and "A TCP bus needs a port." in page
    assert "Use a value from 0.05 to 30." in page
    response = post(admin, "/buses/new", {"name": "tcp-1", "transport": "tcp", "host": "127.0.0.1", "port": "1502",
                                          "timeout_s": "0.3"})
    assert response.status_code == 302, text(response)
    assert [b.name for b in gateway.config.buses] == ["demo-bus", "tcp-1"]
    response = post(admin, "/buses/demo-bus/delete", form_url="/buses")
    assert "Bus demo-bus still has meters: move or delete them first." in text(admin.get(response.location))
    # one tap asks first (issue 15); nothing is deleted until the second, confirmed post
    asked = post(admin, "/buses/tcp-1/delete", form_url="/buses")
    assert asked.status_code == 200 and "Delete bus tcp-1?" in text(asked)
    assert [b.name for b in gateway.config.buses] == ["demo-bus", "tcp-1"]
    response = post(admin, "/buses/tcp-1/delete", {"confirm": "yes"}, form_url="/buses")
    assert "Bus tcp-1 was deleted." in text(admin.get(response.location))
    assert [b.name for b in gateway.config.buses] == ["demo-bus"]
    assert "tcp-1" not in (tmp_path / "gateway.toml").read_text()
    assert "Not a valid choice." in text(post(admin, "/buses/new", {"name": "x", "transport": "carrier-pigeon"}))


def test_edit_and_delete_a_meter_and_the_change_survives_a_restart(admin, gateway, tmp_path) -> None:
    response = post(admin, "/meters/boiler-gas/edit", {"id": "boiler-gas", "bus": "demo-bus", "device_id": "2",
                                                       "profile": "generic-gas-totaliser", "poll_interval_s": "3",
                                                       "activity": "natural_gas", "description": "Boiler 1"})
    assert response.status_code == 302, text(response)
    meter = next(m for m in gateway.config.meters if m.id == "boiler-gas")
    assert meter.poll_interval_s == 3 and meter.description == "Boiler 1" and not meter.enabled
    asked = post(admin, "/meters/main-incomer/delete", form_url="/meters")
    assert asked.status_code == 200 and "readings and emissions already stored are kept" in text(asked)
    assert len(gateway.config.meters) == 2
    assert post(admin, "/meters/main-incomer/delete", {"confirm": "yes"}, form_url="/meters").status_code == 302
    assert [m.id for m in gateway.config.meters] == ["boiler-gas"]
    # the file the gateway was started with holds the change, so a restart keeps it
    restarted = start_gateway(tmp_path / "gateway.toml", tmp_path / "data2")
    try:
        assert [m.id for m in restarted.config.meters] == ["boiler-gas"]
    finally:
        restarted.stop()


def test_config_export_and_import(admin, gateway) -> None:
    exported = admin.get("/config/export")
    assert exported.headers["Content-Disposition"] == 'attachment; filename="test-gw.toml"'
    data = tomllib.loads(exported.get_data(as_text=True))
    data_text = exported.get_data(as_text=True).replace('id = "test-gw"', 'id = "other-gw"').replace(
        "poll_interval_s = 1\n", "poll_interval_s = 4\n")
    response = post(admin, "/config/import", {"file": (io.BytesIO(data_text.encode()), "plant-b.toml")},
                    content_type="multipart/form-data")
    assert response.status_code == 302, text(response)
    assert gateway.config.gateway_id == "test-gw", "the gateway keeps its own id"
    assert {m.poll_interval_s for m in gateway.config.meters} == {4.0}
    assert data["meters"][0]["id"] == "main-incomer"
    bad = post(admin, "/config/import", {"file": (io.BytesIO(b"[[meters]]\nid = 3\n"), "bad.toml")},
               content_type="multipart/form-data")
    assert bad.status_code == 400
    # the rules table checks a table's keys in its order: id before device_id
    assert ("Not applied: bad.toml: meters[0].id = 3: use 1-40 letters, digits, '-', '_' or '.', "
            'e.g. id = "main-incomer"') in text(bad)
    garbage = post(admin, "/config/import", {"file": (io.BytesIO(b"\xff\xfe[[["), "x.toml")},
                   content_type="multipart/form-data")
    assert "Not a TOML file:" in text(garbage)
    empty = post(admin, "/config/import", {}, content_type="multipart/form-data")
    assert "Choose a file." in text(empty)


def test_a_config_built_in_code_is_not_overwritten_by_an_edit(admin, gateway) -> None:
    from dataclasses import replace

    gateway.config = replace(gateway.config, text="")
    page = text(post(admin, "/buses/new", {"name": "tcp-9", "transport": "tcp", "host": "127.0.0.1", "port": "1502",
                                           "timeout_s": "1"}))
    assert "Not applied: the running config was not read from a TOML file, so it cannot be edited here" in page
    assert [b.name for b in gateway.config.buses] == ["demo-bus"]


def test_issue15_a_scan_stopped_at_its_time_limit_continues_from_the_first_unit_not_asked(field_gateway) -> None:
    # a limit of 0 s stops the scan before it asks its first unit id: nothing is lost, all of 5-8 remains
    client = create_app({"TESTING": True, "SCAN_TIMEOUT_S": 0.0}, runtime=Runtime(field_gateway)).test_client()
    set_up_admin(client)
    job_url = post(client, "/scan", {"bus": "line-2", "units": "5-8"}).location
    page = wait_until(lambda: "scanning…" not in (t := text(client.get(job_url))) and t, timeout_s=30,
                      message="scan stopped")
    assert "The scan stopped at its time limit before unit 5; what it found is kept below." in page
    assert "Continue from unit 5" in page and 'href="/scan?bus=line-2"' in page, "never a dead end"
    client.application.config["SCAN_TIMEOUT_S"] = 120.0
    job_id = job_url.rsplit("/", 1)[1]
    more_url = post(client, f"/scan/{job_id}/continue", form_url=job_url).location
    assert more_url != job_url
    page = wait_until(lambda: "scanning…" not in (t := text(client.get(more_url))) and t, timeout_s=30,
                      message="the continued scan finished")
    assert "4 of 4 unit ids asked" in page and 'data-unit="7"' in page and "Continue from" not in page
    # stopping a finished scan changes nothing; an unknown job is a 404
    assert post(client, f"/scan/{job_id}/cancel", form_url=job_url).status_code == 302
    assert post(client, "/scan/nope/cancel", form_url=job_url).status_code == 404


def test_test_read_of_a_unit_that_refuses_says_it_answered(admin2) -> None:
    """Issue 15: "No answer from unit 44: exception code 4" sent technicians to the wiring. Unit 7 is an
    SDM630; read as an Acrel ADL400 every range it is asked for is outside its map, so it answers with
    exception 2 (illegal data address) — it is there, the profile is wrong."""
    page = text(post(admin2, "/test-read", {"bus": "line-2", "device_id": "7", "profile": "acrel-adl400"}))
    assert "Unit 7 answered but refused the read (" in page and "check the profile and the unit id." in page
    assert "No answer from unit 7" not in page


def test_meter_form_sets_ct_and_pt_ratios_and_the_dashboard_flags_a_meter_without(admin, gateway, tmp_path) -> None:
    """Issue 13: the meter form has the CT/PT ratios; a secondary-side meter without one is flagged."""
    base = {"bus": "demo-bus", "profile": "chint-dtsu666", "poll_interval_s": "5", "activity": "none"}
    page = text(post(admin, "/meters/new", {**base, "id": "hv-feeder", "device_id": "9", "ct_ratio": "100:5"}))
    index = len(gateway.config.meters)   # the new meter's place in the saved list
    assert (f'Not applied: web UI: meters[{index}].ct_ratio = "100:5": write the ratio as primary/secondary, e.g. "100/5", '
            "or as a number; 1 for a direct connection") in page
    response = post(admin, "/meters/new", {**base, "id": "hv-feeder", "device_id": "9", "ct_ratio": "100/5",
                                           "pt_ratio": "10000/100"})
    assert response.status_code == 302, text(response)
    meter = next(m for m in gateway.config.meters if m.id == "hv-feeder")
    assert (meter.ct_ratio, meter.pt_ratio) == (20.0, 100.0)
    saved = tomllib.loads((tmp_path / "gateway.toml").read_text())["meters"][-1]
    assert (saved["ct_ratio"], saved["pt_ratio"]) == ("100/5", "10000/100")
    assert 'value="100/5"' in text(admin.get("/meters/hv-feeder/edit"))
    response = post(admin, "/meters/new", {**base, "id": "lv-feeder", "device_id": "10"})
    assert response.status_code == 302, text(response)
    warning = ("chint-dtsu666 reports secondary-side values and the transformer ratio cannot be read from the "
               "meter: set ct_ratio in its [[meters]] entry")
    dashboard = text(admin.get("/"))
    assert dashboard.count(warning) == 1 and dashboard.index("lv-feeder") < dashboard.index(warning)
    assert [m["warning"] for m in admin.get("/api/status").get_json()["meters"] if m["id"] == "lv-feeder"] == [
        warning + ', e.g. ct_ratio = "100/5" (1 for a direct connection); until then values are stored as read, '
                  "unscaled"]


def test_comments_survive_a_web_edit(admin, gateway, tmp_path) -> None:
    """Issue 12: a web edit rewrote the TOML from its data and lost every comment (tomlkit keeps them)."""
    commented = gateway.config.text.replace('[[meters]]\nid = "main-incomer"',
                                            '# panel 3, feeder to the press line\n[[meters]]\nid = "main-incomer"', 1)
    commented = commented.replace('activity = "natural_gas"', 'activity = "natural_gas"   # boiler house only', 1)
    assert commented.count("#") == 2
    Runtime(gateway).apply_text(commented, Actor("test"))
    response = post(admin, "/meters/main-incomer/edit", {"id": "main-incomer", "bus": "demo-bus", "device_id": "1",
                                                         "profile": "eastron-sdm630", "poll_interval_s": "2",
                                                         "activity": "electricity", "description": "Press line",
                                                         "enabled": "y"})
    assert response.status_code == 302, text(response)
    saved = (tmp_path / "gateway.toml").read_text()
    assert "# panel 3, feeder to the press line\n[[meters]]" in saved
    assert 'activity = "natural_gas"   # boiler house only' in saved
    meter = tomllib.loads(saved)["meters"][0]
    assert (meter["description"], meter["poll_interval_s"]) == ("Press line", 2.0)
