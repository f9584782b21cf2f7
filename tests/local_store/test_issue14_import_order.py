"""Issue 14 part 1: every reading kept, in time order; repeats skipped; re-import a no-op; bounds."""

from __future__ import annotations

import json
from datetime import date, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from drivers.model import Quantity, Reading
from local_store import DataImportError, open_store
from local_store import preprocess as pp
from local_store.db import SourceSettings
from local_store.importer import import_csv
from local_store.reports import build_report, render_csv

CST = timezone(timedelta(hours=8))

# Two days of an electricity meter, a reading every 6 hours (in 2022, where the 0.5366 factor applies).
# Day 1 (2022-03-01): 1000 -> 1960 kWh = 960 kWh; day 2 (2022-03-02): 1960 -> 2920 kWh = 960 kWh.
DAY1 = [("2022-03-01T00:00:00+08:00", 1000), ("2022-03-01T06:00:00+08:00", 1240), ("2022-03-01T12:00:00+08:00", 1480),
        ("2022-03-01T18:00:00+08:00", 1720), ("2022-03-02T00:00:00+08:00", 1960)]
DAY2 = [("2022-03-02T06:00:00+08:00", 2200), ("2022-03-02T12:00:00+08:00", 2440),
        ("2022-03-02T18:00:00+08:00", 2680), ("2022-03-03T00:00:00+08:00", 2920)]
# 1920 kWh = 1.92 MWh x 0.5366 tCO2/MWh = 1.030272 tCO2e for both days; 0.515136 t for one.
BOTH_DAYS_T = 1.92 * 0.5366


def readings_csv(tmp_path: Path, name: str, rows: list[tuple[str, float]]) -> Path:
    path = tmp_path / name
    path.write_text("source,timestamp,register,value,unit\n"
                    + "".join(f"m1,{ts},energy_import,{v},kWh\n" for ts, v in rows), encoding="utf-8")
    return path


def total(store) -> float:
    return build_report(store, date(2022, 3, 1), date(2022, 3, 3), tz=CST)["total_tco2e"]


def invalid_readings(store) -> int:
    return store.db.execute("SELECT COUNT(*) FROM readings WHERE status = 'invalid'").fetchone()[0]


def test_in_order_newest_first_and_backfill_give_the_same_tco2e(tmp_path: Path) -> None:
    with open_store(tmp_path / "a.db") as store:
        import_csv(store, readings_csv(tmp_path, "in-order.csv", DAY1 + DAY2))
        assert total(store) == pytest.approx(BOTH_DAYS_T, abs=1e-6)
    with open_store(tmp_path / "b.db") as store:
        result = import_csv(store, readings_csv(tmp_path, "newest-first.csv", list(reversed(DAY1 + DAY2))))
        assert result.rows == 9
        assert total(store) == pytest.approx(BOTH_DAYS_T, abs=1e-6)
        assert invalid_readings(store) == 0          # no clock_jump for a file's row order
    with open_store(tmp_path / "c.db") as store:
        # Day 2 first (with day 1's closing reading, as an export of day 2 would start), then the backfill.
        import_csv(store, readings_csv(tmp_path, "day2.csv", DAY1[-1:] + DAY2))
        assert total(store) == pytest.approx(0.96 * 0.5366, abs=1e-6)      # 0.515136 t
        backfill = import_csv(store, readings_csv(tmp_path, "day1.csv", DAY1))
        # Day 1's last reading (1960 at 03-02 00:00) is already stored from day2.csv: skipped, counted.
        assert (backfill.rows, backfill.already_stored) == (4, 1)
        assert total(store) == pytest.approx(BOTH_DAYS_T, abs=1e-6)
        assert invalid_readings(store) == 0
        # The affected span was reprocessed: one current emission row per 15 minutes of the two days.
        rows = store.db.execute("SELECT COUNT(*), COUNT(DISTINCT start_ts) FROM emissions"
                                " WHERE superseded_at IS NULL").fetchone()
        assert rows == (192, 192)                                 # 2 days x 96 intervals


def test_a_repeated_row_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = DAY1[:3] + [DAY1[2]] + DAY1[3:] + DAY2     # line 5 repeats line 4 exactly
    with open_store(tmp_path / "gateway.db") as store:
        result = import_csv(store, readings_csv(tmp_path, "repeat.csv", rows))
        assert (result.rows, result.repeated) == (9, 1)
        assert result.summary().endswith("(skipped: 1 repeated row of the file)")
        assert store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 9
        assert total(store) == pytest.approx(BOTH_DAYS_T, abs=1e-6)


def test_a_conflicting_duplicate_is_refused_naming_both_lines(tmp_path: Path) -> None:
    rows = DAY1 + [("2022-03-01T12:00:00+08:00", 1490)]     # line 7: the 12:00 reading again, 10 kWh more
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, readings_csv(tmp_path, "conflict.csv", rows))
        assert exc.value.errors == [
            "line 7 (m1, 2022-03-01T12:00:00+08:00): the same source, register and timestamp as line 4 with another "
            "value (1490 kWh here, 1480 kWh there): a register has one value at a time; remove the wrong row"]
        assert store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 0


def test_reimporting_a_file_is_a_no_op_that_says_so(tmp_path: Path) -> None:
    path = readings_csv(tmp_path, "in-order.csv", DAY1 + DAY2)
    activity = tmp_path / "bill.csv"
    activity.write_text("source,activity,start,end,amount,unit\noffice,electricity,2022-03-01,2022-03-03,500,kWh\n",
                        encoding="utf-8")
    with open_store(tmp_path / "gateway.db") as store:
        import_csv(store, path)
        import_csv(store, activity, tz=CST)
        before = store.db.execute("SELECT COUNT(*), SUM(co2e_t) FROM emissions").fetchone()
        again = import_csv(store, path)
        assert (again.rows, again.already_stored, again.emission_rows) == (0, 9, 0)
        assert again.summary() == (f"{path}: nothing to import, every row is already stored (skipped: 9 already "
                                   "stored): the store was not changed")
        bill = import_csv(store, activity, tz=CST)
        assert (bill.rows, bill.already_stored) == (0, 1)
        assert store.db.execute("SELECT COUNT(*), SUM(co2e_t) FROM emissions").fetchone() == before
        # 1.030272 t metered + 0.5 MWh x 0.5366 = 0.2683 t billed = 1.298572 t
        assert total(store) == pytest.approx(BOTH_DAYS_T + 0.5 * 0.5366, abs=1e-6)


def test_implausible_amounts_and_register_steps_are_refused(tmp_path: Path) -> None:
    activity = tmp_path / "huge.csv"
    activity.write_text("source,activity,start,end,amount,unit\n"
                        "office,electricity,2022-03-01,2022-03-02,1e308,kWh\n"
                        "boiler,natural_gas,2022-03-01,2022-03-02,12000001,m3\n"
                        "boiler-2,natural_gas,2022-03-01,2022-03-02,12000000,m3\n", encoding="utf-8")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, activity, tz=CST)
        # Bounds over 24 h: electricity 2000 MWh/h x 24 h = 48000 MWh; natural gas 500000 m3/h x 24 h = 12e6 m3,
        # so 12000001 m3 is just over it and 12000000 m3 just inside.
        assert exc.value.errors == [
            "line 2 (office, 2022-03-01..2022-03-02): amount = '1e308' kWh is more than the 2000 MWh per hour no "
            "electricity installation exceeds (48000 MWh over the period): check the amount and the unit",
            "line 3 (boiler, 2022-03-01..2022-03-02): amount = '12000001' m3 is more than the 500000 m3 per hour no "
            "natural_gas installation exceeds (1.2e+07 m3 over the period): check the amount and the unit"]
        steps = readings_csv(tmp_path, "steps.csv", [("2022-03-01T00:00:00+08:00", 0),
                                                     ("2022-03-01T00:15:00+08:00", 600000),
                                                     ("2022-03-01T00:30:00+08:00", 1e308)])
        with pytest.raises(DataImportError) as exc:
            import_csv(store, steps)
        # 600000 kWh in 0.25 h = 600 MWh in 0.25 h: 2400 MWh/h, above 2000 MWh/h (500 MWh in the quarter hour).
        assert exc.value.errors == [
            "line 4 (m1, 2022-03-01T00:30:00+08:00): value = '1e+308': above 1e+15, more than any meter register "
            "holds: check the column and the decimal separator",
            "line 3 (m1, 2022-03-01T00:15:00+08:00): the register rises by 600 MWh in 0.25 h since line 2 "
            "(2022-03-01T00:00:00+08:00), more than the 2000 MWh per hour no electricity meter exceeds: check the "
            "value and the unit of both lines"]
        assert store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 0


def test_an_implausible_polled_step_is_flagged_not_counted_and_json_stays_valid(tmp_path: Path) -> None:
    t0 = 1_646_064_000.0                    # 2022-02-28 16:00 UTC = 2022-03-01 00:00 CST
    values = [100.0, 110.0, 5e12, 5e12, 5e12 + 20.0, 5e12 + 30.0]  # a jump of 5e12 kWh that stays
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings(meter_id="m1", activity="electricity")])
        store.insert_readings([Reading("m1", "energy_import", t0 + 900 * k, v, "kWh", Quantity.ENERGY_IMPORT)
                               for k, v in enumerate(values)])
        store.process()
        flags = store.db.execute("SELECT status, flags FROM readings ORDER BY id").fetchall()
        assert flags[2] == ("estimated", int(pp.Reason.SPIKE))
        # Counted: 10 kWh (100 -> 110), 0 for the jump, then 0 + 20 + 10 kWh = 40 kWh = 0.04 MWh x 0.5366.
        report = build_report(store, date(2022, 3, 1), date(2022, 3, 2), tz=CST)
        assert report["total_tco2e"] == pytest.approx(0.04 * 0.5366, abs=1e-9)
        json.loads(json.dumps(report, allow_nan=False))
        assert "inf" not in render_csv(report).lower() and "nan" not in render_csv(report).lower()


def test_clock_jump_still_applies_to_live_polling() -> None:
    # Polled: a reading 1 h behind the newest is a clock jump; the same order from a file is just sorted.
    t = 1_700_000_000.0 + np.array([0.0, 900.0, 1800.0 - 3600.0 * 2, 2700.0])
    v = np.array([10.0, 11.0, 5.0, 13.0])
    polled = pp.clean_cumulative(t, v)
    assert polled.reasons[2] & pp.Reason.CLOCK_JUMP
    imported = pp.clean_cumulative(t, v, polled=np.zeros(4, dtype=bool))
    assert not imported.reasons[2] & pp.Reason.CLOCK_JUMP


def test_an_imported_16_bit_register_declares_its_wrap_and_is_not_taken_as_a_reset(tmp_path: Path) -> None:
    """Issue 14: 65500 -> 30 in an imported file was taken as a reset (-31 %); rollover_at declares the wrap."""
    rows = [("2022-03-01T00:00:00+08:00", 65000), ("2022-03-01T01:00:00+08:00", 65500),
            ("2022-03-01T02:00:00+08:00", 30), ("2022-03-01T03:00:00+08:00", 530)]
    path = tmp_path / "wrap.csv"
    path.write_text("source,timestamp,register,value,unit,rollover_at\n"
                    + "".join(f"m1,{ts},energy_import,{v},kWh,{65536 if k == 0 else ''}\n"
                              for k, (ts, v) in enumerate(rows)), encoding="utf-8")
    with open_store(tmp_path / "gateway.db") as store:
        import_csv(store, path)
        # 500 + (65536 - 65500 + 30 = 66) + 500 = 1066 kWh = 1.066 MWh x 0.5366 = 0.5720156 t.
        report = build_report(store, date(2022, 3, 1), date(2022, 3, 2), tz=CST)
        assert report["by_source"][0]["consumption"] == pytest.approx(1.066)
        assert report["total_tco2e"] == pytest.approx(1.066 * 0.5366, abs=1e-6)     # reports round to 1e-6 t
        flags = [f for (f,) in store.db.execute("SELECT flags FROM readings ORDER BY timestamp")]
        assert flags[2] == int(pp.Reason.ROLLOVER)
    bad = tmp_path / "bad.csv"
    bad.write_text("source,timestamp,register,value,unit,rollover_at\n"
                   "m2,2022-03-01T00:00:00+08:00,energy_import,1,kWh,65536\n"
                   "m2,2022-03-01T01:00:00+08:00,energy_import,2,kWh,100000\n"
                   "m3,2022-03-01T01:00:00+08:00,energy_import,2,kWh,0\n", encoding="utf-8")
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as exc:
        import_csv(store, bad)
    assert exc.value.errors == [
        "line 3 (m2, 2022-03-01T01:00:00+08:00): rollover_at = '100000': line 2 gives 65536 for the same source and "
        "register; a register has one wrap value",
        "line 4 (m3, 2022-03-01T01:00:00+08:00): rollover_at = '0': use the register's wrap value, a number from 1 "
        "to 1e+15 (e.g. 65536 for a 16-bit counter), or leave it empty"]
