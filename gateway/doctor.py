"""``carbon-gateway doctor``: a technician's checklist. Every line is OK, WARN or FAIL, and says the fix.

Each check is a small function over the loaded config (or the config error) that returns ``Check`` rows;
none of them changes anything. The broker check opens one TCP connection to the configured broker,
nothing else leaves the box.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.clock import ClockState, clock_state
from gateway.config import NO_METERS, NO_METERS_FIX, GatewayConfig
from gateway.metrics import disk_usage

Status = Literal["OK", "WARN", "FAIL"]
MIN_FREE_BYTES = 100 * 1024 * 1024          # below this the store will soon refuse writes
LOW_FREE_BYTES = 1024 * 1024 * 1024         # warn below 1 GiB


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""


def _ok(name: str, message: str) -> Check:
    return Check(name, "OK", message)


def check_config(path: Path | None, error: str | None, config: GatewayConfig | None) -> list[Check]:
    where = str(path) if path else "the embedded default config"
    if error is not None or config is None:
        return [Check("config", "FAIL", error or where, "change the key the message names, then run doctor again")]
    rows = [_ok("config", f"{where}: {len(config.buses)} bus(es), {len(config.meters)} meter(s)")]
    if not config.meters:
        rows.append(Check("meters", "WARN", NO_METERS, NO_METERS_FIX))
    for meter_id, warning in config.ratio_warnings:   # stored values would be secondary-side (issue 13)
        rows.append(Check(f"meter {meter_id}", "WARN", warning,
                          "the CT ratio is on the transformers' rating plate (e.g. 100/5 A); write it into the config, "
                          "then reload the gateway (systemctl reload carbon-gateway)"))
    return rows


def check_profiles(broken: Mapping[str, str], config: GatewayConfig | None) -> list[Check]:
    """Each profile file that did not load is a FAIL: the meters that use it are not polled."""
    rows = []
    for profile, error in sorted(broken.items()):
        users = config.meters_using(profile) if config is not None else []
        what = (f"meter(s) {', '.join(users)} are not polled until it loads" if users else "no meter uses it")
        rows.append(Check(f"profile {profile}", "FAIL", error,
                          f"{what}: correct the file as the message says (docs/profiles.md) or move it out of the "
                          "profiles directory, then reload the gateway (systemctl reload carbon-gateway)"))
    return rows


def check_data_dir(config: GatewayConfig) -> list[Check]:
    data_dir = config.data_dir
    fix = (f"create it and give it to the service user: install -d -o carbon-gateway -m 0700 {data_dir}; "
           f"if the disk is mounted read-only, remount it read-write")
    if not data_dir.exists():
        return [Check("data directory", "FAIL", f"{data_dir} does not exist", fix)]
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [Check("data directory", "FAIL", f"{data_dir} is not writable ({exc.strerror or exc})", fix)]
    return [_ok("data directory", f"{data_dir} is writable")]


def check_disk(config: GatewayConfig) -> list[Check]:
    target = config.data_dir if config.data_dir.exists() else config.data_dir.parent
    try:
        free, total = disk_usage(target)
    except OSError as exc:
        return [Check("disk space", "FAIL", f"{target}: {exc.strerror or exc}", "check the data directory's disk")]
    shown = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB on {target}"
    fix = (f"free space: delete old backups in {config.backup_dir} or lower [backup] keep, move [backup] directory "
           f"to another disk; unsynced readings are never deleted to make room")
    if free < MIN_FREE_BYTES:
        return [Check("disk space", "FAIL", shown, fix)]
    if free < LOW_FREE_BYTES:
        return [Check("disk space", "WARN", shown, fix)]
    return [_ok("disk space", shown)]


def check_serial_ports(config: GatewayConfig) -> list[Check]:
    rows = []
    for bus in config.buses:
        if bus.serial is None:
            continue
        name, port = f"serial port {bus.serial.port} (bus {bus.name})", Path(bus.serial.port)
        if not port.exists():
            rows.append(Check(name, "FAIL", "no such device",
                              "plug in the RS-485 adapter, then see `ls -l /dev/serial/by-id/` for its name and "
                              "set buses.serial_port to it (by-id names survive reboots)"))
            continue
        if not stat.S_ISCHR(port.stat().st_mode):
            rows.append(Check(name, "FAIL", "not a character device", "set buses.serial_port to a tty device"))
            continue
        if not os.access(port, os.R_OK | os.W_OK):
            rows.append(Check(name, "FAIL", "permission denied for this user",
                              "add the service user to the port's group: usermod -aG dialout carbon-gateway"))
            continue
        try:
            fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            os.close(fd)
        except OSError as exc:
            rows.append(Check(name, "FAIL", f"cannot open ({exc.strerror or exc})",
                              "close other programs using the port (fuser -v " f"{port}), or replug the adapter"))
            continue
        rows.append(_ok(name, f"opens read/write ({bus.serial.baudrate} baud, parity {bus.serial.parity})"))
    return rows


def check_clock(probe: Callable[[], ClockState] = clock_state) -> list[Check]:
    state = probe()
    fix = ("enable network time: timedatectl set-ntp true, and let the box reach an NTP server (UDP 123); "
           "readings are flagged clock_unsynchronised until then")
    if state.synchronized is False:
        return [Check("clock", "FAIL", f"not synchronised: {state.detail}", fix)]
    if state.synchronized is None:
        return [Check("clock", "WARN", f"cannot tell whether it is synchronised: {state.detail}", fix)]
    return [_ok("clock", f"synchronised ({state.detail})")]


def check_broker(config: GatewayConfig, timeout_s: float = 3.0) -> list[Check]:
    sync = config.sync
    if not sync.enabled:
        return [_ok("broker", "sync is disabled: nothing to reach")]
    broker = sync.broker
    name = f"broker {broker.host}:{broker.port}"
    try:
        with socket.create_connection((broker.host, broker.port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return [Check(name, "FAIL", f"cannot connect ({reason})",
                      "check sync.broker_host and sync.broker_port, the network and any firewall; readings wait "
                      "in the outbox meanwhile")]
    rows = [_ok(name, "reachable (TCP)")]
    for key, path in (("sync.ca_file", broker.ca_file), ("sync.client_cert", broker.client_cert),
                      ("sync.client_key", broker.client_key)):
        if path is not None and not path.is_file():
            rows.append(Check(f"{key}", "FAIL", f"{path} does not exist", f"copy the file there or correct {key}"))
    return rows


def _key_mode(path: Path) -> Check | None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(f"key {path.name}", "FAIL", f"{path} is readable by others (mode {mode:04o})", f"chmod 600 {path}")
    return None


def check_keys(config: GatewayConfig) -> list[Check]:
    keys_dir = config.keys_dir
    rows: list[Check] = []
    if keys_dir.exists():
        for path in sorted(p for p in keys_dir.iterdir() if p.is_file()):
            problem = _key_mode(path)
            if problem:
                rows.append(problem)
    signing = keys_dir / "gateway-signing.key"
    rows.append(_ok("signing key", f"{signing}") if signing.exists() else
                Check("signing key", "WARN", f"{signing} does not exist yet",
                      "it is generated at the first run; or run `carbon-gateway keys`"))
    receiver = config.sync.receiver_public_key
    if config.sync.enabled and receiver is None:
        rows.append(Check("receiver key", "FAIL", "sync.receiver_public_key is not set",
                          "set it to the platform's X25519 public key file (PEM) you were given"))
    elif config.sync.enabled and receiver is not None and not receiver.exists() and not config.demo_receiver_key:
        rows.append(Check("receiver key", "FAIL", f"{receiver} does not exist", "copy the platform's public key there"))
    elif config.sync.enabled:
        rows.append(_ok("receiver key", str(receiver)))
    rows.append(_ok("audit key", f"{config.audit_key} (keep a copy off the gateway)") if config.audit_key.exists()
                else Check("audit key", "WARN", f"{config.audit_key} does not exist yet",
                           "it is made at the first start; until then audit entries are chained but not sealed"))
    backup_key = config.backup_key
    rows.append(_ok("backup key", f"{backup_key} (keep a copy off the gateway)") if backup_key.exists() else
                Check("backup key", "WARN", f"{backup_key} does not exist yet",
                      "it is made with the first backup (`carbon-gateway backup`); then copy it off the gateway"))
    return rows


def check_store(config: GatewayConfig) -> list[Check]:
    database = config.database
    if not database.exists():
        return [Check("store", "WARN", f"{database} does not exist yet", "it is created at the first run")]
    import sqlite_utils

    from local_store import audit

    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)   # read only: change nothing
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if result == "ok" and "audit_log" not in tables:
                return [Check("store", "FAIL", f"{database}: not a gateway store (tables: "
                                               f"{', '.join(sorted(tables)[:5]) or 'none'})",
                              "point --data-dir (gateway.data_dir) at the gateway's state directory, "
                              "or move the file away")]
            if config.audit_key.exists():
                audit.use_key(database, audit.load_key(config.audit_key))
            verification = audit.verify(sqlite_utils.Database(conn)) if result == "ok" else None
        finally:
            audit.use_key(database, None)
            conn.close()
    except (sqlite3.DatabaseError, ValueError) as exc:
        result, verification = str(exc), None
    if result != "ok" or verification is None:
        return [Check("store", "FAIL", f"{database}: {result}",
                      "stop the gateway and restore the last good backup (docs/operations.md)")]
    if not verification.ok:
        return [_ok("store", f"{database}: integrity ok"),
                Check("audit log", "FAIL", f"{len(verification.problems)} problem(s): {verification.problems[0]}",
                      "run `carbon-gateway audit verify` for the list; compare with a backup")]
    return [_ok("store", f"{database}: integrity ok"), _ok("audit log", f"{verification.checked} entries, chain intact")]


def run_checks(config_path: Path | None, config: GatewayConfig | None, config_error: str | None,
               clock_probe: Callable[[], ClockState] = clock_state,
               broken_profiles: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order a technician works through them.

    :param broken_profiles: profile id -> error of each profile file that did not load.
    """
    rows = check_config(config_path, config_error, config)
    rows += check_profiles(broken_profiles or {}, config)
    rows += check_clock(clock_probe)
    if config is None:
        return rows
    steps: Iterable[Callable[[GatewayConfig], list[Check]]] = (
        check_data_dir, check_disk, check_serial_ports, check_broker, check_keys, check_store)
    for step in steps:
        rows += step(config)
    return rows
