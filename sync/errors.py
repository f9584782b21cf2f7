"""Exceptions of the sync package; ``SyncError`` is the root."""

from __future__ import annotations


class SyncError(Exception):
    """Sync could not do what was asked."""


class KeyFileError(SyncError):
    """A key file is missing, unreadable or of the wrong kind."""


class BatchRejected(SyncError):
    """A received batch failed a check; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
