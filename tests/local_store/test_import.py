"""CSV import: activity data and meter readings, all or nothing, exact row-numbered messages."""

from __future__ import annotations

from datetime import date, timedelta, timezone
from pathlib import Path

import pytest

from local_store import DataImportError, open_store
from local_store.importer import import_csv
from local_store.reports import build_report

CST = timezone(timedelta(hours=8))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text.lstrip(), encoding="utf-8")
    return path


def counts(store) -> tuple[int, int, int, int]:
    q = store.db.execute
    return (q("SELECT COUNT(*) FROM activity_data").fetchone()[0], q("SELECT COUNT(*) FROM emissions").fetchone()[0],
            q("SELECT COUNT(*) FROM readings").fetchone()[0], q("SELECT COUNT(*) FROM sources").fetchone()[0])


def test_activity_data_with_unit_conversion(tmp_path: Path) -> None:
    csv = write(tmp_path, "activity.csv", """
source,activity,start,end,amount,unit
boiler-1,natural_gas,2025-01-01,2026-01-01,250000,m3
forklifts,diesel,2025-01-01,2025-07-01,12000,L
office,electricity,2025-03-01,2025-04-01,84000,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        result = import_csv(store, csv, tz=CST)
        assert (result.kind, result.rows, result.sources) == ("activity", 3, ("boiler-1", "forklifts", "office"))
        report = build_report(store, date(2025, 1, 1), date(2026, 1, 1), tz=CST)
        gas = 250_000 * 0.038931 * 0.01532 * 0.99 * 44 / 12          # 541.25 t
        diesel = 12_000 * 0.84 / 1000 * 42.652 * 0.0202 * 0.98 * 44 / 12   # 10.08 t -> 31.21 t
        power = 84 * 0.5306               # 84 MWh x 0.5306 (2023 vintage, latest published for 2025) = 44.57 t
        assert report["total_tco2e"] == pytest.approx(gas + diesel + power, abs=1e-5)
        assert report["by_scope"] == {"scope_1": pytest.approx(gas + diesel, abs=1e-5), "scope_2": pytest.approx(power, abs=1e-5)}
        by_source = {r["source"]: r for r in report["by_source"]}
        assert (by_source["forklifts"]["consumption"], by_source["forklifts"]["unit"]) == (pytest.approx(10.08), "t")
        # Half a year of the gas: the period share of a yearly row (181 of 365 days).
        h1 = build_report(store, date(2025, 1, 1), date(2025, 7, 1), tz=CST)
        assert {r["source"]: r["tco2e"] for r in h1["by_source"]}["boiler-1"] == pytest.approx(gas * 181 / 365, abs=1e-5)
        months = build_report(store, date(2025, 1, 1), date(2026, 1, 1), by="month", tz=CST)["breakdown"]
        assert [m["key"] for m in months] == [f"2025-{k:02d}" for k in range(1, 13)]
        assert months[2]["scope_2"] == pytest.approx(power, abs=1e-5)


def test_bad_rows_are_all_reported_and_nothing_is_written(tmp_path: Path) -> None:
    csv = write(tmp_path, "bad.csv", """
source,activity,start,end,amount,unit
boiler-1,natural_gas,2025-01-01,2026-01-01,250000,m3
boiler-2,natural_gaz,2025-01-01,2026-01-01,1,m3
boiler-3,natural_gas,2025-02-01,2025-01-01,abc,kg
,diesel,2025-01-01,2025-02-01,5,t
too,few,fields
""")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, csv, tz=CST)
        assert exc.value.errors == [
            "line 3 (boiler-2, 2025-01-01..2026-01-01): activity = 'natural_gaz': use one of diesel, electricity, electricity_export, fuel_oil, gasoline, "
            "heat, heat_export, lpg, natural_gas, raw_coal, steam",
            "line 4 (boiler-3, 2025-02-01..2025-01-01): end 2025-01-01 is not after start 2025-02-01: the end is exclusive, e.g. 2025-01-01,2026-01-01 "
            "is the year 2025",
            "line 4 (boiler-3, 2025-02-01..2025-01-01): amount = 'abc': not a number; write it like 250000 or 1234.5",
            "line 4 (boiler-3, 2025-02-01..2025-01-01): unit 'kg' is not valid for natural_gas: use one of m3, Nm3, m³, L, l, 10^4 m3, 10^4 Nm3",
            "line 5 (no source, 2025-01-01..2025-02-01): source is empty: name the meter or installation, e.g. boiler-1",
            "line 6: 3 fields, expected 6 (source,activity,start,end,amount,unit)",
        ]
        assert str(exc.value).startswith(f"{csv}: import rejected, nothing was written:\nline 3 (boiler-2, ")
        assert counts(store) == (0, 0, 0, 0)


def test_missing_factor_for_the_period_rejects_the_file(tmp_path: Path) -> None:
    csv = write(tmp_path, "old.csv", """
source,activity,start,end,amount,unit
office,electricity,2025-01-01,2025-02-01,1000,kWh
office,electricity,2019-01-01,2019-02-01,1000,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, csv, tz=CST)
        assert exc.value.errors == [
            "line 3 (office, 2019-01-01..2019-02-01): no emission factor 'ef' for electricity in region 'national' valid at 2018-12-31 16:00 UTC: add one "
            "to a custom file in config/factors/ (activity = \"electricity\", parameter = \"ef\", region = \"national\", "
            "valid_from/valid_to covering that date), see docs/models.md"]
        assert counts(store) == (0, 0, 0, 0)


def test_importing_the_same_period_twice_is_refused(tmp_path: Path) -> None:
    """Another amount for a period already imported is refused; the identical row is a no-op (issue 14)."""
    csv = write(tmp_path, "a.csv", "source,activity,start,end,amount,unit\nb1,lpg,2025-01-01,2025-02-01,2,t\n")
    other = write(tmp_path, "b.csv", "source,activity,start,end,amount,unit\nb1,lpg,2025-01-01,2025-02-01,3,t\n")
    with open_store(tmp_path / "gateway.db") as store:
        import_csv(store, csv, tz=CST)
        before = counts(store)
        with pytest.raises(DataImportError) as exc:
            import_csv(store, other, tz=CST)
        assert exc.value.errors == ["line 2: b1 lpg 2025-01-01..2025-02-01 overlaps data already imported from "
                                    "import:a.csv line 2: remove the row or the earlier import"]
        assert import_csv(store, csv, tz=CST).already_stored == 1
        assert counts(store) == before


@pytest.mark.parametrize("content,error", [
    ("source,activity\n".encode("utf-16"),
     'not UTF-8 text (byte 0 is 0xff): save it as UTF-8 CSV (Excel: "CSV UTF-8"; not UTF-16 or "Unicode text")'),
    (b"", "line 1: the file is empty: the first line must be a header"),
])
def test_unusable_files(tmp_path: Path, content: bytes, error: str) -> None:
    """Bad-input sweep: a UTF-16 export showed Python's codec message and no clear fix."""
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as exc:
        import_csv(store, path)
    assert exc.value.errors == [error]


def test_unknown_header(tmp_path: Path) -> None:
    csv = write(tmp_path, "x.csv", "meter,when,kwh\n")
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as exc:
        import_csv(store, csv)
    assert exc.value.errors == ["line 1: header 'meter,when,kwh' is not recognised: use "
                                "'source,activity,start,end,amount,unit' for activity data, "
                                "'source,timestamp,register,value,unit' for meter readings or "
                                "'instrument,kind,start,end,amount,unit,emission_factor' for contractual instruments "
                                "(green certificates, green power, PPAs)"]


def test_meter_readings_go_through_preprocessing(tmp_path: Path) -> None:
    # Daily reads of a register that rolls over at 100 000 kWh between day 2 and day 3.
    csv = write(tmp_path, "reads.csv", """
source,timestamp,register,value,unit
old-meter,2025-03-01T00:00:00+08:00,energy_import,96000,kWh
old-meter,2025-03-02T00:00:00+08:00,energy_import,98400,kWh
old-meter,2025-03-03T00:00:00+08:00,energy_import,800,kWh
old-meter,2025-03-04T00:00:00+08:00,energy_import,3200,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        result = import_csv(store, csv)
        assert (result.kind, result.rows, result.sources) == ("readings", 4, ("old-meter",))
        report = build_report(store, date(2025, 3, 1), date(2025, 3, 4), tz=CST, by="day")
        # 2 400 + (100 000 - 98 400 + 800) + 2 400 = 7 200 kWh = 7.2 MWh x 0.5306
        assert report["total_tco2e"] == pytest.approx(7.2 * 0.5306)
        assert [d["tco2e"] for d in report["breakdown"]] == [pytest.approx(2.4 * 0.5306)] * 3
        flags = store.db.execute("SELECT flags FROM readings ORDER BY timestamp").fetchall()
        assert flags[2] == (64,)          # Reason.ROLLOVER
        # Daily reads leave gaps longer than 30 minutes: the 15-minute values are estimates.
        assert report["data_quality"]["share_estimated"] == 1.0


def test_meter_reading_errors(tmp_path: Path) -> None:
    csv = write(tmp_path, "r.csv", """
source,timestamp,register,value,unit
m1,2025-03-01T00:00:00,energy_import,1,kWh
m1,2025-03-01T00:15:00+08:00,voltage,230,V
m1,2025-03-01T00:30:00+08:00,gas_volume,-4,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, csv)
        assert exc.value.errors == [
            "line 2 (m1, 2025-03-01T00:00:00): timestamp = '2025-03-01T00:00:00': has no UTC offset: write it like 2026-01-05T08:00:00+08:00",
            "line 3 (m1, 2025-03-01T00:15:00+08:00): register = 'voltage': use one of energy_import, energy_export, gas_volume, heat_energy, "
            "steam_mass (cumulative registers)",
            "line 4 (m1, 2025-03-01T00:30:00+08:00): value = '-4': a cumulative register is never negative",
            "line 4 (m1, 2025-03-01T00:30:00+08:00): unit 'kWh' is not valid for natural_gas: use one of m3, Nm3, m³, L, l, 10^4 m3, 10^4 Nm3",
        ]
        assert counts(store) == (0, 0, 0, 0)


def test_the_same_reading_twice_is_refused(tmp_path: Path) -> None:
    """Bad-input sweep: duplicate rows, and the same file imported again, were stored twice (and synced twice).

    Issue 14: an exact repeat is skipped and counted, and a re-import is a no-op; another value is refused.
    """
    dup = write(tmp_path, "dup.csv", """
source,timestamp,register,value,unit
m1,2025-03-01T00:00:00+08:00,energy_import,1,kWh
m1,2025-02-28T16:00:00+00:00,energy_import,1.5,kWh
""")
    reads = write(tmp_path, "reads.csv", """
source,timestamp,register,value,unit
m1,2025-03-01T00:00:00+08:00,energy_import,1,kWh
m1,2025-03-01T01:00:00+08:00,energy_import,2,kWh
""")
    changed = write(tmp_path, "changed.csv", """
source,timestamp,register,value,unit
m1,2025-03-01T01:00:00+08:00,energy_import,2.5,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, dup)
        assert exc.value.errors == [
            "line 3 (m1, 2025-02-28T16:00:00+00:00): the same source, register and timestamp as line 2 with another "
            "value (1.5 kWh here, 1 kWh there): a register has one value at a time; remove the wrong row"]
        import_csv(store, reads)
        before = counts(store)
        assert import_csv(store, reads).already_stored == 2
        with pytest.raises(DataImportError) as exc:
            import_csv(store, changed)
        assert exc.value.errors == [
            "line 2 (m1, 2025-03-01T01:00:00+08:00): already stored with another value (2.0 kWh, origin "
            "import:reads.csv): remove the row, or correct the earlier data first"]
        assert counts(store) == before


def test_activity_data_overlapping_metered_data_is_refused(tmp_path: Path) -> None:
    from drivers.model import Quantity, Reading
    from local_store import SourceSettings

    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("main", "electricity")])
        t0 = 1_741_536_000.0                                       # 2025-03-09T16:00Z = 2025-03-10 00:00 CST
        store.insert_readings([Reading("main", "energy_import", t0 + 900 * k, 100.0 * k, "kWh", Quantity.ENERGY_IMPORT)
                               for k in range(5)])
        store.process()
        csv = write(tmp_path, "dup.csv", "source,activity,start,end,amount,unit\nmain,electricity,2025-03-01,2025-04-01,9,MWh\n")
        with pytest.raises(DataImportError) as exc:
            import_csv(store, csv, tz=CST)
        assert exc.value.errors == ["line 2: main electricity 2025-03-01..2025-04-01 overlaps metered data of the same "
                                    "source: use another source name or drop the row"]


def test_scopes_iso_categories_gases_and_exports_in_one_report(tmp_path: Path) -> None:
    """Hand-computed: fuels are scope 1 / ISO 14064-1 category 1, purchased energy scope 2 / category 2, and
    exported electricity and heat are subtracted with the factor of the purchased energy."""
    from local_store import EmissionSettings

    csv = write(tmp_path, "site.csv", """
source,activity,start,end,amount,unit
boiler-1,natural_gas,2025-01-01,2025-02-01,100000,m3
genset,diesel,2025-01-01,2025-02-01,10,t
grid,electricity,2025-01-01,2025-02-01,500,MWh
pv-export,electricity_export,2025-01-01,2025-02-01,20,MWh
district-heat,heat,2025-01-01,2025-02-01,1000,GJ
heat-export,heat_export,2025-01-01,2025-02-01,100,GJ
""")
    with open_store(tmp_path / "gateway.db", EmissionSettings(include_ch4_n2o=True, gwp="AR5")) as store:
        import_csv(store, csv, tz=CST)
        report = build_report(store, date(2025, 1, 1), date(2025, 2, 1), tz=CST)
    gas_gj = 100_000 * 389.31 / 10_000                  # 3 893.1 GJ
    diesel_gj = 10 * 42.652                              # 426.52 GJ
    gas_co2 = gas_gj * 15.32e-3 * 0.99 * 44 / 12
    diesel_co2 = diesel_gj * 20.2e-3 * 0.98 * 44 / 12
    # 2006 IPCC Vol. 2 Table 2.3 (kg/TJ): natural gas CH4 1, N2O 0.1; diesel (oil) CH4 3, N2O 0.6.
    ch4 = (gas_gj * 1 + diesel_gj * 3) / 1e6
    n2o = (gas_gj * 0.1 + diesel_gj * 0.6) / 1e6
    scope1 = gas_co2 + diesel_co2 + 28 * ch4 + 265 * n2o
    # Issue 14: Scope 2 / ISO Category 2 are gross imports (GHG Protocol, ISO 14064-1): 500 MWh x 0.5306 + 1000 GJ
    # x 0.11 = 265.3 + 110 = 375.3 t; the exports (20 x 0.5306 = 10.612 t, 100 x 0.11 = 11 t) stand on their own
    # lines; GB/T 32150's net figure deducts them: 375.3 - 10.612 - 11 = 353.688 t.
    scope2 = 500 * 0.5306 + 1000 * 0.11
    net2 = (500 - 20) * 0.5306 + (1000 - 100) * 0.11
    assert report["by_scope"] == {"scope_1": pytest.approx(scope1, abs=1e-5), "scope_2": pytest.approx(scope2, abs=1e-5)}
    assert report["by_iso_category"] == {
        "Category 1: direct GHG emissions and removals": pytest.approx(scope1, abs=1e-5),
        "Category 2: indirect GHG emissions from imported energy": pytest.approx(scope2, abs=1e-5)}
    gbt, ghg = report["conventions"]["gb_t_32150"], report["conventions"]["ghg_protocol_iso_14064_1"]
    assert gbt["standard"].startswith("GB/T 32150-2015") and ghg["standard"].startswith("GHG Protocol")
    assert gbt["net_purchased_electricity_tco2e"] == pytest.approx(480 * 0.5306, abs=1e-5)
    assert gbt["net_purchased_heat_tco2e"] == pytest.approx(900 * 0.11, abs=1e-5)
    assert gbt["total_tco2e"] == pytest.approx(scope1 + net2, abs=1e-5)
    assert ghg["scope_2_location_based_tco2e"] == pytest.approx(scope2, abs=1e-5)
    assert ghg["iso_14064_1_category_2_tco2e"] == pytest.approx(scope2, abs=1e-5)
    assert (ghg["exported_electricity_tco2e"], ghg["exported_heat_tco2e"]) == (pytest.approx(10.612), pytest.approx(11.0))
    assert ghg["total_location_based_tco2e"] == pytest.approx(scope1 + scope2, abs=1e-5)
    assert report["by_gas"]["ch4_t"] == pytest.approx(ch4, abs=1e-8)
    assert report["by_gas"]["n2o_t"] == pytest.approx(n2o, abs=1e-8)
    assert report["total_tco2e"] == pytest.approx(scope1 + net2, abs=1e-5)       # the GB/T 32150 net total
    by_source = {r["source"]: r for r in report["by_source"]}
    assert by_source["pv-export"]["tco2e"] == pytest.approx(-20 * 0.5306, abs=1e-5)
    assert by_source["heat-export"]["tco2e"] == pytest.approx(-100 * 0.11, abs=1e-5)
    assert {(r["scope"], r["iso_category"]) for r in report["by_source"] if r["source"] in ("boiler-1", "genset")} \
        == {(1, 1)}


def test_a_quoted_field_with_a_line_break_is_one_field_and_later_lines_keep_their_numbers(tmp_path: Path) -> None:
    """A spreadsheet cell with Alt+Enter: the CSV quotes it across two lines. The lines were split before CSV
    parsing, so a row after it was reported with the wrong line number (and a line break inside a field,
    e.g. a form feed, split the row into two with wrong field counts)."""
    csv = write(tmp_path, "cells.csv", """
source,activity,start,end,amount,unit
"boiler-1
",natural_gas,2025-01-01,2026-01-01,250000,m3
forklifts,diesel,2025-01-01,2025-07-01,twelve,L
"office,electricity,2025-03-01,2025-04-01,84000,kWh
""")
    with open_store(tmp_path / "gateway.db") as store:
        with pytest.raises(DataImportError) as exc:
            import_csv(store, csv, tz=CST)
        assert exc.value.errors == [
            "line 4 (forklifts, 2025-01-01..2025-07-01): amount = 'twelve': not a number; write it like 250000 or 1234.5",
            "line 5: 1 fields, expected 6 (source,activity,start,end,amount,unit); a quoted field runs on past the "
            'end of the line: check that every opening " is closed']
        assert counts(store) == (0, 0, 0, 0)
        fixed = write(tmp_path, "fixed.csv", csv.read_text().replace("twelve", "12000").replace('"office', "office"))
        result = import_csv(store, fixed, tz=CST)
        assert (result.rows, result.sources) == (3, ("boiler-1", "forklifts", "office"))


def test_a_form_feed_inside_a_field_is_not_a_line_break(tmp_path: Path) -> None:
    """str.splitlines also splits at form feeds and Unicode line separators, which CSV does not: the row was
    reported as two rows with wrong field counts."""
    csv = write(tmp_path, "r.csv", 'source,timestamp,register,value,unit\n'
                                   'm1,2025-03-01T00:00:00+08:00,energy_import,1\x0c,kWh\n'
                                   'm1,2025-03-01T00:15:00+08:00,voltage,230,V\n')
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as exc:
        import_csv(store, csv)
    assert exc.value.errors == [
        "line 3 (m1, 2025-03-01T00:15:00+08:00): register = 'voltage': use one of energy_import, energy_export, "
        "gas_volume, heat_energy, steam_mass (cumulative registers)"]


def test_a_field_the_csv_module_cannot_read_names_its_line(tmp_path: Path) -> None:
    csv = write(tmp_path, "huge.csv", "source,activity,start,end,amount,unit\n" + '"' + "x" * 200_000 + '"\n')
    with open_store(tmp_path / "gateway.db") as store, pytest.raises(DataImportError) as exc:
        import_csv(store, csv)
    assert exc.value.errors == ["line 2: cannot read the CSV (field larger than field limit (131072)): check the "
                                "quotes on this line; nothing was imported"]
