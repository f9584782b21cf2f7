"""A v0.1 store (one row per value) migrates to the packed readings store with every reading kept (issue 17)."""

from __future__ import annotations

from pathlib import Path

from drivers.model import Quantity, Reading
from local_store import open_store
from tests.local_store.v01_store import create_v01_store, insert_v01

T0 = 1_790_000_000.0
POINTS = [("energy_import", "kWh", "energy_import"), ("active_power", "kW", "active_power"),
          ("voltage_l1", "V", "voltage")]


def _build(path: Path) -> list[tuple]:
    conn = create_v01_store(path)
    expected = []
    # Two meters polled every 60 s for 2 hours: 2 x 120 polls x 3 points = 720 readings, one transaction
    # per minute as the v0.1 writer did; the first power reading of m2 is invalid.
    for k in range(120):
        rows = []
        for meter in ("m1", "m2"):
            for point, unit, quantity in POINTS:
                value = None if (meter, point, k) == ("m2", "active_power", 0) else 1000.0 + k * 1.5
                quality, reason = ("invalid", "Modbus exception 2") if value is None else ("ok", "")
                rows.append((meter, point, T0 + 60 * k, value, unit, quantity, quality, reason, "poll"))
        insert_v01(conn, rows)
        expected.extend(rows)
    # An import of 10 readings of a third meter, and 5 readings deleted by v0.1's pruning (ids never reused).
    imported = [("m3", "energy_import", T0 + 900 * k, 50.0 + k, "kWh", "energy_import", "ok", "", "import:old.csv")
                for k in range(10)]
    insert_v01(conn, imported)
    expected.extend(imported)
    conn.execute("DELETE FROM readings WHERE id IN (1, 2, 3, 4, 5)")
    # v0.1 preprocessing marked statuses on the rows; the outbox had batched up to reading 300.
    conn.execute("UPDATE readings SET status = 'measured' WHERE meter_id = 'm1' AND point = 'energy_import'")
    conn.execute("UPDATE readings SET status = 'invalid', flags = 8 WHERE id = 10")
    conn.execute("INSERT INTO sync_state (key, value) VALUES ('last_reading_id', '300')")
    conn.close()
    return expected[5:]


def test_every_reading_of_a_v01_store_is_kept_with_its_id(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    expected = _build(path)
    assert len(expected) == 720 + 10 - 5
    with open_store(path) as store:
        db = store.db
        rows = db.execute("SELECT id, meter_id, point, timestamp, value, unit, quantity, quality, reason, origin"
                          " FROM readings ORDER BY id").fetchall()
        # Every reading, counted, with its v0.1 id (ids 6..730: v0.1 numbered from 1) and every column.
        assert len(rows) == 725
        assert [r[0] for r in rows] == list(range(6, 731))
        assert [tuple(r[1:]) for r in rows] == [tuple(e) for e in expected]
        # Preprocessing status kept. Each minute's 6 ids run m1 energy, power, voltage, m2 energy, power,
        # voltage: m1's 120 energy readings less id 1 (deleted) are measured = 119; id 10 is m2's energy at
        # minute 1, invalid with its flags.
        assert db.execute("SELECT COUNT(*) FROM readings WHERE status = 'measured'").fetchone()[0] == 119
        assert db.execute("SELECT status, flags FROM readings WHERE id = 10").fetchone() == ("invalid", 8)
        # Sync goes on where it was, and no id is handed out twice.
        assert store.last_reading_id() == 730
        assert db.execute("SELECT value FROM sync_state WHERE key = 'last_reading_id'").fetchone()[0] == "300"
        assert store.insert_readings([Reading("m1", "energy_import", T0 + 7200, 2000.0, "kWh",
                                              Quantity.ENERGY_IMPORT)]) == 1
        assert store.last_reading_id() == 731
        # The old table, its indexes and latest_readings are gone; one poll row per meter and minute.
        assert "readings" in db.view_names() and "latest_readings" not in db.table_names()
        assert db.execute("SELECT COUNT(*) FROM polls").fetchone()[0] == 2 * 120 + 10 - 1 + 1   # m1's first poll (ids 1-3) was deleted; one new
        latest = {(r.meter_id, r.point): r.value for r in store.latest_readings()}
        assert latest[("m2", "voltage_l1")] == 1000.0 + 119 * 1.5 and latest[("m1", "energy_import")] == 2000.0
