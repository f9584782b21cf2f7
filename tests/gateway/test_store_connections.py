"""The store's connections follow the threads that use them: config reloads of a running gateway (each
starting a new sync thread, each applied from its own thread as a web request or SIGHUP would) leave the
number of store connections and of open file descriptors unchanged (issue 12: 3 connections and 22 fds
at start became 34 and 88 after 30 reloads)."""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import replace
from pathlib import Path

from drivers import load_profiles
from drivers.simulator import SimulatedDevice, SimulatorServer
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.paths import PROFILES_DIR
from tests.conftest import Broker, wait_until


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _reload_from_a_new_thread(gateway: Gateway) -> None:
    config = gateway.config
    # A description edit: a new config object, so a full reload (sync and buses restarted).
    changed = replace(config, meters=(replace(config.meters[0], description=f"edit {threading.active_count()}"),)
                      + config.meters[1:])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            gateway.reload(changed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    thread = threading.Thread(target=run, name="reload")
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors


def test_100_reloads_leave_connections_and_fds_unchanged(tmp_path: Path, mqtt_broker: Broker) -> None:
    profiles = load_profiles(PROFILES_DIR)
    config = load_config(None, profiles, data_dir_override=tmp_path / "data")
    # The demo's meters on a simulator of the test's own (a simulated bus would be restarted by each reload,
    # which takes longer than the rest of it).
    simulator = SimulatorServer([SimulatedDevice(m.device_id, profiles[m.profile]) for m in config.meters],
                                host="127.0.0.1").start()
    buses = tuple(replace(b, host=simulator.host, port=simulator.port) if b.name in config.simulated_buses else b
                  for b in config.buses)
    # Sync on, with a real broker on loopback: each reload starts a new sync thread that uses the store
    # and a new MQTT client, as a real reload does.
    broker = replace(config.sync.broker, host=mqtt_broker.host, port=mqtt_broker.port)
    config = replace(config, web=replace(config.web, enabled=False), buses=buses, simulated_buses=frozenset(),
                     sync=replace(config.sync, enabled=True, broker=broker))
    gateway = Gateway(config)
    gateway.start()
    try:
        assert gateway.store is not None
        store = gateway.store
        wait_until(lambda: store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] > 0, timeout_s=20,
                   message="first readings")
        # The scheduler's pool may start another long-lived worker at any moment (each keeps one connection,
        # as it should): paused, so that what is counted is what the reloads do. A reload stores the
        # readings read so far itself.
        assert gateway._scheduler is not None
        gateway._scheduler.pause()
        for _ in range(3):      # warm up: every kind of thread that touches the store has run once
            _reload_from_a_new_thread(gateway)
        wait_until(lambda: gateway.sync is not None and gateway.sync.status().connected, timeout_s=20,
                   message="sync connected")
        # MQTT clients of earlier syncs are freed by the cycle collector, not at once: collected before counting.
        gc.collect()
        connections, fds = store.connection_count(), _fds()
        # This thread, the store writer and the sync thread; a second scheduler worker if the preprocessing
        # job overlapped the writer before the pause (each a live thread with its one connection).
        assert 3 <= connections <= 4, connections
        for _ in range(100):
            _reload_from_a_new_thread(gateway)

        def same_counts() -> bool:
            gc.collect()
            return (store.connection_count(), _fds()) == (connections, fds)
        # The new sync thread opens its connection within moments of the reload.
        wait_until(same_counts, timeout_s=20, message=f"{connections} connections and {fds} fds as before the reloads")
    finally:
        gateway.stop()
        simulator.stop()
