"""The emission metering model against hand-computed examples of the standards' formulas."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from local_store.emissions import EmissionSettings, compute
from local_store.errors import FactorError, UnitError
from local_store.factors import load_library
from local_store.units import to_canonical

LIB = load_library()
TS_2026 = np.array([1_780_000_000.0])        # 2026-05-28: no 2026 grid factor yet, the 2023 vintage applies
TS_2021 = np.array([1_625_000_000.0])        # 2021-06-29


def co2(activity: str, amount: float, ts: np.ndarray = TS_2026, **kw) -> float:
    return float(compute(activity, ts, np.array([amount]), LIB, EmissionSettings(**kw), "test").co2_t[0])


def test_purchased_electricity_location_based() -> None:
    # 1 000 MWh x 0.5306 tCO2/MWh (MEE/NBS 2023 national average, the latest published) = 530.6 t
    assert co2("electricity", 1_000.0) == pytest.approx(530.6)
    # The same MWh in 2021 uses the 2021 factor 0.5568: 556.8 t
    assert co2("electricity", 1_000.0, TS_2021) == pytest.approx(556.8)
    # The carbon-market grid factor (环办气候函〔2023〕43号): 1 000 x 0.5703 = 570.3 t
    assert co2("electricity", 1_000.0, region="national_ets") == pytest.approx(570.3)


@pytest.mark.parametrize("fuel,amount,ncv_gj_per_unit,cc_tc_per_gj,oxidation", [
    # natural gas, 10 000 Nm3: NCV 389.31 GJ/10^4 Nm3 -> 0.038931 GJ/m3; CC 15.32 tC/TJ; OF 99 %
    ("natural_gas", 10_000.0, 0.038931, 0.01532, 0.99),
    # raw coal, 100 t: NCV 20.908 GJ/t; CC 26.37 tC/TJ; OF 94 %
    ("raw_coal", 100.0, 20.908, 0.02637, 0.94),
    ("diesel", 10.0, 42.652, 0.0202, 0.98),
    ("gasoline", 10.0, 43.070, 0.0189, 0.98),
    ("lpg", 10.0, 50.179, 0.0172, 0.98),
    ("fuel_oil", 10.0, 41.816, 0.0211, 0.98),
])
def test_fuel_combustion_gbt32150(fuel: str, amount: float, ncv_gj_per_unit: float, cc_tc_per_gj: float,
                                  oxidation: float) -> None:
    res = compute(fuel, TS_2026, np.array([amount]), LIB, EmissionSettings(), "test")
    ad_gj = amount * ncv_gj_per_unit                       # AD = FC x NCV
    ef = cc_tc_per_gj * oxidation * 44 / 12                # EF = CC x OF x 44/12
    assert res.energy_gj[0] == pytest.approx(ad_gj)
    assert res.co2_t[0] == pytest.approx(ad_gj * ef)
    assert res.factor_refs[0] == f"cn.fuel.{fuel}.ncv/2015@1,cn.fuel.{fuel}.carbon_content/2015@1,cn.fuel.{fuel}.oxidation/2015@1"


def test_natural_gas_worked_example() -> None:
    # 250 000 m3: 250 000 x 0.038931 = 9 732.75 GJ; EF = 0.01532 x 0.99 x 44/12 = 0.0556116 tCO2/GJ
    # CO2 = 9 732.75 x 0.0556116 = 541.2538 t
    assert co2("natural_gas", 250_000.0) == pytest.approx(541.2538, abs=1e-3)


def test_ch4_and_n2o_with_ar5_and_ar6() -> None:
    # Raw coal 1 000 t -> 20 908 GJ = 20.908 TJ; CH4 10 kg/TJ -> 0.20908 t; N2O 1.5 kg/TJ -> 0.031362 t
    ar5 = compute("raw_coal", TS_2026, np.array([1_000.0]), LIB, EmissionSettings(include_ch4_n2o=True, gwp="AR5"), "t")
    ar6 = compute("raw_coal", TS_2026, np.array([1_000.0]), LIB, EmissionSettings(include_ch4_n2o=True, gwp="AR6"), "t")
    assert ar5.ch4_t[0] == pytest.approx(0.20908) and ar5.n2o_t[0] == pytest.approx(0.031362)
    co2_t = 20_908 * 0.02637 * 0.94 * 44 / 12
    assert ar5.co2e_t[0] == pytest.approx(co2_t + 28 * 0.20908 + 265 * 0.031362)
    assert ar6.co2e_t[0] == pytest.approx(co2_t + 29.8 * 0.20908 + 273 * 0.031362)
    without = compute("raw_coal", TS_2026, np.array([1_000.0]), LIB, EmissionSettings(), "t")
    assert without.co2e_t[0] == pytest.approx(co2_t) and without.ch4_t[0] == 0


def test_purchased_heat_and_steam_and_exports() -> None:
    # 100 GJ x 0.11 tCO2/GJ = 11 t
    assert co2("heat", 100.0) == pytest.approx(11.0)
    # Steam by mass: 10 t x (2 763 - 83.74) kJ/kg = 26.7926 GJ -> x 0.11 = 2.947186 t
    gj = to_canonical("steam", 10.0, "t")
    assert gj == pytest.approx(26.7926)
    assert co2("steam", gj) == pytest.approx(2.947186)
    # Exports are subtracted with the same factor.
    assert co2("electricity_export", 10.0) == pytest.approx(-5.306)  # 10 MWh x 0.5306 (2023 vintage, the latest published)
    assert co2("heat_export", 10.0) == pytest.approx(-1.1)


def test_unit_conversion() -> None:
    assert to_canonical("electricity", 1_500.0, "kWh") == 1.5
    assert to_canonical("heat", 1.0, "MWh") == 3.6
    assert to_canonical("diesel", 1_000.0, "L") == pytest.approx(0.84)
    assert to_canonical("natural_gas", 2.5, "10^4 Nm3") == 25_000.0
    with pytest.raises(UnitError, match=r"^unit 'kg' is not valid for natural_gas: use one of m3, Nm3"):
        to_canonical("natural_gas", 1.0, "kg")
    with pytest.raises(UnitError, match=r"^unknown activity 'biogas': use one of diesel, electricity"):
        to_canonical("biogas", 1.0, "m3")


def test_missing_factor_names_activity_region_period_and_fix() -> None:
    with pytest.raises(FactorError) as exc:
        compute("electricity", TS_2026, np.array([1.0]), LIB, EmissionSettings(region="guangdong"), "source main")
    assert str(exc.value).startswith(
        "source main: no emission factor 'ef' for electricity in region 'guangdong' valid at 2026-05-28 ")
    assert "add one to a custom file in config/factors/" in str(exc.value)
    # Before 2021 the shipped library has no grid factor at all.
    with pytest.raises(FactorError, match="valid at 2019-"):
        compute("electricity", np.array([1_560_000_000.0]), np.array([1.0]), LIB, EmissionSettings(), "x")


def test_custom_factor_file_overrides_by_priority(tmp_path: Path) -> None:
    custom = tmp_path / "site.toml"
    custom.write_text("""
[library]
name = "site"
version = 1
priority = 100

[[factors]]
id = "site.grid.east"
activity = "electricity"
parameter = "ef"
value = 0.5
unit = "tCO2/MWh"
region = "national"
year = 2024
valid_from = 2024-01-01
source = "test"
""")
    lib = load_library([*sorted(Path("config/factors").glob("*.toml")), custom])
    res = compute("electricity", TS_2026, np.array([2.0]), lib, EmissionSettings(), "x")
    assert res.co2_t[0] == 1.0 and res.factor_refs == ["site.grid.east/2024@1"]
    # Before its validity the shipped factor still applies.
    assert compute("electricity", TS_2021, np.array([1.0]), lib, EmissionSettings(), "x").co2_t[0] == 0.5568


@pytest.mark.parametrize("entry,message", [
    ('unit = "tCO2/GJ"', "site.toml: factors[0] (x): unit = 'tCO2/GJ': for ef of electricity use one of tCO2/MWh, kgCO2/kWh"),
    ('activity = "biogas"', "site.toml: factors[0] (x): activity = 'biogas': use one of diesel, electricity,"),
    ('value = -1', "site.toml: factors[0] (x): value = -1: use a number >= 0"),
    ('valid_to = 2020-01-01', "site.toml: factors[0] (x): valid_to 2020-01-01 is not after valid_from 2024-01-01: fix the period"),
    ('colour = "red"', "site.toml: factors[0] (x): unknown key 'colour'"),
])
def test_factor_file_errors(tmp_path: Path, entry: str, message: str) -> None:
    base = {"id": '"x"', "activity": '"electricity"', "parameter": '"ef"', "value": "0.5", "unit": '"tCO2/MWh"',
            "region": '"national"', "year": "2024", "valid_from": "2024-01-01", "source": '"t"'}
    key = entry.split(" = ")[0]
    base[key] = entry.split(" = ", 1)[1]
    path = tmp_path / "site.toml"
    path.write_text("[[factors]]\n" + "\n".join(f"{k} = {v}" for k, v in base.items()) + "\n")
    with pytest.raises(FactorError) as exc:
        load_library([path])
    assert str(exc.value).startswith(message)


def test_validity_dates_are_china_standard_time() -> None:
    f = LIB.select("electricity", "ef", "national", time.mktime((2022, 6, 1, 0, 0, 0, 0, 0, 0)))
    assert f is not None and f.valid_from == date(2022, 1, 1)
    # 2021-12-31T16:00Z is 2022-01-01 00:00 in Beijing: the 2022 factor applies.
    assert LIB.select("electricity", "ef", "national", 1_640_966_400.0).year == 2022
    assert LIB.select("electricity", "ef", "national", 1_640_966_399.0).year == 2021
