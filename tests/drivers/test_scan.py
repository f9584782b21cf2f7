"""Scanning a real simulated bus: which unit ids answer, and which profile each one is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import BusConfig, SimulatedDevice, SimulatorServer, load_profiles
from drivers.scan import parse_units, scan_bus
from gateway.cli import main

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
PROFILES = load_profiles(PROFILES_DIR)


@pytest.fixture
def bus_with_three_meters():
    server = SimulatorServer([SimulatedDevice(3, PROFILES["eastron-sdm630"]),
                              SimulatedDevice(7, PROFILES["generic-gas-totaliser"]),
                              SimulatedDevice(12, PROFILES["generic-heat-meter"])]).start()
    yield server
    server.stop()


def test_scan_finds_units_and_profiles_with_progress(bus_with_three_meters) -> None:
    calls: list[tuple[int, int, int]] = []
    bus = BusConfig("t", "tcp", port=bus_with_three_meters.port, timeout_s=0.2)
    results = scan_bus(bus, range(1, 16), PROFILES, progress=lambda *a: calls.append(a))
    assert [r.device_id for r in results] == [3, 7, 12]
    assert results[0].profile == "eastron-sdm630"
    # The two generic profiles have the same register layout; plausibility alone cannot tell them apart,
    # so the right one is either the guess or a listed candidate (a technician confirms with `read`).
    for result, expected in zip(results[1:], ("generic-gas-totaliser", "generic-heat-meter")):
        assert expected in {result.profile, *(c[0] for c in result.candidates)}
    assert all(r.score >= 0.8 for r in results)
    assert calls[-1] == (15, 15, 15) and len(calls) == 15


def test_scan_command_json(bus_with_three_meters) -> None:
    result = CliRunner().invoke(main, ["scan", "--tcp", f"127.0.0.1:{bus_with_three_meters.port}",
                                       "--units", "1-8", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert [f["unit"] for f in found] == [3, 7] and found[0]["profile"] == "eastron-sdm630"
    assert "generic-gas-totaliser" in {found[1]["profile"], *(c[0] for c in found[1]["other_candidates"])}


@pytest.mark.parametrize("text,expected", [("1-3,9", [1, 2, 3, 9]), ("247", [247])])
def test_parse_units(text: str, expected: list[int]) -> None:
    assert parse_units(text) == expected


@pytest.mark.parametrize("text,message", [("0-5", "'0-5': unit ids run from 1 to 247"),
                                          ("a", "'a': use unit ids like 1-247 or 1,2,5-9")])
def test_bad_unit_ranges(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_units(text)
    assert str(error.value) == message
    result = CliRunner().invoke(main, ["scan", "--tcp", "127.0.0.1:1", "--units", text])
    assert result.exit_code == 2 and message in result.output


@pytest.fixture
def mixed_brands():
    """A line with a meter that names itself (FC 43/14), one that does not, and a dead one."""
    server = SimulatorServer([SimulatedDevice(2, PROFILES["schneider-iem3255"]),
                              SimulatedDevice(5, PROFILES["eastron-sdm120"]),
                              SimulatedDevice(9, PROFILES["abb-b23"], frozenset({"no_answer"}))]).start()
    yield server
    server.stop()


def test_scan_identifies_by_device_identification_then_plausibility(mixed_brands) -> None:
    bus = BusConfig("t", "tcp", port=mixed_brands.port, timeout_s=0.3)
    results = {r.device_id: r for r in scan_bus(bus, range(1, 11), PROFILES)}
    assert sorted(results) == [2, 5]  # unit 9 never answers
    iem = results[2]
    assert (iem.profile, iem.identified_by, iem.vendor_name, iem.product_code) == (
        "schneider-iem3255", "device identification", "Schneider Electric", "A9MEM3255")
    assert iem.score == 1.0 and len(iem.readings) == len(PROFILES["schneider-iem3255"].points)
    sdm = results[5]
    # The SDM120 and SDM230 share Eastron's single-phase register map (the SDM230 profile adds the phase angle
    # the simulated SDM120 also answers): plausibility cannot tell them apart, so either is the guess and the
    # other a listed candidate, as with the two generic profiles.
    assert (sdm.identified_by, sdm.product_code) == ("plausibility", "")
    assert {sdm.profile, *(c[0] for c in sdm.candidates)} >= {"eastron-sdm120", "eastron-sdm230"}


def test_scan_command_text(mixed_brands) -> None:
    result = CliRunner().invoke(main, ["scan", "--tcp", f"127.0.0.1:{mixed_brands.port}", "--units", "1-10",
                                       "--timeout", "0.3"])
    assert result.exit_code == 0, result.output
    line = f"127.0.0.1:{mixed_brands.port}"
    assert f"{line}: 10/10 unit ids probed\n" in result.output
    assert (f"{line}  unit   2  schneider-iem3255 (the device identifies itself as Schneider Electric A9MEM3255)\n"
            in result.output)
    assert (f"{line}  unit   5  eastron-sdm120 (fits 100%)" in result.output
            or f"{line}  unit   5  eastron-sdm230 (fits 100%)" in result.output)  # one register map, see above


def test_scan_refuses_a_bad_parity() -> None:
    result = CliRunner().invoke(main, ["scan", "--serial", "/dev/ttyUSB0", "--parity", "N,X"])
    assert result.exit_code == 2 and "'N,X': parity is N, E or O, e.g. N,E" in result.output


def test_signature_registers_tell_identical_layouts_apart(tmp_path) -> None:
    """Two models with the same register layout: the one whose model-code register matches is chosen."""
    from drivers.profiles import load_profile

    base = (PROFILES_DIR / "generic-gas-totaliser.toml").read_text()
    for name, code in (("gas-a", 0x0A01), ("gas-b", 0x0B02)):
        (tmp_path / f"{name}.toml").write_text(base.replace('id = "generic-gas-totaliser"', f'id = "{name}"')
                                               + f"\n[[signatures]]\naddress = 100\nvalues = [{code}]\n")
    profiles = {p: load_profile(tmp_path / f"{p}.toml") for p in ("gas-a", "gas-b")}
    profiles["generic-heat-meter"] = PROFILES["generic-heat-meter"]
    server = SimulatorServer([SimulatedDevice(1, profiles["gas-b"]), SimulatedDevice(2, profiles["gas-a"])]).start()
    try:
        results = scan_bus(BusConfig("t", "tcp", port=server.port, timeout_s=0.3), [1, 2], profiles)
    finally:
        server.stop()
    assert [(r.device_id, r.profile, r.identified_by, r.candidates) for r in results] == [
        (1, "gas-b", "signature registers", ()), (2, "gas-a", "signature registers", ())]


def test_a_broken_signature_names_the_fix(tmp_path) -> None:
    from drivers import ProfileError
    from drivers.profiles import load_profile

    path = tmp_path / "x.toml"
    path.write_text((PROFILES_DIR / "generic-gas-totaliser.toml").read_text().replace(
        'id = "generic-gas-totaliser"', 'id = "x"') + '\n[[signatures]]\naddress = 100\nvalues = [70000]\n')
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value) == (f"{path}: signatures[0].values = [70000]: use a list of the u16 values that "
                                "identify the model, e.g. [4660]")


def test_scan_over_rtu_finishes_in_bounded_time(pty_pair) -> None:
    """On RS-485 a silent unit id costs one timeout and no more; the meters found are identified."""
    import time

    from drivers import SerialSettings

    server = SimulatorServer([SimulatedDevice(2, PROFILES["chint-ddsu666"]),
                              SimulatedDevice(5, PROFILES["schneider-iem3255"]),
                              SimulatedDevice(7, PROFILES["abb-b23"], frozenset({"no_answer"}))],
                             serial_port=pty_pair.device_side).start()
    stamps: dict[int, float] = {}
    try:
        bus = BusConfig("rs485", "rtu", serial=SerialSettings(pty_pair.gateway_side, 9600), timeout_s=0.1)
        started = time.monotonic()
        results = scan_bus(bus, range(1, 13), PROFILES, progress=lambda d, t, u: stamps.setdefault(u, time.monotonic()))
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert [(r.device_id, r.profile, r.identified_by) for r in results] == [
        (2, "chint-ddsu666", "plausibility"), (5, "schneider-iem3255", "device identification")]
    probe_s = {u: stamps[u] - stamps.get(u - 1, started) for u in stamps}
    assert all(0.1 <= probe_s[u] < 0.25 for u in (1, 3, 4, 6, 7, 8, 9, 10, 11, 12)), probe_s
    assert elapsed < 12 * 0.25 + 5, elapsed
