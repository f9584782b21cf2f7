"""Poller state a test cannot poison (issue 13): what a device refused is learned per (device, profile),
exception 2 teaches a hole and 3 a size, no plan holds a request over 125 registers, and a test read or scan
with another profile runs as its own transaction on the bus owner without touching the live plan."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from drivers import (BusConfig, BusError, BusPoller, MeterConfig, Point, Profile, Quantity, SimulatedDevice,
                     SimulatorServer, load_profiles)
from drivers.model import MAX_REGISTERS_PER_READ
from drivers.planner import DeviceLimits, ReadRequest, plan_reads, split_request
from drivers.scan import scan_bus

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
DTSU666, ADL400 = PROFILES["chint-dtsu666"], PROFILES["acrel-adl400"]


def _profile(*addresses: int, data_type: str = "u16") -> Profile:
    points = tuple(Point(f"p{a}", a, data_type, Quantity.OTHER, "") for a in addresses)  # type: ignore[arg-type]
    return Profile("test", "T", "T", points)


def _check_plan(profile: Profile, plan: list[ReadRequest], limit: int) -> None:
    """Every request within 125 registers and the limit (or one point alone), every point read exactly once."""
    longest_point = max(p.count for p in profile.points)
    for request in plan:
        assert request.count <= MAX_REGISTERS_PER_READ, request
        assert request.count <= max(limit, longest_point), (limit, request)
        for point in request.points:
            assert request.address <= point.address and point.address + point.count <= request.address + request.count
    assert sorted(p.name for r in plan for p in r.points) == sorted(p.name for p in profile.points)


@pytest.mark.parametrize("max_count", [1, 2, 3, 7, 60, 125])
def test_no_plan_holds_a_request_over_125_registers(max_count: int) -> None:
    """Issue 13: DeviceLimits(max_count=1) once made the DTSU666 plan one 8228-register read."""
    for profile in PROFILES.values():
        plan = plan_reads(profile, max_gap=10_000, limits=DeviceLimits(max_count=max_count))
        _check_plan(profile, plan, max_count)
    # DTSU666 with a limit of 1: each f32 point (2 registers) is read alone, 11 requests of 2 registers.
    plan = plan_reads(DTSU666, limits=DeviceLimits(max_count=1))
    assert [r.count for r in plan] == [2] * len(DTSU666.points)
    rng = random.Random(13)
    for _ in range(200):    # random maps, gaps, cuts and limits
        addresses = sorted(rng.sample(range(0, 3000), rng.randint(1, 30)))
        profile = _profile(*addresses, data_type=rng.choice(["u16", "u32", "f64"]))
        addresses = sorted({a - a % 4 for a in addresses})   # no overlapping points
        profile = _profile(*addresses, data_type=profile.points[0].data_type)
        cuts = frozenset(("holding", a) for a in rng.sample(addresses, min(3, len(addresses))))
        limit = rng.randint(1, 125)
        _check_plan(profile, plan_reads(profile, max_gap=rng.randint(0, 500), limits=DeviceLimits(limit, cuts)), limit)


def test_exception_2_teaches_a_hole_and_exception_3_a_size() -> None:
    profile = _profile(0, 1, 2, 3, 4, 5, 6, 7)          # eight neighbours: no hole to cut at
    request = plan_reads(profile)[0]
    assert (request.address, request.count) == (0, 8)
    halves, learned = split_request(request, DeviceLimits(), code=2)
    assert [(h.address, h.count) for h in halves] == [(0, 4), (4, 4)]
    assert learned == DeviceLimits(cuts=frozenset({("holding", 4)}))     # a hole at 4, the read limit untouched
    halves, learned = split_request(request, DeviceLimits(), code=3)
    assert [(h.address, h.count) for h in halves] == [(0, 4), (4, 4)]
    assert learned == DeviceLimits(max_count=4)                          # a size, no hole
    # With a hole, exception 2 cuts there; exception 3 still halves by size.
    gappy = plan_reads(_profile(0, 1, 6, 7, 8, 9), max_gap=10)[0]
    assert [(h.address, h.count) for h in split_request(gappy, DeviceLimits(), code=2)[0]] == [(0, 2), (6, 4)]
    halves, learned = split_request(gappy, DeviceLimits(), code=3)
    # cut at the first point from the middle (register 5) on: 0..1 and 6..9, so the limit is the longer, 4
    assert [(h.address, h.count) for h in halves] == [(0, 2), (6, 4)] and learned == DeviceLimits(max_count=4)
    # Exception 3 never teaches a limit below one point: two f64 points (4 registers each).
    wide = plan_reads(_profile(0, 4, data_type="f64"))[0]
    assert split_request(wide, DeviceLimits(max_count=2), code=3)[1].max_count == 4


@pytest.fixture
def live_dtsu666() -> SimulatorServer:
    server = SimulatorServer([SimulatedDevice(1, DTSU666), SimulatedDevice(2, PROFILES["eastron-sdm120"])]).start()
    yield server
    server.stop()


def test_a_wrong_profile_test_read_and_scan_leave_the_live_meter_reading(live_dtsu666: SimulatorServer) -> None:
    """Issue 13: a test read with acrel-adl400 against a running DTSU666, and a scan, through the live poller."""
    bus = BusConfig("t", "tcp", port=live_dtsu666.port, timeout_s=2.0)
    poller = BusPoller(bus, [MeterConfig("incomer", "t", 1, DTSU666.id, 1.0)], PROFILES)
    try:
        first = poller.poll_due(0.0)
        plan, limits = poller.plan(1, DTSU666), poller.limits()
        assert plan and all(r.count <= 125 for r in plan)
        interludes = [
            lambda: poller.read_once(1, ADL400),                             # the wrong profile
            lambda: scan_bus(bus, [1, 2, 3], PROFILES, poller=poller),       # every profile against unit 1
            lambda: poller.read_once(1, ADL400),
            lambda: poller.read_registers(1, "holding", 0, 125),            # a technician's raw look: refused
        ]
        cycles = [first]
        for now, interlude in enumerate(interludes, 1):
            try:
                interlude()
            except BusError:
                pass    # the wrong profile is refused (exception 2): that is the point
            cycles.append(poller.poll_due(now * 10.0))
        with pytest.raises(BusError) as error:
            poller.read_once(1, ADL400)
        assert str(error.value).startswith("refuses every register of profile acrel-adl400 (exception code 2 ")
    finally:
        poller.close()
    for readings in cycles:   # the live meter keeps its readings, every cycle
        assert [(r.point, r.quality) for r in readings] == [(p.name, "ok") for p in sorted(
            DTSU666.points, key=lambda p: p.address)]
        assert 220 < {r.point: r.value for r in readings}["voltage_l1"] < 240
    assert poller.plan(1, DTSU666) == plan and poller.limits() == limits
    assert set(poller.limits()) <= {(1, DTSU666.id)}
    assert poller.stats()["incomer"].state == "ok" and poller.stats()["incomer"].exceptions == 0


def test_limits_are_learned_per_device_and_profile() -> None:
    """A device refusing long reads for one profile teaches nothing about another profile at the same unit."""
    long = Profile("long", "T", "T", tuple(Point(f"p{a}", a, "u16", Quantity.OTHER, "") for a in range(40)))
    server = SimulatorServer([SimulatedDevice(4, long, frozenset({"short_reads"}), max_read=16)]).start()
    try:
        poller = BusPoller(BusConfig("t", "tcp", port=server.port), [MeterConfig("m", "t", 4, "long", 1.0)],
                           {"long": long})
        try:
            assert all(r.quality == "ok" for r in poller.poll_due(0.0))
            assert poller.limits() == {(4, "long"): DeviceLimits(max_count=10)}   # 40 -> 20 -> 10 (exception 3)
            # A test read of the same registers under another profile id plans afresh and learns nothing.
            other = Profile("other", "T", "T", long.points)
            assert all(r.quality == "ok" for r in poller.read_once(4, other))
            assert set(poller.limits()) == {(4, "long")}
            assert [(r.address, r.count) for r in poller.plan(4, other)] == [(0, 40)]
        finally:
            poller.close()
    finally:
        server.stop()


def test_a_missed_block_keeps_the_blocks_already_read() -> None:
    profile = _profile(0, 1, 200, 201)      # two blocks: 0..1 and 200..201
    server = SimulatorServer([SimulatedDevice(3, profile, frozenset({"half_silent"}))]).start()
    try:
        poller = BusPoller(BusConfig("t", "tcp", port=server.port, timeout_s=0.3),
                           [MeterConfig("m", "t", 3, "test", 1.0)], {"test": profile})
        try:
            assert [(r.address, r.count) for r in poller.plan(3, profile)] == [(0, 2), (200, 2)]
            readings = poller.poll_due(0.0)
            stats = poller.stats()["m"]
        finally:
            poller.close()
    finally:
        server.stop()
    assert [(r.point, r.quality) for r in readings] == [("p0", "ok"), ("p1", "ok"), ("p200", "invalid"),
                                                        ("p201", "invalid")]
    assert readings[2].reason == ("device 3 register 200: not read this cycle: no reply within 0.3 s to holding "
                                  "registers 200..201")
    # Still a failing cycle: the meter backs off and the alarm says why.
    assert (stats.state, stats.timeouts, stats.last_error) == ("failing", 1, "no reply within 0.3 s to holding "
                                                                             "registers 200..201")


def test_rtu_over_tcp_keeps_its_connection_through_timeouts_and_late_replies() -> None:
    """A serial device server: a silent unit or a late reply costs a timeout, not a new TCP connection (which
    every meter behind it would pay for), and the late reply is not taken for the next answer."""
    server = SimulatorServer([SimulatedDevice(1, DTSU666), SimulatedDevice(2, DTSU666, frozenset({"slow"}), slow_s=0.6)],
                             rtu_over_tcp=True).start()
    try:
        poller = BusPoller(BusConfig("t", "rtu_over_tcp", port=server.port, timeout_s=0.3), [], {})
        try:
            assert len(poller.read_registers(1, "holding", 0x2006, 2)) == 2
            connection = poller._client.socket
            local = connection.getsockname()
            for unit in (9, 2):                 # 9: nobody there; 2: answers after 0.6 s, too late
                with pytest.raises(BusError) as error:
                    poller.read_registers(unit, "holding", 0x2006, 2)
                assert str(error.value) == "no reply within 0.3 s to holding registers 8198..8199"
            time.sleep(0.5)                     # unit 2's late reply has arrived by now
            voltage = next(r for r in poller.read_once(1, DTSU666) if r.point == "voltage_l1")
            assert voltage.quality == "ok" and 220 < voltage.value < 240
            assert poller._client.socket is connection and connection.getsockname() == local
        finally:
            poller.close()
    finally:
        server.stop()
