"""The daemon: wires drivers -> local_store -> sync, and runs the web server the CLI hands it.

Threads: one per bus (owns the bus, polls on a monotonic schedule and queues readings), an APScheduler
pool (store writer, preprocessing + emissions), the ``sync`` thread, and the web server. A meter that
does not answer is reported and retried by its bus owner; it never stops the daemon.

The daemon does not import the web UI (issue 12): the CLI builds the web server over
:class:`gateway.runtime.Runtime` and hands it over as :attr:`Gateway.web_factory`, so there is no
gateway <-> webui cycle and a headless gateway runs without Flask.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from drivers import BusConfig, BusPoller, DriverError, MeterStats, Profile, Ratios, Reading, SimulatedDevice, SimulatorServer
from drivers import MeterConfig, load_profile_set
from local_store import Store, StoreError, audit, open_store
from local_store.backup import StoreLock, apply_staged_restore, create_backup, hold_store_lock, prune_backups
from local_store.reports import EmissionsSummary, emissions_summary
from local_store.reserve import DiskReserve, is_disk_full
from sync import SyncService, SyncStatus
from sync.keys import ensure_receiver_key

from gateway import __version__
from gateway.clock import UNSYNCHRONISED_REASON, ClockState, clock_state
from gateway.config import NO_METERS, NO_METERS_FIX, GatewayConfig
from gateway.logs import RepeatedError
from gateway.paths import PROFILE_DIRS
from gateway.scheduling import SteadyScheduler

log = logging.getLogger(__name__)

MAX_QUEUED_BATCHES = 10_000      # poll batches between two store-writer runs (a stalled writer fills it)
MAX_HELD_READINGS = 150_000      # readings kept in memory while the store refuses writes (~40 MB; MemoryMax=256M)
SHUTDOWN_STORE_WAIT_S = 15.0     # SIGTERM: how long to keep trying to store held readings (TimeoutStopSec=30)
RESERVE_RETRY_S = 60.0           # how often to try making the disk reserve again once it was used


class WebServer(Protocol):
    """A bound web server: ``run()`` serves until ``close()``."""

    def run(self) -> None: ...

    def close(self) -> None: ...


#: builds the bound web server and says its URL; called once by ``Gateway.start`` when ``[web] enabled``
WebFactory = Callable[[], tuple[WebServer, str]]


def _span(readings: list[Reading]) -> str:
    """Which meters and what time a list of readings covers, for a log line about losing them."""
    if not readings:
        return "none"
    meters = sorted({r.meter_id for r in readings})
    first, last = min(r.timestamp for r in readings), max(r.timestamp for r in readings)
    when = "%Y-%m-%d %H:%M:%S"
    return (f"meter(s) {', '.join(meters[:10])}{' ...' if len(meters) > 10 else ''} from "
            f"{time.strftime(when, time.gmtime(first))} to {time.strftime(when, time.gmtime(last))} UTC")


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
    warning: str = ""            # a configuration flag, e.g. a secondary-side meter with no CT ratio set


@dataclass
class _BusRun:
    """One running bus: the key it was started with (``Gateway._bus_keys``), its owner and thread, its simulator."""

    key: tuple
    poller: BusPoller
    thread: threading.Thread
    stop: threading.Event
    simulator: SimulatorServer | None


class Gateway:
    """The running gateway. ``start()`` returns once polling has started."""

    def __init__(self, config: GatewayConfig, profiles: Mapping[str, Profile] | None = None,
                 clock_probe: Callable[[], ClockState] = clock_state, web_factory: WebFactory | None = None) -> None:
        self.config = config
        self.web_factory = web_factory         # the CLI's web server (gateway.runtime + webui); None: headless
        self._clock_probe = clock_probe
        self._profiles = dict(profiles if profiles is not None else load_profile_set(PROFILE_DIRS).profiles)
        self.store: Store | None = None
        self.sync: SyncService | None = None
        self._runs: dict[str, _BusRun] = {}      # bus name -> what runs it (poller, thread, simulator)
        self._pollers: dict[str, BusPoller] = {}
        self._readings: queue.Queue[list[Reading]] = queue.Queue(MAX_QUEUED_BATCHES)
        self._reload_lock = threading.Lock()
        self.restart_needed = ""               # what a reload could not apply while running
        self._started_web = config.web
        self._scheduler: SteadyScheduler | None = None
        self._web_server: WebServer | None = None
        self._web_thread: threading.Thread | None = None
        self.last_store_ok = 0.0           # monotonic time of the last successful poll -> store cycle
        self.store_error = ""
        self._held: list[list[Reading]] = []   # batches the store refused, oldest first, retried in order
        self._held_count = 0
        self._flush_lock = threading.Lock()
        self._store_failures = 0               # consecutive refused writes: the retry backs off
        self._store_retry_at = 0.0
        self.readings_dropped = 0              # readings lost because memory was full too (counted, alarmed)
        self._dropping: list[Reading] = []     # first and last reading dropped in this episode (for the log)
        self._dropped_in_episode = 0
        self._reserve: DiskReserve | None = None
        self._reserve_tried = 0.0
        self._beats: dict[str, float] = {}     # bus name -> monotonic time its poll loop last came round
        self._flush_beat = 0.0                 # monotonic time the store writer last ran (either outcome)
        self._store_log = RepeatedError(log, "storing readings")
        self._backup_log = RepeatedError(log, "scheduled backup")
        self._process_log = RepeatedError(log, "preprocessing/emissions")
        self.last_backup: tuple[float, str] | None = None   # (epoch s, path) of the last scheduled backup
        self.clock_synchronized: bool | None = None          # None: cannot tell (see gateway.clock)
        self.clock: ClockState | None = None                 # the last answer: System page, dashboard, /healthz
        self.backup_error = ""
        self._lock: StoreLock | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold_store_lock(config.database)     # a restore never replaces the file under us
        restored_over = apply_staged_restore(config.database, config.audit_key)
        self.store = open_store(config.database, config.emissions)
        # Room the store can always use: released when the disk fills, so held readings are still stored.
        self._reserve = DiskReserve(config.database)
        self._reserve.ensure()
        self._reserve_tried = time.monotonic()
        # Seal audit entries (the web UI's too: it writes through this process) with a key outside the file.
        audit.use_key(config.database, audit.ensure_key(config.audit_key, self.store.db))
        self.check_clock()       # before the first poll, so its readings are flagged if need be
        if restored_over is not None:
            log.warning("restored the backup staged by the web UI; the replaced store is kept as %s", restored_over)
            self.audit("backup.restore", config.database.name, {"staged": True, "previous_copy": str(restored_over)})
        self._scheduler = SteadyScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler.add_job(self.flush_readings, "interval", seconds=1, id="store-writer")
        self._scheduler.add_job(self.process, "interval", seconds=10, id="preprocess-emissions")
        self._scheduler.add_job(self.check_clock, "interval", seconds=60, id="clock")
        if config.backup.enabled:
            self._scheduler.add_job(self.backup, "interval", hours=config.backup.interval_h, id="backup")
        self._scheduler.add_job(self.retain, "interval", hours=1, id="retention")
        self._scheduler.start()
        self._apply(config)
        if config.web.enabled:
            self._start_web()
        log.info("gateway %s started: %d bus(es), %d meter(s), data in %s", config.gateway_id,
                 len(config.buses), len(config.meters), config.data_dir)
        self._log_alarms(config)

    def _log_alarms(self, config: GatewayConfig) -> None:
        """At start and reload: no meters at all (WARNING), and each profile file that did not load, once, at
        ERROR, with the meters it disables."""
        if not config.meters:
            log.warning("%s; %s", NO_METERS, NO_METERS_FIX)
        for profile, error in config.profile_errors:
            users = config.meters_using(profile)
            log.error("profile %s did not load: %s; %s", profile, error,
                      f"meter(s) {', '.join(users)} disabled (not polled) until it is fixed and the config reloaded"
                      if users else "no meter uses it")

    def reload(self, new_config: GatewayConfig, profiles: Mapping[str, Profile] | None = None) -> None:
        """Run ``new_config`` instead of the running one, or keep the running one.

        Only what changed restarts (issue 12): a bus whose settings, meters (their descriptions aside) or
        meters' profiles changed is stopped and started again, the other buses keep polling without a gap;
        sync restarts only when ``[sync]`` changed; a description edit restarts nothing. Sources and emission
        settings are handed to the store each time (it reprocesses only a source that changed). If the new
        config fails to start, everything is stopped and the previous config started again, and
        :class:`ReloadError` says what failed. The data directory cannot change while running; web settings
        take effect at the next restart (``restart_needed`` says so).

        :param profiles: the profiles re-read with the new config (SIGHUP); None keeps the running ones.
        :raises ReloadError: the new config was not applied; the previous one is running.
        """
        with self._reload_lock:
            old, old_profiles = self.config, self._profiles
            if new_config.data_dir.resolve() != old.data_dir.resolve():
                raise ReloadError(f"gateway.data_dir cannot change while running ({old.data_dir} -> "
                                  f"{new_config.data_dir}): restart the gateway to move its data")
            if profiles is not None:
                self._profiles = dict(profiles)
            try:
                self._apply(new_config)
            except Exception as exc:  # anything that stops the new config starting: roll back
                log.error("config reload failed, rolling back to the previous config: %s", exc)
                self._stop_running()
                self._profiles = old_profiles
                try:
                    self._apply(old)
                except Exception as again:
                    raise ReloadError(f"the new config could not start ({exc}), and restarting the previous "
                                      f"config failed too ({again}): check the log and restart the gateway") from again
                raise ReloadError(f"the new config could not start ({exc}); the previous config keeps running") from exc
            self.restart_needed = ("web settings changed: they take effect when the gateway restarts"
                                   if new_config.web != self._started_web else "")
            log.info("config reloaded: %d bus(es), %d meter(s)", len(new_config.buses), len(new_config.meters))
            self._log_alarms(new_config)

    def _bus_keys(self, config: GatewayConfig) -> dict[str, tuple]:
        """Per bus, what its poller is built from: the bus settings, whether it is simulated, its meters without
        their descriptions (shown, never polled) and their profiles. A bus restarts when its key changes."""
        on_bus: dict[str, list[MeterConfig]] = {}
        for meter in config.meters:
            on_bus.setdefault(meter.bus, []).append(replace(meter, description=""))
        return {bus.name: (bus, bus.name in config.simulated_buses, tuple(on_bus.get(bus.name, ())),
                           tuple(self._profiles.get(m.profile) for m in on_bus.get(bus.name, ())))
                for bus in config.buses}

    def _apply(self, config: GatewayConfig) -> None:
        """Bring the running parts in line with ``config``: sources, then the buses that are new or changed
        (simulated ones with their simulator), then sync if ``[sync]`` changed. Unchanged buses keep running."""
        assert self.store is not None
        for meter in config.meters:   # before a simulator is started for a profile that is not there
            if meter.enabled and meter.profile not in self._profiles:
                raise DriverError(f"meter {meter.id}: unknown profile '{meter.profile}'")
        keys = self._bus_keys(config)
        self.config = config
        self.store.configure_sources(config.sources, config.emissions)
        if config.demo_receiver_key:
            ensure_receiver_key(config.keys_dir)
        changed = [name for name, run in self._runs.items() if keys.get(name) != run.key]
        if changed:
            log.info("restarting bus(es) %s: their settings, meters or profiles changed", ", ".join(changed))
        self._stop_buses(changed)
        for bus in config.buses:
            if bus.name not in self._runs:
                self._start_bus(config, bus, keys[bus.name])
        # one assignment: readers (web UI threads) see the old or the new set
        self._pollers = {bus.name: self._runs[bus.name].poller for bus in config.buses}
        if self.sync is not None and self.sync.settings != config.sync:
            log.info("restarting sync: [sync] changed")
            self.sync.stop()
            self.sync = None
        if config.sync.enabled and self.sync is None:
            self.sync = SyncService(config.sync, self.store)
            self.sync.start()

    def _start_bus(self, config: GatewayConfig, bus: BusConfig, key: tuple) -> None:
        simulator = self._start_simulator(config, bus) if bus.name in config.simulated_buses else None
        served = bus if simulator is None else replace(bus, host=simulator.host, port=simulator.port)
        try:
            poller = BusPoller(served, config.meters, self._profiles)
        except Exception:
            if simulator is not None:
                simulator.stop()
            raise
        stop = threading.Event()
        thread = threading.Thread(target=self._poll_bus, args=(poller, stop), name=f"bus-{bus.name}", daemon=True)
        self._runs[bus.name] = _BusRun(key, poller, thread, stop, simulator)
        thread.start()

    def _stop_buses(self, names: Sequence[str]) -> None:
        """Stop these buses' threads, then close their pollers and simulators (readings already queued stay
        queued for the store writer)."""
        runs = [self._runs.pop(name) for name in names if name in self._runs]
        for run in runs:
            run.stop.set()
        for run in runs:
            run.thread.join(timeout=10)
            run.poller.close()
            if run.simulator is not None:
                run.simulator.stop()
            self._beats.pop(run.poller.bus.name, None)

    def _stop_running(self) -> None:
        """Stop every bus and sync; readings already read are stored, not dropped."""
        self._stop_buses(list(self._runs))
        self._pollers = {}
        if self.store is not None:
            self.flush_readings(force=True)
        if self.sync is not None:
            self.sync.stop()
            self.sync = None

    def stop(self) -> None:
        """Stop polling, store what was read, process it, stop sync and the web server.

        Readings still held in memory (the store refused them) are tried again for up to
        ``SHUTDOWN_STORE_WAIT_S``; any that cannot be stored are counted as lost and logged at ERROR with
        their meters and time span, never dropped silently (issue 16).
        """
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        self._stop_running()
        deadline = time.monotonic() + SHUTDOWN_STORE_WAIT_S
        while self.held_readings() and self.store is not None and time.monotonic() < deadline:
            time.sleep(0.5)
            self.flush_readings(force=True)
        if self.held_readings():
            lost = [r for batch in [*self._held, *list(self._readings.queue)] for r in batch]
            self.readings_dropped += len(lost)
            self._held, self._held_count = [], 0
            log.error("shutting down with %d readings the store refused (%s): they are lost: %s", len(lost),
                      self.store_error or "the store is closed", _span(lost))
        self.process()
        if self._web_server is not None:
            self._web_server.close()
            if self._web_thread is not None:
                self._web_thread.join(timeout=10)
        if self.store is not None:
            self.store.close()
            audit.use_key(self.config.database, None)
        if self._lock is not None:
            self._lock.release()
        log.info("gateway stopped")

    def _start_simulator(self, config: GatewayConfig, bus: BusConfig) -> SimulatorServer | None:
        devices = [SimulatedDevice(m.device_id, self._profiles[m.profile]) for m in config.meters
                   if m.bus == bus.name and m.profile in self._profiles]
        if not devices:   # no meters on it, or only meters whose profile file is broken: nothing to serve or poll
            return None
        return SimulatorServer(devices, host="127.0.0.1").start()

    def _start_web(self) -> None:
        if self.web_factory is None:
            # The daemon never imports the web UI (issue 12): whoever starts it hands the server over, as
            # `carbon-gateway run` does (gateway.web_factory = lambda: webui.serve_gateway(Runtime(gateway)));
            # tests use tests.conftest.with_web(gateway).
            log.warning("[web] enabled = true, but this gateway was started without a web server (web_factory "
                        "is not set): running headless")
            return
        server, url = self.web_factory()
        self._web_server = server
        self._web_thread = threading.Thread(target=server.run, name="web", daemon=True)
        self._web_thread.start()
        log.info("web UI on %s", url)

    # -- work ------------------------------------------------------------------------------------------
    def _poll_bus(self, poller: BusPoller, stop: threading.Event) -> None:
        name = poller.bus.name
        while not stop.is_set():
            readings = poller.poll_due()
            self._beats[name] = time.monotonic()
            if readings and self.clock_synchronized is False:
                # Their timestamps may be far off: keep them, flagged, for preprocessing and the platform.
                readings = [r if r.reason else replace(r, reason=UNSYNCHRONISED_REASON) for r in readings]
            if readings:
                try:
                    self._readings.put_nowait(readings)
                except queue.Full:   # the store writer has not run for a long time: keep the newest
                    try:
                        self.readings_dropped += len(self._readings.get_nowait())
                    except queue.Empty:
                        pass
                    self._store_log.failed("the reading queue is full (the store writer is not running); "
                                           "dropping the oldest readings in memory")
                    self._readings.put_nowait(readings)
            stop.wait(min(poller.next_due_in(), 1.0))

    def flush_readings(self, force: bool = False) -> int:
        """Write queued readings in one transaction.

        When the store refuses (disk full, read-only directory) they are held in memory, oldest first,
        up to ``MAX_HELD_READINGS``, and written in their original order once it accepts again; retries
        back off from 1 s to 30 s so a small box does not spend itself on them. Beyond the bound the
        oldest are dropped and counted in ``readings_dropped``.

        :param force: try now even while backing off (the final flush at shutdown).
        """
        with self._flush_lock:
            now = time.monotonic()
            self._flush_beat = now
            while True:
                try:
                    batch = self._readings.get_nowait()
                except queue.Empty:
                    break
                self._held.append(batch)
                self._held_count += len(batch)
            while self._held_count > MAX_HELD_READINGS and len(self._held) > 1:
                dropped = self._held.pop(0)
                self._held_count -= len(dropped)
                self._dropped(dropped)
            if not self._held or self.store is None or (now < self._store_retry_at and not force):
                return 0
            readings = [r for batch in self._held for r in batch]
            try:
                try:
                    written = self.store.insert_readings(readings)
                except Exception as exc:  # noqa: BLE001
                    freed = self._reserve.release() if self._reserve is not None and is_disk_full(exc) else 0
                    if not freed:
                        raise
                    log.error("the disk is full: released the %.1f MB reserve (%s) so the %d readings held in memory "
                              "are stored; free disk space (df -h %s)", freed / 1e6, self._reserve.path if
                              self._reserve else "", len(readings), self.config.data_dir)
                    written = self.store.insert_readings(readings)
            except Exception as exc:  # noqa: BLE001 - disk full, read-only, I/O error: keep them and retry
                self._store_failures += 1
                delay_s = min(2.0 ** (self._store_failures - 1), 30.0)
                self._store_retry_at = now + delay_s
                self.store_error = f"{exc} ({self._held_count} readings held in memory, next try in {delay_s:g} s)"
                self._store_log.failed(f"{self.config.database}: {exc}: readings are kept in memory "
                                       f"(up to {MAX_HELD_READINGS}) and written when the store accepts them again; "
                                       f"free disk space or make the data directory writable")
                return 0
            self._held, self._held_count = [], 0
            self._store_failures, self._store_retry_at = 0, 0.0
            self._store_log.ok()
            self.store_error = ""
            self.last_store_ok = time.monotonic()
            if self._dropped_in_episode:
                log.error("storing works again; %d readings had to be dropped while the store and memory were full: "
                          "%s", self._dropped_in_episode, _span(self._dropping))
                self._dropping, self._dropped_in_episode = [], 0
            if self._reserve is not None and not self._reserve.held and now - self._reserve_tried >= RESERVE_RETRY_S:
                self._reserve_tried = now
                if self._reserve.ensure():
                    log.info("disk reserve %s made again", self._reserve.path)
            return written

    def _dropped(self, readings: list[Reading]) -> None:
        """Count readings lost because memory was full too; the first of an episode is logged at ERROR."""
        self.readings_dropped += len(readings)
        if not self._dropped_in_episode:
            log.error("memory for held readings is full (%d): dropping the oldest, counted in readings_dropped: %s",
                      MAX_HELD_READINGS, _span(readings))
        self._dropped_in_episode += len(readings)
        self._dropping = [self._dropping[0] if self._dropping else readings[0], readings[-1]]

    def held_readings(self) -> int:
        """Readings waiting in memory (queued or refused by the store)."""
        return self._held_count + sum(len(b) for b in list(self._readings.queue))

    def progress(self) -> float:
        """Monotonic time since which every bus loop and the store writer have come round: the
        watchdog is fed only when this moves. Dead meters or a full disk do not stop it (restarting
        would not help them); a hung bus thread or store writer does."""
        beats = [self._beats.get(name, 0.0) for name in self._pollers]
        return min([*beats, self._flush_beat])

    def process(self) -> None:
        """Preprocessing and emissions; a failure is logged (once until it works again), never raised."""
        if self.store is None:
            return
        try:
            self.store.process()
        except Exception as exc:  # noqa: BLE001 - StoreError, or SQLite refusing writes (disk full)
            self._process_log.failed(str(exc))
        else:
            self._process_log.ok()

    def check_clock(self) -> ClockState:
        """Ask whether the system clock is synchronised; log when the answer changes."""
        state = self._clock_probe()
        if state.synchronized is False and self.clock_synchronized is not False:
            log.warning("the system clock is not synchronised (%s): readings are flagged %s until it is; "
                        "check NTP with `carbon-gateway doctor`", state.detail, UNSYNCHRONISED_REASON)
        elif state.synchronized and self.clock_synchronized is False:
            log.info("the system clock is synchronised now (%s)", state.detail)
        self.clock_synchronized = state.synchronized
        self.clock = state
        return state

    def retain(self, now: float | None = None) -> int:
        """The retention job: prune raw readings older than ``sync.raw_retention_days`` that the receiver
        has committed. Unsynced readings, and what the next preprocessing run needs, are never pruned;
        intervals and emissions stay. Returns how many readings went. Never raises."""
        days = self.config.sync.raw_retention_days
        sync, store = self.sync, self.store
        if not days or sync is None or store is None:
            return 0
        older_than = (time.time() if now is None else now) - days * 86_400
        try:
            result = store.prune_synced_readings(sync.status().synced_through, 0, older_than_ts=older_than)
        except (StoreError, OSError) as exc:
            log.error("retention: cannot prune old raw readings: %s", exc)
            return 0
        if result.deleted:
            log.info("retention: pruned %d raw readings older than %g days, already committed at the receiver "
                     "(ids <= %d)", result.deleted, days, result.through_id)
        return result.deleted

    def backup(self) -> Path | None:
        """The scheduled backup: write one, keep the newest ``keep``, audit it. Never raises."""
        config = self.config
        try:
            path = create_backup(config.database, config.backup_dir, config.backup_key)
            removed = prune_backups(config.backup_dir, config.backup.keep)
        except StoreError as exc:
            self._backup_log.failed(str(exc))
            self.backup_error = str(exc)
            return None
        self._backup_log.ok()
        self.backup_error = ""
        self.last_backup = (time.time(), str(path))
        log.info("backup written: %s (%d old backup(s) removed)", path, len(removed))
        self.audit("backup.create", path.name, {"path": str(path), "removed": [p.name for p in removed]})
        return path

    def audit(self, action: str, target: str = "", detail: Mapping[str, Any] | None = None,
              actor: str = "daemon") -> None:
        """Record one of the daemon's own changes in the audit log; a failure is logged, never raised."""
        if self.store is None:
            return
        try:
            audit.record(self.store.db, actor, action, target, detail)
        except Exception as exc:  # noqa: BLE001 - the audit must not stop the daemon; the log says why
            log.error("cannot write the audit entry %s %s: %s", action, target, exc)

    # -- what the service interface reads (gateway.runtime.Runtime) --------------------------------------------------
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
        for meter_id, reason in self.config.disabled_meters().items():   # the alarm: why it is not polled
            stats[meter_id] = replace(stats.get(meter_id, MeterStats()), state="disabled", last_error=reason)
        warnings = dict(self.config.ratio_warnings)
        return [MeterStatus(m.id, m.bus, m.device_id, m.profile, stats.get(m.id, MeterStats()),
                            tuple(latest.get(m.id, ())), warnings.get(m.id, "")) for m in self.config.meters]

    def sync_status(self) -> SyncStatus | None:
        return self.sync.status() if self.sync is not None else None

    def emissions_summary(self) -> EmissionsSummary | None:
        return emissions_summary(self.store) if self.store is not None else None

    def bus_poller(self, bus_name: str) -> BusPoller:
        """The owner of a running bus, for a scan through it (``drivers.scan.scan_bus(..., poller=)``), so a
        scan never collides with polling on the same line. :raises DriverError: no such bus is running."""
        poller = self._pollers.get(bus_name)
        if poller is None:
            raise DriverError(f"no bus named {bus_name!r}: use one of {', '.join(sorted(self._pollers)) or '(none)'}")
        return poller

    def test_read(self, bus_name: str, device_id: int, profile_id: str) -> list[Reading]:
        """A test read through the bus owner, so it never collides with polling on the same line, and as a
        transaction of its own that leaves the live plan alone. Values are primary by the CT/PT ratios of the
        configured meter at that bus, unit and profile, if there is one (as its live values are)."""
        poller = self._pollers.get(bus_name)
        if poller is None:
            raise DriverError(f"no bus named {bus_name!r}: use one of {', '.join(sorted(self._pollers)) or '(none)'}")
        meter = next((m for m in self.config.meters
                      if (m.bus, m.device_id, m.profile) == (bus_name, device_id, profile_id)), None)
        return poller.read_once(device_id, self._profiles[profile_id],
                                ratios=meter.ratios if meter is not None else Ratios())

    def health(self) -> dict:
        """What ``/healthz`` answers: ``status`` is ok while readings are stored, else degraded, with why."""
        age = time.monotonic() - self.last_store_ok if self.last_store_ok else None
        sync = self.sync_status()
        disabled = self.config.disabled_meters()
        sync_alarm = sync.alarm if sync else ""
        healthy = age is not None and age < 60 and not self.store_error and not disabled and not sync_alarm
        return {
            "status": "ok" if healthy else "degraded",
            "version": __version__,             # the running release: `carbon-gateway upgrade` waits for it
            "last_store_age_s": age,
            "store_error": self.store_error,
            "readings_held_in_memory": self.held_readings(),
            "readings_dropped": self.readings_dropped,
            "sync_backlog_readings": sync.backlog_readings if sync else None,
            "sync_connected": sync.connected if sync else None,
            "sync_alarm": sync_alarm,             # disk budget exceeded, or a sync conflict: with the fix
            "clock_synchronized": self.clock_synchronized,
            "backup_error": self.backup_error,
            "restart_needed": self.restart_needed,
            "disabled_meters": disabled,          # meter id -> why (its profile file did not load)
            "profile_errors": dict(self.config.profile_errors),
        }

    def sync_lag_s(self, now: float | None = None) -> float:
        """Age of the oldest reading the receiver has not acknowledged; 0 when everything is synced."""
        sync = self.sync_status()
        if sync is None or self.store is None:
            return 0.0
        oldest = self.store.readings_after(sync.synced_through, 1)
        return max(0.0, (time.time() if now is None else now) - oldest[0].timestamp) if oldest else 0.0
