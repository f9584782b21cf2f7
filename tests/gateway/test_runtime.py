"""The service interface (issue 12): scan jobs owned by the runtime, one clock state, SIGHUP and the web UI on
one apply path. A real gateway, a real pymodbus simulator on loopback, real SQLite files in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import SimulatedDevice, SimulatorServer, load_profiles
from gateway.clock import ClockState
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from gateway.runtime import Actor, ApplyError, Change, Runtime, suggested_activity
from local_store import audit
from tests.conftest import wait_until

TECH = Actor("tech", "127.0.0.1")

CONFIG = """
[gateway]
id = "runtime-gw"

[[buses]]
name = "line"
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout_s = 2

[sync]
enabled = false

[web]
enabled = false
"""


SLOW = (5, 6, 7, 8)


@pytest.fixture
def line() -> Iterator[SimulatorServer]:
    """Meters nobody has configured: an Eastron SDM630 at unit 2, a gas totaliser at unit 30, and four slow
    Eastrons at units 5-8 that answer each request after 0.25 s, so a scan over them takes seconds (each
    answering unit costs several requests to identify), and its time limit and cancel can be seen."""
    profiles = load_profiles(PROFILES_DIR)
    devices = [SimulatedDevice(2, profiles["eastron-sdm630"]), SimulatedDevice(30, profiles["generic-gas-totaliser"])]
    devices += [SimulatedDevice(u, profiles["eastron-sdm630"], faults=frozenset({"slow"}), slow_s=0.25) for u in SLOW]
    sim = SimulatorServer(devices, host="127.0.0.1").start()
    yield sim
    sim.stop()


def _start(tmp_path: Path, port: int, clock: ClockState | None = None) -> Gateway:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(port=port), encoding="utf-8")
    config = load_config(path, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data")
    gw = Gateway(config, clock_probe=(lambda: clock) if clock is not None else lambda: ClockState(
        True, "test", "synchronised (test)"))
    gw.start()
    return gw


@pytest.fixture
def runtime(tmp_path: Path, line: SimulatorServer) -> Iterator[Runtime]:
    gw = _start(tmp_path, line.port)
    rt = Runtime(gw)
    yield rt
    rt.close()
    gw.stop()


def _finished(rt: Runtime, job_id: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    return wait_until(lambda: (j := rt.scan_job(job_id)) is not None and j.finished and j, timeout_s=timeout_s,
                      message="the scan job finished")


def test_a_scan_keeps_what_it_found_at_its_time_limit_and_continues_from_the_first_unit_not_asked(
        runtime: Runtime) -> None:
    units = list(range(1, 41))
    # four slow meters at 0.25 s per request, several requests each: well over 1.5 s, so the limit stops it early
    job = runtime.start_scan("line", units, TECH, time_limit_s=1.5)
    assert job.state == "running" and job.total == 40
    job = _finished(runtime, job.id)
    assert job.state == "timeout" and 0 < job.done < 40 and job.estimate_s is None
    assert job.next_unit == units[job.done] and job.remaining == tuple(units[job.done:])
    # what it found is kept: exactly the meters among the unit ids it asked
    asked = set(units[:job.done])
    assert {f.result.device_id for f in job.found} == asked & {2, 30, *SLOW}
    more = runtime.continue_scan(job.id, TECH, time_limit_s=120)
    assert more is not None and more.id != job.id and more.units == job.remaining
    more = _finished(runtime, more.id)
    assert more.state == "done" and more.done == more.total
    assert sorted(f.result.device_id for f in more.found) == [2, *SLOW, 30], "the first job's finds carried over"
    eastron = next(f for f in more.found if f.result.device_id == 2)
    assert (eastron.result.profile, eastron.activity) == ("eastron-sdm630", "electricity")
    actions = [e.action for e in audit.entries(runtime._gw.store.db)]  # noqa: SLF001 - the store behind it
    assert actions.count("bus.scan") == 2


def test_a_cancelled_scan_keeps_its_finds_and_reports_progress_and_an_estimate(runtime: Runtime) -> None:
    job = runtime.start_scan("line", range(1, 61), TECH, time_limit_s=120)
    assert runtime.start_scan("line", [5], TECH).id == job.id, "one scan per bus: the running one is returned"
    running = wait_until(lambda: (j := runtime.scan_job(job.id)) is not None and j.done >= 3 and j,
                         timeout_s=30, message="three unit ids asked")
    assert running.state == "running" and running.estimate_s is not None and running.estimate_s > 0
    stopped = runtime.cancel_scan(job.id, TECH)
    assert stopped is not None and stopped.state == "cancelled" and stopped.done < 60
    assert {f.result.device_id for f in stopped.found} == set(range(1, stopped.done + 1)) & {2, 30, *SLOW}
    assert runtime.cancel_scan("no-such-job", TECH) is None and runtime.scan_job("no-such-job") is None
    entries = [e for e in audit.entries(runtime._gw.store.db) if e.action == "bus.scan_cancel"]  # noqa: SLF001
    assert [(e.actor, e.detail["client"]) for e in entries] == [("tech", "127.0.0.1")]


def test_suggested_activity_follows_what_the_profile_measures() -> None:
    profiles = load_profiles(PROFILES_DIR)
    assert suggested_activity(profiles["eastron-sdm630"]) == "electricity"
    assert suggested_activity(profiles["generic-gas-totaliser"]) == "natural_gas"
    assert suggested_activity(None) == "none"


def test_one_clock_state_for_the_system_page_the_dashboard_and_healthz(tmp_path: Path, line: SimulatorServer) -> None:
    state = ClockState(False, "timedatectl", "timedatectl: NTPSynchronized=no")
    gw = _start(tmp_path, line.port, clock=state)
    try:
        rt = Runtime(gw)
        assert rt.clock() == state and rt.system_info().clock == state
        assert rt.health()["clock_synchronized"] is False
    finally:
        gw.stop()


def test_sighup_and_the_web_ui_apply_through_one_path_and_both_are_audited(runtime: Runtime, tmp_path: Path) -> None:
    data = runtime.config_data()
    data["buses"][0]["timeout_s"] = 0.3
    result = runtime.apply_data(data, TECH, Change("bus.edit", "bus line", {"timeout_s": 0.3}))
    assert result.config.buses[0].timeout_s == 0.3 and runtime.config.buses[0].timeout_s == 0.3
    saved = (tmp_path / "gateway.toml").read_text(encoding="utf-8")
    assert "timeout_s = 0.3" in saved
    with pytest.raises(ApplyError, match="device_id"):
        runtime.apply_text(saved + "\n[[meters]]\nid = \"m\"\nbus = \"line\"\ndevice_id = 999\nprofile = \"eastron-sdm630\"\n",
                           TECH)
    assert (tmp_path / "gateway.toml").read_text(encoding="utf-8") == saved, "a refused config leaves the file"

    profiles = dict(runtime.profiles())
    new = runtime.config
    runtime.reload_from_file(lambda: (new, profiles), "gateway.toml")
    with pytest.raises(ApplyError, match="broken on purpose"):
        runtime.reload_from_file(lambda: (_ for _ in ()).throw(ApplyError("broken on purpose")), "gateway.toml")
    entries = audit.entries(runtime._gw.store.db)  # noqa: SLF001
    assert [(e.actor, e.action) for e in entries[:3]] == [
        ("daemon", "config.reload_failed"), ("daemon", "config.reload"), ("tech", "bus.edit")]
    assert entries[2].detail == {"timeout_s": 0.3, "client": "127.0.0.1"}


def test_showing_the_keys_never_creates_one(runtime: Runtime) -> None:
    keys_dir = runtime.config.keys_dir
    before = sorted(p.name for p in keys_dir.iterdir())
    for _ in range(3):
        assert runtime.keys().gateway_key is None
    assert sorted(p.name for p in keys_dir.iterdir()) == before
    made = runtime.make_gateway_key(TECH)
    assert runtime.keys().gateway_key == made and runtime.make_gateway_key(TECH) == made
