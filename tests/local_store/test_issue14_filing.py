"""Issue 14 part 9: a report that can be filed (particulars, per-source factor and vintage, instruments,
completeness, uncertainty, CO2/CH4/N2O, zh-CN and English, A4)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main


def test_a_fileable_report_in_chinese_and_english(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    usage = tmp_path / "usage.csv"
    usage.write_text("source,activity,start,end,amount,unit\n"
                     "grid,electricity,2023-01-01,2024-01-01,1000,MWh\n"
                     "boiler,natural_gas,2023-01-01,2024-01-01,100000,m3\n", encoding="utf-8")
    certs = tmp_path / "certs.csv"
    certs.write_text("instrument,kind,start,end,amount,unit,emission_factor\n"
                     "GEC-1,certificate,2023-01-01,2024-01-01,300,MWh,0\n", encoding="utf-8")
    profile = tmp_path / "profile.toml"
    profile.write_text('organisation = "示例制造有限公司"\nsite = "Plant 2"\ngateway = "gw-7"\nbase_year = 2020\n'
                       'exclusions = "company cars (below 1 %)"\n', encoding="utf-8")
    assert runner.invoke(main, ["import", str(usage), *data]).exit_code == 0
    assert runner.invoke(main, ["import", str(certs), *data]).exit_code == 0
    out = tmp_path / "report.html"
    res = runner.invoke(main, ["report", "--from", "2023-01-01", "--to", "2024-01-01", "--format", "filing",
                               "--profile", str(profile), "-o", str(out), *data])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert "温室气体排放报告" in page and "示例制造有限公司" in page and "company cars (below 1 %)" in page
    assert "@page { size: A4" in page and "page-break-before: always" in page and "<script" not in page
    # Per source: activity data, factor with vintage and its source.
    assert "1000 MWh" in page and "ef 0.5306 tCO2/MWh" in page and "<td>2023</td>" in page
    assert "GEC-1" in page and "0.6096" in page                        # instruments and the residual mix
    # Uncertainty: electricity 530.6 t and gas 100000 x 0.038931 x 0.01532 x 0.99 x 44/12 = 216.50155 t, both
    # metered-equivalent (share 1.0): U = sqrt(2^2 + 5^2) = 5.385 %; total = sqrt((530.6 U)^2 + (216.50 U)^2)
    # / 747.10 = 5.385 x sqrt(530.6^2 + 216.50^2) / 747.10 = 4.127 %.
    gas = 100_000 * 0.038931 * 0.01532 * 0.99 * 44 / 12
    u = math.hypot(2, 5)
    total_pct = u * math.hypot(530.6, gas) / (530.6 + gas)
    assert f"±{total_pct:.1f} %" in page and f"±{u:.1f} %" in page
    en = runner.invoke(main, ["report", "--from", "2023-01-01", "--to", "2024-01-01", "--format", "filing",
                              "--lang", "en", *data])
    assert "Greenhouse gas emissions report" in en.output and "Measured share" in en.output
    bad = tmp_path / "bad.toml"
    bad.write_text('organisation = "x"\nuncertainty_factor_pct = 500\n', encoding="utf-8")
    res = runner.invoke(main, ["report", "--from", "2023-01-01", "--to", "2024-01-01", "--format", "filing",
                               "--profile", str(bad), *data])
    assert res.exit_code == 1
    assert f"{bad}: uncertainty_factor_pct = 500: use a percentage from 0 to 100" in res.output
