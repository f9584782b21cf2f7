"""Issue 14 part 7: process emissions, refrigerant leakage (AR5/AR6) and custom activities in factor files."""

from __future__ import annotations

from datetime import date, timedelta, timezone
from pathlib import Path

import pytest

from local_store import DataImportError, EmissionSettings, FactorError, open_store
from local_store.factors import default_factor_files, load_library
from local_store.importer import import_csv
from local_store.reports import build_report

CST = timezone(timedelta(hours=8))


def activity_csv(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "site.csv"
    path.write_text("source,activity,start,end,amount,unit\n" + rows, encoding="utf-8")
    return path


@pytest.mark.parametrize("gwp,expected", [
    # 100 t CaCO3 x 0.43971 = 43.971 t; 12 kg R-410A x 2256 (AR6) = 27.072 t, x 1923.5 (AR5) = 23.082 t;
    # 5 kg R-134a x 1530 (AR6) = 7.65 t, x 1300 (AR5) = 6.5 t.
    ("AR6", 43.971 + 27.072 + 7.65),
    ("AR5", 43.971 + 23.082 + 6.5),
])
def test_process_and_refrigerant_emissions(tmp_path: Path, gwp: str, expected: float) -> None:
    path = activity_csv(tmp_path, "kiln,limestone_calcination,2023-01-01,2024-01-01,100,t\n"
                                  "chiller,refrigerant_r410a,2023-01-01,2024-01-01,12,kg\n"
                                  "cold-store,refrigerant_r134a,2023-01-01,2024-01-01,5,kg\n")
    with open_store(tmp_path / "gateway.db", EmissionSettings(gwp=gwp)) as store:  # type: ignore[arg-type]
        import_csv(store, path, tz=CST)
        r = build_report(store, date(2023, 1, 1), date(2024, 1, 1), tz=CST)
    assert r["total_tco2e"] == pytest.approx(expected, abs=1e-5)
    assert r["by_scope"]["scope_1"] == pytest.approx(expected, abs=1e-5)
    assert {f["id"] for f in r["factors"]} == {"stoich.calcite", f"ipcc.{gwp.lower()}.r410a", f"ipcc.{gwp.lower()}.r134a"}


def test_a_factor_file_declares_a_custom_fuel(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("""
[library]
name = "site"
version = 1
priority = 100

[[activities]]
name = "site_anthracite"
kind = "fuel"
unit = "t"

[defaults]
activity = "site_anthracite"
region = "national"
year = 2023
valid_from = 2023-01-01
source = "the site's own laboratory analysis, 2023 (test values)"

[[factors]]
id = "site.anthracite.ncv"
parameter = "ncv"
value = 26.7
unit = "GJ/t"

[[factors]]
id = "site.anthracite.cc"
parameter = "carbon_content"
value = 27.4
unit = "tC/TJ"

[[factors]]
id = "site.anthracite.of"
parameter = "oxidation"
value = 94
unit = "%"
""", encoding="utf-8")
    path = activity_csv(tmp_path, "boiler,site_anthracite,2023-01-01,2024-01-01,10,t\n")
    with open_store(tmp_path / "gateway.db", EmissionSettings(factor_files=(str(site),))) as store:
        import_csv(store, path, tz=CST)
        r = build_report(store, date(2023, 1, 1), date(2024, 1, 1), tz=CST)
    # 10 t x 26.7 GJ/t = 267 GJ; EF = 0.0274 tC/GJ x 0.94 x 44/12 = 0.0944413 tCO2/GJ; 267 x 0.0944413 = 25.21584 t.
    assert r["total_tco2e"] == pytest.approx(267 * 0.0274 * 0.94 * 44 / 12, abs=1e-5)
    assert r["by_source"][0]["energy_gj"] == pytest.approx(267.0)


def test_bad_activity_declarations_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[activities]]\nname = "electricity"\nkind = "process"\nunit = "t"\n', encoding="utf-8")
    with pytest.raises(FactorError) as exc:
        load_library(default_factor_files() + [bad])
    assert str(exc.value) == ("bad.toml: activities[0] (electricity): activity 'electricity' is already defined "
                              "(built in) as electricity in MWh: use another name")
    bad.write_text('[[activities]]\nname = "slag"\nkind = "waste"\n', encoding="utf-8")
    with pytest.raises(FactorError, match=r"activities\[0\] \(slag\): kind = 'waste': use one of fuel, process, refrigerant"):
        load_library(default_factor_files() + [bad])
    path = activity_csv(tmp_path, "kiln,unknown_process,2023-01-01,2024-01-01,1,t\n")
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as err:
        import_csv(store, path, tz=CST)
    assert "activity = 'unknown_process': use one of" in err.value.errors[0]
