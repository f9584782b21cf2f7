"""The one typed service interface under the shells (issue 12): what the web UI and SIGHUP call.

The web UI imports from ``gateway`` only this module: every change it makes (config, factors, accounts,
backups) and everything it shows (meter, sync and clock state, audit log, reports with their charts, scan
jobs) goes through :class:`Runtime`, a thin typed layer over the running :class:`gateway.daemon.Gateway`
and the libraries. Results are frozen dataclasses; refusals are exceptions whose message a person can
act on (:class:`ApplyError`, and the libraries' ``UserError``, ``BackupError``, ``FactorError``,
``ReportError``, ``DriverError`` re-exported here so a shell catches them without importing the layers
below).

Config changes have one path, :meth:`Runtime.apply_text` (and :meth:`Runtime.apply_data` over it):
validate, run (``Gateway.reload``), save atomically, audit. SIGHUP calls :meth:`Runtime.reload_from_file`,
which loads the file and then runs the same reload-and-audit step.

Scan jobs belong to the runtime (:meth:`Runtime.start_scan`): one thread per job asks one unit id at a
time through the bus owner, so results are listed as they are found, kept when the time limit is reached
or the job is cancelled, the remaining time is estimated, and :meth:`Runtime.continue_scan` goes on from
the first unit id not asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal

import sqlite_utils
import tomli_w
import tomlkit
import tomlkit.items
from tomlkit.exceptions import TOMLKitError

from drivers import DriverError, ExceptionResponseError, Profile, Reading
from drivers.model import Quantity
from drivers.scan import ScanResult, parse_units, scan_bus
from local_store import DataImportError, FactorError, NoReportDataError, ReportError, Store, audit, users
from local_store import backup as backups
from local_store.audit import AuditEntry, AuditVerification
from local_store.backup import BackupError, RestoreResult
from local_store.charts import bar_chart_svg, hbar_chart_svg
from local_store.db import write_transaction
from local_store.files import fsync_dir, write_atomically
from local_store.factors import default_factor_files, describe, load_library
from local_store.importer import add_instrument, list_instruments
from local_store.trace import render_text as render_trace
from local_store.trace import trace
from local_store.reports import BY_CHOICES, By, EmissionsSummary, build_report, render_csv, render_html, site_tz
from local_store.units import ACTIVITIES as _FACTOR_ACTIVITIES
from local_store.users import MIN_PASSWORD_LENGTH, Session, User, UserError
from sync import SyncError, SyncStatus
from sync.keys import GATEWAY_PUB, ensure_gateway_key, key_id, load_public
from sync.mqtt import Link

from gateway import __version__, metrics
from gateway import upgrade as upgrades
from gateway.clock import ClockState
from gateway.config import (ACTIVITIES, EMPTY_CONFIG, ConfigDiff, ConfigError, GatewayConfig, config_from_text,
                            diff_config_data, saved_config_path)
from gateway.daemon import Gateway, MeterStatus, ReloadError
from gateway.paths import RELEASE_KEYS_DIR
from gateway.rules import BAUDRATES, BUS, METER, SYNC, Rule, secret_keys
from gateway.tomlguard import TomlGuardError, checked_text
from gateway.upgrade import UpgradeError

__all__ = [
    "ACTIVITIES", "BAUDRATES", "BUS", "METER", "SYNC", "Rule", "ConfigDiff", "ImportPreview", "BY_CHOICES", "METRICS_CONTENT_TYPE", "MIN_PASSWORD_LENGTH", "Actor", "ApplyError", "ApplyResult", "AuditEntry",
    "AuditVerification", "BackupError", "BackupFile", "BackupView", "BrokerTest", "Change", "ChartText", "ClockState",
    "DriverError", "ExceptionResponseError", "EmissionCharts", "EmissionsSummary", "DataImportError", "FACTOR_ACTIVITIES", "FactorError", "FactorView", "GatewayConfig", "KeyView",
    "MeterStatus", "Reading", "ReportError", "NoReportDataError", "RestoreResult", "Runtime", "ScanFound", "ScanJob", "ScanResult",
    "Session", "SyncStatus", "SystemInfo", "UpgradeError", "UpgradeView", "User", "UserError", "parse_units",
    "suggested_activity",
]

DAEMON = "daemon"
#: the activities an emission factor can be for (the custom factor form's choices)
FACTOR_ACTIVITIES: tuple[str, ...] = tuple(sorted(_FACTOR_ACTIVITIES))
METRICS_CONTENT_TYPE = metrics.CONTENT_TYPE


@dataclass(frozen=True)
class Actor:
    """Who asks: a user name (``"-"`` before anyone logged in, ``"daemon"`` for SIGHUP) and, from the web UI,
    the client's address, which every audit entry of a web request carries."""

    name: str
    client: str | None = None

    def detail(self, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out = dict(detail or {})
        if self.client is not None:
            out["client"] = self.client
        return out


@dataclass(frozen=True)
class Change:
    """The audit entry a config change writes once it runs: action, target and JSON-able detail."""

    action: str
    target: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


#: how long a previewed import can be confirmed
IMPORT_PREVIEW_S = 1800.0


@dataclass(frozen=True)
class ImportPreview:
    """A checked upload waiting for its confirm step: what it changes against the running config."""

    token: str
    file: str
    diff: ConfigDiff
    old_sha256: str
    new_sha256: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ApplyResult:
    config: GatewayConfig
    restart_needed: str        # "" or what waits for a restart (web settings)


class ApplyError(Exception):
    """The change was not applied (nothing changed: file and running config); the message says why."""


@dataclass(frozen=True)
class BrokerTest:
    ok: bool
    where: str                 # host:port
    reason: str                # why not, "" when connected


@dataclass(frozen=True)
class KeyView:
    gateway_key: str | None    # the signing key's fingerprint; None: not made yet (sync makes it, or make_gateway_key)
    receiver_key: str          # the platform's sealing key's fingerprint, "" when none is configured
    receiver_error: str        # why the configured platform key cannot be read


@dataclass(frozen=True)
class UpgradeView:
    """The upgrade page: the running version, a requested upgrade not yet run, the last outcome."""

    version: str
    trusted_keys: int                       # release keys this box trusts (0: no upload can be accepted)
    pending: dict[str, Any] | None
    last: dict[str, Any] | None


@dataclass(frozen=True)
class SystemInfo:
    version: str
    gateway_id: str
    data_dir: Path
    db_bytes: int
    disk_total: int
    disk_free: int
    clock: ClockState
    pid: int


@dataclass(frozen=True)
class FactorView:
    factors: tuple[dict[str, Any], ...]
    regions: tuple[str, ...]
    region: str
    method: str
    gwp: str
    include_ch4_n2o: bool
    custom_file: Path
    instruments: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class BackupFile:
    name: str
    bytes: int
    mtime: float


@dataclass(frozen=True)
class BackupView:
    key_id: str
    files: tuple[BackupFile, ...]
    pending: bool
    directory: Path
    last_error: str


@dataclass(frozen=True)
class ChartText:
    """The words on the emission charts, in the user's language."""

    scope_title: str
    source_title: str
    scope_1: str
    scope_2: str


@dataclass(frozen=True)
class EmissionCharts:
    report: dict[str, Any] | None
    charts: tuple[str, ...]    # SVG text, made by local_store.charts (the HTML report draws with it too)
    start: date
    end: date                  # exclusive


ScanState = Literal["running", "done", "timeout", "cancelled", "failed"]


@dataclass(frozen=True)
class ScanFound:
    result: ScanResult
    activity: str              # what the meter most likely counts as, from its profile's points


@dataclass(frozen=True)
class ScanJob:
    id: str
    bus: str
    units: tuple[int, ...]
    done: int                  # unit ids asked so far
    current: int | None        # the unit id being asked
    found: tuple[ScanFound, ...]
    state: ScanState
    error: str
    started_at: float
    finished_at: float | None
    elapsed_s: float
    estimate_s: float | None   # the time the remaining unit ids should take

    @property
    def total(self) -> int:
        return len(self.units)

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def remaining(self) -> tuple[int, ...]:
        """The unit ids not asked yet: what "continue" scans."""
        return self.units[self.done:]

    @property
    def next_unit(self) -> int | None:
        return self.units[self.done] if self.done < len(self.units) else None


_ACTIVITY_BY_QUANTITY = ((Quantity.ENERGY_IMPORT, "electricity"), (Quantity.GAS_VOLUME, "natural_gas"),
                         (Quantity.STEAM_MASS, "steam"), (Quantity.HEAT_ENERGY, "heat"))


def suggested_activity(profile: Profile | None) -> str:
    """What a meter of this profile most likely counts as: the first cumulative quantity it measures that is
    an activity (imported energy -> electricity, gas volume -> natural gas, steam, heat), else ``none``."""
    if profile is None:
        return "none"
    quantities = {p.quantity for p in profile.points}
    for quantity, activity in _ACTIVITY_BY_QUANTITY:
        if quantity in quantities:
            return activity
    return "none"


class _ScanWork:
    """A scan job's mutable state; :meth:`snapshot` hands out a frozen :class:`ScanJob`."""

    def __init__(self, job_id: str, bus: str, units: Sequence[int], carried: Sequence[ScanFound],
                 unit_guess_s: float) -> None:
        self.id, self.bus, self.units = job_id, bus, tuple(units)
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.done = 0
        self.current: int | None = None
        self.found: list[ScanFound] = list(carried)
        self.state: ScanState = "running"
        self.error = ""
        self.started_at, self.started_mono = time.time(), time.monotonic()
        self.finished_at: float | None = None
        self.finished_mono: float | None = None
        self.unit_guess_s = unit_guess_s      # before the first unit is done: one reply timeout per unit id
        self.thread: threading.Thread | None = None

    def snapshot(self) -> ScanJob:
        with self.lock:
            end = self.finished_mono if self.finished_mono is not None else time.monotonic()
            elapsed = end - self.started_mono
            left = len(self.units) - self.done
            per_unit = elapsed / self.done if self.done else self.unit_guess_s
            estimate = None if self.state != "running" else round(per_unit * left, 1)
            return ScanJob(self.id, self.bus, self.units, self.done, self.current, tuple(self.found), self.state,
                           self.error, self.started_at, self.finished_at, round(elapsed, 1), estimate)

    def finish(self, state: ScanState, error: str = "") -> None:
        with self.lock:
            self.state, self.error, self.current = state, error, None
            self.finished_at, self.finished_mono = time.time(), time.monotonic()


class Runtime:
    """The running gateway as the shells see it. One instance per :class:`Gateway`; thread-safe."""

    SCAN_KEEP_S = 3600.0       # a finished scan job stays listed this long

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._apply_lock = threading.Lock()    # one change at a time: two technicians never overwrite each other
        self._scans: dict[str, _ScanWork] = {}
        self._scans_lock = threading.Lock()
        self._staged: dict[str, tuple[ImportPreview, str, float]] = {}   # token -> previewed import
        self._staged_lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the store is open (False before start and after stop)."""
        return self._gw.store is not None

    @property
    def config(self) -> GatewayConfig:
        return self._gw.config

    @property
    def restart_needed(self) -> str:
        return self._gw.restart_needed

    def profiles(self) -> Mapping[str, Profile]:
        return self._gw.profiles()

    def meter_status(self) -> list[MeterStatus]:
        return self._gw.meter_status()

    def sync_status(self) -> SyncStatus | None:
        return self._gw.sync_status()

    def emissions_summary(self) -> EmissionsSummary | None:
        return self._gw.emissions_summary()

    def test_read(self, bus: str, device_id: int, profile_id: str) -> list[Reading]:
        """One read through the bus owner. :raises DriverError: no such bus, or the meter did not answer;
        :raises KeyError: unknown profile."""
        return self._gw.test_read(bus, device_id, profile_id)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers (``status`` ok or degraded, and why)."""
        health: dict[str, Any] = self._gw.health()
        return health

    def metrics_text(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return metrics.render(self._gw)

    def clock(self) -> ClockState:
        """The one clock state (gateway.clock): the System page, the dashboard's alarm and ``/healthz`` show it."""
        state = self._gw.clock
        return state if state is not None else self._gw.check_clock()

    def system_info(self) -> SystemInfo:
        config = self.config
        disk = shutil.disk_usage(config.data_dir)
        try:
            version = metadata.version("carbon-edge-gateway")
        except metadata.PackageNotFoundError:
            version = "unknown"
        db_bytes = sum(p.stat().st_size for p in config.data_dir.glob("gateway.db*") if p.is_file())
        return SystemInfo(version, config.gateway_id, config.data_dir, db_bytes, disk.total, disk.free, self.clock(),
                          os.getpid())

    # -- audit -------------------------------------------------------------------------------------------
    def record(self, actor: Actor, action: str, target: str = "", detail: Mapping[str, Any] | None = None) -> None:
        """One audit entry. It takes the write lock up front (a deferred read-then-write would fail at once with
        "database is locked" when the daemon writes meanwhile)."""
        db = self._db()
        with write_transaction(db):
            audit.record(db, actor.name, action, target, actor.detail(detail))

    def audit_entries(self, limit: int, offset: int = 0, actor: str | None = None,
                      action: str | None = None) -> list[AuditEntry]:
        return audit.entries(self._db(), limit, offset, actor, action)

    def audit_verify(self) -> AuditVerification:
        return audit.verify(self._db())

    # -- config ------------------------------------------------------------------------------------------
    def config_data(self) -> dict[str, Any]:
        """The running config as TOML data (a fresh copy the caller may change): a ``tomlkit`` document, so
        :meth:`apply_data` writes it back with its comments and layout (issue 12: a web edit lost them)."""
        text = self.config.text
        return tomlkit.parse(text) if text else tomlkit.document()

    def config_text(self) -> str:
        return self.config.text

    def validate_text(self, text: str, origin: str = "web UI") -> GatewayConfig:
        """:raises ApplyError: the text is not a valid config (the message names key, value and fix)."""
        config = self.config
        try:
            # a meter whose profile file is broken stays disabled, as at start, rather than failing every edit
            return config_from_text(text, origin, self.profiles(), data_dir_override=config.data_dir,
                                    source_path=saved_config_path(config),
                                    broken_profiles=dict(config.profile_errors))
        except ConfigError as exc:
            raise ApplyError(str(exc)) from exc

    def apply_text(self, text: str, actor: Actor, change: Change | None = None, origin: str = "web UI") -> ApplyResult:
        """Validate ``text``, run it, save it, audit ``change``.

        The file is replaced atomically only once the reload worked, so a power cut or a refused config leaves
        the old file and the old running config.

        :raises ApplyError: nothing changed (file and running config).
        """
        with self._apply_lock:
            new = self.validate_text(text, origin)
            path = saved_config_path(self.config)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".gateway-", suffix=".toml", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                self._run(new, None, actor, change)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            fsync_dir(path.parent)
            return ApplyResult(new, self.restart_needed)

    def apply_data(self, data: Mapping[str, Any], actor: Actor, change: Change | None = None) -> ApplyResult:
        """Apply ``data`` built from :meth:`config_data`. :raises ApplyError: as :meth:`apply_text`."""
        if not self.config.text:
            # a config built in code has no TOML to edit: writing `data` would drop everything else
            raise ApplyError("the running config was not read from a TOML file, so it cannot be edited here")
        return self.apply_text(tomlkit.dumps(data), actor, change)

    # -- config import and export (issue 15) ---------------------------------------------------------------
    def preview_import(self, raw: bytes, filename: str) -> ImportPreview:
        """Check an uploaded config and what it would change; nothing runs until :meth:`confirm_import`.

        The file is read through the TOML guard (``gateway.tomlguard``: size, depth, keys, time and memory in
        a child process); it keeps this gateway's id and data directory; it is validated as a config file is
        (ids and names by the same rules as the forms).

        :raises ApplyError: the file is refused, with the reason (nothing is staged).
        """
        try:
            text = checked_text(raw)
            doc = tomlkit.parse(text)
        except (TomlGuardError, TOMLKitError) as exc:
            raise ApplyError(f"{filename}: {exc}") from exc
        if not doc:
            raise ApplyError(f"{filename}: {EMPTY_CONFIG}")
        gateway = doc.setdefault("gateway", tomlkit.table())
        if not isinstance(gateway, dict):
            raise ApplyError(f"{filename}: gateway must be a table: write it as [gateway] with key = value lines")
        # another gateway's file: this gateway keeps its own id and data directory, as its file writes them
        old_text = self.config.text
        old_data = tomllib.loads(old_text) if old_text else {}
        gateway["id"] = self.config.gateway_id
        if "data_dir" in old_data.get("gateway", {}):
            gateway["data_dir"] = old_data["gateway"]["data_dir"]
        elif "data_dir" in gateway:
            del gateway["data_dir"]
        text = tomlkit.dumps(doc)
        self.validate_text(text, origin=filename)
        diff = diff_config_data(old_data, tomllib.loads(text))
        preview = ImportPreview(secrets.token_urlsafe(16), filename, diff, _sha256(old_text), _sha256(text))
        with self._staged_lock:
            now = time.monotonic()
            for token in [t for t, (_, _, at) in self._staged.items() if now - at > IMPORT_PREVIEW_S]:
                del self._staged[token]
            while len(self._staged) >= 4:        # a few previews at a time; each holds at most the file's text
                del self._staged[next(iter(self._staged))]
            self._staged[preview.token] = (preview, text, now)
        return preview

    def confirm_import(self, token: str, actor: Actor) -> ApplyResult:
        """Run and save a previewed import; the audit entry keeps both config hashes and the diff.

        :raises ApplyError: the preview expired or was used, the running config changed since, or it did not run.
        """
        with self._staged_lock:
            staged = self._staged.pop(token, None)
        if staged is None or time.monotonic() - staged[2] > IMPORT_PREVIEW_S:
            raise ApplyError("this preview has expired or was already used: upload the file again")
        preview, text, _ = staged
        if _sha256(self.config.text) != preview.old_sha256:
            raise ApplyError("the running config changed since the preview: upload the file again to see what "
                             "the import changes now")
        detail = {"file": preview.file, "old_sha256": preview.old_sha256, "new_sha256": preview.new_sha256,
                  "diff": preview.diff.summary(), "removes_every_meter": preview.diff.removes_every_meter}
        return self.apply_text(text, actor, Change("config.import", "config", detail), origin=preview.file)

    def export_text(self, include_secrets: bool = False) -> str:
        """The running config as TOML. Secrets (``gateway.rules``: the broker password, the metrics token) are
        left out, with a comment where each was, unless ``include_secrets`` (an administrator who asks)."""
        text = self.config.text
        if include_secrets or not text:
            return text
        doc = tomlkit.parse(text)
        for section, key in secret_keys():
            table = doc.get(section)
            if isinstance(table, tomlkit.items.Table) and key in table:
                del table[key]
                table.add(tomlkit.comment(f"{key} = (a secret, left out of this export: set it where you import this)"))
        return tomlkit.dumps(doc)

    def reload_from_file(self, load: Callable[[], tuple[GatewayConfig, Mapping[str, Profile]]], where: str,
                         actor: Actor = Actor(DAEMON)) -> ApplyResult:
        """SIGHUP: ``load`` re-reads the config file and the profile files; the result runs through the same
        reload as a web edit. Audited here (``config.reload`` / ``config.reload_failed``).

        :raises ApplyError: the file did not load or the new config did not start; the running config stays.
        """
        old = self.config
        with self._apply_lock:
            try:
                new, profiles = load()
                self._run(new, profiles, actor, Change("config.reload", where, {
                    "old_sha256": hashlib.sha256(old.text.encode()).hexdigest(),
                    "new_sha256": hashlib.sha256(new.text.encode()).hexdigest()}))
            except (ConfigError, DriverError, ApplyError) as exc:
                self._gw.audit("config.reload_failed", where, {"error": str(exc)}, actor=actor.name)
                raise ApplyError(str(exc)) from exc
        return ApplyResult(new, self.restart_needed)

    def _run(self, new: GatewayConfig, profiles: Mapping[str, Profile] | None, actor: Actor,
             change: Change | None) -> None:
        try:
                self._gw.reload(new, profiles)
        except ReloadError as exc:
            raise ApplyError(str(exc)) from exc
        if change is not None:
            if self.running:
                self.record(actor, change.action, change.target, change.detail)

    # -- emission factors --------------------------------------------------------------------------------
    def custom_factor_file(self) -> Path:
        return self.config.data_dir / "factors" / "custom.toml"

    def factors(self) -> FactorView:
        library = self._store().library
        s = self.config.emissions
        factors = describe(sorted(library.factors, key=lambda f: (f.activity, f.parameter, f.region, f.valid_from)))
        regions = tuple(sorted({f.region for f in library.factors}))
        store = self._store()
        tz = site_tz(store.settings)
        instruments = tuple({**i, "start": datetime.fromtimestamp(i["start_ts"], tz).date().isoformat(),
                             "end": datetime.fromtimestamp(i["end_ts"], tz).date().isoformat()}
                            for i in list_instruments(store))
        return FactorView(tuple(factors), regions, s.region, s.method, s.gwp, s.include_ch4_n2o,
                          self.custom_factor_file(), instruments)

    def add_instrument(self, fields: Sequence[str], actor: Actor) -> None:
        """Add one contractual instrument (the fields of an instruments CSV row), checked like an imported row.

        :raises DataImportError: naming every problem; nothing was written.
        """
        result = add_instrument(self._store(), list(fields), place="web form")
        if result.rows:
            self.record(actor, "instruments.add", f"instrument {fields[0]}",
                        dict(zip(("instrument", "kind", "start", "end", "amount", "unit", "emission_factor"), fields)))

    def add_factor(self, entry: Mapping[str, Any], actor: Actor) -> None:
        """Add one factor to the custom factor file (made and named in ``[emissions] factor_files`` on first use),
        check the whole library with it before anything is written, then recalculate.

        :raises FactorError: the library refuses the entry (the message names it); nothing was written.
        :raises ApplyError: the config naming the file did not run; the file is as it was.
        """
        path = self.custom_factor_file()
        with self._apply_lock:
            content: dict[str, Any] = (
                tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else
                {"library": {"name": "Custom factors (web UI)", "version": 1, "priority": 100}, "factors": []})
            content.setdefault("factors", []).append(dict(entry))
            text = tomli_w.dumps(content)
            with tempfile.TemporaryDirectory() as tmp:
                trial = Path(tmp) / "custom.toml"
                trial.write_text(text, encoding="utf-8")
                others = [Path(p) for p in self.config.emissions.factor_files if Path(p) != path]
                try:
                    load_library(default_factor_files() + others + [trial])
                except FactorError as exc:
                    raise FactorError(str(exc).replace(str(trial), "custom.toml")) from exc
            old_text = path.read_text(encoding="utf-8") if path.is_file() else None
            write_atomically(path, text)
        data = self.config_data()
        files = data.setdefault("emissions", {}).setdefault("factor_files", [])
        try:
            if str(path) not in files:
                files.append(str(path))
                self.apply_data(data, actor)
        except ApplyError:
            if old_text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, old_text)
            raise
        self._store().reload_factors()
        self.record(actor, "factors.add", f"factor {entry['id']}",
                    {"entry": json.loads(json.dumps(dict(entry), default=str))})

    def trace(self, source_id: str, at: str) -> dict[str, Any]:
        """The chain behind one figure (``local_store.trace``); ``at`` is an ISO time in the site's time zone,
        or empty for the source's newest figure.

        :raises ReportError: unknown source, a time without a figure, or a time that does not parse.
        """
        store = self._store()
        if at.strip():
            try:
                when = datetime.fromisoformat(at.strip())
            except ValueError:
                raise ReportError(f"{at!r} is not a time: use 2026-03-10T08:07") from None
            ts = (when if when.tzinfo else when.replace(tzinfo=site_tz(store.settings))).timestamp()
        else:
            row = store.db.execute("SELECT MAX(start_ts) FROM emissions WHERE source_id = ? AND superseded_at IS NULL",
                                   (source_id,)).fetchone()
            ts = float(row[0]) if row and row[0] is not None else 0.0
        chain = trace(store, source_id, ts)
        chain["text"] = render_trace(chain)
        return chain

    # -- reports and charts ------------------------------------------------------------------------------
    def report(self, start: date, end: date, by: By) -> dict[str, Any]:
        """:raises ReportError: empty or reversed period, or no data in it (the message says what there is)."""
        return build_report(self._store(), start, end, by=by)

    @staticmethod
    def render_report(report: dict[str, Any], fmt: Literal["html", "csv", "json"]) -> tuple[str, str]:
        """The report as (body, MIME type)."""
        if fmt == "json":
            return json.dumps(report, ensure_ascii=False, indent=2, allow_nan=False), "application/json"
        if fmt == "csv":
            return render_csv(report), "text/csv"
        return render_html(report), "text/html"

    def emission_charts(self, per: Literal["day", "month"], text: ChartText, today: date | None = None) -> EmissionCharts:
        """The emissions page: the last 30 days (or 13 months) by scope, and the period by source, as SVG."""
        today = today or date.today()
        if per == "day":
            start, end = today - timedelta(days=29), today + timedelta(days=1)
        else:
            start, end = date(today.year - 1, today.month, 1), (today.replace(day=1) + timedelta(days=32)).replace(day=1)
        try:
            report = build_report(self._store(), start, end, by=per)
        except ReportError:
            return EmissionCharts(None, (), start, end)
        found = {r["key"]: r for r in report["breakdown"]}
        keys = _period_keys(start, end, per)    # every day or month of the period, empty ones too
        ticks = [k[5:] if per == "day" else k for k in keys]          # "11-25" for a day, "2025-11" for a month
        by_scope = bar_chart_svg(ticks, {k: [found.get(key, {}).get(k, 0.0) for key in keys]
                                         for k in ("scope_1", "scope_2")},
                                 {"scope_1": SCOPE_COLORS["scope_1"], "scope_2": SCOPE_COLORS["scope_2"]},
                                 text.scope_title, {"scope_1": text.scope_1, "scope_2": text.scope_2}, unit="tCO2e")
        by_source = hbar_chart_svg([(s["source"], s["tco2e"]) for s in report["by_source"]], text.source_title)
        return EmissionCharts(report, (by_scope, by_source), start, end)

    # -- accounts and sessions ---------------------------------------------------------------------------
    def has_users(self) -> bool:
        return users.has_users(self._db())

    def user(self, name: str) -> User | None:
        return users.get_user(self._db(), name)

    def users(self) -> list[User]:
        return users.list_users(self._db())

    def create_first_admin(self, name: str, password: str, actor: Actor) -> User:
        """First boot. :raises UserError: already set up, bad name or password."""
        db = self._db()
        with write_transaction(db):
            user = users.create_first_admin(db, name, password)
            audit.record(db, name, "user.setup", f"user {name}", actor.detail({"role": "admin"}))
        return user

    def login(self, name: str, password: str, actor: Actor, idle_s: float, absolute_s: float) -> User:
        """Check a password (with the progressive delays); audited either way. Expired sessions are deleted
        here rather than by a timer: logins are rare, rows are small.

        :raises UserError: wrong name or password, or locked for ``wait_s``.
        """
        db = self._db()
        try:
            user = users.authenticate(db, name, password, client=actor.client)
        except UserError as exc:
            self.record(Actor("-", actor.client), "login.failed", f"user {name[:64]}", {"reason": exc.code})
            raise
        self.record(Actor(user.name, actor.client), "login.ok", f"user {user.name}")
        users.purge_sessions(db, idle_s, absolute_s)
        return user

    def check_password(self, name: str, password: str) -> User:
        """:raises UserError: wrong password (counted like a failed login)."""
        return users.authenticate(self._db(), name, password)

    def add_user(self, name: str, password: str, role: str, actor: Actor) -> User:
        db = self._db()
        with write_transaction(db):
            user = users.add_user(db, name, password, role)
            audit.record(db, actor.name, "user.add", f"user {name}", actor.detail({"role": role}))
        return user

    def set_role(self, name: str, role: str, actor: Actor) -> None:
        db = self._db()
        with write_transaction(db):
            user = users.get_user(db, name)
            users.set_role(db, name, role)
            audit.record(db, actor.name, "user.role", f"user {name}",
                         actor.detail({"old": user.role if user else None, "new": role}))

    def set_password(self, name: str, password: str, actor: Actor) -> None:
        """A new password; every session of that user ends."""
        db = self._db()
        with write_transaction(db):
            users.set_password(db, name, password, now=time.time())
            audit.record(db, actor.name, "user.password", f"user {name}", actor.detail())

    def delete_user(self, name: str, actor: Actor) -> None:
        db = self._db()
        with write_transaction(db):
            user = users.get_user(db, name)
            users.delete_user(db, name)
            audit.record(db, actor.name, "user.delete", f"user {name}",
                         actor.detail({"role": user.role if user else None}))

    def secret(self, key: str) -> str:
        """A random secret made once and kept in the store (the key that signs CSRF tokens)."""
        return users.secret(self._db(), key)

    def load_session(self, session_id: str, idle_s: float, absolute_s: float) -> Session | None:
        return users.load_session(self._db(), session_id, idle_s, absolute_s)

    def new_session(self, user: str | None, data: dict[str, Any]) -> Session:
        return users.new_session(self._db(), user, data)

    def save_session(self, session: Session, changed: bool) -> None:
        users.save_session(self._db(), session, changed=changed)

    def end_session(self, session_id: str) -> None:
        users.end_session(self._db(), session_id)

    # -- cloud -------------------------------------------------------------------------------------------
    def keys(self) -> KeyView:
        """The key fingerprints, read only: showing them never creates a key (a GET changes nothing)."""
        keys_dir = self.config.keys_dir
        gateway: str | None = None
        if (keys_dir / GATEWAY_PUB).is_file():
            try:
                gateway = key_id(load_public(keys_dir / GATEWAY_PUB))
            except (SyncError, ValueError, OSError):
                gateway = None
        receiver, error = "", ""
        path = self.config.sync.receiver_public_key
        if path is not None and path.is_file():
            try:
                receiver = key_id(load_public(path))
            except (SyncError, ValueError, OSError) as exc:
                error = str(exc)
        return KeyView(gateway, receiver, error)

    def make_gateway_key(self, actor: Actor) -> str:
        """Make the gateway's signing key if it is missing (sync makes it too); returns its fingerprint."""
        existed = (self.config.keys_dir / GATEWAY_PUB).is_file()
        fingerprint = key_id(ensure_gateway_key(self.config.keys_dir).public_key())
        if not existed:
            self.record(actor, "keys.create", "gateway signing key", {"key_id": fingerprint})
        return fingerprint

    def test_broker(self, actor: Actor, timeout_s: float = 5.0) -> BrokerTest:
        """Connect to the configured broker once with a throw-away client id; audited."""
        broker = self.config.sync.broker
        link = Link(broker, client_id=f"{self.config.gateway_id}-test-{secrets.token_hex(3)}")
        link.start()
        deadline = time.monotonic() + timeout_s
        ok = False
        try:
            # a refused connection or an unknown host is known at once: say so instead of waiting out the timeout
            while not ok and not link.last_error and time.monotonic() < deadline:
                ok = link.connected.wait(0.05)
        finally:
            link.stop()
        where = f"{broker.host}:{broker.port}"
        self.record(actor, "cloud.test", f"broker {where}", {"ok": ok})
        return BrokerTest(ok, where, "" if ok else link.last_error)

    # -- backups -----------------------------------------------------------------------------------------
    def backups(self) -> BackupView:
        config = self.config
        try:
            key = backups.key_id(backups.load_backup_key(config.backup_key))
        except BackupError:
            key = ""
        files = tuple(BackupFile(p.name, p.stat().st_size, p.stat().st_mtime)
                      for p in reversed(backups.list_backups(config.backup_dir)))
        return BackupView(key, files, backups.staged_path(config.database).exists(), config.backup_dir,
                          self._gw.backup_error)

    def backup_now(self, actor: Actor) -> Path | None:
        """A backup now (the daemon audits ``backup.create``); None when it failed: ``backups().last_error``."""
        self.record(actor, "backup.request", "store")
        return self._gw.backup()

    def backup_file(self, name: str, actor: Actor) -> Path | None:
        """The backup file of that name, if the backup directory lists it (audited as a download)."""
        found = {p.name: p for p in backups.list_backups(self.config.backup_dir)}   # only names the library lists
        if name not in found:
            return None
        self.record(actor, "backup.download", name)
        return found[name]

    def stage_restore(self, write: Callable[[IO[bytes]], None], filename: str, actor: Actor) -> RestoreResult:
        """Check an uploaded backup and stage it for the next start. ``write`` copies the upload into a file
        beside the store (same disk, same protection), which is removed afterwards.

        :raises BackupError: the file was refused; nothing was staged (audited either way).
        """
        config = self.config
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".cgbak", dir=config.data_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            result = backups.stage_restore(Path(tmp), config.database, config.backup_key)
        except BackupError as exc:
            self.record(actor, "backup.restore_refused", filename, {"reason": str(exc)})
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.record(actor, "backup.restore_staged", filename, {"readings": result.readings,
                                                              "backup_created_at": result.backup_created_at})
        return result

    # -- upgrades: checked and staged here, run by carbon-gateway-upgrade.service (gateway/upgrade.py) ------
    def upgrades(self) -> UpgradeView:
        directory = upgrades.upgrade_dir(self.config.data_dir)
        keys = len(list(RELEASE_KEYS_DIR.glob("*.pub"))) if RELEASE_KEYS_DIR.is_dir() else 0
        return UpgradeView(__version__, keys, upgrades.read_json(directory / upgrades.REQUEST),
                           upgrades.read_json(directory / upgrades.RESULT))

    def request_upgrade(self, write: Callable[[IO[bytes]], None], filename: str, actor: Actor) -> dict[str, Any]:
        """Check an uploaded release bundle (signature, every file, version) and request the upgrade.

        :raises UpgradeError: refused; nothing was requested (audited either way).
        """
        directory = upgrades.upgrade_dir(self.config.data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tar", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            request = upgrades.stage_request(Path(tmp), filename, self.config.data_dir, (RELEASE_KEYS_DIR,),
                                             __version__, actor.name)
        except UpgradeError as exc:
            self.record(actor, "upgrade.refused", filename, {"reason": str(exc)})
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.record(actor, "upgrade.requested", request["to"], {k: request[k] for k in ("from", "to", "release_key")})
        return request

    # -- scan jobs ---------------------------------------------------------------------------------------
    def start_scan(self, bus: str, units: Sequence[int], actor: Actor, time_limit_s: float = 120.0,
                   carried: Sequence[ScanFound] = ()) -> ScanJob:
        """Scan ``units`` on a running bus through its owner (polling goes on between the scan's requests).

        A scan already running on that bus is returned instead of starting a second one.

        :raises DriverError: no such bus is running.
        """
        poller = self._gw.bus_poller(bus)
        with self._scans_lock:
            now = time.monotonic()
            for job_id in [k for k, w in self._scans.items()
                           if w.finished_mono is not None and now - w.finished_mono > self.SCAN_KEEP_S]:
                del self._scans[job_id]
            for work in self._scans.values():
                if work.bus == bus and work.state == "running":
                    return work.snapshot()
            work = _ScanWork(secrets.token_urlsafe(8), bus, units, carried, poller.bus.timeout_s)
            self._scans[work.id] = work
        profiles = dict(self.profiles())
        deadline = time.monotonic() + time_limit_s
        work.thread = threading.Thread(target=self._scan, args=(work, profiles, deadline), name=f"scan-{bus}",
                                       daemon=True)
        work.thread.start()
        self.record(actor, "bus.scan", f"bus {bus}", {"units": _units_text(units)})
        return work.snapshot()

    def scan_job(self, job_id: str) -> ScanJob | None:
        work = self._scans.get(job_id)
        return work.snapshot() if work is not None else None

    def cancel_scan(self, job_id: str, actor: Actor, wait_s: float = 30.0) -> ScanJob | None:
        """Stop a scan after the unit id it is asking; what it found stays. Returns the job once stopped."""
        work = self._scans.get(job_id)
        if work is None:
            return None
        if work.state == "running":
            work.cancel.set()
            self.record(actor, "bus.scan_cancel", f"bus {work.bus}", {"done": work.done, "total": len(work.units)})
            if work.thread is not None:
                work.thread.join(timeout=wait_s)
        return work.snapshot()

    def continue_scan(self, job_id: str, actor: Actor, time_limit_s: float = 120.0) -> ScanJob | None:
        """A new job over the unit ids the given one did not ask, keeping what it found. None: no such job."""
        old = self.scan_job(job_id)
        if old is None:
            return None
        if not old.finished or not old.remaining:
            return old
        return self.start_scan(old.bus, old.remaining, actor, time_limit_s, carried=old.found)

    def close(self) -> None:
        """Stop running scans (at shutdown)."""
        for work in list(self._scans.values()):
            work.cancel.set()
        for work in list(self._scans.values()):
            if work.thread is not None:
                work.thread.join(timeout=30)

    def _scan(self, work: _ScanWork, profiles: Mapping[str, Profile], deadline: float) -> None:
        """One unit id at a time, so each find is listed at once and a cancel or the time limit keeps the finds."""
        try:
            for unit in work.units:
                if work.cancel.is_set():
                    work.finish("cancelled")
                    return
                if time.monotonic() > deadline:
                    work.finish("timeout")
                    return
                with work.lock:
                    work.current = unit
                poller = self._gw.bus_poller(work.bus)    # the bus owner of now: a reload replaces it
                results = scan_bus(poller.bus, [unit], profiles, poller=poller)
                with work.lock:
                    work.found.extend(ScanFound(r, suggested_activity(profiles.get(r.profile or "")))
                                      for r in results)
                    work.done += 1
            work.finish("done")
        except (DriverError, OSError) as exc:
            work.finish("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a thread must not die silently: the page shows it
            work.finish("failed", f"{type(exc).__name__}: {exc}")

    # -- internals ---------------------------------------------------------------------------------------
    def _store(self) -> Store:
        store = self._gw.store
        if store is None:
            raise ApplyError("the gateway is not running")
        return store

    def _db(self) -> sqlite_utils.Database:
        return self._store().db


SCOPE_COLORS = {"scope_1": "#c0504d", "scope_2": "#4f81bd"}


def _period_keys(start: date, end: date, per: str) -> list[str]:
    keys: list[str] = []
    day = start
    while day < end:
        key = day.isoformat() if per == "day" else day.strftime("%Y-%m")
        if not keys or keys[-1] != key:
            keys.append(key)
        day += timedelta(days=1)
    return keys


def _units_text(units: Sequence[int]) -> str:
    """1,2,3,7 -> "1-3,7" (for the audit entry)."""
    parts: list[str] = []
    ordered = sorted(set(units))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


