"""The read planner: exact minimum bus time, the gap and length limits, and learning what a device refuses
(against real simulated devices that refuse bridged holes and long reads)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import BusConfig, BusPoller, MeterConfig, SerialSettings, SimulatedDevice, SimulatorServer
from drivers import load_profiles
from drivers.model import Point, Profile, Quantity
from drivers.planner import BusCost, DeviceLimits, fewest_requests, one_request_per_point, plan_reads
from tests.conftest import sdm630_basic

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")


def _profile(*addresses: int, data_type: str = "u16", table: str = "holding") -> Profile:
    points = tuple(Point(f"p{a}", a, data_type, Quantity.VOLTAGE, "V", table=table) for a in addresses)  # type: ignore[arg-type]
    return Profile("test", "T", "T", points)


def _ranges(plan) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return [(r.address, r.count) for r in plan]


RTU_9600 = BusCost.for_bus(BusConfig("b", "rtu", serial=SerialSettings("/dev/null", 9600)))


@pytest.mark.parametrize("addresses,max_gap,expected", [
    ((0, 1, 2), 10, [(0, 3)]),                      # neighbours: one read
    ((0, 5, 9), 10, [(0, 10)]),                     # small holes are cheaper to read than a new request
    ((0, 5, 9), 3, [(0, 1), (5, 5)]),               # ... unless the configured gap forbids it
    ((0, 40), 50, [(0, 1), (40, 1)]),               # a 39-register hole costs more wire time than a request
    ((0, 100, 110), 200, [(0, 1), (100, 11)]),     # 9 spare registers (18 bytes) < one request (~25 bytes)
    ((0, 100, 124), 200, [(0, 1), (100, 1), (124, 1)]),
    (tuple(range(0, 200, 2)), 10, [(0, 73), (74, 125)]),  # the 125-register limit: two reads of equal cost
])
def test_plan_on_rtu_at_9600(addresses, max_gap, expected) -> None:
    assert _ranges(plan_reads(_profile(*addresses), max_gap, cost=RTU_9600)) == expected


def test_tables_are_never_mixed() -> None:
    points = _profile(0, 1).points + _profile(2, 3, table="input").points
    plan = plan_reads(Profile("t", "T", "T", points), 10)
    assert [(r.table, r.address, r.count) for r in plan] == [("holding", 0, 2), ("input", 2, 2)]


def test_tcp_bridges_wider_holes_than_rtu() -> None:
    tcp = BusCost.for_bus(BusConfig("b", "tcp"))
    profile = _profile(0, 40)
    assert len(plan_reads(profile, 125, cost=RTU_9600)) == 2
    assert _ranges(plan_reads(profile, 125, cost=tcp)) == [(0, 41)]


def _brute_force(profile: Profile, max_gap: int, cost: BusCost) -> float:
    """Cheapest cost over every way to cut the sorted points into consecutive requests."""
    spans = sorted((p.address, p.count) for p in profile.points)
    best = float("inf")
    for cuts in itertools.product((False, True), repeat=len(spans) - 1):
        groups, group = [], [spans[0]]
        for span, cut in zip(spans[1:], cuts):
            if cut:
                groups.append(group)
                group = []
            group.append(span)
        groups.append(group)
        total = 0.0
        for g in groups:
            end, ok = g[0][0] + g[0][1], True
            for a, c in g[1:]:
                ok &= a - end <= max_gap
                end = max(end, a + c)
            ok &= end - g[0][0] <= 125
            total += cost.request_chars(end - g[0][0]) if ok else float("inf")
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_plan_is_optimal_in_bus_time(seed: int) -> None:
    rng = random.Random(seed)
    addresses = sorted(rng.sample(range(0, 300), rng.randint(2, 10)))
    profile = Profile("t", "T", "T", tuple(Point(f"p{a}", a, rng.choice(["u16", "f32", "u64"]), Quantity.OTHER, "")
                                           for a in addresses))
    max_gap = rng.choice([0, 5, 10, 40])
    plan = plan_reads(profile, max_gap, cost=RTU_9600)
    assert sum(RTU_9600.request_chars(r.count) for r in plan) == pytest.approx(_brute_force(profile, max_gap, RTU_9600))
    assert sorted(p.name for r in plan for p in r.points) == sorted(p.name for p in profile.points)


def test_baselines() -> None:
    sdm630 = sdm630_basic(PROFILES["eastron-sdm630"])
    assert len(one_request_per_point(sdm630)) == len(sdm630.points)
    assert _ranges(fewest_requests(sdm630)) == [(0, 76)]
    assert _ranges(plan_reads(sdm630, 10, cost=RTU_9600)) == [(0, 12), (52, 2), (70, 6)]


def test_learned_limits_shape_the_plan() -> None:
    profile = _profile(0, 4, 8, 9)
    assert _ranges(plan_reads(profile, 10)) == [(0, 10)]
    assert _ranges(plan_reads(profile, 10, limits=DeviceLimits(cuts=frozenset({("holding", 4)})))) == [(0, 1), (4, 6)]
    assert _ranges(plan_reads(profile, 10, limits=DeviceLimits(max_count=5))) == [(0, 5), (8, 2)]


# -- against devices that refuse ranges ------------------------------------------------------------------
SPARSE = _profile(0, 4, 8, 20)
LONG = _profile(*range(40))


@pytest.fixture(scope="module")
def picky_devices() -> Iterator[SimulatorServer]:
    server = SimulatorServer([SimulatedDevice(1, SPARSE, frozenset({"holes"})),
                              SimulatedDevice(2, LONG, frozenset({"short_reads"}), max_read=16),
                              SimulatedDevice(3, _profile(0, 1, 2))]).start()
    yield server
    server.stop()


def test_a_device_refusing_bridged_holes_is_split_and_remembered(picky_devices) -> None:
    bus = BusConfig("t", "tcp", port=picky_devices.port, max_gap_registers=10)
    poller = BusPoller(bus, [MeterConfig("sparse", "t", 1, "test", 1.0)], {"test": SPARSE})
    try:
        assert _ranges(poller.plan(1, SPARSE)) == [(0, 9), (20, 1)]
        first = poller.poll_due(0.0)
        assert [r.quality for r in first] == ["ok"] * 4
        stats = poller.stats()["sparse"]
        # 0..8 refused and put aside until 20 reads (so the device is this model), 0..8 refused again and split:
        # 0 reads, 4..8 refused and split: 4 and 8 read.
        assert stats.exceptions == 3 and stats.requests == 7
        assert _ranges(poller.plan(1, SPARSE)) == [(0, 1), (4, 1), (8, 1), (20, 1)]
        poller.poll_due(10.0)
        assert poller.stats()["sparse"].exceptions == 3 and poller.stats()["sparse"].requests == 11
    finally:
        poller.close()


def test_a_device_refusing_long_reads_gets_shorter_ones(picky_devices) -> None:
    bus = BusConfig("t", "tcp", port=picky_devices.port)
    poller = BusPoller(bus, [MeterConfig("long", "t", 2, "test", 1.0)], {"test": LONG})
    try:
        assert len(poller.poll_due(0.0)) == 40
        assert poller.limits()[(2, "test")].max_count == 10
        assert _ranges(poller.plan(2, LONG)) == [(0, 10), (10, 10), (20, 10), (30, 10)]
        exceptions = poller.stats()["long"].exceptions
        assert all(r.quality == "ok" for r in poller.poll_due(10.0))
        assert poller.stats()["long"].exceptions == exceptions
    finally:
        poller.close()


def test_a_point_the_device_lacks_reads_invalid_and_the_others_ok(picky_devices) -> None:
    bus = BusConfig("t", "tcp", port=picky_devices.port)
    profile = _profile(0, 1, 2, 30)  # unit 3 serves 0..2 only
    readings = BusPoller(bus, [], {}).read_once(3, profile)
    assert [(r.point, r.quality) for r in readings] == [("p0", "ok"), ("p1", "ok"), ("p2", "ok"), ("p30", "invalid")]
    assert readings[3].value is None
    assert readings[3].reason == ("device 3 register 30: exception code 2 (illegal data address) for holding "
                                  "registers 30..30")
