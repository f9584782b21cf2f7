"""Pruning raw readings under the disk budget (issue 5): synced and processed readings go first, oldest
first; unsynced readings, readings a source still has to process, and the context the next run needs stay."""

from __future__ import annotations

from pathlib import Path

from drivers.model import Quantity, Reading
from local_store import ProcessingError, SourceSettings, Store, open_store

T0 = 1_790_000_000 - (1_790_000_000 % 900)
STEP_S = 300
DAYS = 3
N = DAYS * 86_400 // STEP_S


def _fill(store: Store) -> None:
    """Three days of 5-minute readings: an energy register and a power point of one meter, and a gas
    meter whose unit is wrong, so its source fails and never moves its cursor."""
    store.configure_sources([SourceSettings("main", "electricity"), SourceSettings("gas", "natural_gas")])
    readings = []
    for k in range(N):
        ts = T0 + STEP_S * k
        readings.append(Reading("main", "energy_import", ts, 5_000.0 + 2.5 * k, "kWh", Quantity.ENERGY_IMPORT))
        readings.append(Reading("main", "active_power", ts, 30.0 + k % 7, "kW", Quantity.ACTIVE_POWER))
    store.insert_readings(readings)
    # The gas meter's history comes after main's (its polls on pages of their own): the store keeps one row
    # per poll, and a page only counts as free once every poll on it is deleted, so readings that must stay
    # (unprocessed ones, here) keep the pages they share with pruned ones.
    store.insert_readings([Reading("gas", "gas_volume", T0 + STEP_S * k, 100.0 + k, "ft3", Quantity.GAS_VOLUME)
                           for k in range(N)])
    try:
        store.process()
    except ProcessingError as exc:
        assert str(exc).startswith("source gas (meter gas, point gas_volume): unit 'ft3' is not valid")


def _ids(store: Store, where: str = "1", params: tuple = ()) -> set[int]:
    return {r[0] for r in store.db.execute(f"SELECT id FROM readings WHERE {where}", params)}


def test_synced_processed_readings_go_oldest_first_and_the_rest_stays(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        _fill(store)
        # keep = frozen limit 86 400 + interval 900 (context) + interval 900 + clock tolerance 300 + 3 600
        assert store.prune_keep_s() == 92_100.0
        everything = _ids(store)
        synced_through = max(everything) - 200           # the last 200 readings are not at the receiver yet
        before = store.used_bytes()
        result = store.prune_synced_readings(synced_through, target_bytes=0)

        cutoff = T0 + STEP_S * (N - 1) - 92_100.0
        expected_gone = set()
        # What was prunable: main's readings older than the cutoff, minus the newest of them per point (the
        # anchor the next run bridges from); gas readings are unprocessed, ids above synced_through unsynced.
        for point in ("energy_import", "active_power"):
            stamps = [T0 + STEP_S * k for k in range(N) if T0 + STEP_S * k < cutoff]
            expected_gone |= {(point, ts) for ts in stamps[:-1]}
        remaining = {(p, ts) for p, ts in store.db.execute("SELECT point, timestamp FROM readings WHERE meter_id = 'main'")}
        all_main = {(p, T0 + STEP_S * k) for k in range(N) for p in ("energy_import", "active_power")}
        assert remaining == all_main - expected_gone
        assert result.deleted == len(expected_gone) == len(everything) - len(_ids(store))
        assert _ids(store, "id > ?", (synced_through,)) == {i for i in everything if i > synced_through}
        assert len(_ids(store, "meter_id = 'gas'")) == N
        assert result.through_id <= synced_through and result.until_ts is not None and result.until_ts < cutoff
        assert result.used_bytes_after == store.used_bytes() < before == result.used_bytes_before


def test_nothing_is_pruned_within_the_budget_or_without_synced_data(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        _fill(store)
        count = len(_ids(store))
        assert store.prune_synced_readings(10**9, target_bytes=store.used_bytes()).deleted == 0
        assert store.prune_synced_readings(0, target_bytes=0).deleted == 0
        assert len(_ids(store)) == count


def test_oldest_first_stops_once_within_the_budget(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        _fill(store)
        everything = _ids(store)
        target = store.used_bytes() - 10_000
        result = store.prune_synced_readings(max(everything), target_bytes=target, chunk=100)
        assert result.used_bytes_after <= target and 0 < result.deleted < 1000
        gone = everything - _ids(store)
        # Oldest first: exactly the prunable readings (main's, outside the kept last 92 100 s) up to the
        # newest one pruned went, none above it.
        cutoff = T0 + STEP_S * (N - 1) - 92_100.0
        with open_store(tmp_path / "twin.db") as twin:
            _fill(twin)
            prunable = _ids(twin, "meter_id = 'main' AND timestamp < ?", (cutoff - STEP_S,))
        assert gone == {i for i in prunable if i <= max(gone)} and max(gone) == result.through_id


def test_processing_after_pruning_gives_the_same_intervals(tmp_path: Path) -> None:
    """The next run still has its context: a gap after the pruned history is bridged as without pruning."""
    later = [Reading("main", "energy_import", T0 + STEP_S * (N - 1) + 7_200 + 300 * k, 5_000.0 + 2.5 * (N - 1)
                     + 60.0 + 2.5 * k, "kWh", Quantity.ENERGY_IMPORT) for k in range(6)]
    results = []
    for name, prune in (("pruned.db", True), ("kept.db", False)):
        with open_store(tmp_path / name) as store:
            _fill(store)
            if prune:
                assert store.prune_synced_readings(max(_ids(store)), target_bytes=0).deleted > 0
            store.insert_readings(later)
            try:
                store.process()
            except ProcessingError:
                pass                                    # the gas source, as before
            results.append(store.db.execute("SELECT start_ts, amount, status, measured_fraction, flags FROM intervals"
                                            " ORDER BY start_ts").fetchall())
    assert results[0] == results[1] and len(results[0]) > 280


def test_age_based_retention_keeps_everything_newer_than_its_cutoff(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        _fill(store)
        everything = _ids(store)
        older_than = T0 + 86_400.0               # one day into the three: far older than the 92 100 s context
        result = store.prune_synced_readings(max(everything), target_bytes=0, older_than_ts=older_than)
        remaining = {(p, ts) for p, ts in store.db.execute("SELECT point, timestamp FROM readings WHERE meter_id = 'main'")}
        stamps = [T0 + STEP_S * k for k in range(N) if T0 + STEP_S * k < older_than]
        gone = {(p, ts) for p in ("energy_import", "active_power") for ts in stamps[:-1]}   # the newest is the anchor
        all_main = {(p, T0 + STEP_S * k) for k in range(N) for p in ("energy_import", "active_power")}
        assert remaining == all_main - gone and result.deleted == len(gone)
        assert len(_ids(store, "meter_id = 'gas'")) == N      # unprocessed: kept whatever its age


def test_issue16_used_bytes_counts_live_data_not_the_wal_high_water_mark(tmp_path: Path) -> None:
    store = open_store(tmp_path / "gateway.db")
    try:
        # One burst of 40 000 readings grows the WAL file to several MB; once checkpointed, SQLite reuses
        # it from the start, but the file keeps its size.
        store.insert_readings([Reading("main", "energy_import", 1_795_000_000.0 + i, float(i), "kWh",
                                       Quantity.ENERGY_IMPORT) for i in range(40_000)])
        db = store.db
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        wal_file = (tmp_path / "gateway.db-wal").stat().st_size
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        in_use = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0])
        assert wal_file > 1_000_000
        # Everything is checkpointed: what the data takes is the pages in use, not those plus the WAL file.
        assert store.used_bytes() == in_use * page_size
        # A small write after it: at most its few pages more (frames not yet checkpointed count at 24 header
        # bytes plus one page each); the WAL file's megabytes still do not.
        store.insert_readings([Reading("main", "energy_import", 1_796_000_000.0, 1.0, "kWh", Quantity.ENERGY_IMPORT)])
        assert in_use * page_size <= store.used_bytes() < in_use * page_size + 64 * (page_size + 24)
    finally:
        store.close()
