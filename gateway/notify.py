"""The only place that speaks the systemd notify protocol (via the sdnotify package).

READY=1 is sent once polling has started; WATCHDOG=1 only when a poll -> store cycle has succeeded since
the previous ping, so systemd restarts a gateway whose poll loop or store has stalled, not merely one
whose process is alive.
"""

from __future__ import annotations

import logging
import os

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier(debug=True) if self.enabled else None
        self._failed = False

    def _send(self, state: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify(state)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # log once until it works again
                log.error("systemd notify (%s) failed: %s", state.split("=")[0], exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), the usual ping interval; None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    return int(usec) / 2_000_000
