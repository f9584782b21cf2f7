"""The daemon: wires drivers -> local_store -> sync and serves the web UI.

Threads: one per bus (owns the bus, polls on a monotonic schedule and queues readings), an APScheduler
pool (store writer, preprocessing + emissions), the ``sync`` thread, and the web server. A meter that
does not answer is reported and retried by its bus owner; it never stops the daemon.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from drivers import BusConfig, BusPoller, DriverError, MeterStats, Profile, Reading, SimulatedDevice, SimulatorServer
from drivers import load_profiles
from local_store import Store, StoreError, open_store
from local_store.reports import emissions_summary
from sync import SyncService, SyncStatus
from sync.keys import ensure_receiver_key

from gateway.config import GatewayConfig
from gateway.paths import PROFILES_DIR

log = logging.getLogger(__name__)

MAX_QUEUED_BATCHES = 10_000  # readings kept in memory while the disk refuses writes


class ReloadError(Exception):
    """A new config was not applied; the message says why. The previous config keeps running."""


@dataclass(frozen=True)
class MeterStatus:
    meter_id: str
    bus: str
    device_id: int
    profile: str
    stats: MeterStats
    values: tuple[dict, ...]     # latest stored value per point: point, value, unit, timestamp, quality


class Gateway:
    """The running gateway. ``start()`` returns once polling has started."""

    def __init__(self, config: GatewayConfig, profiles: Mapping[str, Profile] | None = None) -> None:
        self.config = config
        self._profiles = dict(profiles) if profiles is not None else load_profiles(PROFILES_DIR)
        self.store: Store | None = None
        self.sync: SyncService | None = None
        self._simulators: list[SimulatorServer] = []
        self._pollers: dict[str, BusPoller] = {}
        self._bus_threads: list[threading.Thread] = []
        self._readings: queue.Queue[list[Reading]] = queue.Queue(MAX_QUEUED_BATCHES)
        self._poll_stop = threading.Event()   # this config's bus threads; replaced on each reload
        self._reload_lock = threading.Lock()
        self.restart_needed = ""               # what a reload could not apply while running
        self._started_web = config.web
        self._scheduler: BackgroundScheduler | None = None
        self._web_server: Any = None
        self._web_thread: threading.Thread | None = None
        self.last_store_ok = 0.0           # monotonic time of the last successful poll -> store cycle
        self.store_error = ""

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(config.database, config.emissions)
        self._scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler.add_job(self.flush_readings, "interval", seconds=1, id="store-writer")
        self._scheduler.add_job(self.process, "interval", seconds=10, id="preprocess-emissions")
        self._scheduler.start()
        self._apply(config)
        if config.web.enabled:
            self._start_web()
        log.info("gateway %s started: %d bus(es), %d meter(s), data in %s", config.gateway_id,
                 len(config.buses), len(config.meters), config.data_dir)

    def reload(self, new_config: GatewayConfig) -> None:
        """Run ``new_config`` instead of the running one, or keep the running one.

        Polling and sync stop, readings already read are stored, then buses, meters, sources,
        emission settings and sync start with the new config. If that fails, the previous config is
        started again and :class:`ReloadError` says what failed. The data directory cannot change
        while running; web settings take effect at the next restart (``restart_needed`` says so).

        :raises ReloadError: the new config was not applied; the previous one is running.
        """
        with self._reload_lock:
            old = self.config
            if new_config.data_dir.resolve() != old.data_dir.resolve():
                raise ReloadError(f"gateway.data_dir cannot change while running ({old.data_dir} -> "
                                  f"{new_config.data_dir}): restart the gateway to move its data")
            self._stop_running()
            try:
                self._apply(new_config)
            except Exception as exc:  # anything that stops the new config starting: roll back
                log.error("config reload failed, rolling back to the previous config: %s", exc)
                self._stop_running()
                try:
                    self._apply(old)
                except Exception as again:
                    raise ReloadError(f"the new config could not start ({exc}), and restarting the previous "
                                      f"config failed too ({again}): check the log and restart the gateway") from again
                raise ReloadError(f"the new config could not start ({exc}); the previous config keeps running") from exc
            self.restart_needed = ("web settings changed: they take effect when the gateway restarts"
                                   if new_config.web != self._started_web else "")
            log.info("config reloaded: %d bus(es), %d meter(s)", len(new_config.buses), len(new_config.meters))

    def _apply(self, config: GatewayConfig) -> None:
        """Start what depends on the config: sources, buses (simulated ones first), sync."""
        assert self.store is not None
        for meter in config.meters:   # before a simulator is started for a profile that is not there
            if meter.profile not in self._profiles:
                raise DriverError(f"meter {meter.id}: unknown profile '{meter.profile}'")
        self.config = config
        self.store.configure_sources(config.sources, config.emissions)
        if config.demo_receiver_key:
            ensure_receiver_key(config.keys_dir)
        poll_stop = threading.Event()
        self._poll_stop = poll_stop
        buses = [self._start_simulator(bus) if bus.name in config.simulated_buses else bus for bus in config.buses]
        pollers: dict[str, BusPoller] = {}
        for bus in buses:
            pollers[bus.name] = BusPoller(bus, config.meters, self._profiles)
        self._pollers = pollers     # one assignment: readers (web UI threads) see the old or the new set
        for poller in pollers.values():
            thread = threading.Thread(target=self._poll_bus, args=(poller, poll_stop), name=f"bus-{poller.bus.name}",
                                      daemon=True)
            self._bus_threads.append(thread)
            thread.start()
        if config.sync.enabled:
            self.sync = SyncService(config.sync, self.store)
            self.sync.start()

    def _stop_running(self) -> None:
        """Stop what :meth:`_apply` started; readings already read are stored, not dropped."""
        self._poll_stop.set()
        for thread in self._bus_threads:
            thread.join(timeout=10)
        self._bus_threads = []
        for poller in self._pollers.values():
            poller.close()
        for simulator in self._simulators:
            simulator.stop()
        self._simulators = []
        if self.store is not None:
            self.flush_readings()
        if self.sync is not None:
            self.sync.stop()
            self.sync = None

    def stop(self) -> None:
        """Stop polling, store what was read, process it, stop sync and the web server."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        self._stop_running()
        self.process()
        if self._web_server is not None:
            self._web_server.close()
            if self._web_thread is not None:
                self._web_thread.join(timeout=10)
        if self.store is not None:
            self.store.close()
        log.info("gateway stopped")

    def _start_simulator(self, bus: BusConfig) -> BusConfig:
        devices = [SimulatedDevice(m.device_id, self._profiles[m.profile]) for m in self.config.meters if m.bus == bus.name]
        simulator = SimulatorServer(devices, host="127.0.0.1").start()
        self._simulators.append(simulator)
        return replace(bus, host=simulator.host, port=simulator.port)

    def _start_web(self) -> None:
        from webui import serve_gateway  # the web UI is optional for a headless gateway

        self._web_server, url = serve_gateway(self)
        self._web_thread = threading.Thread(target=self._web_server.run, name="web", daemon=True)
        self._web_thread.start()
        log.info("web UI on %s", url)

    # -- work ------------------------------------------------------------------------------------------
    def _poll_bus(self, poller: BusPoller, stop: threading.Event) -> None:
        while not stop.is_set():
            readings = poller.poll_due()
            if readings:
                try:
                    self._readings.put_nowait(readings)
                except queue.Full:
                    log.error("reading queue full (store not writing); dropping the oldest batch in memory")
                    self._readings.get_nowait()
                    self._readings.put_nowait(readings)
            stop.wait(min(poller.next_due_in(), 1.0))

    def flush_readings(self) -> int:
        """Write queued readings in one transaction; on failure they stay queued and are retried."""
        batches: list[list[Reading]] = []
        while True:
            try:
                batches.append(self._readings.get_nowait())
            except queue.Empty:
                break
        if not batches or self.store is None:
            return 0
        readings = [r for batch in batches for r in batch]
        try:
            written = self.store.insert_readings(readings)
        except (StoreError, OSError, Exception) as exc:  # disk full, read-only: keep them and retry
            if str(exc) != self.store_error:
                log.error("cannot store %d readings, keeping them in memory: %s", len(readings), exc)
            self.store_error = str(exc)
            for batch in batches:
                try:
                    self._readings.put_nowait(batch)
                except queue.Full:
                    break
            return 0
        if self.store_error:
            log.info("storing readings again")
        self.store_error = ""
        self.last_store_ok = time.monotonic()
        return written

    def process(self) -> None:
        if self.store is None:
            return
        try:
            self.store.process()
        except StoreError as exc:
            log.error("preprocessing/emissions: %s", exc)

    # -- what the web UI reads (webui.runtime.Runtime) --------------------------------------------------
    def profiles(self) -> Mapping[str, Profile]:
        return self._profiles

    def meter_status(self) -> list[MeterStatus]:
        latest: dict[str, list[dict]] = {}
        if self.store is not None:
            for r in self.store.latest_readings():
                latest.setdefault(r.meter_id, []).append(
                    {"point": r.point, "value": r.value, "unit": r.unit, "timestamp": r.timestamp,
                     "quality": r.quality, "reason": r.reason})
        stats: dict[str, MeterStats] = {}
        for poller in self._pollers.values():
            stats.update(poller.stats())
        return [MeterStatus(m.id, m.bus, m.device_id, m.profile, stats.get(m.id, MeterStats()),
                            tuple(latest.get(m.id, ()))) for m in self.config.meters]

    def sync_status(self) -> SyncStatus | None:
        return self.sync.status() if self.sync is not None else None

    def emissions_summary(self) -> Any:
        return emissions_summary(self.store) if self.store is not None else None

    def bus_poller(self, bus_name: str) -> BusPoller:
        """The owner of a running bus, for a scan through it (``drivers.scan.scan_bus(..., poller=)``), so a
        scan never collides with polling on the same line. :raises DriverError: no such bus is running."""
        poller = self._pollers.get(bus_name)
        if poller is None:
            raise DriverError(f"no bus named {bus_name!r}: use one of {', '.join(sorted(self._pollers)) or '(none)'}")
        return poller

    def test_read(self, bus_name: str, device_id: int, profile_id: str) -> list[Reading]:
        """A test read through the bus owner, so it never collides with polling on the same line."""
        poller = self._pollers.get(bus_name)
        if poller is None:
            raise DriverError(f"no bus named {bus_name!r}: use one of {', '.join(sorted(self._pollers)) or '(none)'}")
        return poller.read_once(device_id, self._profiles[profile_id])

    def health(self) -> dict:
        age = time.monotonic() - self.last_store_ok if self.last_store_ok else None
        sync = self.sync_status()
        return {
            "status": "ok" if age is not None and age < 60 and not self.store_error else "degraded",
            "last_store_age_s": age,
            "store_error": self.store_error,
            "sync_backlog_readings": sync.backlog_readings if sync else None,
            "sync_connected": sync.connected if sync else None,
        }
