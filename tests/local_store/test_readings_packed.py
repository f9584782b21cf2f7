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
