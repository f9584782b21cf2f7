"""CT/PT ratios (issue 13): a profile marks secondary-side points, `read --ct/--pt` shows primary values.

The meter here is the independent libmodbus slave (tests/independent_slave) serving a DTSU666's registers as
words written down by hand, so the figures do not come from the project's own encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import Ratios, load_profiles, parse_ratio
from gateway.cli import main
from tests.independent_slave import IndependentSlave

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
DTSU666 = PROFILES["chint-dtsu666"]


@pytest.mark.parametrize("text,ratio", [("100/5", 20.0), ("10000/100", 100.0), ("20", 20.0), (20, 20.0),
                                        (1, 1.0), (" 75/5 ", 15.0), ("400/1", 400.0), (2.5, 2.5)])
def test_parse_ratio(text: object, ratio: float) -> None:
    assert parse_ratio(text) == ratio


@pytest.mark.parametrize("text", ["100:5", "5/0", "0", -20, "abc", "", True, "nan", "1/inf", [100, 5]])
def test_a_bad_ratio_names_the_fix(text: object) -> None:
    with pytest.raises(ValueError) as error:
        parse_ratio(text, "ct_ratio")
    assert str(error.value) == ('write the ratio as primary/secondary, e.g. "100/5", or as a number; '
                                "1 for a direct connection")


def test_which_ratio_each_side_takes() -> None:
    ratios = Ratios(ct=20.0, pt=100.0)
    assert [ratios.factor(s) for s in ("none", "current", "voltage", "both")] == [1.0, 20.0, 100.0, 2000.0]
    # The shipped DTSU666 profile: voltages secondary for PT, currents for CT, power and energy for both.
    sides = {p.name: p.secondary for p in DTSU666.points}
    assert sides["voltage_l1"] == "voltage" and sides["current_l1"] == "current"
    assert sides["active_power"] == sides["energy_import"] == sides["energy_export"] == "both"
    assert sides["frequency"] == sides["power_factor"] == "none"
    assert DTSU666.secondary_side == {"current", "voltage"}


def _dtsu666_words(energy_words: tuple[int, int]) -> dict[tuple[str, int], int]:
    """A DTSU666's registers on the secondary side, by hand (IEEE 754 big-endian, high word first):
    Ua 0x450F C000 = 2300.0 (0.1 V units -> 230.0 V): 2300 = 1.123046875 x 2^11, exponent 127+11 = 138 = 0x8A,
    fraction 0.123046875 x 2^23 = 0x0FC000 -> 0x450FC000.
    Ia 0x44BB 8000 = 1500.0 (mA -> 1.5 A): 1500 = 1.46484375 x 2^10 -> 0x44BB8000.
    ImpEp 0x3FC0 0000 = 1.5 kWh: 1.5 = 1.5 x 2^0, exponent 127 = 0x7F, fraction 0.5 -> 0x3FC00000."""
    words: dict[tuple[str, int], int] = {}
    for point in DTSU666.points:
        assert (point.data_type, point.word_order, point.table) == ("f32", "big", "holding"), point
        if point.quantity.value == "voltage":
            pair = (0x450F, 0xC000)
        elif point.quantity.value == "current":
            pair = (0x44BB, 0x8000)
        elif point.quantity.value in ("energy_import", "energy_export"):
            pair = energy_words
        else:
            pair = (0, 0)
        words[("holding", point.address)], words[("holding", point.address + 1)] = pair
    return words


def test_read_ct_json_prints_primary_values(libmodbus_slave: Path, tmp_path: Path) -> None:
    """Issue 13, done when: `read --ct 100/5 --json` against a DTSU666 stand-in prints primary values."""
    with IndependentSlave(libmodbus_slave, _dtsu666_words((0x3FC0, 0x0000)), workdir=tmp_path, unit=1) as slave:
        base = ["read", "--tcp", f"127.0.0.1:{slave.port}", "--unit", "1", "--profile", "chint-dtsu666", "--json"]
        runner = CliRunner()
        plain = runner.invoke(main, base)
        with_ct = runner.invoke(main, [*base, "--ct", "100/5"])
        with_both = runner.invoke(main, [*base, "--ct", "100/5", "--pt", "10000/100"])
    for result in (plain, with_ct, with_both):
        assert result.exit_code == 0, result.output
    plain_values = {r["point"]: r["value"] for r in json.loads(plain.stdout)}
    ct_values = {r["point"]: r for r in json.loads(with_ct.stdout)}
    both = {r["point"]: r["value"] for r in json.loads(with_both.stdout)}
    # Without --ct/--pt the technician is told the values are secondary-side; with them, not.
    assert plain.stderr == ("note: chint-dtsu666 reports secondary-side values, shown as read; give --ct (and --pt) "
                            "as on the transformers' rating plate for primary values\n")
    assert with_ct.stderr == with_both.stderr == ""
    assert plain_values["energy_import"] == 1.5 and plain_values["current_l1"] == 1.5
    # CT 100/5 = 20: energy 1.5 kWh x 20 = 30 kWh, current 1.5 A x 20 = 30 A, voltage unchanged (no PT).
    assert ct_values["energy_import"]["value"] == pytest.approx(30.0)
    assert ct_values["energy_import"]["raw"] == ["3fc0", "0000"]      # the registers stay as the meter sent them
    assert ct_values["current_l1"]["value"] == pytest.approx(30.0)
    assert ct_values["voltage_l1"]["value"] == pytest.approx(230.0)
    # CT 20 x PT 10000/100 = 100: energy 1.5 x 2000 = 3000 kWh, voltage 230 x 100 = 23000 V, current 30 A.
    assert both["energy_import"] == pytest.approx(3000.0) and both["voltage_l1"] == pytest.approx(23000.0)
    assert both["current_l1"] == pytest.approx(30.0)


def test_read_exits_non_zero_when_every_energy_point_is_invalid(libmodbus_slave: Path, tmp_path: Path) -> None:
    # 0x7FC0 0x0000 is a quiet NaN: the meter says "no value" for both energies.
    with IndependentSlave(libmodbus_slave, _dtsu666_words((0x7FC0, 0x0000)), workdir=tmp_path, unit=1) as slave:
        result = CliRunner().invoke(main, ["read", "--tcp", f"127.0.0.1:{slave.port}", "--unit", "1",
                                           "--profile", "chint-dtsu666"])
    assert result.exit_code == 1, result.output
    assert "voltage_l1" in result.output and "230.0000 V" in result.output   # the values are still shown
    imp, exp = DTSU666.point("energy_import").address, DTSU666.point("energy_export").address
    assert (f"Error: unit 1: every energy point is invalid (energy_import: device 1 register {imp}: meter sent a "
            f"non-finite float (nan); energy_export: device 1 register {exp}: meter sent a non-finite float (nan)): "
            "check the profile (`scan`) and the raw registers (`read --raw`)") in result.output


def test_bad_ct_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["read", "--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "chint-dtsu666",
                                       "--ct", "100:5"])
    assert result.exit_code == 2
    assert "'100:5': write the ratio as primary/secondary, e.g. \"100/5\"" in result.output
