"""scan a technician can leave running (issue 13): RTU over TCP behind a serial device server, one read per
candidate profile (counted at the simulator), heat meter vs gas totaliser vs pulse counter, and results
reported as each unit is identified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import BusConfig, Point, Profile, Quantity, Reading, SimulatedDevice, SimulatorServer, load_profiles
from drivers.planner import BusCost, plan_reads
from drivers.scan import ScanResult, plausibility, scan_bus
from gateway.cli import main

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
# Models whose registers are laid out alike (four 32-bit values at 0..7), told apart by the values only.
LOOKALIKES = {3: "generic-heat-meter", 4: "generic-gas-totaliser", 5: "generic-pulse-counter"}
#: A fixed set of candidates, so the library growing does not change what these tests count.
CANDIDATES = {k: PROFILES[k] for k in (*LOOKALIKES.values(), "chint-dtsu666", "eastron-sdm630", "acrel-adl400")}


@pytest.fixture
def serial_device_server() -> SimulatorServer:
    """A serial device server (RTU frames over TCP) with a DTSU666 and the three look-alikes behind it."""
    devices = [SimulatedDevice(1, PROFILES["chint-dtsu666"])]
    devices += [SimulatedDevice(unit, PROFILES[profile_id]) for unit, profile_id in LOOKALIKES.items()]
    server = SimulatorServer(devices, rtu_over_tcp=True).start()
    yield server
    server.stop()


def test_scan_rtu_over_tcp_finds_and_identifies_the_meters(serial_device_server: SimulatorServer) -> None:
    """Issue 13, done when: `scan --rtu-over-tcp` finds and identifies meters behind a serial device server
    (with the whole shipped library as candidates; the library may hold look-alikes the scan must list)."""
    result = CliRunner().invoke(main, ["scan", "--tcp", f"127.0.0.1:{serial_device_server.port}", "--rtu-over-tcp",
                                       "--units", "1-6", "--timeout", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    found = {f["unit"]: f for f in json.loads(result.output)}
    assert sorted(found) == [1, 3, 4, 5]       # 2 and 6: nobody home (silence on the RS-485 side)
    for unit, expected in {1: "chint-dtsu666", **LOOKALIKES}.items():
        named = found[unit]["profile"] or ""
        assert expected in {named, *(c[0] for c in found[unit]["other_candidates"])}, found[unit]
        assert found[unit]["identified_by"] == "plausibility" or found[unit]["undecided"], found[unit]


def test_a_heat_meter_gas_totaliser_and_pulse_counter_laid_out_alike_are_told_apart(
        serial_device_server: SimulatorServer) -> None:
    """Four 32-bit values at registers 0..7 each: only the values (and their types) tell the models apart."""
    bus = BusConfig("t", "rtu_over_tcp", port=serial_device_server.port, timeout_s=0.3)
    results = {r.device_id: r for r in scan_bus(bus, [1, 3, 4, 5], CANDIDATES)}
    assert {unit: (r.profile, r.identified_by, r.candidates, r.score) for unit, r in results.items()} == {
        1: ("chint-dtsu666", "plausibility", (), 1.0),
        **{unit: (profile_id, "plausibility", (), 1.0) for unit, profile_id in LOOKALIKES.items()}}


def test_scan_plain_tcp_against_rtu_frames_finds_nothing(serial_device_server: SimulatorServer) -> None:
    """Without --rtu-over-tcp the scan frames Modbus TCP, which a serial device server does not understand."""
    result = CliRunner().invoke(main, ["scan", "--tcp", f"127.0.0.1:{serial_device_server.port}", "--units", "1",
                                       "--timeout", "0.3", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_rtu_over_tcp_needs_tcp() -> None:
    result = CliRunner().invoke(main, ["scan", "--serial", "/dev/ttyUSB0", "--rtu-over-tcp"])
    assert result.exit_code == 2 and "--rtu-over-tcp goes with --tcp HOST:PORT" in result.output


def test_about_one_read_per_candidate_profile(serial_device_server: SimulatorServer) -> None:
    """Counted at the simulator: per meter, one presence read, one identification request (FC 43/14), one
    probe per candidate profile and the chosen profile's full read; nothing else."""
    profiles = CANDIDATES
    assert not any(p.signatures or p.product_code for p in profiles.values())
    bus = BusConfig("t", "rtu_over_tcp", port=serial_device_server.port, timeout_s=0.3)
    results = scan_bus(bus, [1, 3, 4, 5], profiles)
    assert [r.profile for r in results] == ["chint-dtsu666", *LOOKALIKES.values()]
    for result in results:
        full_read = len(plan_reads(profiles[result.profile or ""], bus.max_gap_registers, cost=BusCost.for_bus(bus)))
        # e.g. the heat meter with 6 candidate profiles: 1 + 1 + 6 + 1 = 9 requests (the old scan sent 57-96).
        assert serial_device_server.requests_received(result.device_id) == 1 + 1 + len(profiles) + full_read
        assert len(result.readings) == len(profiles[result.profile or ""].points)


def test_partial_results_are_reported_as_each_unit_is_identified(serial_device_server: SimulatorServer) -> None:
    """A caller that stops the scan (time limit, cancel) keeps what on_result already gave it."""
    class Stop(Exception):
        pass
    kept: list[ScanResult] = []

    def progress(done: int, total: int, unit: int) -> None:
        if unit == 4:
            raise Stop

    bus = BusConfig("t", "rtu_over_tcp", port=serial_device_server.port, timeout_s=0.3)
    with pytest.raises(Stop):
        scan_bus(bus, range(1, 7), CANDIDATES, progress=progress, on_result=kept.append)
    assert [(r.device_id, r.profile) for r in kept] == [(1, "chint-dtsu666"), (3, "generic-heat-meter"),
                                                        (4, "generic-gas-totaliser")]


def test_identical_layouts_with_nothing_to_tell_them_apart_are_listed_not_guessed(monkeypatch) -> None:
    """Two profiles with the very same points: the scan says it cannot tell, with both candidates."""
    import gateway.commands.commissioning as commissioning

    twin = Profile("twin-totaliser", "Other", "Twin", PROFILES["generic-gas-totaliser"].points)
    profiles = {"generic-gas-totaliser": PROFILES["generic-gas-totaliser"], "twin-totaliser": twin,
                "generic-heat-meter": PROFILES["generic-heat-meter"]}
    monkeypatch.setattr(commissioning, "_profiles", lambda: profiles)   # the command's library: these three
    server = SimulatorServer([SimulatedDevice(2, twin)]).start()
    try:
        (result,) = scan_bus(BusConfig("t", "tcp", port=server.port, timeout_s=0.3), [2], profiles)
        text = CliRunner().invoke(main, ["scan", "--tcp", f"127.0.0.1:{server.port}", "--units", "2"])
    finally:
        server.stop()
    assert result.undecided and result.profile is None and result.score == 1.0 and result.readings == ()
    assert sorted(c[0] for c in result.candidates) == ["generic-gas-totaliser", "twin-totaliser"]
    assert text.exit_code == 0, text.output
    assert (f"127.0.0.1:{server.port}  unit   2  cannot tell which model: generic-gas-totaliser, twin-totaliser "
            "fit equally (100%); confirm with `read --profile ...` against the meter's display") in text.output


@pytest.mark.parametrize("data_type,words,wrong", [
    ("f32", (0x0000, 0x2AF8), True),     # the integer 11000 read as a float: 1.5e-41, no meter sends that
    ("f32", (0x4220, 0x0000), False),    # 40.0
    ("f32", (0x0000, 0x0000), False),    # 0.0 is a fine float
    ("u32", (0x4220, 0x0000), True),     # the float 40.0 read as an integer: 1109393408
    ("u32", (0x0000, 0x2AF8), False),    # 11000
    ("u32", (0x0BEB, 0xC200), False),    # 200000000: a big counter, but its bits are no float in 0.001..1e7
])
def test_a_value_of_the_wrong_type_is_not_plausible(data_type: str, words: tuple[int, int], wrong: bool) -> None:
    point = Point("x", 0, data_type, Quantity.FLOW_RATE, "m3/h")  # type: ignore[arg-type]
    profile = Profile("p", "M", "X", (point,))
    from drivers.decode import decode_point
    reading = Reading("m", "x", 0.0, decode_point(point, words), "m3/h", Quantity.FLOW_RATE, raw=words)
    assert plausibility([reading], profile) == (0.0 if wrong else 1.0)
    assert plausibility([reading]) == 1.0     # without the profile only the range is checked
