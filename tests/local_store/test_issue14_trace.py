"""Issue 14 part 5: traceability — trace walks a figure to its readings; superseded rows and audit entries."""

from __future__ import annotations

import json
from datetime import date, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from local_store import open_store
from local_store.audit import load_key, use_key, verify
from local_store.reports import build_report

CST = timezone(timedelta(hours=8))


def readings(tmp_path: Path, name: str, rows: list[tuple[str, float]]) -> Path:
    path = tmp_path / name
    path.write_text("source,timestamp,register,value,unit\n"
                    + "".join(f"m1,{ts},energy_import,{v},kWh\n" for ts, v in rows), encoding="utf-8")
    return path


def test_trace_walks_one_figure_to_its_readings_and_keeps_superseded_rows(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    # 2023-06-01 08:00..08:30 CST: 100 -> 110 -> 130 kWh, read every 15 minutes.
    first = readings(tmp_path, "a.csv", [("2023-06-01T08:00:00+08:00", 100), ("2023-06-01T08:15:00+08:00", 110),
                                         ("2023-06-01T08:30:00+08:00", 130)])
    assert runner.invoke(main, ["import", str(first), *data]).exit_code == 0
    res = runner.invoke(main, ["trace", "m1", "--at", "2023-06-01T08:07:00+08:00", "--format", "json", *data])
    assert res.exit_code == 0, res.output
    chain = json.loads(res.output)
    # The 08:00-08:15 interval: 110 - 100 = 10 kWh = 0.01 MWh x 0.5306 (2023 vintage) = 0.005306 tCO2e.
    assert chain["emission"]["co2e_t"] == pytest.approx(0.005306)
    assert chain["emission"]["factor_refs"] == "cn.grid.national/2023@1"
    assert [(f["ref"], f["value"], f["vintage"], f["vintage_note"]) for f in chain["factors"]] == [
        ("cn.grid.national/2023@1", 0.5306, 2023, None)]
    assert chain["interval"] | {"covered_s": 0} == {
        "start": "2023-06-01T00:00:00+00:00", "end": "2023-06-01T00:15:00+00:00", "amount": pytest.approx(0.01),
        "unit": "MWh", "status": "measured", "measured_fraction": 1.0, "flags": [], "covered_s": 0, "complete": True}
    assert [(r["value"], r["status"], r["origin"]) for r in chain["readings"]] == [
        (100.0, "measured", "import:a.csv"), (110.0, "measured", "import:a.csv")]
    text = runner.invoke(main, ["trace", "m1", "--at", "2023-06-01T08:07:00+08:00", *data]).output
    assert "factor cn.grid.national/2023@1: 0.5306 tCO2/MWh (ef, region national, vintage 2023" in text
    assert "-> 0.005306 tCO2e (measured" in text


def test_late_readings_supersede_closed_figures_with_who_when_and_why(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    # 08:00 = 100 kWh, 08:45 = 130 kWh: a 45-minute gap, interpolated: 10 kWh in each of the three intervals.
    gap = readings(tmp_path, "gap.csv", [("2023-06-01T08:00:00+08:00", 100), ("2023-06-01T08:45:00+08:00", 130)])
    assert runner.invoke(main, ["import", str(gap), *data]).exit_code == 0
    # The 08:15 reading arrives late: 120 kWh, so 08:00-08:15 had 20 kWh and the next two 5 kWh each.
    late = readings(tmp_path, "late.csv", [("2023-06-01T08:15:00+08:00", 120)])
    assert runner.invoke(main, ["import", str(late), *data]).exit_code == 0
    res = runner.invoke(main, ["trace", "m1", "--at", "2023-06-01T08:07:00+08:00", "--format", "json", *data])
    chain = json.loads(res.output)
    # 0.02 MWh x 0.5306 = 0.010612 t now; the superseded row had 0.01 MWh x 0.5306 = 0.005306 t.
    assert chain["emission"]["co2e_t"] == pytest.approx(0.010612)
    assert [(s["amount"], s["co2e_t"]) for s in chain["superseded"]] == [(pytest.approx(0.01), pytest.approx(0.005306))]
    assert [r["value"] for r in chain["readings"]] == [100.0, 120.0]
    with open_store(tmp_path / "gateway.db") as store:
        r = build_report(store, date(2023, 6, 1), date(2023, 6, 2), tz=CST)
        assert r["total_tco2e"] == pytest.approx(0.03 * 0.5306, abs=1e-9)       # the total is unchanged
        entries = store.db.execute("SELECT actor, action, target, detail FROM audit_log ORDER BY id").fetchall()
        assert [(a, act, t) for a, act, t, _ in entries] == [
            ("cli", "import", str(gap)), ("gateway", "emissions.supersede", "source m1"), ("cli", "import", str(late))]
        detail = json.loads(entries[1][3])
        # 08:00-08:15 (10 -> 20 kWh) and 08:15-08:30 (10 -> 5 kWh) were closed and changed; 08:30-08:45 was closed
        # too (the 08:45 reading ends it) and changed 10 -> 5 kWh: three rows kept as superseded.
        assert detail["rows_superseded"] == 3
        assert detail["why"].startswith("readings arrived for closed intervals")
        use_key(tmp_path / "gateway.db", load_key(tmp_path / "keys" / "audit.key"))
        try:
            assert verify(store.db).ok
        finally:
            use_key(tmp_path / "gateway.db", None)


def test_trace_explains_an_unknown_source_or_time(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    f = readings(tmp_path, "a.csv", [("2023-06-01T08:00:00+08:00", 100), ("2023-06-01T08:15:00+08:00", 110)])
    runner.invoke(main, ["import", str(f), *data])
    res = runner.invoke(main, ["trace", "m2", "--at", "2023-06-01T08:07:00+08:00", *data])
    assert res.exit_code == 1 and "Error: no source 'm2': use one of m1" in res.output
    res = runner.invoke(main, ["trace", "m1", "--at", "2024-01-01T00:00:00+08:00", *data])
    assert res.exit_code == 1
    assert ("source m1: no emission row at 2023-12-31T16:00:00+00:00: it has emissions from "
            "2023-06-01T00:00:00+00:00 to 2023-06-01T00:15:00+00:00; choose --at inside that range") in res.output
    res = runner.invoke(main, ["trace", "m1", "--at", "yesterday", *data])
    assert res.exit_code == 1 and "--at 'yesterday': not a time" in res.output
