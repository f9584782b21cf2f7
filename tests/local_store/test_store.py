"""The store: schema and migrations, WAL, durable readings, the thin path to a non-zero report."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers.model import Quantity, Reading
from local_store import SchemaError, SourceSettings, open_store
from local_store.db import migrations, schema_version
from local_store.reports import build_report, emissions_summary
from tests.conftest import foreign_database

UTC = timezone.utc


def demo_readings(t0: float, n: int, step_s: float = 5.0) -> list[Reading]:
    """The demo's three meters: electricity (kWh), natural gas (m3), steam/heat (GJ)."""
    out = []
    for i in range(n):
        ts = t0 + i * step_s
        out.append(Reading("main-incomer", "energy_import", ts, 12_000.0 + i * 0.25, "kWh", Quantity.ENERGY_IMPORT))
        out.append(Reading("gas-boiler", "gas_volume", ts, 3_000.0 + i * 0.02, "m3", Quantity.GAS_VOLUME))
        out.append(Reading("steam-main", "heat_energy", ts, 800.0 + i * 0.004, "GJ", Quantity.HEAT_ENERGY))
    return out


DEMO_SOURCES = [SourceSettings("main-incomer", "electricity"), SourceSettings("gas-boiler", "natural_gas"),
                SourceSettings("steam-main", "steam")]


def test_open_store_creates_schema_in_wal_mode(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        assert store.db.journal_mode == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
        tables = set(store.db.table_names())
        assert "readings" in store.db.view_names()       # one row per reading, over the packed polls (issue 17)
        assert {"polls", "series", "intervals", "emissions", "factors", "sources", "activity_data",
                "instruments", "audit_log", "_sqlite_migrations"} <= tables
        assert schema_version(store.db) == len(migrations._migrations)
    # Re-opening applies nothing twice.
    with open_store(tmp_path / "gateway.db") as store:
        assert schema_version(store.db) == len(migrations._migrations)


def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('local_store', 'm999_future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match=r"gateway.db: schema has migrations this version does not know \(m999_future\)"):
        open_store(path)


def test_insert_keeps_quality_reason_and_increasing_ids(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        t0 = 1_790_000_000.0
        n = store.insert_readings([
            Reading("m1", "energy_import", t0, 10.0, "kWh", Quantity.ENERGY_IMPORT),
            Reading("m1", "voltage_l1", t0, None, "V", Quantity.VOLTAGE, quality="invalid", reason="NaN sentinel 0xFFFF"),
            Reading("m1", "energy_import", t0 + 5, 10.5, "kWh", Quantity.ENERGY_IMPORT),
        ])
        assert n == 3
        rows = store.readings_after(0, 10)
        assert [r.id for r in rows] == sorted(r.id for r in rows) and len({r.id for r in rows}) == 3
        bad = [r for r in rows if r.point == "voltage_l1"][0]
        assert (bad.quality, bad.reason, bad.value) == ("invalid", "NaN sentinel 0xFFFF", None)
        assert [r.value for r in store.readings_after(rows[0].id, 1)] == [None]
        latest = {(r.meter_id, r.point): r for r in store.latest_readings()}
        assert latest[("m1", "energy_import")].value == 10.5
        assert latest[("m1", "energy_import")].timestamp == t0 + 5
        # An older reading arriving late does not replace the newest one.
        store.insert_readings([Reading("m1", "energy_import", t0 - 60, 9.0, "kWh", Quantity.ENERGY_IMPORT)])
        latest = {(r.meter_id, r.point): r for r in store.latest_readings()}
        assert latest[("m1", "energy_import")].value == 10.5
    # Durable: visible from a fresh connection after close.
    conn = sqlite3.connect(tmp_path / "gateway.db")
    assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 4
    conn.close()


def test_readings_can_be_inserted_from_several_threads(tmp_path: Path) -> None:
    store = open_store(tmp_path / "gateway.db")
    errors: list[BaseException] = []

    def writer(meter: str) -> None:
        try:
            for i in range(20):
                store.insert_readings([Reading(meter, "energy_import", 1_790_000_000.0 + i, float(i), "kWh",
                                               Quantity.ENERGY_IMPORT)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"m{k}",), name=f"writer-{k}") for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(store.readings_after(0, 1000)) == 60
    store.close()


def test_thirty_seconds_of_demo_polling_gives_a_non_zero_report_for_today(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources(DEMO_SOURCES)
        store.insert_readings(demo_readings(now.timestamp() - 30, 7))   # 7 polls, 5 s apart = 30 s
        result = store.process()
        assert result.sources == 3 and result.emission_rows >= 3
        today = now.astimezone().date()
        report = build_report(store, today, today + timedelta(days=1))
        # Hand check: 6 steps of 0.25 kWh = 1.5 kWh = 0.0015 MWh x 0.5306 (2023 vintage, the latest published) = 0.0007959 t;
        # 6 x 0.02 m3 = 0.12 m3 x 0.038931 GJ/m3 x 0.01532 tC/GJ x 0.99 x 44/12 = 0.00025980 t;
        # 6 x 0.004 GJ = 0.024 GJ x 0.11 = 0.00264 t.
        expected = 0.0015 * 0.5306 + 0.12 * 0.038931 * 0.01532 * 0.99 * 44 / 12 + 0.024 * 0.11
        assert report["total_tco2e"] == pytest.approx(expected, abs=2e-6)
        assert report["total_tco2e"] > 0
        assert report["by_scope"]["scope_1"] == pytest.approx(0.12 * 0.038931 * 0.01532 * 0.99 * 44 / 12, abs=1e-6)
        by_source = {r["source"]: r for r in report["by_source"]}
        assert by_source["main-incomer"]["consumption"] == pytest.approx(0.0015)
        assert by_source["main-incomer"]["unit"] == "MWh"
        assert {f["id"] for f in report["factors"]} >= {"cn.grid.national", "cn.steam.default",
                                                         "cn.fuel.natural_gas.ncv"}
        assert report["data_quality"]["share_measured"] == 1.0
        summary = emissions_summary(store, now.astimezone())
        assert summary.today.total_t == pytest.approx(report["total_tco2e"], abs=2e-6)
        assert summary.month.scope_2_t >= summary.today.scope_2_t > 0


def test_process_is_incremental_and_the_open_interval_grows(tmp_path: Path) -> None:
    start = 1_790_000_000 - (1_790_000_000 % 900)
    t0 = start + 60.0                                   # one minute into an interval

    def minute(k: int) -> Reading:                      # 0.25 kWh per minute
        return Reading("main-incomer", "energy_import", t0 + 60 * k, 12_000.0 + 0.25 * k, "kWh",
                       Quantity.ENERGY_IMPORT)

    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("main-incomer", "electricity")])
        store.insert_readings([minute(k) for k in range(10)])
        store.process()
        # Still open: 9 minutes x 0.25 kWh so far.
        assert store.db.execute("SELECT amount, complete FROM intervals").fetchall() == [(pytest.approx(9 * 0.25 / 1000), 0)]
        store.insert_readings([minute(k) for k in range(10, 26)])
        store.process()
        rows = store.db.execute("SELECT start_ts, amount, complete FROM intervals ORDER BY start_ts").fetchall()
        # First interval closed with minutes 1..14 (14 x 0.25 kWh), the second open with minutes 15..25 (11 x 0.25).
        assert rows == [(start, pytest.approx(14 * 0.25 / 1000), 1), (start + 900, pytest.approx(11 * 0.25 / 1000), 0)]
        current = store.db.execute("SELECT start_ts, amount FROM emissions WHERE superseded_at IS NULL"
                                   " ORDER BY start_ts").fetchall()
        assert current == [(start, pytest.approx(14 * 0.25 / 1000)), (start + 900, pytest.approx(11 * 0.25 / 1000))]
        assert store.process().readings == 0          # nothing new: nothing re-read


def test_reading_status_and_flags_are_written_back(tmp_path: Path) -> None:
    t0 = 1_790_000_000.0
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("m", "electricity")])
        values = [100.0, 101.0, 9_000.0, 103.0, 104.0]            # a spike at the third reading
        store.insert_readings([Reading("m", "energy_import", t0 + 60 * k, x, "kWh", Quantity.ENERGY_IMPORT)
                               for k, x in enumerate(values)]
                              + [Reading("m", "energy_import", 5.0, 1.0, "kWh", Quantity.ENERGY_IMPORT)])  # RTC at 1970
        store.process()
        rows = store.db.execute("SELECT value, status, flags FROM readings ORDER BY id").fetchall()
        assert rows == [(100.0, "measured", 0), (101.0, "measured", 0), (9_000.0, "invalid", 16),
                        (103.0, "measured", 0), (104.0, "measured", 0), (1.0, "invalid", 8)]
        assert store.db.execute("SELECT SUM(amount) FROM intervals").fetchone()[0] == pytest.approx(4 / 1000)


def electricity_and_gas(store, electricity: str, gas: str, gas_unit: str) -> None:
    """An electricity and a gas meter, both sources, with three readings a minute apart from 14:13:20 UTC."""
    t0 = 1_790_000_000.0
    store.configure_sources([SourceSettings(electricity, "electricity"), SourceSettings(gas, "natural_gas")])
    store.insert_readings([Reading(electricity, "energy_import", t0 + 60 * k, 10.0 + k, "kWh", Quantity.ENERGY_IMPORT)
                           for k in range(3)]
                          + [Reading(gas, "gas_volume", t0 + 60 * k, 10.0 + k, gas_unit, Quantity.GAS_VOLUME)
                             for k in range(3)])


def test_unknown_unit_fails_that_source_only(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        electricity_and_gas(store, "good", "bad", "ft3")
        from local_store import ProcessingError
        with pytest.raises(ProcessingError) as exc:
            store.process()
        assert str(exc.value).startswith(
            "source bad (meter bad, point gas_volume): unit 'ft3' is not valid for natural_gas: use one of m3, Nm3")
        assert "fix the profile's unit or the source's activity" in str(exc.value)
        sources = {r[0] for r in store.db.execute("SELECT DISTINCT source_id FROM emissions")}
        assert sources == {"good"}
        assert store.db.execute("SELECT COUNT(*) FROM intervals WHERE source_id = 'bad'").fetchone()[0] == 0


def test_instant_means_drop_outliers(tmp_path: Path) -> None:
    start = 1_790_000_000 - (1_790_000_000 % 900)
    values = [50.0, 52.0, 51.0, 9_999.0, 49.0, 50.0, 48.0]          # kW every 2 min; one glitch
    with open_store(tmp_path / "gateway.db") as store:
        store.insert_readings([Reading("m", "active_power", start + 120 * k, x, "kW", Quantity.ACTIVE_POWER)
                               for k, x in enumerate(values)])
        means = store.instant_means("m", "active_power", start, start + 900)
        assert means == [{"start": start, "mean": pytest.approx((50 + 52 + 51 + 49 + 50 + 48) / 6), "count": 6}]


def test_migration_from_version_1_fills_the_hourly_rollup(tmp_path: Path) -> None:
    import sqlite_utils

    from local_store.db import migrations

    path = tmp_path / "gateway.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m002_hourly_rollup")
    assert schema_version(db) == 1
    db.execute("INSERT INTO emissions (source_id, activity, origin, start_ts, end_ts, amount, unit, energy_gj, co2_t,"
               " ch4_t, n2o_t, co2e_t, scope, iso_category, factor_id, factor_version, factor_refs, gwp, region, status,"
               " measured_fraction, calculated_at) VALUES ('m', 'electricity', 'interval', 1790001000, 1790001900, 2.0,"
               " 'MWh', 7.2, 1.0732, 0, 0, 1.0732, 2, 2, 'cn.grid.national', 1, 'cn.grid.national@1', 'AR6',"
               " 'national', 'measured', 1.0, 0)")
    db.close()
    with open_store(path) as store:
        assert schema_version(store.db) == len(migrations._migrations)
        assert store.db.execute("SELECT hour_ts, amount, co2e_t, rows FROM emissions_hourly").fetchall() == [
            (1_789_999_200, 2.0, 1.0732, 1)]


def test_two_stores_on_one_file_process_concurrently(tmp_path: Path) -> None:
    """The daemon and a `report` command both call process(): neither fails with 'database is locked'."""
    path = tmp_path / "gateway.db"
    t0 = 1_790_000_000.0
    with open_store(path) as setup:
        setup.configure_sources(DEMO_SOURCES)
    daemon, cli = open_store(path), open_store(path)
    errors: list[BaseException] = []

    def poll_and_process() -> None:
        try:
            for k in range(15):
                daemon.insert_readings([Reading("main-incomer", "energy_import", t0 + 5 * (7 * k + i),
                                                12_000.0 + 0.25 * (7 * k + i), "kWh", Quantity.ENERGY_IMPORT)
                                        for i in range(7)])
                daemon.process()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def report_loop() -> None:
        try:
            for _ in range(15):
                cli.process()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=poll_and_process, name="daemon"), threading.Thread(target=report_loop, name="cli")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    daemon.process()
    assert not errors
    # Every interval counted once: 105 readings 0.25 kWh apart = 104 x 0.25 kWh.
    total_mwh = daemon.db.execute("SELECT SUM(amount) FROM intervals WHERE source_id = 'main-incomer'").fetchone()[0]
    assert total_mwh == pytest.approx(104 * 0.25 / 1000)
    assert daemon.db.execute("SELECT COUNT(*) FROM readings WHERE status = 'measured'").fetchone()[0] == 105
    daemon.close()
    cli.close()


def test_default_point_per_activity(tmp_path: Path) -> None:
    t0 = 1_790_000_000.0
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("steam-t", "steam"), SourceSettings("power", "natural_gas")])
        store.insert_readings(
            [Reading("steam-t", "steam_total", t0 + 60 * k, 100.0 + k, "t", Quantity.STEAM_MASS) for k in range(3)]
            + [Reading("power", "energy_import", t0 + 60 * k, 1.0 + k, "kWh", Quantity.ENERGY_IMPORT) for k in range(3)])
        from local_store import ProcessingError
        with pytest.raises(ProcessingError) as exc:
            store.process()
        assert str(exc.value) == ("meter power: no point measures gas_volume for its natural_gas source (points: "
                                  "energy_import): set point = \"<one of them>\" or fix the activity")
        # Steam metered in t: 2 t x (2763 - 83.74) kJ/kg = 5.35852 GJ.
        gj = store.db.execute("SELECT SUM(amount) FROM intervals WHERE source_id = 'steam-t'").fetchone()[0]
        assert gj == pytest.approx(2 * (2763 - 83.74) / 1000)


def test_a_file_that_is_not_a_database_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError, match=r"gateway.db: not a usable SQLite database \(file is not a database\): "
                                          r"move the file away or restore a backup"):
        open_store(path)


def test_a_database_of_another_program_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    before = foreign_database(path)
    with pytest.raises(SchemaError) as error:
        open_store(path)
    assert str(error.value) == (f"{path}: a SQLite database of another program (tables invoices), not a gateway "
                                "store; nothing was changed: pass --data-dir pointing at the gateway's state "
                                "directory, or move the file away")
    assert path.read_bytes() == before


def test_a_data_directory_that_cannot_be_created_is_a_named_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SchemaError) as error:
        open_store(tmp_path / "afile" / "sub" / "gateway.db")
    assert str(error.value) == (f"{tmp_path / 'afile' / 'sub'}: cannot create the data directory (Not a directory): "
                                "choose a directory that can be created, e.g. --data-dir /var/lib/carbon-gateway")


def test_missing_factor_for_a_metered_period_names_source_period_and_fix_and_writes_nothing(tmp_path: Path) -> None:
    """Issue 4, bad input: a region without a grid factor fails that source only, with nothing partial."""
    from local_store import EmissionSettings, ProcessingError

    with open_store(tmp_path / "gateway.db", EmissionSettings(region="guangdong")) as store:
        electricity_and_gas(store, "main", "boiler", "m3")
        with pytest.raises(ProcessingError) as exc:
            store.process()
        assert str(exc.value) == (
            "source main: no emission factor 'ef' for electricity in region 'guangdong' valid at 2026-09-21 14:00 UTC: "
            "add one to a custom file in config/factors/ (activity = \"electricity\", parameter = \"ef\", region = "
            "\"guangdong\", valid_from/valid_to covering that date), see docs/models.md")
        written = store.db.execute("SELECT source_id, COUNT(*) FROM intervals GROUP BY source_id").fetchall()
        assert written == [("boiler", 2)]              # fuels fall back to national parameters; the grid does not
        assert store.db.execute("SELECT COUNT(*) FROM emissions WHERE source_id = 'main'").fetchone()[0] == 0
        assert store.db.execute("SELECT processed_reading_id FROM sources WHERE id = 'main'").fetchone()[0] == 0
