"""The one declarative table of config rules (issue 12): every key of the gateway's TOML config with its
type, range or choices, default, fix text, label (English and Chinese) and help.

``gateway.config.parse_config`` checks each table's fields against these rules, then the cross-field rules;
the web UI builds its WTForms fields and validators from them (``webui/fields.py``) and the commissioning
CLI its options (:func:`click_option`), so a range or a list of choices is written once. In the spirit of
Home Assistant's voluptuous schemas (``homeassistant/components/modbus/__init__.py``), as plain data.

A field check never looks at another key; rules between keys (a meter's bus exists, ``long_gap_s >=
max_gap_s``, serial settings only for ``rtu``) are in ``gateway.config``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers import parse_ratio
from local_store.units import ACTIVITIES

#: a key that must be given (no default)
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class Choice:
    """One allowed value with what a person reads for it."""

    value: Any
    label: str
    label_zh: str


class FieldError(ValueError):
    """A value breaks its rule; the message is the fix (``use a value from 1 to 247``)."""


@dataclass(frozen=True)
class Rule:
    """One config key.

    :param type: ``str``, ``int`` (whole numbers; 1883.5 is refused, not rounded), ``float``, ``bool``
        or ``list`` (of non-empty strings).
    :param default: the value when the key is absent; ``REQUIRED``: it must be given; ``None``: the
        setting is off.
    :param low, high: the range of a number (inclusive); nan and inf are outside every range.
    :param choices: the allowed values, with labels.
    :param unit: appended to the range in messages (``" s"``).
    :param fix: replaces the generated fix of a value out of range, a wrong choice or a pattern mismatch.
    :param missing: the fix when a required key is absent (and an empty string for ``nonempty``).
    :param pattern: a regular expression the whole string must match (ids and names; the web forms check
        the same one).
    :param max_length: longest string.
    :param nonempty: an empty string is refused.
    :param path: names a file that must exist when the config is loaded.
    :param secret: a password or key: never in a technician's export, redacted in an admin's.
    :param form_fix: the web form's message (English, Chinese) where the generated one would not read well.
    """

    key: str
    type: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Choice, ...] = ()
    unit: str = ""
    fix: str = ""
    missing: str = ""
    pattern: str = ""
    max_length: int | None = None
    nonempty: bool = False
    path: bool = False
    secret: bool = False
    label: str = ""
    label_zh: str = ""
    help: str = ""
    form_fix: tuple[str, str] | None = None
    #: a parser for a value with its own notation (a ratio written "100/5"); raises ValueError with the fix
    parse: Callable[[Any], Any] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def values(self) -> tuple[Any, ...]:
        return tuple(c.value for c in self.choices)

    def range_text(self) -> str:
        """``from 0.05 to 30 s``"""
        return f"from {self.low:g} to {self.high:g}{self.unit}"

    def check(self, value: Any) -> Any:
        """The value as the config means it (an int for a whole number); :raises FieldError: with the fix."""
        kind = self.type
        if self.parse is not None:
            try:
                return self.parse(value)
            except ValueError as exc:
                raise FieldError(str(exc)) from None
        if kind is bool:
            if not isinstance(value, bool):
                raise FieldError(self.fix or "use true or false")
            return value
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise FieldError(self.fix or "use a list of strings")
            return tuple(value)
        if kind is str:
            if not isinstance(value, str):
                raise FieldError(self.fix or "use a string")
            if value == "" and self.nonempty:
                raise FieldError(self.missing or "use a non-empty string")
            if self.choices and value not in self.values():
                raise FieldError(self.fix or f"use one of {', '.join(map(str, self.values()))}")
            if self.pattern and value and not re.fullmatch(self.pattern, value):
                raise FieldError(self.fix)
            if self.max_length is not None and len(value) > self.max_length:
                raise FieldError(f"use at most {self.max_length} characters")
            return value
        # numbers: TOML gives int or float; a bool is neither here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(self.missing if kind is int and self.missing else "use a number")
        number = float(value)
        if self.low is not None and self.high is not None and not self.low <= number <= self.high:
            raise FieldError(self.fix or f"use a value {self.range_text()}")
        if not math.isfinite(number):
            raise FieldError(self.fix or "use a finite number")
        if kind is int and number != int(number):
            raise FieldError(self.fix or f"use a whole number {self.range_text()}")
        if self.choices and number not in self.values():
            raise FieldError(self.fix or f"use one of {', '.join(map(str, self.values()))}")
        return int(number) if kind is int else number


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {r.key: r for r in rules}


#: ids and names: what a URL, a file name and a dashboard can carry (issue 15: a 2,000-character id or one
#: with "/" broke the dashboard); the web forms check the same pattern.
ID_PATTERN = r"[A-Za-z0-9_.\-]{1,40}"
ID_FORM_FIX = ("Use 1-40 letters, digits, '-', '_' or '.'.", "请使用 1-40 个字母、数字、'-'、'_' 或 '.'。")
HOST_PATTERN = r"[A-Za-z0-9.\-:\[\]]{1,253}"
HOST_FORM_FIX = ("Use a host name or IP address.", "请填写主机名或 IP 地址。")

#: the baud rates a form offers; a config may give any rate from 300 to 115200
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

#: "none": a meter that is only monitored, not counted
ACTIVITY_CHOICES = tuple(Choice(a.name, a.label, a.label_zh) for a in ACTIVITIES.values() if not a.custom) + (
    Choice("none", "none (not counted)", "无（不计入）"),)

GATEWAY = _rules(
    Rule("id", str, "gateway", pattern=r"[A-Za-z0-9_.\-]+", nonempty=True,
         fix="use letters, digits, '-', '_' or '.', e.g. id = \"plant-a-gw1\"",
         missing="use letters, digits, '-', '_' or '.', e.g. id = \"plant-a-gw1\"",
         label="Gateway id", label_zh="网关编号", help="names the gateway to the platform"),
    Rule("data_dir", str, None, nonempty=True, label="Data directory", label_zh="数据目录",
         help="the SQLite file, keys and backups; --data-dir overrides it"),
)

BUS = _rules(
    Rule("name", str, REQUIRED, pattern=ID_PATTERN, nonempty=True, missing='give the bus a name, e.g. name = "rs485-1"',
         fix="use 1-40 letters, digits, '-', '_' or '.', e.g. name = \"rs485-1\"", form_fix=ID_FORM_FIX,
         label="Name", label_zh="名称", help="unique; meters name their bus by it"),
    Rule("transport", str, REQUIRED, choices=(
        Choice("tcp", "Modbus TCP", "Modbus TCP"), Choice("rtu", "Modbus RTU (serial)", "Modbus RTU（串口）"),
        Choice("rtu_over_tcp", "RTU over TCP (serial device server)", "RTU over TCP（串口服务器）")),
        label="Transport", label_zh="传输方式"),
    Rule("host", str, "127.0.0.1", nonempty=True, pattern=HOST_PATTERN, fix="use a host name or IP address",
         form_fix=HOST_FORM_FIX, label="Host (TCP)", label_zh="主机（TCP）"),
    Rule("port", int, 502, 1, 65535, form_fix=("Use a port from 1 to 65535.", "请使用 1 到 65535 之间的端口。"),
         label="Port (TCP)", label_zh="端口（TCP）"),
    Rule("serial_port", str, None, nonempty=True,
         missing='name the serial device, e.g. serial_port = "/dev/ttyUSB0"',
         label="Serial port (RTU)", label_zh="串口（RTU）", help="e.g. /dev/ttyUSB0; the service user must be in dialout"),
    Rule("baudrate", int, 9600, 300, 115200, unit=" baud", label="Baud rate", label_zh="波特率",
         help="the line's speed; every device on the bus uses the same"),
    Rule("parity", str, "N", choices=(Choice("N", "none", "无"), Choice("E", "even", "偶校验"), Choice("O", "odd", "奇校验")),
         label="Parity", label_zh="校验位", help="many meters ship with E (8E1)"),
    Rule("stopbits", int, 1, 1, 2, choices=(Choice(1, "1", "1"), Choice(2, "2", "2")), label="Stop bits", label_zh="停止位"),
    Rule("bytesize", int, 8, 7, 8, label="Data bits", label_zh="数据位"),
    Rule("timeout_s", float, 1.0, 0.05, 30, unit=" s", label="Reply timeout (s)", label_zh="应答超时（秒）",
         help="how long to wait for one reply"),
    Rule("retries", int, 0, 0, 5, label="Retries", label_zh="重试次数"),
    Rule("inter_request_delay_s", float, 0.0, 0, 5, unit=" s", label="Pause between requests (s)", label_zh="请求间隔（秒）"),
    Rule("max_gap_registers", int, 10, 0, 100, label="Read across gaps of (registers)", label_zh="跨越空隙（寄存器数）"),
    Rule("simulated", bool, False, label="Simulated (demo)", label_zh="模拟（演示）"),
)

#: the serial line's keys: only an rtu bus has them
SERIAL_KEYS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")

METER = _rules(
    Rule("id", str, REQUIRED, pattern=ID_PATTERN, nonempty=True,
         missing='give the meter a unique id, e.g. id = "main-incomer"',
         fix="use 1-40 letters, digits, '-', '_' or '.', e.g. id = \"main-incomer\"", form_fix=ID_FORM_FIX,
         label="Meter id", label_zh="仪表编号", help="unique, stable: readings and reports are keyed by it"),
    Rule("bus", str, REQUIRED, nonempty=True, missing="name the bus the meter is wired to", label="Bus", label_zh="总线"),
    Rule("device_id", int, REQUIRED, 1, 247, fix="use a Modbus unit id from 1 to 247",
         missing="set the meter's Modbus unit id (1-247)",
         form_fix=("Use a unit id from 1 to 247.", "请使用 1 到 247 之间的从站地址。"),
         label="Modbus unit id", label_zh="Modbus 从站地址"),
    Rule("profile", str, REQUIRED, nonempty=True, max_length=100, missing="name a profile from config/profiles/",
         label="Profile", label_zh="仪表模板"),
    Rule("poll_interval_s", float, 5.0, 0.1, 86400, unit=" s", label="Poll every (s)", label_zh="轮询间隔（秒）"),
    Rule("enabled", bool, True, label="Poll this meter", label_zh="轮询此仪表"),
    Rule("description", str, "", max_length=200, label="Description", label_zh="描述"),
    Rule("activity", str, "none", choices=ACTIVITY_CHOICES, label="Counts as", label_zh="计为",
         help="what the meter measures for emissions"),
    Rule("point", str, None, nonempty=True, label="Point", label_zh="测点",
         help="which profile point carries the activity"),
    Rule("ct_ratio", float, None, parse=lambda v: parse_ratio(v, "ct_ratio"), label="CT ratio", label_zh="电流互感器变比",
         help='the current transformers\' ratio, "100/5" or a number; secondary-side values are multiplied by it'),
    Rule("pt_ratio", float, None, parse=lambda v: parse_ratio(v, "pt_ratio"), label="PT ratio", label_zh="电压互感器变比",
         help='the voltage transformers\' ratio, "10000/100" or a number'),
    Rule("rollover_at", float, None, 1, 1e18, label="Register wraps at", label_zh="寄存器回绕值"),
    Rule("max_gap_s", float, None, 60, 86_400, unit=" s", label="Interpolate gaps up to (s)", label_zh="插补间隙上限（秒）"),
    Rule("long_gap_s", float, None, 60, 864_000, unit=" s", label="Long gap from (s)", label_zh="长间隙（秒）"),
    Rule("frozen_after_s", float, None, 0, 864_000, unit=" s (0: off)", label="Frozen after (s)", label_zh="冻结判定（秒）"),
    Rule("max_rate_per_h", float, None, 0.001, 1e12, unit=" per hour", label="Fastest rise per hour", label_zh="每小时最大增量"),
    Rule("steam_enthalpy_kj_per_kg", float, None, 2000, 4000, unit=" kJ/kg", label="Steam enthalpy (kJ/kg)",
         label_zh="蒸汽焓值（kJ/kg）"),
)

#: [[meters]] keys that are preprocessing rules of the meter's source (absent: SourceSettings' defaults)
SOURCE_RULE_KEYS = ("max_gap_s", "long_gap_s", "frozen_after_s", "max_rate_per_h", "steam_enthalpy_kj_per_kg")

EMISSIONS = _rules(
    Rule("region", str, "national", nonempty=True, label="Grid region", label_zh="电网区域"),
    Rule("method", str, "location", choices=(Choice("location", "location-based", "基于位置"),
                                              Choice("market", "market-based", "基于市场")),
         label="Scope 2 method", label_zh="范围二方法"),
    Rule("include_ch4_n2o", bool, False, label="Include CH4 and N2O", label_zh="计入 CH4 和 N2O"),
    Rule("gwp", str, "AR6", choices=(Choice("AR5", "AR5", "AR5"), Choice("AR6", "AR6", "AR6")),
         label="Global warming potentials", label_zh="全球变暖潜势"),
    Rule("factor_files", list, (), fix='use a list of file names, e.g. factor_files = ["plant.toml"]',
         label="Own factor files", label_zh="自定义排放因子文件"),
    Rule("vintage_rule", str, "latest_published",
         choices=(Choice("latest_published", "latest published factor", "最新发布的因子"),
                  Choice("same_year", "factor of the same year", "同年因子")),
         label="Factor vintage", label_zh="因子年份规则",
         help="which vintage of a factor applies to a period (docs/models.md)"),
)

def _timezone(name: Any) -> str:
    """An IANA time zone name, or "" (the system's)."""
    if not isinstance(name, str):
        raise ValueError('use an IANA time zone name, e.g. "Asia/Shanghai"')
    if name:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError('use an IANA time zone name, e.g. "Asia/Shanghai"') from None
    return name


SITE = _rules(
    Rule("timezone", str, "", parse=_timezone, label="Time zone", label_zh="时区",
         help="the IANA zone that defines days and months for reports and imports"),
)

SYNC = _rules(
    Rule("enabled", bool, True, label="Sync to the platform", label_zh="同步到平台"),
    Rule("broker_host", str, "127.0.0.1", nonempty=True, pattern=HOST_PATTERN, fix="use a host name or IP address",
         form_fix=HOST_FORM_FIX, label="Broker host", label_zh="代理主机"),
    Rule("broker_port", int, 1883, 1, 65535, form_fix=("Use a port from 1 to 65535.", "请使用 1 到 65535 之间的端口。"),
         label="Broker port", label_zh="代理端口"),
    Rule("tls", bool, False, label="TLS", label_zh="TLS"),
    Rule("ca_file", str, None, nonempty=True, path=True, max_length=300, label="CA certificate file",
         label_zh="CA 证书文件"),
    Rule("client_cert", str, None, nonempty=True, path=True, label="Client certificate", label_zh="客户端证书"),
    Rule("client_key", str, None, nonempty=True, path=True, label="Client key", label_zh="客户端私钥"),
    Rule("username", str, None, max_length=200, label="User name", label_zh="用户名"),
    Rule("password", str, None, secret=True, label="Password", label_zh="密码"),
    Rule("topic_prefix", str, "carbon", nonempty=True, pattern=r"[^#+\x00]+",
         missing='use a non-empty MQTT topic level, e.g. topic_prefix = "carbon"',
         fix='MQTT wildcards # and + are not allowed in a topic to publish on; use e.g. topic_prefix = "carbon"',
         label="Topic prefix", label_zh="主题前缀"),
    Rule("receiver_public_key", str, None, nonempty=True, path=True, label="Platform's public key",
         label_zh="平台公钥", help="the platform's X25519 public key (PEM)"),
    Rule("demo_receiver_key", bool, False, label="Demo receiver key", label_zh="演示接收方密钥"),
    Rule("batch_max_readings", int, 5000, 1, 100_000, label="Readings per batch", label_zh="每批读数"),
    Rule("batch_max_age_s", float, 30.0, 0, 86400, unit=" s", label="Batch age (s)", label_zh="批次时长（秒）"),
    Rule("bandwidth_bytes_per_s", float, None, 100, 1e9, unit=" bytes/s", label="Bandwidth cap (bytes/s)",
         label_zh="带宽上限（字节/秒）"),
    Rule("disk_budget_mb", float, None, 10, 100_000, unit=" MB", label="Disk budget (MB)", label_zh="磁盘预算（MB）"),
    Rule("raw_retention_days", float, None, 1, 36_500, unit=" days", label="Keep raw readings (days)",
         label_zh="原始读数保留（天）"),
)

WEB = _rules(
    Rule("enabled", bool, True, label="Web UI", label_zh="网页界面"),
    Rule("host", str, "127.0.0.1", nonempty=True, label="Listen on", label_zh="监听地址"),
    Rule("port", int, 8080, 1, 65535, label="Port", label_zh="端口"),
    Rule("tls", bool, None, label="HTTPS", label_zh="HTTPS"),
    Rule("cert_file", str, None, nonempty=True, path=True, label="Certificate", label_zh="证书"),
    Rule("key_file", str, None, nonempty=True, path=True, label="Certificate key", label_zh="证书私钥"),
    Rule("metrics_token", str, None, secret=True, label="Metrics token", label_zh="指标令牌"),
    Rule("public_dashboard", bool, False, label="Dashboard without login", label_zh="免登录仪表盘"),
)

BACKUP = _rules(
    Rule("enabled", bool, True, label="Scheduled backups", label_zh="定时备份"),
    Rule("interval_h", float, 24.0, 0.25, 8760, unit=" hours", label="Every (hours)", label_zh="间隔（小时）"),
    Rule("keep", int, 7, 1, 1000, fix="keep from 1 to 1000 backups, e.g. keep = 7",
         missing="use a whole number of backups to keep, e.g. keep = 7", label="Keep", label_zh="保留份数"),
    Rule("directory", str, None, nonempty=True, label="Directory", label_zh="目录"),
)

#: top-level table -> its rules; ``buses`` and ``meters`` are lists of tables
SECTIONS: Mapping[str, Mapping[str, Rule]] = {
    "gateway": GATEWAY, "buses": BUS, "meters": METER, "emissions": EMISSIONS, "site": SITE, "sync": SYNC,
    "web": WEB, "backup": BACKUP,
}
LIST_SECTIONS = ("buses", "meters")


def secret_keys() -> list[tuple[str, str]]:
    """(section, key) of every secret: what an export leaves out or redacts."""
    return [(section, rule.key) for section, rules in SECTIONS.items() for rule in rules.values() if rule.secret]


def click_option(rule: Rule, *names: str, default: Any = REQUIRED, help: str = "", **kwargs: Any) -> Any:
    """A click option checked by ``rule`` (its range or choices), e.g. ``click_option(BUS["baudrate"], "--baud")``.

    :param default: overrides the rule's default (a scan waits less per unit than a poll).
    """
    import click

    class _Checked(click.ParamType):
        name = rule.type.__name__ if not rule.choices else "choice"

        def get_metavar(self, param: Any, ctx: Any = None) -> str | None:
            if rule.choices:
                return "[" + "|".join(str(v) for v in rule.values()) + "]"
            if rule.low is not None:
                return f"{rule.low:g}-{rule.high:g}"
            return None

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            if not isinstance(value, str):
                return value
            typed: Any = value
            if rule.type in (int, float) and rule.parse is None:
                try:
                    typed = float(value)
                except ValueError:
                    self.fail(f"{value!r} is not a number; {rule.fix or 'use a value ' + rule.range_text()}", param, ctx)
            try:
                return rule.check(typed)
            except FieldError as exc:
                self.fail(f"{value!r}: {exc}", param, ctx)

    value = rule.default if default is REQUIRED else default
    described = f"{rule.help[:1].upper()}{rule.help[1:]}." if rule.help else f"{rule.label}."
    return click.option(*names, type=_Checked(), default=value, show_default=value is not None,
                        help=help or described, **kwargs)
