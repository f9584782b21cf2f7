"""The only place that speaks the systemd notify protocol (sd_notify(3): one datagram to $NOTIFY_SOCKET).

READY=1 is sent once polling has started; WATCHDOG=1 only when every bus loop and the store writer have
come round since the previous ping (``Gateway.progress``), so systemd restarts a gateway whose poll loop
or store writer hangs, not merely one whose process is alive. Dead meters and a full disk do not stop the
pings: a restart would not revive them and would lose the readings held in memory; they are reported in
``/healthz``, ``/metrics`` and the log instead.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to systemd. The protocol is a datagram on a Unix socket, so no package is needed
    (the sdnotify package this replaced ships no wheel, which an offline release bundle needs)."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        # "@name" is a socket in the abstract namespace (a leading NUL byte on the wire).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._failed = False
        if self.enabled:
            try:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as exc:
                log.error("systemd notify socket %s: %s; running without notify", address, exc)
                self.enabled = False
            else:
                # A datagram send blocks while the receiver's queue is full; never stall the main loop on it.
                self._socket.settimeout(1.0)

    def _send(self, state: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(state.encode(), self._address)
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
