"""CT/PT ratios through the daemon (issue 13): a DTSU666 behind 100/5 A CTs with ct_ratio = "100/5" stores and
reports 20 times the secondary energy; without a ratio it is flagged in doctor and on the dashboard."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from drivers import SimulatedDevice, SimulatorServer, load_profile_set
from gateway.config import ConfigError, config_from_text
from gateway.daemon import Gateway
from gateway.doctor import check_config
from gateway.paths import PROFILES_DIR
from local_store import reports
from tests.conftest import wait_until

FOUND = load_profile_set(PROFILES_DIR)
PROFILES = FOUND.profiles


def _config(port: int, data_dir: Path, ratios: str) -> str:
    return f"""
[gateway]
id = "ratio-test"
data_dir = "{data_dir}"

[[buses]]
name = "lv"
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout_s = 2.0

[[meters]]
id = "incomer"
bus = "lv"
device_id = 1
profile = "chint-dtsu666"
poll_interval_s = 0.5
activity = "electricity"
{ratios}

[sync]
enabled = false

[web]
enabled = false
"""


@pytest.fixture
def dtsu666() -> SimulatorServer:
    server = SimulatorServer([SimulatedDevice(1, PROFILES["chint-dtsu666"])]).start()
    yield server
    server.stop()


def test_a_ct_ratio_stores_and_reports_primary_energy(tmp_path: Path, dtsu666: SimulatorServer) -> None:
    """Issue 13, done when: a meter with ct_ratio = "100/5" stores and reports 20x the secondary energy."""
    config = config_from_text(_config(dtsu666.port, tmp_path / "data", 'ct_ratio = "100/5"'), "gw.toml", PROFILES)
    assert config.meters[0].ct_ratio == 20.0 and config.ratio_warnings == ()
    gateway = Gateway(config, PROFILES)
    gateway.start()
    try:
        def energies() -> list:
            return [r for r in gateway.store.readings_after(0, 10_000) if r.point == "energy_import"]
        wait_until(lambda: len(energies()) >= 4, timeout_s=60, message="four stored energy readings")
        live = {v["point"]: v["value"] for v in gateway.meter_status()[0].values}
        # A test read of the configured meter (the web UI's) is primary too.
        tested = {r.point: r for r in gateway.test_read("lv", 1, "chint-dtsu666")}
        stored = energies()
        gateway.store.process()
        today = date.today()
        report = reports.build_report(gateway.store, today - timedelta(days=1), today + timedelta(days=1))
        intervals, unit = gateway.store.db.execute(
            "SELECT SUM(amount), MAX(unit) FROM intervals WHERE source_id = 'incomer'").fetchone()
    finally:
        gateway.stop()
    for reading in stored:
        # The simulator's secondary register at the reading's time, x 20 (100/5). It grows 120 kWh/h on the
        # secondary side, i.e. 0.033 kWh/s: 0.05 kWh covers the request-to-timestamp delay (f32 steps are 0.001).
        secondary = dtsu666.expected(1, "energy_import", reading.timestamp)
        assert reading.value == pytest.approx(20 * secondary, abs=20 * 0.05), reading
        assert secondary > 10_000   # so a secondary value could never pass for the primary one
    secondary = dtsu666.expected(1, "energy_import", tested["energy_import"].timestamp)
    assert tested["energy_import"].value == pytest.approx(20 * secondary, abs=20 * 0.05)
    # Live values are primary too: voltage (no PT) as read, current x 20.
    assert 220 < live["voltage_l1"] < 240
    assert live["current_l1"] == pytest.approx(20 * dtsu666.expected(1, "current_l1", time.time()), rel=0.3)
    # Intervals and the report: consumption = last - first primary reading = 20 x the secondary difference.
    primary_delta = stored[-1].value - stored[0].value
    secondary_delta = (dtsu666.expected(1, "energy_import", stored[-1].timestamp)
                       - dtsu666.expected(1, "energy_import", stored[0].timestamp))
    assert primary_delta == pytest.approx(20 * secondary_delta, abs=20 * 0.1)
    assert unit == "MWh" and intervals * 1000 == pytest.approx(primary_delta, rel=1e-6)   # kWh -> MWh
    (source,) = [s for s in report["by_source"] if s["source"] == "incomer"]
    assert source["unit"] == "MWh" and source["consumption"] * 1000 == pytest.approx(primary_delta, rel=1e-3), source
    # Emissions from the primary consumption: MWh x the grid factor (tCO2/MWh); the report rounds to 6 places.
    (factor,) = [f["value"] for f in report["factors"] if f["activity"] == "electricity"]
    assert source["tco2e"] == pytest.approx(primary_delta / 1000 * factor, abs=2e-6)


def test_a_secondary_meter_without_a_ratio_is_flagged_until_one_is_set(tmp_path: Path) -> None:
    flagged = config_from_text(_config(1502, tmp_path, ""), "gw.toml", PROFILES)
    (meter_id, warning), = flagged.ratio_warnings
    assert meter_id == "incomer"
    assert warning == ('chint-dtsu666 reports secondary-side values and the transformer ratio cannot be read from '
                       'the meter: set ct_ratio in its [[meters]] entry, e.g. ct_ratio = "100/5" (1 for a direct '
                       'connection); until then values are stored as read, unscaled')
    rows = [c for c in check_config(Path("gw.toml"), None, flagged) if c.name == "meter incomer"]
    assert [(c.status, c.message) for c in rows] == [("WARN", warning)]
    gateway = Gateway(flagged, PROFILES)   # the dashboard's data, before start: no bus traffic needed
    assert gateway.meter_status()[0].warning == warning
    for explicit in ("ct_ratio = 1", 'ct_ratio = "5/5"', 'ct_ratio = 20\npt_ratio = "10000/100"'):
        assert config_from_text(_config(1502, tmp_path, explicit), "gw.toml", PROFILES).ratio_warnings == ()
    # A profile whose values are primary (the demo's SDM630) needs no ratio.
    sdm = _config(1502, tmp_path, "").replace("chint-dtsu666", "eastron-sdm630")
    assert config_from_text(sdm, "gw.toml", PROFILES).ratio_warnings == ()


@pytest.mark.parametrize("line,message", [
    ('ct_ratio = "100:5"', 'meters[0].ct_ratio = "100:5": write the ratio as primary/secondary, e.g. "100/5", '
                           "or as a number; 1 for a direct connection"),
    ("pt_ratio = 0", 'meters[0].pt_ratio = 0: write the ratio as primary/secondary, e.g. "10000/100", or as a '
                     "number; 1 for a direct connection"),
])
def test_a_bad_ratio_in_the_config_names_place_and_fix(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_text(_config(1502, tmp_path, line), "gw.toml", PROFILES)
    assert str(error.value) == f"gw.toml: {message}"


def test_a_wrong_profile_test_read_and_scan_through_the_daemon_keep_the_meter_polled(
        tmp_path: Path, dtsu666: SimulatorServer) -> None:
    """Issue 13: the web UI's test read (Gateway.test_read) with acrel-adl400 against the running DTSU666 and a
    scan through the bus owner (Gateway.bus_poller) leave the meter polled, every reading valid."""
    from drivers import DriverError
    from drivers.scan import scan_bus

    config = config_from_text(_config(dtsu666.port, tmp_path / "data", "ct_ratio = 1"), "gw.toml", PROFILES)
    gateway = Gateway(config, PROFILES)
    gateway.start()
    try:
        def energies() -> list:
            return [r for r in gateway.store.readings_after(0, 10_000) if r.point == "energy_import"]
        wait_until(lambda: len(energies()) >= 2, timeout_s=60, message="the meter polled")
        poller = gateway.bus_poller("lv")
        plan = poller.plan(1, PROFILES["chint-dtsu666"])
        with pytest.raises(DriverError) as error:
            gateway.test_read("lv", 1, "acrel-adl400")
        assert "refuses every register of profile acrel-adl400" in str(error.value)
        (found,) = scan_bus(poller.bus, [1, 2], PROFILES, poller=poller)
        assert "chint-dtsu666" in {found.profile, *(c[0] for c in found.candidates)}
        before = len(energies())
        wait_until(lambda: len(energies()) >= before + 4, timeout_s=60, message="four more polls")
        status = gateway.meter_status()[0]
        stored = gateway.store.readings_after(0, 10_000)
        assert poller.plan(1, PROFILES["chint-dtsu666"]) == plan
        assert set(poller.limits()) <= {(1, "chint-dtsu666")}
    finally:
        gateway.stop()
    assert status.stats.state == "ok" and status.stats.exceptions == 0
    # every poll cycle (one timestamp) stored every point, valid; the newest may still have been in flight
    cycles: dict[float, set[str]] = {}
    for reading in stored:
        assert reading.quality == "ok", reading
        cycles.setdefault(reading.timestamp, set()).add(reading.point)
    names = {p.name for p in PROFILES["chint-dtsu666"].points}
    assert len(cycles) >= 6 and all(points == names for _, points in sorted(cycles.items())[:-1])
