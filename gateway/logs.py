"""Logging that reads well in journald, and errors that are reported once rather than every second.

Under systemd (``JOURNAL_STREAM`` names our stderr) each line starts with a syslog priority prefix
(``<3>`` for ERROR) and carries no timestamp: journald adds its own, and ``journalctl -p err`` then
filters by level. Elsewhere lines carry a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, the prefix journald turns into the entry's PRIORITY."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.ERROR else 3)
        text = super().format(record)
        # A multi-line message (a traceback) would become several journal entries at the default level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def under_journald(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd connected (JOURNAL_STREAM)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):   # pytest's capture, a closed stream
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)    # bus errors are reported per meter by drivers
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run would drown the journal


class RepeatedError:
    """Report an error at ERROR the first time; quiet identical repeats until :meth:`ok`, then say how many.

    HA ``_log_error`` in spirit: a disk that stays full for an hour writes two lines, not 3600.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger, self.what = logger, what
        self.message = ""
        self.repeats = 0
        self._lock = threading.Lock()    # bus threads and the store writer report to the same one

    def failed(self, message: str) -> None:
        with self._lock:
            if message == self.message:
                self.repeats += 1
                return
            if self.message and self.repeats:
                self.logger.error("%s: the previous error repeated %d more time(s)", self.what, self.repeats)
            self.message, self.repeats = message, 0
            self.logger.error("%s: %s", self.what, message)

    def ok(self) -> None:
        with self._lock:
            if self.message:
                self.logger.info("%s works again (the error was seen %d time(s))", self.what, self.repeats + 1)
            self.message, self.repeats = "", 0
