"""The Prometheus text exposition (format 0.0.4) of a running gateway, served at ``/metrics``.

Counters end in ``_total``; times are UTC epoch seconds or seconds of age. Everything comes from
``Gateway`` (``meter_status``, ``sync_status``, ``health``) and the file system, so the web layer only
serves the text.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float | int | bool | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, object], float | int | bool | None]]) -> None:
        self.lines += [f"# HELP carbon_gateway_{name} {help_text}", f"# TYPE carbon_gateway_{name} {kind}"]
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"carbon_gateway_{name}{{{shown}}} {_number(value)}" if shown
                              else f"carbon_gateway_{name} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | int | bool | None) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def disk_usage(path: Path) -> tuple[int, int]:
    """(free bytes for unprivileged writers, total bytes) of the file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def render(gateway: Any, now: float | None = None) -> str:
    """Prometheus text for ``gateway`` (a running :class:`gateway.daemon.Gateway`)."""
    now = time.time() if now is None else now
    out = _Exposition()
    health = gateway.health()
    out.one("up", "gauge", "1 when the poll loop and the store are healthy, 0 when degraded.",
            health["status"] == "ok")
    meters = gateway.meter_status()
    labels = [({"meter": m.meter_id, "bus": m.bus}, m) for m in meters]
    out.family("meter_requests_total", "counter", "Modbus requests sent to the meter.",
               [(lbl, m.stats.requests) for lbl, m in labels])
    out.family("meter_polls_total", "counter", "Poll cycles of the meter started (answered or not).",
               [(lbl, m.stats.polls) for lbl, m in labels])
    out.family("meter_polls_late_total", "counter", "Polls started more than half an interval after their "
               "scheduled time (the bus was busy).", [(lbl, m.stats.late_polls) for lbl, m in labels])
    out.family("meter_polls_skipped_total", "counter", "Scheduled polls that passed without a poll (the bus was "
               "busy for a whole interval or more).", [(lbl, m.stats.skipped_polls) for lbl, m in labels])
    out.family("meter_errors_total", "counter", "Failed requests per meter and kind.",
               [({**lbl, "kind": kind}, getattr(m.stats, attr)) for lbl, m in labels
                for kind, attr in (("timeout", "timeouts"), ("exception", "exceptions"), ("decode", "decode_errors"))])
    out.family("meter_ok", "gauge", "1 while the meter answers, 0 while it fails.",
               [(lbl, m.stats.state == "ok") for lbl, m in labels])
    out.family("profile_broken", "gauge", "1 per profile file that did not load; the meters using it are not polled "
               "(the reason is in /healthz).", [({"profile": p}, 1) for p, _ in gateway.config.profile_errors])
    out.family("meter_last_ok_timestamp_seconds", "gauge", "When the meter last answered completely.",
               [(lbl, m.stats.last_ok_at) for lbl, m in labels])
    out.one("store_last_write_age_seconds", "gauge", "Seconds since readings were last stored.",
            health.get("last_store_age_s"))
    out.one("store_ok", "gauge", "0 while the store refuses writes (disk full, read-only).",
            not health.get("store_error"))
    out.one("readings_held_in_memory", "gauge", "Readings waiting in memory for the store.",
            gateway.held_readings())
    out.one("readings_dropped_total", "counter", "Readings lost because the store and memory were full.",
            gateway.readings_dropped)
    sync = gateway.sync_status()
    out.one("sync_enabled", "gauge", "1 when sync to the platform is configured.", sync is not None)
    if sync is not None:
        out.one("sync_connected", "gauge", "1 while connected to the broker.", sync.connected)
        out.one("sync_backlog_batches", "gauge", "Batches waiting for the receiver's acknowledgement.",
                sync.backlog_batches)
        out.one("sync_backlog_readings", "gauge", "Readings not yet acknowledged by the receiver.",
                sync.backlog_readings)
        out.one("sync_last_ack_timestamp_seconds", "gauge", "When the receiver last acknowledged a batch.",
                sync.last_ack_at)
        out.one("sync_lag_seconds", "gauge", "Age of the oldest reading not yet acknowledged (0: none).",
                gateway.sync_lag_s(now))
        out.one("sync_alarm", "gauge", "1 while sync raises an alarm (e.g. the disk budget is exceeded).",
                bool(sync.alarm))
        out.one("sync_pruned_readings_total", "counter",
                "Raw readings already committed at the receiver pruned to stay within the disk budget.",
                getattr(sync, "pruned_readings", 0))
    backup = gateway.last_backup
    out.one("backup_last_timestamp_seconds", "gauge", "When the last scheduled backup was written.",
            backup[0] if backup else None)
    out.one("backup_ok", "gauge", "0 while scheduled backups fail.", not gateway.backup_error)
    clock = gateway.clock_synchronized
    out.one("clock_synchronized", "gauge", "1 when the system clock is synchronised (NTP), 0 when not, NaN unknown.",
            clock)
    data_dir = gateway.config.data_dir
    free, total = disk_usage(data_dir)
    out.family("disk_free_bytes", "gauge", "Free space on the data directory's file system.",
               [({"path": data_dir}, free)])
    out.family("disk_total_bytes", "gauge", "Size of the data directory's file system.",
               [({"path": data_dir}, total)])
    database = gateway.config.database
    size = sum(os.path.getsize(p) for p in (database, Path(f"{database}-wal")) if p.exists())
    out.one("store_size_bytes", "gauge", "gateway.db plus its write-ahead log.", size)
    return out.text()
