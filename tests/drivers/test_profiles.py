"""Every shipped profile read from the simulator over Modbus TCP, RTU on a socat pty pair, and RTU over TCP.

One simulator per transport serves all profiles (one unit id each), as one RS-485 line with mixed brands.
Values are compared with what the simulated meter holds at the reading's timestamp, so a wrong byte order,
word order, scale or data type fails here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import BusConfig, SerialSettings, SimulatedDevice, SimulatorServer, load_profiles, read_meter
from drivers.profiles import load_profile
from tests.conftest import open_pty_pair

PROFILE_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
PROFILES = load_profiles(PROFILE_DIR)
UNIT_OF = {profile_id: unit for unit, profile_id in enumerate(sorted(PROFILES), start=1)}
DEVICES = [SimulatedDevice(UNIT_OF[pid], PROFILES[pid]) for pid in sorted(PROFILES)]

REQUIRED = {"eastron-sdm120", "eastron-sdm630", "chint-dtsu666", "chint-ddsu666", "acrel-adl400",
            "schneider-iem3255", "abb-b23", "janitza-umg604", "generic-gas-totaliser", "generic-heat-meter",
            "generic-pulse-counter"}


@pytest.fixture(scope="module")
def tcp_bus() -> Iterator[tuple[BusConfig, SimulatorServer]]:
    server = SimulatorServer(DEVICES).start()
    try:
        yield BusConfig("tcp", "tcp", port=server.port, timeout_s=1.0), server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rtu_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BusConfig, SimulatorServer]]:
    with open_pty_pair(tmp_path_factory.mktemp("rtu")) as pair:
        server = SimulatorServer(DEVICES, serial_port=pair.device_side, baudrate=9600).start()
        try:
            yield BusConfig("rs485", "rtu", serial=SerialSettings(pair.gateway_side, 9600), timeout_s=1.0), server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def rtu_over_tcp_bus() -> Iterator[tuple[BusConfig, SimulatorServer]]:
    server = SimulatorServer(DEVICES, rtu_over_tcp=True).start()
    try:
        yield BusConfig("gw", "rtu_over_tcp", port=server.port, timeout_s=1.0), server
    finally:
        server.stop()


def test_the_issue_3_profiles_are_shipped_with_their_source() -> None:
    assert REQUIRED <= set(PROFILES)
    for profile in PROFILES.values():
        text = (PROFILE_DIR / f"{profile.id}.toml").read_text(encoding="utf-8")
        assert profile.source and text.startswith("# ") and "Source:" in text, profile.id


def _assert_correct(bus: BusConfig, server: SimulatorServer, profile_id: str) -> None:
    profile = PROFILES[profile_id]
    readings = read_meter(bus, UNIT_OF[profile_id], profile)
    assert [r.point for r in readings] == [p.name for p in sorted(profile.points, key=lambda p: p.address)]
    for r in readings:
        point = profile.point(r.point)
        expected = server.expected(UNIT_OF[profile_id], r.point, r.timestamp)
        # The register holds the value rounded to the point's resolution; f32 keeps 24 bits; the load moves
        # by well under 1 % between the reply and the timestamp taken after the last block arrived.
        tolerance = abs(point.scale) + 0.01 * abs(expected) + (abs(expected) * 2**-23 if point.data_type == "f32" else 0)
        assert r.quality == "ok" and r.value == pytest.approx(expected, abs=tolerance), (r, expected)
        assert r.unit == point.unit and len(r.raw) == point.count


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_profile_over_tcp(tcp_bus, profile_id: str) -> None:
    _assert_correct(*tcp_bus, profile_id)


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_profile_over_rtu_on_a_socat_pty(rtu_bus, profile_id: str) -> None:
    _assert_correct(*rtu_bus, profile_id)


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_profile_over_rtu_over_tcp(rtu_over_tcp_bus, profile_id: str) -> None:
    _assert_correct(*rtu_over_tcp_bus, profile_id)


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
def test_profile_values_are_plausible_for_its_quantities(profile_id: str) -> None:
    """The simulator's values are themselves plausible (mains voltage, grid frequency, growing counters)."""
    from drivers.scan import plausibility

    server = SimulatorServer([SimulatedDevice(1, PROFILES[profile_id])]).start()
    try:
        readings = read_meter(BusConfig("t", "tcp", port=server.port), 1, PROFILES[profile_id])
    finally:
        server.stop()
    assert plausibility(readings) == 1.0




@pytest.mark.parametrize("point,message", [
    ('name = "v"\naddress = 0\ndata_type = "float"\nquantity = "voltage"\nunit = "V"',
     'points[0].data_type = "float": use one of u16, i16, bcd16, u32, i32, f32, bcd32, u64, i64, f64'),
    ('name = "v"\naddress = 65535\ndata_type = "f32"\nquantity = "voltage"\nunit = "V"',
     "points[0].address = 65535: a f32 there runs past register 65535"),
    ('name = "v"\naddress = -1\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"',
     "points[0].address = -1: use a register address from 0 to 65535 (the 0-based address sent on the wire, "
     "not 30001/40001 notation)"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "volts"\nunit = "V"',
     'points[0].quantity = "volts": use one of energy_import, energy_export, reactive_energy, gas_volume, '
     "heat_energy, steam_mass, water_volume, pulse_count, active_power, reactive_power, apparent_power, voltage, "
     "current, frequency, power_factor, flow_rate, temperature, pressure, other"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nscale = 0',
     "points[0].scale = 0: use a non-zero number, e.g. 0.01"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"',
     "points[0]: missing 'unit'; every point needs name, address, data_type, quantity and unit"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nwordorder = "big"',
     "points[0].wordorder: unknown key; use one of address, byte_order, data_type, description, name, "
     "nan_values, quantity, scale, scale_register, secondary, table, unit, word_order"),
    # CT/PT marks (issue 13): only the ratio that makes sense for the quantity.
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nsecondary = "current"',
     'points[0].secondary = "current": a voltage value takes none or voltage (docs/profiles.md: power and energy '
     "scale with CT x PT, currents with the CT, voltages with the PT)"),
    ('name = "f"\naddress = 0\ndata_type = "u16"\nquantity = "frequency"\nunit = "Hz"\nsecondary = "both"',
     'points[0].secondary = "both": a frequency value takes none (docs/profiles.md: power and energy scale with '
     "CT x PT, currents with the CT, voltages with the PT)"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nsecondary = "ct"',
     'points[0].secondary = "ct": use one of none, current, voltage, both'),
    # Bad-input sweep: these raised ValueError/TypeError or were accepted.
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nnan_values = ["a"]',
     "points[0].nan_values = ['a']: use a list of the integers (0 to 65535 for u16) the meter sends for "
     "'not available', e.g. [65535]"),
    ('name = "v"\naddress = 0\ndata_type = "i16"\nquantity = "voltage"\nunit = "V"\nnan_values = 5',
     "points[0].nan_values = 5: use a list of the integers (-32768 to 32767 for i16) the meter sends for "
     "'not available', e.g. [32767]"),
    ('name = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\nscale = nan',
     "points[0].scale = nan: use a non-zero number, e.g. 0.01"),
])
def test_broken_profile_names_file_point_and_fix(tmp_path: Path, point: str, message: str) -> None:
    from drivers import ProfileError

    path = tmp_path / "x.toml"
    path.write_text(f'id = "x"\nmanufacturer = "M"\nmodel = "X"\n[[points]]\n{point}\n')
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("content,message", [
    (b'id = "x"\nmanufacturer = "M"\nmodel = "X"\ndefaults = 5\n',
     'defaults = 5: use a table, e.g. [defaults] with word_order = "big"'),
    ('id = "x"\n'.encode("utf-16"), "not UTF-8 text (byte 0 is 0xff): save the profile as UTF-8 (not UTF-16)"),
])
def test_unusable_profile_file(tmp_path: Path, content: bytes, message: str) -> None:
    from drivers import ProfileError

    path = tmp_path / "x.toml"
    path.write_bytes(content)
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value) == f"{path}: {message}"


def test_broken_identification_table(tmp_path: Path) -> None:
    from drivers import ProfileError

    path = tmp_path / "x.toml"
    path.write_text('id = "x"\nmanufacturer = "M"\nmodel = "X"\n[identification]\nvendor = "M"\n'
                    '[[points]]\nname = "v"\naddress = 0\ndata_type = "u16"\nquantity = "voltage"\nunit = "V"\n')
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(error.value) == (f"{path}: [identification]: use vendor_name and product_code, both non-empty "
                                "strings, as the meter answers them to Read Device Identification (FC 43/14)")


def test_one_broken_file_does_not_hide_the_others(tmp_path: Path) -> None:
    """The daemon loads the good profiles and disables only the meters of a broken file; the commissioning
    commands (``load_profiles``) still stop at the broken file with the same message."""
    from drivers import ProfileError, load_profile_set

    shutil.copy(PROFILE_DIR / "eastron-sdm630.toml", tmp_path)
    broken = tmp_path / "custom-map.toml"
    broken.write_text('id = "custom-map"\nmanufacturer = "M"\nmodel = "X"\n[[points]]\nname = "v"\naddress = 0\n'
                      'data_type = "float"\nquantity = "voltage"\nunit = "V"\n')
    message = (f'{broken}: points[0].data_type = "float": use one of u16, i16, bcd16, u32, i32, f32, bcd32, u64, '
               "i64, f64")
    found = load_profile_set(tmp_path)
    assert (list(found.profiles), dict(found.broken)) == (["eastron-sdm630"], {"custom-map": message})
    with pytest.raises(ProfileError) as error:
        load_profiles(tmp_path)
    assert str(error.value) == message
