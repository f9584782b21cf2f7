"""Issue 14 part 2: factor vintages as first-class data (2023 factors, validity, vintage rule, flags, CLI)."""

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


def bill(tmp_path: Path, year: int, mwh: float = 100.0) -> Path:
    path = tmp_path / f"bill-{year}.csv"
    path.write_text("source,activity,start,end,amount,unit\n"
                    f"office,electricity,{year}-03-01,{year}-04-01,{mwh},MWh\n", encoding="utf-8")
    return path


def march(store, year: int) -> dict:
    return build_report(store, date(year, 3, 1), date(year, 4, 1), tz=CST)


def test_each_year_gets_its_vintage_and_a_later_year_is_flagged(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        for year in (2021, 2022, 2023, 2026):
            import_csv(store, bill(tmp_path, year), tz=CST)
        # 100 MWh each: 2021 x 0.5568 = 55.68 t; 2022 x 0.5366 = 53.66 t (end-dated: not used after 2022);
        # 2023 x 0.5306 = 53.06 t; 2026: no 2026 factor, the latest published (2023) -> 53.06 t, flagged.
        expected = {2021: (55.68, "cn.grid.national/2021@1"), 2022: (53.66, "cn.grid.national/2022@1"),
                    2023: (53.06, "cn.grid.national/2023@1"), 2026: (53.06, "cn.grid.national/2023@1")}
        for year, (tco2e, ref) in expected.items():
            r = march(store, year)
            assert r["total_tco2e"] == pytest.approx(tco2e, abs=1e-6)
            # The report's factor list is exactly the factor applied (a 2022 report does not list 0.5568).
            assert [f["ref"] for f in r["factors"]] == [ref]
            assert r["vintage_rule"] == "latest_published"
            assert [(f["factor"], f["vintage"]) for f in r["vintage_flags"]] == ([(ref, 2023)] if year == 2026 else [])
        flag = march(store, 2026)["vintage_flags"][0]
        assert flag["note"].startswith("cn.grid.national/2023@1 (0.5306 tCO2/MWh, vintage 2023, valid 2023) was "
                                       "applied to activity up to 2026, which it does not cover")
        assert "Provisional factor vintages" in render_html(march(store, 2026))
        assert "Provisional factor vintages" not in render_html(march(store, 2023))


def test_the_2023_residual_mix_and_the_ets_factor_end(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db", EmissionSettings(method="market")) as store:
        import_csv(store, bill(tmp_path, 2023), tz=CST)
        r = march(store, 2023)
        # No instruments: all 100 MWh at the 2023 residual mix 0.6096 = 60.96 t.
        assert r["market_based_tco2e"] == pytest.approx(60.96, abs=1e-6)
        assert r["market_based"]["residual_mix_factor"]["ref"] == "cn.grid.national.residual/2023@1"
    with open_store(tmp_path / "ets.db", EmissionSettings(region="national_ets")) as store:
        for year in (2025, 2026):
            import_csv(store, bill(tmp_path, year), tz=CST)
        # 0.5703 is set for the 2023-2025 compliance reports: 100 MWh x 0.5703 = 57.03 t, unflagged in 2025,
        # still the only ETS value in 2026 (latest published) but flagged there.
        assert march(store, 2025)["total_tco2e"] == pytest.approx(57.03, abs=1e-6)
        assert march(store, 2025)["vintage_flags"] == []
        assert [f["valid"] for f in march(store, 2026)["vintage_flags"]] == ["2023-2025"]


def test_the_same_year_rule_refuses_a_year_without_its_factor(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db", EmissionSettings(vintage_rule="same_year")) as store:
        import_csv(store, bill(tmp_path, 2023), tz=CST)
        assert march(store, 2023)["total_tco2e"] == pytest.approx(53.06, abs=1e-6)
        with pytest.raises(DataImportError) as exc:
            import_csv(store, bill(tmp_path, 2026), tz=CST)
        assert "no emission factor 'ef' for electricity in region 'national' valid at 2026-02-28 16:00 UTC" in str(exc.value)


def test_adding_the_year_factor_recalculates_and_keeps_the_old_rows(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "state"
    with open_store(data / "gateway.db") as store:
        import_csv(store, bill(tmp_path, 2026), tz=CST)
    res = runner.invoke(main, ["factors", "add", "--id", "cn.grid.national", "--activity", "electricity",
                               "--value", "0.52", "--unit", "tCO2/MWh", "--year", "2026", "--valid-from", "2026-01-01",
                               "--valid-to", "2027-01-01", "--source", "test value for the 2026 vintage",
                               "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    custom = data / "factors" / "custom.toml"
    assert res.output.startswith(f"added cn.grid.national/2026@1 (0.52 tCO2/MWh, valid 2026) to {custom}")
    with open_store(data / "gateway.db", EmissionSettings(factor_files=(str(custom),))) as store:
        store.process()
        r = march(store, 2026)
        # 100 MWh x 0.52 = 52 t with the 2026 vintage, no flag; the 53.06 t rows are kept as superseded.
        assert r["total_tco2e"] == pytest.approx(52.0, abs=1e-6)
        assert r["vintage_flags"] == []
        old = store.db.execute("SELECT ROUND(SUM(co2e_t), 6) FROM emissions WHERE superseded_at IS NOT NULL").fetchone()[0]
        assert old == pytest.approx(53.06)
        actions = [a for (a,) in store.db.execute("SELECT action FROM audit_log ORDER BY id")]
        assert "factors.add" in actions
    listed = runner.invoke(main, ["factors", "list", "--year", "2026", "--region", "national", "--activity",
                                  "electricity", "--format", "json", "--data-dir", str(data)])
    assert listed.exit_code == 0, listed.output
    # For 2026 the added ef covers the year (no note); the residual mix is still the 2023 one, noted.
    chosen = [(f["ref"], f["note"] is not None) for f in json.loads(listed.output)]
    assert chosen == [("cn.grid.national/2026@1", False), ("cn.grid.national.residual/2023@1", True)]
    shown = runner.invoke(main, ["factors", "show", "cn.grid.national", "--data-dir", str(data)])
    assert [line for line in shown.output.splitlines() if line.startswith("cn.")] == [
        "cn.grid.national/2021@1", "cn.grid.national/2022@1", "cn.grid.national/2023@1", "cn.grid.national/2026@1"]
    bad = runner.invoke(main, ["factors", "add", "--id", "cn.grid.national", "--activity", "electricity",
                               "--value", "0.53", "--unit", "tCO2/MWh", "--year", "2026", "--valid-from", "2026-06-01",
                               "--source", "a second 2026 value", "--data-dir", str(data)])
    assert bad.exit_code == 1
    assert "factor cn.grid.national/2026@1 (id 'cn.grid.national', data year 2026, version 1) is also defined in" in bad.output
