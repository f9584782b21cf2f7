"""Read the gateway's TOML config once, validate it, and build each library's settings.

Fields are checked first, then cross-field rules (a meter's bus and profile must exist, ids are unique).
Every message names the file, the key, the value and the fix, e.g.
``config/gateway.toml: meters[2].device_id = 300: use a Modbus unit id from 1 to 247``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers import BusConfig, MeterConfig, Profile, SerialSettings, parse_ratio
from drivers.errors import not_utf8
from local_store import EmissionSettings, SourceSettings
from local_store.backup import KEY_FILE as BACKUP_KEY_FILE
from local_store.backup import BackupSettings
from local_store.errors import FactorError
from local_store.factors import default_factor_files, load_library
from sync import BrokerSettings, SyncSettings

from gateway.paths import DEFAULT_CONFIG, DEFAULT_DATA_DIR

ACTIVITIES = ("electricity", "electricity_export", "natural_gas", "raw_coal", "diesel", "gasoline", "lpg",
              "fuel_oil", "heat", "heat_export", "steam", "none")


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


def disabled_reason(profile: str, error: str) -> str:
    """Why a meter whose profile file did not load is not polled, with the fix."""
    return (f"profile {profile} did not load, so the meter is not polled: {error}; "
            "then reload the config (systemctl reload carbon-gateway)")


class _Reader:
    """Typed access to one TOML table with messages that say where."""

    def __init__(self, origin: str, table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        self.origin, self.table, self.where = origin, table, where
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{origin}: {self._key(unknown[0])}: unknown key; use one of {', '.join(sorted(allowed))}")

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, fix: str) -> ConfigError:
        value = self.table.get(key)
        # shown as it is written in TOML: "text", true/false, 12.5
        shown = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)
        return ConfigError(f"{self.origin}: {self._key(key)} = {shown}: {fix}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., fix: str = "") -> Any:
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"{self.origin}: {self._key(key)} is missing: {fix or 'add it'}")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join({str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
                                .get(k, k.__name__) for k in kinds)
            raise self.fail(key, fix or f"use {names}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> Any:
        value = self.get(key, str, default, fix=f"use one of {', '.join(choices)}")
        if value not in choices and value is not default:
            raise self.fail(key, f"use one of {', '.join(choices)}")
        return value

    def number(self, key: str, default: Any, low: float, high: float, unit: str = "") -> float:
        value = self.get(key, float, default)
        if not low <= value <= high:
            raise self.fail(key, f"use a value from {low:g} to {high:g}{unit}")
        return value

    def whole(self, key: str, default: int, low: int, high: int, unit: str = "") -> int:
        """A whole number from ``low`` to ``high``: 1.5 stop bits or port 1883.5 is a typo, not a value to round."""
        value = self.number(key, default, low, high, unit)
        if value != int(value):
            raise self.fail(key, f"use a whole number from {low} to {high}{unit}")
        return int(value)

    def text(self, key: str, default: Any = ..., fix: str = "") -> Any:
        """A non-empty string (an empty name, host or id is never meant)."""
        value = self.get(key, str, default, fix)
        if value == "":
            raise self.fail(key, fix or "use a non-empty string")
        return value

    def optional_number(self, key: str, low: float, high: float, unit: str = "") -> float | None:
        """Like :meth:`number`, None when the key is absent (the setting is off)."""
        return self.number(key, ..., low, high, unit) if key in self.table else None


def _tables(origin: str, data: Mapping[str, Any], key: str) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{origin}: {key} must be a list of tables: write each entry as [[{key}]]")
    return value


def _bus(origin: str, index: int, raw: dict) -> tuple[BusConfig, bool]:
    r = _Reader(origin, raw, f"buses[{index}]", {"name", "transport", "host", "port", "serial_port", "baudrate",
                                                  "parity", "stopbits", "bytesize", "timeout_s", "retries",
                                                  "inter_request_delay_s", "max_gap_registers", "simulated"})
    name = r.text("name", fix="give the bus a name, e.g. name = \"rs485-1\"")
    transport = r.choice("transport", ("tcp", "rtu", "rtu_over_tcp"))
    simulated = r.get("simulated", bool, False)
    serial = None
    if transport == "rtu":
        serial = SerialSettings(
            port=r.get("serial_port", str, fix="name the serial device, e.g. serial_port = \"/dev/ttyUSB0\""),
            baudrate=int(r.choice("baudrate", ("1200", "2400", "4800", "9600", "19200", "38400", "57600", "115200"),
                                  "9600")) if isinstance(raw.get("baudrate"), str) else
            r.whole("baudrate", 9600, 300, 115200, " baud"),
            parity=r.choice("parity", ("N", "E", "O"), "N"),
            stopbits=r.whole("stopbits", 1, 1, 2),
            bytesize=r.whole("bytesize", 8, 7, 8),
        )
    port = 0 if simulated else r.whole("port", 502, 1, 65535)
    return BusConfig(
        name=name, transport=transport, host=r.text("host", "127.0.0.1"), port=port, serial=serial,
        timeout_s=r.number("timeout_s", 1.0, 0.05, 30, " s"), retries=r.whole("retries", 0, 0, 5),
        inter_request_delay_s=r.number("inter_request_delay_s", 0.0, 0, 5, " s"),
        max_gap_registers=r.whole("max_gap_registers", 10, 0, 100),
    ), simulated


#: Per-meter preprocessing rules in [[meters]]: key -> (lowest, highest, unit for the message).
_RULE_KEYS: dict[str, tuple[float, float, str]] = {
    "max_gap_s": (60, 86_400, " s"),
    "long_gap_s": (60, 864_000, " s"),
    "frozen_after_s": (0, 864_000, " s (0: off)"),
    "max_rate_per_h": (0.001, 1e12, " per hour"),
    "steam_enthalpy_kj_per_kg": (2000, 4000, " kJ/kg"),
}


def _ratio(r: _Reader, key: str) -> float | None:
    """``ct_ratio``/``pt_ratio``: "100/5" or a number; None when the key is absent (issue 13)."""
    if key not in r.table:
        return None
    try:
        return parse_ratio(r.table[key], key)
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None


def _meter(origin: str, index: int, raw: dict) -> tuple[MeterConfig, SourceSettings | None]:
    r = _Reader(origin, raw, f"meters[{index}]", {"id", "bus", "device_id", "profile", "poll_interval_s", "enabled",
                                                   "description", "activity", "point", "rollover_at", "ct_ratio", "pt_ratio",
                                                   *_RULE_KEYS})
    device_id = r.get("device_id", int, fix="set the meter's Modbus unit id (1-247)")
    if not 1 <= device_id <= 247:
        raise r.fail("device_id", "use a Modbus unit id from 1 to 247")
    meter = MeterConfig(id=r.text("id", fix="give the meter a unique id, e.g. id = \"main-incomer\""),
                        bus=r.get("bus", str, fix="name the bus the meter is wired to"), device_id=device_id,
                        profile=r.get("profile", str, fix="name a profile from config/profiles/"),
                        poll_interval_s=r.number("poll_interval_s", 5.0, 0.2, 86400, " s"),
                        enabled=r.get("enabled", bool, True), description=r.get("description", str, ""),
                        ct_ratio=_ratio(r, "ct_ratio"), pt_ratio=_ratio(r, "pt_ratio"))
    activity = r.choice("activity", ACTIVITIES, "none")
    if activity == "none":
        return meter, None
    rollover = r.number("rollover_at", None, 1, 1e18) if "rollover_at" in raw else None
    # Preprocessing rules (docs/models.md, section 2); absent keys keep SourceSettings' defaults,
    # frozen_after_s = 0 turns the frozen-value check off.
    rules: dict[str, Any] = {key: r.number(key, ..., low, high, unit) for key, (low, high, unit) in _RULE_KEYS.items() if key in raw}
    if rules.get("frozen_after_s") == 0:
        rules["frozen_after_s"] = None
    max_gap_s = rules.get("max_gap_s", SourceSettings.max_gap_s)
    if rules.get("long_gap_s", max_gap_s) < max_gap_s:
        raise r.fail("long_gap_s", f"use a value of at least max_gap_s ({max_gap_s:g} s)")
    return meter, SourceSettings(meter_id=meter.id, activity=activity, point=r.get("point", str, None),
                                 description=meter.description,
                                 rollover_at=rollover,
                                 **rules)


def _factor_files(e: _Reader) -> tuple[str, ...]:
    files = e.get("factor_files", list, [], fix='use a list of file names, e.g. factor_files = ["plant.toml"]')
    if not all(isinstance(f, str) and f for f in files):
        raise e.fail("factor_files", 'use a list of file names, e.g. factor_files = ["plant.toml"]')
    return tuple(files)


def _site_timezone(origin: str, top: _Reader) -> str:
    """``[site] timezone``: the IANA zone that defines days and months for reports and imports (issue 14)."""
    site = _Reader(origin, top.get("site", dict, {}), "site", {"timezone"})
    name = site.get("timezone", str, "")
    if name:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise site.fail("timezone", 'use an IANA time zone name, e.g. "Asia/Shanghai"') from None
    return name


def _check_factors(e: _Reader, emissions: EmissionSettings) -> None:
    """The factor files load and the region has factors; otherwise the daemon would start and fail every 10 s."""
    try:
        library = load_library(default_factor_files() + [Path(f) for f in emissions.factor_files])
    except FactorError as exc:
        raise ConfigError(f"{e.origin}: emissions.factor_files: {exc}") from exc
    regions = sorted({f.region for f in library.factors})
    if emissions.region not in regions:
        raise e.fail("region", f"no emission factor has this region; use one of {', '.join(regions)}, "
                               "or add factors for it in a factor file (docs/models.md)")


def _topic_prefix(s: _Reader) -> str:
    prefix = s.text("topic_prefix", "carbon", fix='use a non-empty MQTT topic level, e.g. topic_prefix = "carbon"')
    if any(c in prefix for c in "#+\0"):
        raise s.fail("topic_prefix", "MQTT wildcards # and + are not allowed in a topic to publish on; "
                                     'use e.g. topic_prefix = "carbon"')
    return prefix


def parse_config(data: Mapping[str, Any], origin: str, profiles: Mapping[str, Profile],
                 data_dir_override: Path | None = None, base_dir: Path | None = None,
                 broken_profiles: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate parsed TOML and build a :class:`GatewayConfig`.

    :param broken_profiles: profile id -> error of each profile file that did not load
        (``drivers.load_profile_set``): a meter naming one is kept but disabled, with that reason; a meter
        naming a profile that does not exist at all is a config error.
    """
    broken = broken_profiles or {}
    top = _Reader(origin, data, "", {"gateway", "buses", "meters", "emissions", "sync", "web", "backup", "site"})
    g = _Reader(origin, top.get("gateway", dict, {}), "gateway", {"id", "data_dir"})
    gateway_id = g.get("id", str, "gateway")
    if not gateway_id or not all(c.isalnum() or c in "-_." for c in gateway_id):
        raise g.fail("id", "use letters, digits, '-', '_' or '.', e.g. id = \"plant-a-gw1\"")
    data_dir = data_dir_override or Path(g.get("data_dir", str, str(DEFAULT_DATA_DIR)))

    buses: list[BusConfig] = []
    simulated: set[str] = set()
    for index, raw in enumerate(_tables(origin, data, "buses")):
        bus, is_simulated = _bus(origin, index, raw)
        if bus.name in {b.name for b in buses}:
            raise ConfigError(f'{origin}: buses[{index}].name = "{bus.name}": used twice; bus names must be unique')
        buses.append(bus)
        if is_simulated:
            simulated.add(bus.name)
    meters: list[MeterConfig] = []
    sources: list[SourceSettings] = []
    ratio_warnings: list[tuple[str, str]] = []
    for index, raw in enumerate(_tables(origin, data, "meters")):
        meter, source = _meter(origin, index, raw)
        where = f"{origin}: meters[{index}]"
        if meter.id in {m.id for m in meters}:
            raise ConfigError(f'{where}.id = "{meter.id}": used twice; meter ids must be unique')
        if meter.bus not in {b.name for b in buses}:
            raise ConfigError(f'{where}.bus = "{meter.bus}": no such bus; use one of '
                              f'{", ".join(b.name for b in buses) or "(none: add a [[buses]] table)"}')
        if meter.profile in broken:
            meter = replace(meter, enabled=False)    # an alarm, not a stop: GatewayConfig.disabled_meters()
        elif meter.profile not in profiles:
            raise ConfigError(f'{where}.profile = "{meter.profile}": unknown profile; use one of '
                              f'{", ".join(sorted(profiles))}')
        names = [p.name for p in profiles[meter.profile].points] if meter.profile in profiles else []
        if source is not None and source.point is not None and names and source.point not in names:
            raise ConfigError(f'{where}.point = "{source.point}": profile {meter.profile} has no such point; '
                              f'use one of {", ".join(names)}')
        if any(m.bus == meter.bus and m.device_id == meter.device_id for m in meters):
            raise ConfigError(f"{where}.device_id = {meter.device_id}: another meter on bus {meter.bus} "
                              "has the same unit id; each device on a bus needs its own")
        meters.append(meter)
        if meter.profile in profiles and (warning := ratio_warning(meter, profiles[meter.profile])):
            ratio_warnings.append((meter.id, warning))
        if source is not None:
            sources.append(source)

    e = _Reader(origin, top.get("emissions", dict, {}), "emissions",
                {"region", "method", "include_ch4_n2o", "gwp", "factor_files", "vintage_rule"})
    emissions = EmissionSettings(region=e.get("region", str, "national"),
                                 method=e.choice("method", ("location", "market"), "location"),
                                 include_ch4_n2o=e.get("include_ch4_n2o", bool, False),
                                 gwp=e.choice("gwp", ("AR5", "AR6"), "AR6"),
                                 factor_files=_factor_files(e),
                                 vintage_rule=e.choice("vintage_rule", ("latest_published", "same_year"),
                                                       "latest_published"),
                                 timezone=_site_timezone(origin, top))
    _check_factors(e, emissions)

    s = _Reader(origin, top.get("sync", dict, {}), "sync",
                {"enabled", "broker_host", "broker_port", "tls", "ca_file", "client_cert", "client_key", "username",
                 "password", "topic_prefix", "receiver_public_key", "demo_receiver_key", "batch_max_readings",
                 "batch_max_age_s", "bandwidth_bytes_per_s", "disk_budget_mb", "raw_retention_days"})

    def _path(value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else data_dir / path

    keys_dir = data_dir / "keys"
    budget_mb = s.optional_number("disk_budget_mb", 10, 100_000, " MB")
    demo_key = s.get("demo_receiver_key", bool, False)
    receiver_key = _path(s.get("receiver_public_key", str, None))
    if receiver_key is None and demo_key:
        receiver_key = keys_dir / "receiver-sealing.pub"
    sync = SyncSettings(
        gateway_id=gateway_id, keys_dir=keys_dir, receiver_public_key=receiver_key,
        broker=BrokerSettings(host=s.text("broker_host", "127.0.0.1"),
                              port=s.whole("broker_port", 1883, 1, 65535), tls=s.get("tls", bool, False),
                              ca_file=_path(s.get("ca_file", str, None)),
                              client_cert=_path(s.get("client_cert", str, None)),
                              client_key=_path(s.get("client_key", str, None)),
                              username=s.get("username", str, None), password=s.get("password", str, None)),
        enabled=s.get("enabled", bool, True), topic_prefix=_topic_prefix(s),
        batch_max_readings=s.whole("batch_max_readings", 5000, 1, 100_000),
        batch_max_age_s=s.number("batch_max_age_s", 30.0, 0, 86400, " s"),
        bandwidth_bytes_per_s=s.optional_number("bandwidth_bytes_per_s", 100, 1e9, " bytes/s"),
        disk_budget_bytes=None if budget_mb is None else int(budget_mb * 1_000_000),
        raw_retention_days=s.optional_number("raw_retention_days", 1, 36_500, " days"),
    )
    w = _Reader(origin, top.get("web", dict, {}), "web", {"enabled", "host", "port", "tls", "cert_file", "key_file", "metrics_token",
                                                             "public_dashboard"})
    web_host = w.text("host", "127.0.0.1")
    token = w.get("metrics_token", str, None)
    if token is not None and len(token) < 16:
        raise ConfigError(f"{origin}: web.metrics_token is too short ({len(token)} characters): use at least 16 "
                          f"random characters, e.g. from `openssl rand -hex 16`")
    # plain HTTP only on loopback (the demo); anything reachable from the factory network is HTTPS
    loopback = web_host in ("127.0.0.1", "::1", "localhost")
    cert_file, key_file = _path(w.get("cert_file", str, None)), _path(w.get("key_file", str, None))
    if (cert_file is None) != (key_file is None):
        raise w.fail("cert_file" if cert_file is None else "key_file",
                     "give both web.cert_file and web.key_file, or neither for a self-signed certificate")
    public_dashboard = w.get("public_dashboard", bool, False)
    if public_dashboard and not loopback:
        raise w.fail("public_dashboard", "a dashboard without login is only for a UI on loopback (the demo): anyone "
                                         "on the network would see it; set public_dashboard = false")
    web = WebSettings(enabled=w.get("enabled", bool, True), host=web_host,
                      port=w.whole("port", 8080, 1, 65535), tls=w.get("tls", bool, not loopback),
                      cert_file=cert_file, key_file=key_file, metrics_token=token, public_dashboard=public_dashboard)
    b = _Reader(origin, top.get("backup", dict, {}), "backup", {"enabled", "interval_h", "keep", "directory"})
    keep = b.get("keep", int, 7, fix="use a whole number of backups to keep, e.g. keep = 7")
    if not 1 <= keep <= 1000:
        raise b.fail("keep", "keep from 1 to 1000 backups, e.g. keep = 7")
    backup = BackupSettings(enabled=b.get("enabled", bool, True),
                            interval_h=b.number("interval_h", 24.0, 0.25, 8760, " hours"), keep=keep,
                            directory=_path(b.get("directory", str, None)))
    return GatewayConfig(gateway_id=gateway_id, data_dir=data_dir, buses=tuple(buses), meters=tuple(meters),
                         sources=tuple(sources), emissions=emissions, sync=sync, web=web,
                         simulated_buses=frozenset(simulated), demo_receiver_key=demo_key, backup=backup,
                         profile_errors=tuple(sorted(broken.items())), ratio_warnings=tuple(ratio_warnings))


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
