"""Read the gateway's TOML config once, validate it, and build each library's settings.

Fields are checked first, against the declarative table in ``gateway.rules``, then cross-field rules (a
meter's bus and profile must exist, ids are unique, the profile can measure the activity).
Every message names the file, the key, the value and the fix, e.g.
``config/gateway.toml: meters[2].device_id = 300: use a Modbus unit id from 1 to 247``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers import BusConfig, MeterConfig, Profile, SerialSettings
from drivers.model import Quantity
from drivers.errors import not_utf8
from local_store import EmissionSettings, SourceSettings
from local_store.backup import KEY_FILE as BACKUP_KEY_FILE
from local_store.backup import BackupSettings
from local_store.errors import FactorError
from local_store.factors import default_factor_files, load_library
from local_store.units import ACTIVITIES as ACTIVITY_KINDS
from sync import BrokerSettings, SyncSettings

from gateway.paths import DEFAULT_CONFIG, DEFAULT_DATA_DIR
from gateway.rules import (BACKUP, BUS, EMISSIONS, GATEWAY, LIST_SECTIONS, METER, SECTIONS, SITE, SOURCE_RULE_KEYS, SYNC, WEB,
                           FieldError, Rule)

#: the activities a meter may carry, "none" included (from the emission library's list, local_store.units)
ACTIVITIES = tuple(c.value for c in METER["activity"].choices)


class ConfigError(Exception):
    """The config cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class WebSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    tls: bool = False               # HTTPS; default on when the UI listens beyond loopback
    cert_file: Path | None = None   # your own certificate; None: a self-signed one made on first boot
    key_file: Path | None = None
    metrics_token: str | None = None     # when set, /metrics wants "Authorization: Bearer <token>"
    public_dashboard: bool = False       # dashboard read-only without login (the demo; loopback only)


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    data_dir: Path
    buses: tuple[BusConfig, ...]
    meters: tuple[MeterConfig, ...]
    sources: tuple[SourceSettings, ...]
    emissions: EmissionSettings
    sync: SyncSettings
    web: WebSettings
    simulated_buses: frozenset[str] = frozenset()   # served by the built-in simulator (the demo)
    demo_receiver_key: bool = False                 # make a local receiver key so batches are sealed
    backup: BackupSettings = BackupSettings()
    source_path: Path | None = None
    text: str = field(default="", repr=False, compare=False)
    #: (profile id, message) of each profile file that did not load; the meters naming one are disabled
    profile_errors: tuple[tuple[str, str], ...] = ()
    #: (meter id, message) of each meter whose profile reads secondary-side values with no ratio set (issue 13)
    ratio_warnings: tuple[tuple[str, str], ...] = ()

    def meters_using(self, profile: str) -> list[str]:
        """Ids of the meters that name ``profile``."""
        return [m.id for m in self.meters if m.profile == profile]

    def disabled_meters(self) -> dict[str, str]:
        """Meter id -> why it is not polled: its profile file did not load (the alarm the daemon shows)."""
        errors = dict(self.profile_errors)
        return {m.id: disabled_reason(m.profile, errors[m.profile]) for m in self.meters if m.profile in errors}

    @property
    def database(self) -> Path:
        return self.data_dir / "gateway.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def backup_dir(self) -> Path:
        return self.backup.directory or self.data_dir / "backups"

    @property
    def backup_key(self) -> Path:
        return self.keys_dir / BACKUP_KEY_FILE

    @property
    def audit_key(self) -> Path:
        return self.keys_dir / "audit.key"


#: A config without [[meters]] is valid (a gateway installed before its meters are wired) but polls nothing.
NO_METERS = "no meters configured: nothing is polled and no readings are stored"
NO_METERS_FIX = ("add a [[meters]] table per meter (bus, device_id, profile; `carbon-gateway scan` finds them, "
                 "docs/configuration.md), then reload the gateway (systemctl reload carbon-gateway)")


def ratio_warning(meter: MeterConfig, profile: Profile) -> str | None:
    """The flag of a meter whose profile reads secondary-side values while its ratio is not set explicitly
    (the gateway cannot read it from the device), with the fix; None when nothing is missing."""
    needed = profile.secondary_side
    # pt_ratio defaults to 1 (low voltage, no PT): a meter with current transformers is flagged for ct_ratio only.
    if "current" in needed:
        missing = "ct_ratio" if meter.ct_ratio is None else None
    else:
        missing = "pt_ratio" if "voltage" in needed and meter.pt_ratio is None else None
    if missing is None:
        return None
    example = 'ct_ratio = "100/5"' if missing == "ct_ratio" else 'pt_ratio = "10000/100"'
    return (f"{profile.id} reports secondary-side values and the transformer ratio cannot be read from the "
            f"meter: set {missing} in its [[meters]] entry, e.g. {example} (1 for a direct connection); "
            "until then values are stored as read, unscaled")


#: an empty file is refused (issue 12: it started a default gateway; issue 15: an import removed everything)
EMPTY_CONFIG = ("the config is empty: an empty file would start a gateway with no buses, meters or sync; start from "
                "config/gateway.toml (docs/configuration.md) and give at least [gateway] id")


@dataclass(frozen=True)
class ConfigDiff:
    """What a new config changes against the running one (the import preview, and its audit entry).

    ``added``/``removed``/``changed`` map ``buses`` and ``meters`` to names and ids, and every other table to
    the keys whose value changed (values are not shown: some are secrets).
    """

    added: Mapping[str, tuple[str, ...]]
    removed: Mapping[str, tuple[str, ...]]
    changed: Mapping[str, tuple[str, ...]]
    removes_every_meter: bool

    @property
    def empty(self) -> bool:
        return not any((*self.added.values(), *self.removed.values(), *self.changed.values()))

    def summary(self) -> str:
        """One line for the audit log, e.g. ``meters: +m4 -m1 ~m2; sync: broker_host, tls``."""
        parts = []
        for table in SECTIONS:
            marks = [f"+{n}" for n in self.added.get(table, ())] + [f"-{n}" for n in self.removed.get(table, ())]
            marks += [f"~{n}" for n in self.changed.get(table, ())] if table in LIST_SECTIONS else \
                list(self.changed.get(table, ()))
            if marks:
                parts.append(f"{table}: {(' ' if table in LIST_SECTIONS else ', ').join(marks)}")
        return "; ".join(parts) or "no change"


def diff_config_data(old: Mapping[str, Any], new: Mapping[str, Any]) -> ConfigDiff:
    """Compare two configs as TOML data, table by table (``gateway.rules.SECTIONS``)."""
    added: dict[str, tuple[str, ...]] = {}
    removed: dict[str, tuple[str, ...]] = {}
    changed: dict[str, tuple[str, ...]] = {}
    for table in SECTIONS:
        if table in LIST_SECTIONS:
            key = "name" if table == "buses" else "id"
            before = {str(t.get(key)): t for t in old.get(table, []) if isinstance(t, Mapping)}
            after = {str(t.get(key)): t for t in new.get(table, []) if isinstance(t, Mapping)}
            added[table] = tuple(n for n in after if n not in before)
            removed[table] = tuple(n for n in before if n not in after)
            changed[table] = tuple(n for n in after if n in before and before[n] != after[n])
        else:
            a, b = old.get(table, {}), new.get(table, {})
            a, b = (a if isinstance(a, Mapping) else {}), (b if isinstance(b, Mapping) else {})
            changed[table] = tuple(sorted(k for k in {*a, *b} if a.get(k) != b.get(k)))
    return ConfigDiff(added, removed, changed,
                      removes_every_meter=bool(old.get("meters")) and not new.get("meters"))


def disabled_reason(profile: str, error: str) -> str:
    """Why a meter whose profile file did not load is not polled, with the fix."""
    return (f"profile {profile} did not load, so the meter is not polled: {error}; "
            "then reload the config (systemctl reload carbon-gateway)")


class _Table:
    """One TOML table checked field by field against its rules (``gateway.rules``); messages say where."""

    def __init__(self, origin: str, raw: Any, where: str, rules: Mapping[str, Rule]) -> None:
        self.origin, self.where, self.rules = origin, where, rules
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: {where} must be a table: write it as [{where}] with key = value lines")
        self.raw = raw
        unknown = [key for key in raw if key not in rules]
        if unknown:
            raise ConfigError(f"{origin}: {self.key(sorted(unknown)[0])}: unknown key; use one of "
                              f"{', '.join(sorted(rules))}")
        self.values: dict[str, Any] = {}
        for key, rule in rules.items():
            if key in raw:
                try:
                    self.values[key] = rule.check(raw[key])
                except FieldError as exc:
                    raise self.fail(key, str(exc)) from None
            elif rule.required:
                raise ConfigError(f"{origin}: {self.key(key)} is missing: {rule.missing or 'add it'}")
            else:
                self.values[key] = rule.default

    def key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def given(self, key: str) -> bool:
        return key in self.raw

    def fail(self, key: str, fix: str) -> ConfigError:
        value = self.raw.get(key)
        # shown as it is written in TOML: "text", true/false, 12.5
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)
        return ConfigError(f"{self.origin}: {self.key(key)} = {shown}: {fix}")


def _tables(origin: str, data: Mapping[str, Any], key: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{origin}: {key} must be a list of tables: write each entry as [[{key}]]")
    return value


def _bus(t: _Table) -> tuple[BusConfig, bool]:
    simulated = t["simulated"]
    serial = None
    if t["transport"] == "rtu":
        if t["serial_port"] is None:
            raise ConfigError(f"{t.origin}: {t.key('serial_port')} is missing: {t.rules['serial_port'].missing}")
        serial = SerialSettings(port=t["serial_port"], baudrate=t["baudrate"], parity=t["parity"],
                                stopbits=t["stopbits"], bytesize=t["bytesize"])
    return BusConfig(
        name=t["name"], transport=t["transport"], host=t["host"], port=0 if simulated else t["port"], serial=serial,
        timeout_s=t["timeout_s"], retries=t["retries"], inter_request_delay_s=t["inter_request_delay_s"],
        max_gap_registers=t["max_gap_registers"],
    ), simulated


def _meter(t: _Table) -> tuple[MeterConfig, SourceSettings | None]:
    meter = MeterConfig(id=t["id"], bus=t["bus"], device_id=t["device_id"], profile=t["profile"],
                        poll_interval_s=t["poll_interval_s"], enabled=t["enabled"], description=t["description"],
                        ct_ratio=t["ct_ratio"], pt_ratio=t["pt_ratio"])
    activity = t["activity"]
    if activity == "none":
        return meter, None
    # Preprocessing rules (docs/models.md, section 2); absent keys keep SourceSettings' defaults,
    # frozen_after_s = 0 turns the frozen-value check off.
    rules: dict[str, Any] = {key: t[key] for key in SOURCE_RULE_KEYS if t.given(key)}
    if rules.get("frozen_after_s") == 0:
        rules["frozen_after_s"] = None
    max_gap_s = rules.get("max_gap_s", SourceSettings.max_gap_s)
    if rules.get("long_gap_s", max_gap_s) < max_gap_s:
        raise t.fail("long_gap_s", f"use a value of at least max_gap_s ({max_gap_s:g} s)")
    return meter, SourceSettings(meter_id=meter.id, activity=activity, point=t["point"],
                                 description=meter.description, rollover_at=t["rollover_at"], **rules)


def _check_factors(e: _Table, emissions: EmissionSettings) -> None:
    """The factor files load and the region has factors; otherwise the daemon would start and fail every 10 s."""
    try:
        library = load_library(default_factor_files() + [Path(f) for f in emissions.factor_files])
    except FactorError as exc:
        raise ConfigError(f"{e.origin}: emissions.factor_files: {exc}") from exc
    regions = sorted({f.region for f in library.factors})
    if emissions.region not in regions:
        raise e.fail("region", f"no emission factor has this region; use one of {', '.join(regions)}, "
                               "or add factors for it in a factor file (docs/models.md)")


class _MeterChecks:
    """The cross-field rules of ``[[meters]]``, in time linear in the number of meters (issue 12: 20,000 meters
    took 40 s when each meter was compared with every earlier one)."""

    def __init__(self, origin: str, buses: Sequence[BusConfig], profiles: Mapping[str, Profile],
                 broken: Mapping[str, str]) -> None:
        self.origin, self.profiles, self.broken = origin, profiles, broken
        self.bus_names = [b.name for b in buses]
        self.buses = set(self.bus_names)
        self.ids: set[str] = set()
        self.units: set[tuple[str, int]] = set()
        self._points: dict[str, tuple[dict[str, Quantity], str]] = {}

    def points(self, profile: str) -> tuple[dict[str, Quantity], str]:
        """The profile's point names -> quantity, and the names joined for a message (once per profile)."""
        if profile not in self._points:
            found = {p.name: p.quantity for p in self.profiles[profile].points}
            self._points[profile] = found, ", ".join(found)
        return self._points[profile]

    def check(self, t: _Table, meter: MeterConfig, source: SourceSettings | None) -> MeterConfig:
        where = f"{self.origin}: {t.where}"
        if meter.id in self.ids:
            raise ConfigError(f'{where}.id = "{meter.id}": used twice; meter ids must be unique')
        if meter.bus not in self.buses:
            raise ConfigError(f'{where}.bus = "{meter.bus}": no such bus; use one of '
                              f'{", ".join(self.bus_names) or "(none: add a [[buses]] table)"}')
        if meter.profile in self.broken:
            meter = replace(meter, enabled=False)    # an alarm, not a stop: GatewayConfig.disabled_meters()
        elif meter.profile not in self.profiles:
            raise ConfigError(f'{where}.profile = "{meter.profile}": unknown profile; use one of '
                              f'{", ".join(sorted(self.profiles))}')
        if source is not None and meter.profile in self.profiles:
            names, shown = self.points(meter.profile)
            if source.point is not None and names and source.point not in names:
                raise ConfigError(f'{where}.point = "{source.point}": profile {meter.profile} has no such point; '
                                  f'use one of {shown}')
            wanted = ACTIVITY_KINDS[source.activity].quantities
            if source.point is None and names and not any(q in wanted for q in names.values()):
                # found only at the first preprocessing run otherwise (issue 12: 9 s after start)
                raise ConfigError(
                    f'{where}.activity = "{source.activity}": profile {meter.profile} has no point that measures '
                    f'{" or ".join(q.value for q in wanted)}; choose the activity this meter measures, or name the '
                    f'point that carries it with point = "<one of {shown}>"')
        unit = (meter.bus, meter.device_id)
        if unit in self.units:
            raise ConfigError(f"{where}.device_id = {meter.device_id}: another meter on bus {meter.bus} "
                              "has the same unit id; each device on a bus needs its own")
        self.ids.add(meter.id)
        self.units.add(unit)
        return meter


def _existing_file(t: _Table, key: str, path: Path | None) -> Path | None:
    """A file the config names exists when it is loaded (issue 12: a missing one stopped the start with
    "[Errno 2] No such file or directory" and nothing named, after the data directory was written)."""
    if path is not None and not path.is_file():
        relative = "" if Path(t.raw[key]).is_absolute() else " (a relative path is taken from gateway.data_dir)"
        raise t.fail(key, f"no such file: {path}{relative}; copy the file there or correct the path")
    return path


def parse_config(data: Mapping[str, Any], origin: str, profiles: Mapping[str, Profile],
                 data_dir_override: Path | None = None, base_dir: Path | None = None,
                 broken_profiles: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate parsed TOML and build a :class:`GatewayConfig`: each table's fields against
    ``gateway.rules``, then the rules between keys.

    :param broken_profiles: profile id -> error of each profile file that did not load
        (``drivers.load_profile_set``): a meter naming one is kept but disabled, with that reason; a meter
        naming a profile that does not exist at all is a config error.
    """
    broken = broken_profiles or {}
    if not data:
        raise ConfigError(f"{origin}: {EMPTY_CONFIG}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{origin}: {unknown[0]}: unknown key; use one of {', '.join(sorted(SECTIONS))}")
    g = _Table(origin, data.get("gateway", {}), "gateway", GATEWAY)
    gateway_id = g["id"]
    data_dir = data_dir_override or Path(g["data_dir"] or str(DEFAULT_DATA_DIR))

    buses: list[BusConfig] = []
    simulated: set[str] = set()
    names: set[str] = set()
    for index, raw in enumerate(_tables(origin, data, "buses")):
        bus, is_simulated = _bus(_Table(origin, raw, f"buses[{index}]", BUS))
        if bus.name in names:
            raise ConfigError(f'{origin}: buses[{index}].name = "{bus.name}": used twice; bus names must be unique')
        names.add(bus.name)
        buses.append(bus)
        if is_simulated:
            simulated.add(bus.name)
    meters: list[MeterConfig] = []
    sources: list[SourceSettings] = []
    ratio_warnings: list[tuple[str, str]] = []
    checks = _MeterChecks(origin, buses, profiles, broken)
    for index, raw in enumerate(_tables(origin, data, "meters")):
        t = _Table(origin, raw, f"meters[{index}]", METER)
        meter, source = _meter(t)
        meter = checks.check(t, meter, source)
        meters.append(meter)
        if meter.profile in profiles and (warning := ratio_warning(meter, profiles[meter.profile])):
            ratio_warnings.append((meter.id, warning))
        if source is not None:
            sources.append(source)

    e = _Table(origin, data.get("emissions", {}), "emissions", EMISSIONS)
    emissions = EmissionSettings(region=e["region"], method=e["method"], include_ch4_n2o=e["include_ch4_n2o"],
                                 gwp=e["gwp"], factor_files=e["factor_files"],
                                 vintage_rule=e["vintage_rule"],
                                 timezone=_Table(origin, data.get("site", {}), "site", SITE)["timezone"])
    _check_factors(e, emissions)

    def _path(value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else data_dir / path

    s = _Table(origin, data.get("sync", {}), "sync", SYNC)
    keys_dir = data_dir / "keys"
    budget_mb = s["disk_budget_mb"]
    demo_key = s["demo_receiver_key"]
    receiver_key = _existing_file(s, "receiver_public_key", _path(s["receiver_public_key"]))
    if receiver_key is None and demo_key:
        receiver_key = keys_dir / "receiver-sealing.pub"
    if s["enabled"] and receiver_key is None:
        # without it nothing is ever sealed or sent, while everything else looks fine (issue 12)
        raise ConfigError(f"{origin}: sync.receiver_public_key is missing: with sync.enabled = true the gateway needs "
                          "the platform's X25519 public key (PEM) to seal batches; set receiver_public_key = "
                          '"<file>" to the key you were given, or set enabled = false in [sync] until you have it')
    sync = SyncSettings(
        gateway_id=gateway_id, keys_dir=keys_dir, receiver_public_key=receiver_key,
        broker=BrokerSettings(host=s["broker_host"], port=s["broker_port"], tls=s["tls"],
                              ca_file=_existing_file(s, "ca_file", _path(s["ca_file"])),
                              client_cert=_existing_file(s, "client_cert", _path(s["client_cert"])),
                              client_key=_existing_file(s, "client_key", _path(s["client_key"])),
                              username=s["username"], password=s["password"]),
        enabled=s["enabled"], topic_prefix=s["topic_prefix"], batch_max_readings=s["batch_max_readings"],
        batch_max_age_s=s["batch_max_age_s"], bandwidth_bytes_per_s=s["bandwidth_bytes_per_s"],
        disk_budget_bytes=None if budget_mb is None else int(budget_mb * 1_000_000),
        raw_retention_days=s["raw_retention_days"],
    )
    w = _Table(origin, data.get("web", {}), "web", WEB)
    web_host = w["host"]
    token = w["metrics_token"]
    if token is not None and len(token) < 16:
        raise ConfigError(f"{origin}: web.metrics_token is too short ({len(token)} characters): use at least 16 "
                          f"random characters, e.g. from `openssl rand -hex 16`")
    # plain HTTP only on loopback (the demo); anything reachable from the factory network is HTTPS
    loopback = web_host in ("127.0.0.1", "::1", "localhost")
    cert_file, key_file = _path(w["cert_file"]), _path(w["key_file"])
    if (cert_file is None) != (key_file is None):
        raise w.fail("cert_file" if cert_file is None else "key_file",
                     "give both web.cert_file and web.key_file, or neither for a self-signed certificate")
    _existing_file(w, "cert_file", cert_file)
    _existing_file(w, "key_file", key_file)
    public_dashboard = w["public_dashboard"]
    if public_dashboard and not loopback:
        raise w.fail("public_dashboard", "a dashboard without login is only for a UI on loopback (the demo): anyone "
                                         "on the network would see it; set public_dashboard = false")
    web = WebSettings(enabled=w["enabled"], host=web_host, port=w["port"],
                      tls=not loopback if w["tls"] is None else w["tls"], cert_file=cert_file, key_file=key_file,
                      metrics_token=token, public_dashboard=public_dashboard)
    b = _Table(origin, data.get("backup", {}), "backup", BACKUP)
    backup = BackupSettings(enabled=b["enabled"], interval_h=b["interval_h"], keep=b["keep"],
                            directory=_path(b["directory"]))
    return GatewayConfig(gateway_id=gateway_id, data_dir=data_dir, buses=tuple(buses), meters=tuple(meters),
                         sources=tuple(sources), emissions=emissions, sync=sync, web=web,
                         simulated_buses=frozenset(simulated), demo_receiver_key=demo_key, backup=backup,
                         profile_errors=tuple(sorted(broken.items())), ratio_warnings=tuple(ratio_warnings))


def check_web_port(config: GatewayConfig) -> None:
    """The web UI's address is free: checked by ``run`` before anything is written (issue 12: a busy port
    stopped the start with "Address already in use" after the data directory was written).

    :raises ConfigError: naming web.host and web.port and the fix.
    """
    if not config.web.enabled:
        return
    import socket

    origin = config.source_path or "the config"
    family = socket.AF_INET6 if ":" in config.web.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the web server binds: TIME_WAIT is fine
        try:
            probe.bind((config.web.host, config.web.port))
        except OSError as exc:
            raise ConfigError(f"{origin}: web.port = {config.web.port}: cannot listen on {config.web.host}:"
                              f"{config.web.port} ({exc.strerror}): another program (or another gateway) uses it; "
                              "stop it or choose another port in [web]") from exc


def load_config(path: Path | None, profiles: Mapping[str, Profile], data_dir_override: Path | None = None,
                broken_profiles: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load ``path``; None: ``<data_dir>/gateway.toml`` if the web UI saved one, else the embedded default.

    ``broken_profiles`` as in :func:`parse_config`.

    :raises ConfigError: unreadable file, TOML syntax error (with line and column) or an invalid value.
    """
    if path is None:
        default = load_config(DEFAULT_CONFIG, profiles, data_dir_override, broken_profiles)
        saved = saved_config_path(default)
        if not saved.is_file():
            return default
        # the saved file lives in the data directory the default names: keep that directory
        return load_config(saved, profiles, data_dir_override or default.data_dir, broken_profiles)
    try:
        # utf-8-sig: Windows editors (Notepad) put a byte-order mark in front, which TOML does not allow.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror}); check the path given to --config") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {not_utf8(exc)}: "
                          "save the config as UTF-8 (not UTF-16), or check that --config names the TOML file") from exc
    return config_from_text(text, str(path), profiles, data_dir_override, source_path=path,
                            broken_profiles=broken_profiles)


def config_from_text(text: str, origin: str, profiles: Mapping[str, Profile], data_dir_override: Path | None = None,
                     source_path: Path | None = None, broken_profiles: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate TOML text (an upload, a config edited in the web UI) as :func:`load_config` does a file.

    :raises ConfigError: TOML syntax error (with line and column) or an invalid value.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: TOML syntax error: {exc}; fix that line (strings need quotes, "
                          "tables are [name] and lists of tables [[name]])") from exc
    config = parse_config(data, origin, profiles, data_dir_override, broken_profiles=broken_profiles)
    return GatewayConfig(**{**config.__dict__, "source_path": source_path, "text": text})


def saved_config_path(config: GatewayConfig) -> Path:
    """Where a config changed at run time is written: the ``--config`` file, or ``<data_dir>/gateway.toml``
    when the gateway runs on the embedded default (which is never written)."""
    if config.source_path is not None and config.source_path.resolve() != DEFAULT_CONFIG.resolve():
        return config.source_path
    return config.data_dir / "gateway.toml"
