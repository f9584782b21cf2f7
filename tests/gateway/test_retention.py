"""The daemon's retention job: synced raw readings older than ``sync.raw_retention_days`` go; unsynced
ones, the context the next preprocessing run needs, intervals and emissions stay."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from drivers import load_profiles
from drivers.model import Quantity, Reading
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from local_store import open_store
from sync import BrokerSettings, Receiver, ReceiverSettings
from tests.conftest import trusted_pair, wait_until

DAY_S = 86_400


def _old_readings(now: float) -> list[Reading]:
    """Hourly register readings of the demo's electricity meter from ten to seven days ago."""
    start = now - 10 * DAY_S
    return [Reading("main-incomer", "energy_import", start + 3600 * k, 1_000.0 + 5.0 * k, "kWh",
                    Quantity.ENERGY_IMPORT) for k in range(3 * 24)]


def test_retention_prunes_only_old_readings_the_receiver_committed(tmp_path: Path, mqtt_broker) -> None:
    rx_dir, data_dir = tmp_path / "receiver", tmp_path / "gateway-data"
    receiver_pub = trusted_pair(rx_dir, data_dir)
    config = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=data_dir)
    config = replace(config, web=replace(config.web, enabled=False), sync=replace(
        config.sync, broker=BrokerSettings(port=mqtt_broker.port), receiver_public_key=receiver_pub,
        batch_max_age_s=0.5, raw_retention_days=2))
    now = time.time()
    old = _old_readings(now)
    with open_store(config.database) as store:
        store.insert_readings(old, origin="import:history.csv")
        old_ids = {r.id for r in store.readings_after(0, 10_000)}
    receiver = Receiver(ReceiverSettings(rx_dir / "receiver.db", rx_dir / "keys", rx_dir / "trusted",
                                         BrokerSettings(port=mqtt_broker.port)))
    receiver.start()
    gateway = Gateway(config)
    gateway.start()
    try:
        assert gateway.sync is not None and gateway.store is not None
        wait_until(lambda: gateway.sync.status().synced_through >= max(old_ids), timeout_s=30,
                   message="the old readings committed at the receiver")
        # Live readings of the same series: what the next preprocessing run needs is counted back from them.
        wait_until(lambda: gateway.store.db.execute(
            "SELECT MAX(timestamp) FROM readings WHERE meter_id = 'main-incomer' AND point = 'energy_import'"
        ).fetchone()[0] > now - 60, timeout_s=15, message="live readings stored")
        gateway.process()                      # the source has used them: they may go
        unsynced_before = {r[0] for r in gateway.store.db.execute(
            "SELECT id FROM readings WHERE id > ?", (gateway.sync.status().synced_through,))}
        intervals_before = gateway.store.db.execute("SELECT COUNT(*), SUM(amount) FROM intervals").fetchone()

        pruned = gateway.retain()

        left = {r[0] for r in gateway.store.db.execute("SELECT id FROM readings WHERE id IN (SELECT value FROM "
                                                       "json_each(?))", (str(sorted(old_ids)),))}
        # Every old reading but the newest (the anchor the next run bridges from) is gone.
        assert pruned == len(old_ids) - 1 and left == {max(old_ids)}
        assert unsynced_before <= {r[0] for r in gateway.store.db.execute("SELECT id FROM readings")}
        assert gateway.store.db.execute("SELECT COUNT(*), SUM(amount) FROM intervals").fetchone() == intervals_before
        assert gateway.retain() == 0                                  # nothing more is old enough
    finally:
        gateway.stop()
        receiver.stop()
    with sqlite3.connect(rx_dir / "receiver.db") as conn:          # the receiver keeps its copy
        at_receiver = {r[0] for r in conn.execute("SELECT reading_id FROM readings")}
    assert old_ids <= at_receiver


def test_without_sync_or_a_retention_period_nothing_is_pruned(tmp_path: Path) -> None:
    config = load_config(None, load_profiles(PROFILES_DIR), data_dir_override=tmp_path / "data")
    config = replace(config, web=replace(config.web, enabled=False), sync=replace(config.sync, enabled=False,
                                                                                  raw_retention_days=1))
    with open_store(config.database) as store:
        store.insert_readings(_old_readings(time.time()))
    gateway = Gateway(config)
    gateway.start()
    try:
        assert gateway.retain() == 0        # no receiver: every raw reading is the only copy
        assert gateway.store is not None
        assert gateway.store.db.execute("SELECT COUNT(*) FROM readings WHERE origin = 'poll' AND timestamp < ?",
                                        (time.time() - 5 * DAY_S,)).fetchone()[0] == 72
    finally:
        gateway.stop()
