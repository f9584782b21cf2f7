"""Issue 16: a restore never reuses a number that has left the gateway.

The documented disk-replacement flow (stop, restore, start) against a live receiver over a real
mosquitto: the restored gateway starts a new sync stream, so the readings written after the backup and
already committed at the receiver stay as they are, the backup's readings sent again are recognised,
the new readings are stored beside them, and `audit verify` is OK in the fresh data directory.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from drivers import Quantity, Reading
from gateway.cli import main
from local_store import audit, open_store
from sync import BrokerSettings, Receiver, ReceiverSettings, SyncService, SyncSettings, outbox, receiver_stats
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key
from tests.conftest import wait_until


def _readings(n: int, start: float) -> list[Reading]:
    # Distinct timestamps and values: (meter, timestamp, value) names one measurement.
    return [Reading("main", "energy_import", start + i, round(start + i * 0.5, 2), "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


def _received(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT meter_id, timestamp, value FROM readings ORDER BY timestamp").fetchall()


def _expected(readings: list[Reading]) -> list[tuple]:
    return sorted((r.meter_id, r.timestamp, r.value) for r in readings)


def _run_until_synced(settings: SyncSettings, store_path: Path) -> None:
    store = open_store(store_path)
    service = SyncService(settings, store)
    service.start()
    try:
        wait_until(lambda: service.status().backlog_readings == 0 and service.status().backlog_batches == 0,
                   timeout_s=60, message="every reading acknowledged")
    finally:
        service.stop()
        store.close()


def _gateway_and_receiver(tmp_path: Path, port: int) -> tuple[SyncSettings, Receiver]:
    """Sync settings of gateway gw-1 and a started receiver that trusts it, on the broker at ``port``."""
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    broker = BrokerSettings(port=port, backoff_min_s=0.2)
    settings = SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, broker, batch_max_readings=70,
                            batch_max_age_s=0.0, ack_timeout_s=5.0, tick_s=0.05)
    receiver = Receiver(ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted, broker))
    receiver.start()
    return settings, receiver


def test_issue16_restore_into_a_fresh_data_dir_keeps_exactly_once_and_the_audit_log(tmp_path: Path,
                                                                                    mqtt_broker) -> None:
    settings, receiver = _gateway_and_receiver(tmp_path, mqtt_broker.port)
    runner = CliRunner()
    old_dir, new_dir = tmp_path / "old-disk", tmp_path / "new-disk"
    store_path = old_dir / "gateway.db"
    try:
        first, backed_up, after, new = (_readings(300, 1_795_000_000.0), _readings(100, 1_795_001_000.0),
                                        _readings(200, 1_795_002_000.0), _readings(250, 1_795_003_000.0))
        with open_store(store_path) as store:
            audit.use_key(store_path, audit.ensure_key(old_dir / "keys" / "audit.key", store.db))
            audit.record(store.db, "admin", "meter.add", "meter main")
            audit.use_key(store_path, None)
            store.insert_readings(first)
        _run_until_synced(settings, store_path)
        # 100 more readings are stored but not yet batched when the nightly backup is taken ...
        with open_store(store_path) as store:
            store.insert_readings(backed_up)
        result = runner.invoke(main, ["backup", "--data-dir", str(old_dir), "--dest", str(tmp_path / "backups")])
        assert result.exit_code == 0, result.output
        backup_file = next((tmp_path / "backups").iterdir())
        # ... then the gateway keeps going: those 100 and 200 newer ones (ids 401-600) reach the receiver.
        with open_store(store_path) as store:
            store.insert_readings(after)
        _run_until_synced(settings, store_path)
        assert len(_received(tmp_path / "receiver.db")) == 600

        # The disk dies. New disk: restore into a fresh data dir with the backup key kept off the gateway.
        (new_dir / "keys").mkdir(parents=True)
        shutil.copy(old_dir / "keys" / "backup.key", new_dir / "keys" / "backup.key")
        result = runner.invoke(main, ["restore", str(backup_file), "--data-dir", str(new_dir)])
        assert result.exit_code == 0, result.output
        assert "audit key put back from the backup" in result.output
        assert (new_dir / "keys" / "audit.key").read_bytes() == (old_dir / "keys" / "audit.key").read_bytes()
        # Start: the restored store reuses reading ids 401-650 and sequence numbers the old disk had sent.
        with open_store(new_dir / "gateway.db") as store:
            store.insert_readings(new)
            assert [r.id for r in store.readings_after(0, 10**6)][-1] == 650  # 400 restored + 250 new
        _run_until_synced(settings, new_dir / "gateway.db")
        with open_store(new_dir / "gateway.db") as store:
            restored_stream = outbox.stream(store.db)
        assert restored_stream.id and restored_stream.lineage == (("", 1, 1), (restored_stream.id,
                                                                               restored_stream.lineage[-1][1], 401))
    finally:
        receiver.stop()

    # Every measurement at the receiver exactly once: 300 + 100 + 200 from the old disk, 250 new.
    received = _received(tmp_path / "receiver.db")
    assert received == _expected(first + backed_up + after + new)
    assert len(received) == 850
    stats = receiver_stats(tmp_path / "receiver.db")["gw-1"]
    assert stats["rejections"] == {} and stats["quarantined"] == 0 and stats["missing_seqs"] == 0
    assert stats["streams"] == 2 and stats["readings"] >= 850    # batches re-sent readings 301-400: recognised
    assert stats["chain_breaks"] == 0
    result = runner.invoke(main, ["audit", "verify", "--data-dir", str(new_dir)])
    assert result.exit_code == 0, result.output
    assert "audit log OK" in result.output


def test_issue16_a_store_copied_by_hand_raises_the_conflict_alarm_and_new_stream_recovers(tmp_path: Path,
                                                                                          mqtt_broker) -> None:
    settings, receiver = _gateway_and_receiver(tmp_path, mqtt_broker.port)
    original, copy = tmp_path / "a" / "gateway.db", tmp_path / "b" / "gateway.db"
    first, on_original, on_copy = (_readings(100, 1_795_000_000.0), _readings(50, 1_795_001_000.0),
                                   _readings(60, 1_795_002_000.0))
    try:
        with open_store(original) as store:
            store.insert_readings(first)
        _run_until_synced(settings, original)                 # batches 1 (70) and 2 (30)
        copy.parent.mkdir()
        shutil.copy(original, copy)                           # copied by hand, not restored
        with open_store(original) as store:
            store.insert_readings(on_original)
        _run_until_synced(settings, original)                 # batch 3: readings 101-150
        with open_store(copy) as store:
            store.insert_readings(on_copy)                    # readings 101-160 again, other values
            service = SyncService(settings, store)
            service.start()
            try:
                wait_until(lambda: "sync conflict" in service.status().alarm, timeout_s=30,
                           message="the conflict alarm")
                alarm = service.status().alarm
            finally:
                service.stop()
        assert "receiver already holds a different batch 3 of this gateway" in alarm
        assert "carbon-gateway sync new-stream" in alarm and "key" not in alarm
        result = CliRunner().invoke(main, ["sync", "new-stream", "--data-dir", str(copy.parent)])
        assert result.exit_code == 0, result.output
        assert "unacknowledged readings from id 101 on are sent again" in result.output
        _run_until_synced(settings, copy)
    finally:
        receiver.stop()
    # 100 shared, 50 from the original, 60 from the copy, each once (the copy's are a new stream's).
    assert _received(tmp_path / "receiver.db") == _expected(first + on_original + on_copy)
