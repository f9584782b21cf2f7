"""Is the system clock synchronised? A box without an RTC boots with a wrong time until NTP answers.

Sources, first answer wins:

1. a wall clock before 2024-01-01 is certainly wrong (an RTC-less box restarts near 1970 or at the
   time ``fake-hwclock`` saved);
2. ``timedatectl show -p NTPSynchronized --value``: systemd-timedated reads the kernel's STA_UNSYNC flag
   for us, whichever NTP daemon runs (timesyncd, chrony, ntpd);
3. ``/run/systemd/timesync/synchronized``, which systemd-timesyncd creates once it has synchronised;
4. ``adjtimex(2)`` read-only (TIME_ERROR means unsynchronised), but only when no seccomp filter is active:
   the service unit's ``ProtectClock=yes`` filters the @clock system calls, and a filtered call would
   kill the process;
5. otherwise: unknown (``None``), reported by ``doctor`` and ``/metrics``, and readings are not flagged.

Readings polled while the answer is ``False`` carry the reason ``clock_unsynchronised``; it is stored
with them and travels in sync batches.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

UNSYNCHRONISED_REASON = "clock_unsynchronised"
EARLIEST_PLAUSIBLE_TS = 1_704_067_200.0    # 2024-01-01 UTC: older than this software
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5


@dataclass(frozen=True)
class ClockState:
    synchronized: bool | None      # None: no source could tell
    source: str                    # wall-clock | timedatectl | timesyncd | adjtimex | none
    detail: str


class _Timex(ctypes.Structure):
    # struct timex starts with "unsigned int modes"; the kernel writes the rest (about 208 bytes on 64-bit).
    _fields_ = [("modes", ctypes.c_uint), ("rest", ctypes.c_char * 256)]


def _seccomp_active() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Seccomp:"):
                return line.split()[1] != "0"
    except OSError:
        pass
    return True   # cannot tell: do not risk a filtered system call


def _adjtimex() -> bool | None:
    if _seccomp_active():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        state = libc.adjtimex(ctypes.byref(_Timex()))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != _TIME_ERROR


def _timedatectl(command: str) -> bool | None:
    # Not our notify socket: systemd tools report their own failures there (ERRNO=...).
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    try:
        result = subprocess.run([command, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                text=True, timeout=3, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = result.stdout.strip()
    return {"yes": True, "no": False}.get(answer) if result.returncode == 0 else None


def clock_state(now: float | None = None, timedatectl: str = "timedatectl", timesync_flag: Path = TIMESYNC_FLAG,
                use_adjtimex: bool = True) -> ClockState:
    """Whether the system clock is synchronised, and which source said so."""
    now = time.time() if now is None else now
    if now < EARLIEST_PLAUSIBLE_TS:
        shown = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
        return ClockState(False, "wall-clock", f"the clock says {shown}, before this software existed")
    answer = _timedatectl(timedatectl)
    if answer is not None:
        return ClockState(answer, "timedatectl", f"timedatectl: NTPSynchronized={'yes' if answer else 'no'}")
    if timesync_flag.exists():
        return ClockState(True, "timesyncd", f"{timesync_flag} exists")
    answer = _adjtimex() if use_adjtimex else None
    if answer is not None:
        return ClockState(answer, "adjtimex", "the kernel's NTP state is " + ("synchronised" if answer
                                                                              else "unsynchronised (TIME_ERROR)"))
    return ClockState(None, "none", "no source could tell (no timedated, no timesyncd flag, adjtimex not allowed)")
