"""The only place that speaks the systemd notify protocol (via the sdnotify package).

READY=1 is sent once polling has started; WATCHDOG=1 only when every bus loop and the store writer have
come round since the previous ping (``Gateway.progress``), so systemd restarts a gateway whose poll loop
or store writer hangs, not merely one whose process is alive. Dead meters and a full disk do not stop the
pings: a restart would not revive them and would lose the readings held in memory; they are reported in
``/healthz``, ``/metrics`` and the log instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._failed = False
        if self.enabled:
            try:
                self._notifier = sdnotify.SystemdNotifier(debug=True)
            except OSError as exc:
                log.error("systemd notify socket %s: %s; running without notify", os.environ["NOTIFY_SOCKET"], exc)
                self.enabled = False
            else:
                # A datagram send blocks while the receiver's queue is full; never stall the main loop on it.
                self._notifier.socket.settimeout(1.0)

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


class WatchdogFeeder:
    """Sends WATCHDOG=1 only when ``progress()`` (a monotonic time) has moved since the previous ping."""

    def __init__(self, notifier: Notifier, progress: Callable[[], float]) -> None:
        self.notifier, self.progress = notifier, progress
        self.last_ping_for = 0.0

    def tick(self) -> bool:
        """Ping if there was progress; returns whether it pinged."""
        current = self.progress()
        if current <= self.last_ping_for:
            return False
        self.last_ping_for = current
        self.notifier.watchdog()
        return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), the usual ping interval; None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    return int(usec) / 2_000_000
