"""Profiles decoded from a real pymodbus server: over TCP, and as RTU over a socat pseudo-terminal pair."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drivers import (BusConfig, BusPoller, MeterConfig, ProfileError, SerialSettings, SimulatedDevice,
                     SimulatorServer, load_profile, load_profiles, read_meter)
from drivers.decode import decode_point, encode_point
from drivers.model import Point, Profile, Quantity
from tests.conftest import sdm630_basic

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")

@pytest.fixture
def tcp_simulator():
    devices = [SimulatedDevice(i + 1, p) for i, p in enumerate(PROFILES.values())]
    server = SimulatorServer(devices).start()
    yield server, {d.profile.id: d.device_id for d in devices}
    server.stop()


def test_rtu_over_socat_pty_pair(pty_pair) -> None:
    profile = PROFILES["eastron-sdm630"]
    server = SimulatorServer([SimulatedDevice(7, profile)], serial_port=pty_pair.device_side).start()
    try:
        bus = BusConfig("rs485", "rtu", serial=SerialSettings(pty_pair.gateway_side, 9600), timeout_s=1.0)
        readings = read_meter(bus, 7, profile)
    finally:
        server.stop()
    values = {r.point: r.value for r in readings}
    assert 220 < values["voltage_l1"] < 240 and 49 < values["frequency"] < 51
    assert values["energy_import"] > 10_000


def test_counters_advance_consistently_with_power(tcp_simulator) -> None:
    server, unit_of = tcp_simulator
    bus = BusConfig("t", "tcp", port=server.port)
    profile = PROFILES["eastron-sdm630"]
    first = {r.point: r for r in read_meter(bus, unit_of[profile.id], profile)}
    time.sleep(1.0)
    second = {r.point: r for r in read_meter(bus, unit_of[profile.id], profile)}
    hours = (second["energy_import"].timestamp - first["energy_import"].timestamp) / 3600
    delta_kwh = second["energy_import"].value - first["energy_import"].value
    # f32 holds ~11000 kWh to about 1 Wh, so compare with the power (about 120 kW) within float resolution.
    assert delta_kwh == pytest.approx(first["active_power"].value * hours, abs=0.005)


def test_dead_meter_costs_one_timeout_and_backs_off(tcp_simulator) -> None:
    server, unit_of = tcp_simulator
    bus = BusConfig("t", "tcp", port=server.port, timeout_s=0.3)
    meters = [MeterConfig("alive", "t", unit_of["eastron-sdm630"], "eastron-sdm630", 1.0),
              MeterConfig("dead", "t", 200, "eastron-sdm630", 1.0)]
    # The ten basic SDM630 points: three requests (input registers 0..11, 52..53, 70..75).
    poller = BusPoller(bus, meters, {**PROFILES, "eastron-sdm630": sdm630_basic(PROFILES["eastron-sdm630"])})
    try:
        now = time.monotonic()
        readings = poller.poll_due(now)
        assert {r.meter_id for r in readings} == {"alive"}
        stats = poller.stats()
        assert stats["dead"].state == "failing" and stats["dead"].requests == 1  # skipped its other requests
        assert stats["alive"].state == "ok" and stats["alive"].requests == 3
        # Retried after 1 interval, then 2, then 4 (exponential back-off); the live meter keeps its 1 s schedule.
        for offset, dead_requests in ((1.5, 2), (2.5, 2), (3.6, 3), (5.7, 3), (7.7, 4)):
            assert poller.poll_due(now + offset), f"live meter not polled at +{offset} s"
            assert poller.stats()["dead"].requests == dead_requests, offset
    finally:
        poller.close()


def test_issue17_polls_keep_a_monotonic_schedule_and_count_late_and_skipped_ones(tcp_simulator) -> None:
    server, unit_of = tcp_simulator
    bus = BusConfig("t", "tcp", port=server.port, timeout_s=2.0)
    poller = BusPoller(bus, [MeterConfig("m", "t", unit_of["eastron-sdm630"], "eastron-sdm630", 1.0)], PROFILES)
    try:
        # (time of the round, polled?); the schedule is 0, 1, 2, 3, ... s from the first poll (plus the few
        # microseconds into the round the first poll started, hence 1.05 and 3.05 rather than 1 and 3).
        rounds = [(0.0, True),    # starts the schedule: next due at 1
                  (1.05, True),   # on time; next due at 2
                  (2.7, True),    # 0.7 s late (> half an interval): late; next due at 3, not 3.7
                  (3.05, True),   # on time again: the late poll did not shift the schedule
                  (6.2, True),    # due at 4: late, and the slots at 4 and 5 passed with no poll: 2 skipped; next 7
                  (6.9, False),   # nothing due
                  (7.1, True)]    # the slot at 7
        for now, polled in rounds:
            assert bool(poller.poll_due(now)) == polled, now
        stats = poller.stats()["m"]
        # 6 polls + 2 skipped = the 8 slots 0..7; late: the rounds at 2.7 and 6.2
        assert (stats.polls, stats.late_polls, stats.skipped_polls) == (6, 2, 2), stats
    finally:
        poller.close()


DECODE_TABLE = [
    # (data type, word order, byte order, scale, value)
    ("f32", "big", "big", 1.0, 230.5),
    ("f32", "little", "big", 1.0, 230.5),
    ("f32", "big", "little", 1.0, -12.25),
    ("u32", "little", "big", 0.01, 123456.78),
    ("i16", "big", "big", 0.1, -123.4),
    ("u64", "big", "big", 1.0, 2**40 + 5),
    ("f64", "little", "little", 1.0, 1234567.125),
    ("bcd32", "big", "big", 0.01, 9876.54),
]


@pytest.mark.parametrize("data_type,word_order,byte_order,scale,value", DECODE_TABLE)
def test_decode_round_trip(data_type, word_order, byte_order, scale, value) -> None:
    from drivers.decode import make_decoder

    point = Point("p", 0, data_type, Quantity.OTHER, "", word_order=word_order, byte_order=byte_order, scale=scale)
    registers = encode_point(point, value)
    assert decode_point(point, registers) == pytest.approx(value, rel=1e-6)
    assert make_decoder(point)(registers) == decode_point(point, registers)  # the polling fast path agrees


def test_scale_factor_register_read_from_the_device() -> None:
    """SunSpec style: value = raw * scale * 10**exponent, the exponent an i16 register read in the same request."""
    points = (Point("power", 10, "i16", Quantity.ACTIVE_POWER, "kW", scale_register=14),
              Point("voltage", 11, "u16", Quantity.VOLTAGE, "V", scale=0.1, scale_register=14))
    profile = Profile("sunspec-like", "T", "T", points)
    server = SimulatorServer([SimulatedDevice(4, profile)]).start()
    try:
        readings = read_meter(BusConfig("t", "tcp", port=server.port), 4, profile)
    finally:
        server.stop()
    power, voltage = readings
    assert power.raw == (round(power.value * 10) & 0xFFFF,)  # the exponent -1 was applied
    assert power.value == pytest.approx(server.expected(4, "power", power.timestamp), rel=0.01)
    assert voltage.value == pytest.approx(230, abs=1)


def test_scale_factor_register_in_another_request() -> None:
    """The planner may read a distant scale-factor register in a request of its own; it still applies."""
    profile = Profile("far-sf", "T", "T", (Point("power", 0, "i16", Quantity.ACTIVE_POWER, "kW", scale_register=90),))
    server = SimulatorServer([SimulatedDevice(4, profile)]).start()
    try:
        bus = BusConfig("t", "tcp", port=server.port)
        assert [(r.address, r.count) for r in BusPoller(bus, [], {}).plan(4, profile)] == [(0, 1), (90, 1)]
        (power,) = read_meter(bus, 4, profile)
    finally:
        server.stop()
    assert power.quality == "ok" and power.raw == (round(power.value * 10) & 0xFFFF,)
    assert power.value == pytest.approx(server.expected(4, "power", power.timestamp), rel=0.01)


def test_an_edited_profile_under_the_same_id_is_planned_afresh() -> None:
    first = Profile("p", "T", "T", (Point("v", 0, "u16", Quantity.VOLTAGE, "V", scale=0.1),))
    edited = Profile("p", "T", "T", (Point("v", 0, "u16", Quantity.VOLTAGE, "V", scale=0.1),
                                     Point("f", 1, "u16", Quantity.FREQUENCY, "Hz", scale=0.01)))
    server = SimulatorServer([SimulatedDevice(1, edited)]).start()
    poller = BusPoller(BusConfig("t", "tcp", port=server.port), [], {})
    try:
        assert [r.point for r in poller.read_once(1, first)] == ["v"]
        assert [r.point for r in poller.read_once(1, edited)] == ["v", "f"]
    finally:
        poller.close()
        server.stop()


def test_known_wire_bytes() -> None:
    # 230.0 as IEEE 754 float is 0x43660000; a meter with swapped words sends 0x0000 0x4366.
    big = Point("v", 0, "f32", Quantity.VOLTAGE, "V")
    swapped = Point("v", 0, "f32", Quantity.VOLTAGE, "V", word_order="little")
    assert decode_point(big, [0x4366, 0x0000]) == 230.0
    assert decode_point(swapped, [0x0000, 0x4366]) == 230.0


def test_nan_sentinel_gives_invalid_reading_not_zero(tcp_simulator) -> None:
    from drivers.decode import decode_raw
    from drivers.errors import DecodeError

    point = Point("e", 0, "u32", Quantity.ENERGY_IMPORT, "kWh", nan_values=(0xFFFFFFFF,))
    with pytest.raises(DecodeError, match="not available"):
        decode_raw(point, [0xFFFF, 0xFFFF])


def test_unit_id_out_of_range_is_refused() -> None:
    from drivers import DriverError

    with pytest.raises(DriverError, match="outside 1-247"):
        read_meter(BusConfig("t", "tcp", port=1), 300, PROFILES["eastron-sdm630"])


def test_missing_serial_port_says_so(tmp_path: Path) -> None:
    from drivers import BusError

    bus = BusConfig("rs485", "rtu", serial=SerialSettings(str(tmp_path / "ttyUSB9")), timeout_s=0.2)
    with pytest.raises(BusError, match="does not exist: check the cable"):
        read_meter(bus, 1, PROFILES["eastron-sdm630"])
