"""The packed readings store (issue 17): sync gets the readings just stored without reading them back, and
exactly what SQLite holds."""

from __future__ import annotations

from pathlib import Path

from drivers.model import Quantity, Reading
from local_store import open_store
from local_store import readings as rd

T0 = 1_790_000_000.0


def _poll(meter: str, ts: float, k: int) -> list[Reading]:
    return [Reading(meter, "energy_import", ts, 100.0 + k, "kWh", Quantity.ENERGY_IMPORT),
            Reading(meter, "active_power", ts, float("nan") if k % 3 == 0 else 2.5 * k, "kW", Quantity.ACTIVE_POWER),
            Reading(meter, "voltage_l1", ts, None, "V", Quantity.VOLTAGE, quality="invalid", reason="exception 2")]


def test_sync_rows_of_just_stored_polls_equal_what_sqlite_holds(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        for k in range(10):
            store.insert_readings(_poll("m1", T0 + k, k) + _poll("m2", T0 + k, k))
        # 10 commits x 2 meters x 3 readings = 60 readings, ids 1..60.
        assert store.last_reading_id() == 60
        for after, limit in ((0, 1000), (7, 11), (59, 5), (60, 5)):
            held = store._recent.rows(after, limit, store.last_reading_id())
            assert held is not None
            assert held == rd.readings_after(store.db, after, limit)     # the SQLite path, row for row
            assert store.sync_rows(after, limit) == held
        assert store.sync_rows(0, 3)[1][4:9] == (None, "kW", "active_power", "invalid", "value is not a finite number")

        # Another writer (a CLI import in its own process) adds readings: the held polls no longer reach the
        # newest id, so sync reads SQLite, and gets them all.
        with open_store(tmp_path / "gateway.db") as other:
            other.insert_readings(_poll("m3", T0 + 20, 1))
        assert store._recent.rows(50, 100, store.last_reading_id()) is None
        rows = store.sync_rows(50, 100)
        assert [r[0] for r in rows] == list(range(51, 64)) and rows[-1][1] == "m3"


def test_report_reading_counts_agree_with_the_per_reading_view(tmp_path: Path) -> None:
    from local_store import SourceSettings
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("m1", "electricity")])
        readings = []
        for k in range(200):       # every 5 minutes; m1's register steps back once (a reset) and is NaN twice
            value = 5000.0 + 3.0 * k if k != 120 else 10.0
            readings += _poll("m1", T0 + 300 * k, k)
            readings[-3] = Reading("m1", "energy_import", T0 + 300 * k, float("nan") if k in (50, 51) else value,
                                   "kWh", Quantity.ENERGY_IMPORT)
            readings += _poll("m2", T0 + 300 * k, k)
        store.insert_readings(readings)
        store.process()
        for start, end in ((T0, T0 + 300 * 200), (T0 + 300 * 40, T0 + 300 * 130), (T0 - 10, T0)):
            counts = rd.reading_counts(store.db, start, end)
            by_view = dict.fromkeys(("measured", "estimated", "invalid", "unprocessed"), 0)
            for status, n in store.db.execute("SELECT status, COUNT(*) FROM readings WHERE timestamp >= ? AND"
                                              " timestamp < ? GROUP BY status", (start, end)):
                by_view[status or "unprocessed"] += n
            assert counts == by_view
        # 2 meters x 3 points x 200 polls = 1200 readings; only m1's 200 energy readings are processed.
        total = rd.reading_counts(store.db, T0, T0 + 300 * 200)
        assert sum(total.values()) == 1200 and total["unprocessed"] == 1000
        assert total["invalid"] >= 2                   # the two NaN readings at least
