"""The store has one owner (issue 12 part 2): writes take the lock up front, every table comes from a
migration, and connections end with their threads."""

from __future__ import annotations

import threading
from pathlib import Path

from drivers.model import Quantity, Reading
from local_store import audit, open_store
from local_store.db import migrations, schema_version


def test_audit_entries_from_several_threads_under_a_concurrent_writer_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    store = open_store(path)
    writer_store = open_store(path)      # another connection set, as the daemon's beside a CLI command's
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        # Read, then write, in one transaction each time: the pattern that made a deferred audit
        # transaction fail at once with "database is locked". A short pause between commits, as any real
        # writer has (the daemon's commits once a second): without one, a writer that takes the lock again
        # at once can starve the others past their 30 s busy timeout, which is another matter.
        t = 1_700_000_000.0
        while not stop.is_set():
            with writer_store.transaction():
                writer_store.last_reading_id()
                writer_store.insert_readings([Reading("m1", "energy_import", t, 1.0, "kWh", Quantity.ENERGY_IMPORT)])
            written[0] += 1
            t += 1.0
            stop.wait(0.002)

    threads, per_thread, errors = 4, 40, []

    def recorder(n: int) -> None:
        try:
            for i in range(per_thread):
                audit.record(store.db, actor=f"t{n}", action="meter.edit", target=f"meter m{i}")
        except Exception as exc:  # noqa: BLE001 - the test reports every loss
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    workers = [threading.Thread(target=recorder, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    w.join(timeout=60)
    assert not errors, errors[:3]
    assert written[0] > 0                               # the writer really ran alongside
    # 4 threads x 40 entries = 160 entries, ids 1..160 without a gap, and the chain verifies.
    ids = [r[0] for r in store.db.execute("SELECT id FROM audit_log ORDER BY id")]
    assert ids == list(range(1, 161))
    result = audit.verify(store.db)
    assert result.ok and result.checked == 160
    writer_store.close()
    store.close()


def test_the_outbox_and_sync_state_tables_come_from_a_migration(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        applied = [m.name for m in migrations.applied(store.db)]
        assert "m005_sync_outbox" in applied and schema_version(store.db) == len(migrations._migrations)
        assert {"sync_outbox", "sync_state"} <= set(store.db.table_names())


def test_connections_of_finished_threads_are_closed(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        assert store.connection_count() == 1            # the one open_store used on this thread
        for _ in range(20):
            t = threading.Thread(target=lambda: store.db.execute("SELECT COUNT(*) FROM readings").fetchone())
            t.start()
            t.join(timeout=10)
            assert store.connection_count() == 1        # the finished thread's connection is gone
        done = threading.Event()
        release = threading.Event()

        def long_lived() -> None:
            store.db.execute("SELECT 1").fetchone()
            done.set()
            release.wait(10)
        t = threading.Thread(target=long_lived)
        t.start()
        done.wait(10)
        assert store.connection_count() == 2            # a live thread keeps its own
        release.set()
        t.join(timeout=10)
        assert store.connection_count() == 1
