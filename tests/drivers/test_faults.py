"""Misbehaving meters on a shared bus: every fault is named for what it is, costs at most one timeout, and
leaves the other meters on the line reading correctly. Real pymodbus servers (the simulator) over a socat
pty pair (RTU) and loopback TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import (BusConfig, BusError, BusPoller, DriverError, MeterConfig, SerialSettings, SimulatedDevice,
                     SimulatorServer)
from drivers import load_profiles
from tests.conftest import open_pty_pair, sdm630_basic

SHIPPED = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
SDM630 = sdm630_basic(SHIPPED["eastron-sdm630"])        # input registers 0..11, 52..53, 70..75: three requests
PROFILES = {**SHIPPED, SDM630.id: SDM630}
TIMEOUT_S = 1.0   # far above the simulator's replies (slow_s = 0.1) even on a loaded CI machine

#: unit id -> fault; unit 1 is a healthy meter.
FAULT_UNITS = {2: "no_answer", 3: "crc", 4: "truncated", 5: "garbage", 6: "exception", 7: "busy", 8: "slow"}


def _devices() -> list[SimulatedDevice]:
    return [SimulatedDevice(1, SDM630)] + [SimulatedDevice(u, SDM630, frozenset({f}), slow_s=0.1)
                                           for u, f in FAULT_UNITS.items()]


def _meters(bus: str) -> list[MeterConfig]:
    return [MeterConfig(f"m{u}", bus, u, SDM630.id, 1.0) for u in (1, *FAULT_UNITS)]


@pytest.fixture(scope="module")
def rtu_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusConfig]:
    with open_pty_pair(tmp_path_factory.mktemp("faults")) as pair:
        server = SimulatorServer(_devices(), serial_port=pair.device_side).start()
        try:
            yield BusConfig("rs485", "rtu", serial=SerialSettings(pair.gateway_side, 9600), timeout_s=TIMEOUT_S)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def tcp_endpoint() -> Iterator[BusConfig]:
    server = SimulatorServer(_devices()).start()
    try:
        yield BusConfig("tcp", "tcp", port=server.port, timeout_s=TIMEOUT_S)
    finally:
        server.stop()


RTU_EXPECTED = {
    # unit: (stats counter that grows, exact error)
    2: ("timeouts", f"no reply within {TIMEOUT_S:g} s to input registers 0..11"),
    3: ("crc_errors", "CRC error in the reply to input registers 0..11 (noise on the line? check termination "
                      "and shielding)"),
    4: ("framing_errors", "truncated reply to input registers 0..11: 26 of 29 bytes"),
    5: ("framing_errors", "garbled reply to input registers 0..11: 5a 7f a4 c9 ee 13 38 5d 82 a7 cc f1 16 3b 60 85 ..."),
    6: ("exceptions", "refuses every register of profile eastron-sdm630 (exception code 2 (illegal data address) "
                      "for input registers 0..11): is it the right profile?"),
    7: ("exceptions", "exception code 6 (device busy) for input registers 0..11"),
}


def _poll_once(bus: BusConfig) -> tuple[BusPoller, list, float]:
    poller = BusPoller(bus, _meters(bus.name), PROFILES)
    started = time.monotonic()
    readings = poller.poll_due(0.0)
    return poller, readings, time.monotonic() - started


def test_each_rtu_fault_is_named_and_the_healthy_meters_read_on(rtu_line) -> None:
    poller, readings, _ = _poll_once(rtu_line)
    try:
        stats = poller.stats()
        for unit, (counter, message) in RTU_EXPECTED.items():
            s = stats[f"m{unit}"]
            assert (s.state, s.last_error, getattr(s, counter)) == ("failing", message, 1 if counter != "exceptions"
                                                                   else s.exceptions), unit
            assert getattr(s, counter) >= 1
        # A missed reply skips the rest of that meter's cycle: one request, not three.
        for unit in (2, 3, 4, 5, 7):
            assert stats[f"m{unit}"].requests == 1, unit
        # A device that refuses every range is asked each planned range once and one point on its own (to tell
        # a wrong model from a device that refuses long reads), not split down to single points.
        assert stats["m6"].requests == stats["m6"].exceptions == 4
        good = {r.point: r.value for r in readings if r.meter_id == "m1"}
        slow = {r.point: r.value for r in readings if r.meter_id == "m8"}
        assert len(good) == len(slow) == len(SDM630.points) and 220 < good["voltage_l1"] < 240
        assert stats["m1"].state == stats["m8"].state == "ok"
        assert stats["m8"].request_latency_ms >= 100 > stats["m1"].request_latency_ms
        # After noise, garbage and late replies the line is clean again: the healthy meter still reads right.
        assert {r.point for r in poller.read_once(1, SDM630)} == set(good)
    finally:
        poller.close()


def test_tcp_faults(tcp_endpoint) -> None:
    poller, readings, _ = _poll_once(tcp_endpoint)
    try:
        stats = poller.stats()
        assert stats["m2"].last_error == f"no reply within {TIMEOUT_S:g} s to input registers 0..11"
        assert stats["m2"].timeouts == 1
        assert stats["m4"].last_error.startswith("garbled reply to input registers 0..11: ")  # no CRC on TCP
        assert stats["m4"].framing_errors == 1 and stats["m5"].framing_errors == 1
        assert stats["m7"].last_error == "exception code 6 (device busy) for input registers 0..11"
        assert {r.meter_id for r in readings} == {"m1", "m3", "m8"}  # "crc" is an RTU fault: TCP has no CRC
        assert all(r.quality == "ok" for r in readings)
    finally:
        poller.close()


def test_a_dead_meter_costs_one_timeout_and_no_more(rtu_line) -> None:
    """Issue 3: a dead meter on a bus does not delay the others beyond its timeout."""
    healthy = [MeterConfig(f"h{u}", rtu_line.name, u, SDM630.id, 1.0) for u in (1, 8)]
    dead = MeterConfig("dead", rtu_line.name, 2, SDM630.id, 1.0)
    durations = []
    for meters in (healthy, [healthy[0], dead, healthy[1]]):
        poller = BusPoller(rtu_line, meters, PROFILES)  # one owner of the serial port at a time
        try:
            poller.poll_due(0.0)  # opens the port
            started = time.monotonic()
            readings = poller.poll_due(10.0)
            durations.append(time.monotonic() - started)
            assert {r.meter_id for r in readings} == {"h1", "h8"}, poller.stats()
            if "dead" in poller.stats():
                assert poller.stats()["dead"].requests == 2  # one request per cycle, not three
        finally:
            poller.close()
    # one timeout (1 s), not one per request (3 s): half a timeout of margin for a loaded machine
    assert durations[1] - durations[0] < TIMEOUT_S * 1.5, durations


def test_a_second_owner_of_a_serial_port_is_refused(rtu_line) -> None:
    first = BusPoller(rtu_line, [], {})
    second = BusPoller(rtu_line, [], {})
    try:
        assert first.read_once(1, SDM630)
        with pytest.raises(BusError) as error:
            second.read_once(1, SDM630)
        port = rtu_line.serial.port
        assert str(error.value) == f"cannot open serial port {port}: is another program using it? (fuser {port})"
    finally:
        first.close()
        second.close()


def test_scan_through_the_owner_of_a_polled_serial_line(rtu_line) -> None:
    """A technician scans the line the gateway polls: through its owner, between its polls."""
    from drivers.scan import scan_bus

    owner = BusPoller(rtu_line, [MeterConfig("m1", rtu_line.name, 1, SDM630.id, 1.0)], PROFILES)
    try:
        assert owner.poll_due(0.0)
        results = scan_bus(rtu_line, [1, 2, 9], {SDM630.id: SDM630}, poller=owner)
        assert [(r.device_id, r.profile) for r in results] == [(1, SDM630.id)]
        assert owner.poll_due(10.0) and owner.stats()["m1"].state == "ok"  # still open and polling
    finally:
        owner.close()


def test_an_unknown_fault_is_refused_with_the_list() -> None:
    from drivers import DriverError

    with pytest.raises(DriverError) as error:
        SimulatedDevice(1, SDM630, frozenset({"fire"}))
    assert str(error.value) == ("simulator: unknown fault 'fire'; use one of no_answer, exception, busy, garbage, "
                                "crc, truncated, slow, holes, short_reads, half_silent")


def test_missing_serial_port_says_so(tmp_path: Path) -> None:
    bus = BusConfig("rs485", "rtu", serial=SerialSettings(str(tmp_path / "ttyUSB9")), timeout_s=0.2)
    with pytest.raises(BusError) as error:
        BusPoller(bus, [], {}).read_once(1, SDM630)
    assert str(error.value) == (f"serial port {tmp_path / 'ttyUSB9'} does not exist: check the cable/adapter and "
                                "the port name (ls /dev/serial/by-id/)")


def test_a_serial_port_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """Bad-input sweep: a directory or regular file was reported as "is another program using it?"."""
    bus = BusConfig("rs485", "rtu", serial=SerialSettings(str(tmp_path)), timeout_s=0.2)
    with pytest.raises(BusError) as error:
        BusPoller(bus, [], {}).read_once(1, SDM630)
    assert str(error.value) == (f"{tmp_path} is not a serial device: name the adapter, e.g. /dev/ttyUSB0 "
                                "(ls /dev/serial/by-id/)")


def test_simulator_on_a_missing_serial_device_says_so(tmp_path: Path) -> None:
    """Bad-input sweep: this said pymodbus' "Could not start listen, please check address."."""
    server = SimulatorServer([SimulatedDevice(1, SDM630)], serial_port=str(tmp_path / "ttyUSB9"))
    with pytest.raises(DriverError) as error:
        server.start()
    assert str(error.value) == (f"simulator: serial device {tmp_path / 'ttyUSB9'} does not exist: name the device "
                                "side of the line, e.g. /dev/ttyUSB1, or a pty from "
                                "`socat -d -d pty,raw,echo=0 pty,raw,echo=0`")
