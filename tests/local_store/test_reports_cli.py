"""Reports (market-based, proration, errors) and the `report` / `import` commands via CliRunner."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.model import Quantity, Reading
from gateway.cli import main
from local_store import ReportError, SourceSettings, open_store
from local_store.db import Instrument, add_instruments
from local_store.reports import build_report, local_tz


def local_midnight(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=local_tz()).timestamp()


def seed(path: Path, day: date = date(2026, 3, 10)) -> None:
    """One electricity meter: 1 MWh per hour for 24 hours of the day, read every 15 minutes."""
    t0 = local_midnight(day)
    with open_store(path) as store:
        store.configure_sources([SourceSettings("main", "electricity")])
        store.insert_readings([Reading("main", "energy_import", t0 + 900 * k, 250.0 * k, "kWh", Quantity.ENERGY_IMPORT)
                               for k in range(97)])
        store.process()


def test_market_based_with_certificates_and_residual_mix(tmp_path: Path) -> None:
    seed(tmp_path / "gateway.db")
    with open_store(tmp_path / "gateway.db") as store:
        # 10 MWh of green certificates for that day (factor 0), the rest at the residual mix 0.6096 (2023, the latest published).
        add_instruments(store, [Instrument("certificate", date(2026, 3, 10), date(2026, 3, 11), 10.0, 0.0, "GEC-1")],
                        tz=local_tz())
        r = build_report(store, date(2026, 3, 10), date(2026, 3, 11), by="scope")
        assert r["location_based_tco2e"] == pytest.approx(24 * 0.5306)
        assert r["market_based_tco2e"] == pytest.approx(10 * 0.0 + 14 * 0.6096)
        assert r["market_based"]["covered_by_instruments_mwh"] == pytest.approx(10.0)
        assert r["total_tco2e"] == r["location_based_tco2e"]
        m = build_report(store, date(2026, 3, 10), date(2026, 3, 11), method="market")
        assert m["total_tco2e"] == pytest.approx(14 * 0.6096)
        assert r["breakdown"] == [{"key": "scope_1", "tco2e": 0.0}, {"key": "scope_2", "tco2e": pytest.approx(24 * 0.5306)}]
        # A PPA of 6 MWh from a gas plant (0.35 tCO2/MWh, its own factor) covers part of the rest.
        add_instruments(store, [Instrument("ppa", date(2026, 3, 10), date(2026, 3, 11), 6.0, 0.35, "PPA-7")],
                        tz=local_tz())
        m = build_report(store, date(2026, 3, 10), date(2026, 3, 11), method="market")
        assert m["total_tco2e"] == pytest.approx(10 * 0.0 + 6 * 0.35 + 8 * 0.6096)
        assert m["market_based"]["covered_by_instruments_mwh"] == pytest.approx(16.0)
        assert m["location_based_tco2e"] == pytest.approx(24 * 0.5306)


def test_report_errors_name_the_period_and_the_fix(tmp_path: Path) -> None:
    seed(tmp_path / "gateway.db")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(ReportError) as exc:
            build_report(store, date(2025, 1, 1), date(2025, 2, 1))
        assert str(exc.value) == (f"no emissions data from 2025-01-01 to 2025-02-01 (end exclusive) in "
                                  f"{tmp_path / 'gateway.db'}: the store holds emissions from 2026-03-10 to 2026-03-11: "
                                  f"choose --from/--to inside that range")
        with pytest.raises(ReportError, match=r"^period 2026-03-11\.\.2026-03-10 is empty: --to must be after --from"):
            build_report(store, date(2026, 3, 11), date(2026, 3, 10))


def test_cli_report_json_csv_html(tmp_path: Path) -> None:
    seed(tmp_path / "gateway.db")
    runner = CliRunner()
    args = ["report", "--from", "2026-03-10", "--to", "2026-03-11", "--data-dir", str(tmp_path)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["total_tco2e"] == pytest.approx(24 * 0.5306)
    assert data["by_source"][0] | {"tco2e": 0} == {
        "source": "main", "activity": "electricity", "consumption": 24.0, "unit": "MWh", "energy_gj": 86.4,
        "co2_t": pytest.approx(24 * 0.5306), "ch4_t": 0.0, "n2o_t": 0.0, "tco2e": 0, "scope": 2, "iso_category": 2,
        "share_measured": 1.0, "factor_refs": ["cn.grid.national/2023@1"]}
    assert [f["id"] for f in data["factors"]] == ["cn.grid.national"]
    assert data["data_quality"]["readings"]["measured"] == 96    # the 97th reading is the next day's midnight

    res = runner.invoke(main, args + ["--format", "csv", "--by", "day"])
    assert res.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert [r["key"] for r in rows][:2] == ["2026-03-10", "TOTAL"]
    assert rows[2]["key"] == "GB/T 32150: direct emissions"      # then both conventions, labelled
    assert float(rows[0]["scope_2"]) == pytest.approx(24 * 0.5306)

    out = tmp_path / "report.html"
    res = runner.invoke(main, args + ["--format", "html", "-o", str(out)])
    assert res.exit_code == 0
    page = out.read_text()
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "cn.grid.national" in page and "@media print" in page


def test_cli_report_accepts_yesterday_today_and_tomorrow(tmp_path: Path) -> None:
    yesterday = date.today() - timedelta(days=1)       # a whole day of readings, none of them in the future
    seed(tmp_path / "gateway.db", day=yesterday)
    runner = CliRunner()
    words = runner.invoke(main, ["report", "--from", "yesterday", "--to", "today", "--data-dir", str(tmp_path)])
    dates = runner.invoke(main, ["report", "--from", yesterday.isoformat(), "--to", date.today().isoformat(),
                                 "--data-dir", str(tmp_path)])
    assert words.exit_code == dates.exit_code == 0, words.output
    assert json.loads(words.output)["period"] == json.loads(dates.output)["period"]
    assert json.loads(words.output)["total_tco2e"] == pytest.approx(24 * 0.5306)
    today = runner.invoke(main, ["report", "--from", "today", "--to", "tomorrow", "--data-dir", str(tmp_path)])
    assert today.exit_code == 1 and today.output.startswith(
        f"Error: no emissions data from {date.today()} to {date.today() + timedelta(days=1)} (end exclusive)")
    bad = runner.invoke(main, ["report", "--from", "2026-13-01", "--to", "tomorrow", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2
    assert ("Invalid value for '--from': '2026-13-01': use a date like 2026-01-01, or yesterday, today, tomorrow"
            in bad.output)


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["report", "--from", "2026-03-10", "--to", "2026-03-11", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output == (f"Error: {tmp_path / 'gateway.db'}: no gateway database here: run `carbon-gateway run` "
                          f"first, or pass --data-dir DIR pointing at the gateway's state directory\n")
    seed(tmp_path / "gateway.db")
    res = runner.invoke(main, ["report", "--from", "2020-01-01", "--to", "2020-02-01", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith("Error: no emissions data from 2020-01-01 to 2020-02-01")
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args,message", [
    (["--from", "0001-01-01", "--to", "9999-12-31"],
     "period 0001-01-01..9999-12-31: use dates from 1970-01-02 to 9998-12-31"),
    (["--from", "2026-03-10", "--to", "2026-03-11", "-o", "{tmp}/missing/r.json"],
     "{tmp}/missing/r.json: cannot write the report (No such file or directory): check that the directory exists "
     "and has space, or leave out --output"),
])
def test_cli_report_bad_period_and_output(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad-input sweep: these were OverflowError and FileNotFoundError tracebacks."""
    seed(tmp_path / "gateway.db")
    res = CliRunner().invoke(main, ["report", *[a.format(tmp=tmp_path) for a in args], "--data-dir", str(tmp_path)])
    assert (res.exit_code, res.output) == (1, f"Error: {message.format(tmp=tmp_path)}\n")


def test_cli_import(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("source,activity,start,end,amount,unit\nboiler,natural_gas,2026-01-01,2026-02-01,1000,m3\n")
    bad = tmp_path / "b.csv"
    bad.write_text("source,activity,start,end,amount,unit\nboiler,coal,2026-01-01,2026-02-01,1,t\n")
    runner = CliRunner()
    res = runner.invoke(main, ["import", str(good), "--data-dir", str(tmp_path / "state")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{good}: imported 1 activity rows for boiler; 31 emission rows, 2.16502 tCO2e")
    res = runner.invoke(main, ["import", str(bad), "--data-dir", str(tmp_path / "state")])
    assert res.exit_code == 1
    assert res.output == (f"Error: {bad}: import rejected, nothing was written:\nline 2 (boiler, 2026-01-01..2026-02-01): activity = 'coal': use one of "
                          f"diesel, electricity, electricity_export, fuel_oil, gasoline, heat, heat_export, lpg, "
                          f"natural_gas, raw_coal, steam\n")
    res = runner.invoke(main, ["report", "--from", "2026-01-01", "--to", "2026-02-01", "--data-dir", str(tmp_path / "state")])
    assert json.loads(res.output)["total_tco2e"] == pytest.approx(1000 * 0.038931 * 0.01532 * 0.99 * 44 / 12, abs=1e-6)


def test_consumption_per_15_minutes_hour_and_day(tmp_path: Path) -> None:
    from local_store.reports import consumption

    seed(tmp_path / "gateway.db")               # 0.25 MWh per 15 minutes for 24 h
    t0 = local_midnight(date(2026, 3, 10))
    with open_store(tmp_path / "gateway.db") as store:
        quarter = consumption(store, "main", t0, t0 + 3600, "15min")
        assert [q["amount"] for q in quarter] == [pytest.approx(0.25)] * 4 and quarter[0]["unit"] == "MWh"
        hours = consumption(store, "main", t0, t0 + 86_400, "hour")
        assert len(hours) == 24 and all(h["amount"] == pytest.approx(1.0) for h in hours)
        days = consumption(store, "main", t0, t0 + 86_400, "day")
        assert days == [{"start": "2026-03-10", "amount": pytest.approx(24.0), "unit": "MWh"}]
        months = consumption(store, "main", t0 - 9 * 86_400, t0 + 22 * 86_400, "month")
        assert months == [{"start": "2026-03", "amount": pytest.approx(24.0), "unit": "MWh"}]
