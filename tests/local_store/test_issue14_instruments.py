"""Issue 14 part 3: contractual instruments by CSV and CLI, listed with the residual mix in reports."""

from __future__ import annotations

import json
from datetime import date, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from local_store import DataImportError, EmissionSettings, open_store
from local_store.importer import import_csv
from local_store.reports import build_report, render_html

CST = timezone(timedelta(hours=8))
HEADER = "instrument,kind,start,end,amount,unit,emission_factor\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_certificate_csv_lowers_the_market_based_figure_exactly(tmp_path: Path) -> None:
    usage = write(tmp_path, "usage.csv", "source,activity,start,end,amount,unit\n"
                  "plant,electricity,2023-01-01,2024-01-01,1000,MWh\n")
    certs = write(tmp_path, "certs.csv", HEADER
                  + "GEC-2023-0001,certificate,2023-01-01,2024-01-01,300000,kWh,0\n"
                  + "PPA-WIND-7,ppa,2023-07-01,2024-01-01,200,MWh,0\n"
                  + "GP-2023-15,green_power,2023-01-01,2023-07-01,100,MWh,0.05\n")
    with open_store(tmp_path / "gateway.db", EmissionSettings(method="market")) as store:
        import_csv(store, usage, tz=CST)
        before = build_report(store, date(2023, 1, 1), date(2024, 1, 1), tz=CST)
        # Without instruments: 1000 MWh x residual mix 0.6096 = 609.6 t; location-based 1000 x 0.5306 = 530.6 t.
        assert before["market_based_tco2e"] == pytest.approx(609.6, abs=1e-6)
        assert before["location_based_tco2e"] == pytest.approx(530.6, abs=1e-6)
        result = import_csv(store, certs, tz=CST)
        assert (result.kind, result.rows) == ("instruments", 3)
        after = build_report(store, date(2023, 1, 1), date(2024, 1, 1), tz=CST)
        # Covered: 300 + 200 + 100 = 600 MWh; instruments 300 x 0 + 200 x 0 + 100 x 0.05 = 5 t;
        # residual (1000 - 600) = 400 MWh x 0.6096 = 243.84 t; market-based 248.84 t (609.6 - 360.76).
        assert after["market_based_tco2e"] == pytest.approx(248.84, abs=1e-6)
        assert after["total_tco2e"] == pytest.approx(248.84, abs=1e-6)
        assert after["location_based_tco2e"] == pytest.approx(530.6, abs=1e-6)   # location-based unchanged
        mb = after["market_based"]
        assert (mb["covered_by_instruments_mwh"], mb["residual_mwh"], mb["residual_tco2e"]) == (600.0, 400.0, 243.84)
        assert [(i["reference"], i["kind"], i["start"], i["end"], i["mwh_in_period"], i["tco2e_in_period"])
                for i in mb["instruments"]] == [
            ("GEC-2023-0001", "certificate", "2023-01-01", "2024-01-01", 300.0, 0.0),
            ("GP-2023-15", "green_power", "2023-01-01", "2023-07-01", 100.0, 5.0),
            ("PPA-WIND-7", "ppa", "2023-07-01", "2024-01-01", 200.0, 0.0)]
        assert mb["residual_mix_factor"]["ref"] == "cn.grid.national.residual/2023@1"
        html = render_html(after)
        assert "GEC-2023-0001" in html and "Residual mix: 400.0 MWh × 0.6096 tCO2/MWh" in html
        # The first half-year only: 1000 x 181/365 = 495.890411 MWh; instruments in it: 300 x 181/365 = 148.767123
        # + 100 (all of GP-2023-15) = 248.767123 MWh, 5 t; residual 247.123288 MWh x 0.6096 = 150.646356 t.
        h1 = build_report(store, date(2023, 1, 1), date(2023, 7, 1), tz=CST)
        assert h1["market_based_tco2e"] == pytest.approx(5 + (1000 - 300) * 181 / 365 * 0.6096 - 100 * 0.6096, abs=1e-5)
        again = import_csv(store, certs, tz=CST)
        assert (again.rows, again.already_stored) == (0, 3)


def test_bad_instrument_rows_are_refused_with_line_and_fix(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", HEADER
                + ",certificate,2023-01-01,2024-01-01,10,MWh,0\n"
                + "X-1,rec,2023-01-01,2024-01-01,10,GWh,0\n"
                + "X-2,ppa,2023-01-01,2024-01-01,1e308,MWh,3\n"
                + "X-3,ppa,2023-01-01,2024-01-01,10,MWh,0\n"
                + "X-3,ppa,2023-01-01,2024-01-01,12,MWh,0\n")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, bad, tz=CST)
        assert exc.value.errors == [
            "line 2 (no source, 2023-01-01..2024-01-01): instrument is empty: give the certificate or contract number, "
            "e.g. GEC-2025-000123",
            "line 3 (X-1, 2023-01-01..2024-01-01): kind = 'rec': use one of certificate, green_power, ppa",
            "line 3 (X-1, 2023-01-01..2024-01-01): unit = 'GWh': use MWh or kWh",
            "line 4 (X-2, 2023-01-01..2024-01-01): amount = '1e308' MWh is more than 2000 MWh per hour over the "
            "period, more than any site consumes: check the amount and the unit",
            "line 4 (X-2, 2023-01-01..2024-01-01): emission_factor = '3': use tCO2/MWh from 0 (renewable) to 2",
            "line 6 (X-3, 2023-01-01..2024-01-01): instrument X-3 is also on line 5 with other data: an instrument "
            "is claimed once; remove the wrong row"]
        assert store.db.execute("SELECT COUNT(*) FROM instruments").fetchone()[0] == 0


def test_instruments_cli_add_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    res = runner.invoke(main, ["instruments", "add", "--instrument", "GEC-9", "--kind", "certificate", "--start",
                               "2023-01-01", "--end", "2024-01-01", "--amount", "50", *data])
    assert (res.exit_code, res.output) == (0, "instrument GEC-9 added\n")
    res = runner.invoke(main, ["instruments", "add", "--instrument", "GEC-9", "--kind", "certificate", "--start",
                               "2023-01-01", "--end", "2024-01-01", "--amount", "60", *data])
    assert res.exit_code == 1
    assert "instrument GEC-9 is already stored with other data (certificate, 50 MWh)" in res.output
    listed = runner.invoke(main, ["instruments", "list", "--format", "json", *data])
    assert [(r["instrument"], r["mwh"], r["emission_factor_t_per_mwh"]) for r in json.loads(listed.output)] == [
        ("GEC-9", 50.0, 0.0)]
    with open_store(tmp_path / "gateway.db") as store:
        assert [a for (a,) in store.db.execute("SELECT action FROM audit_log")] == ["instruments.add"]
