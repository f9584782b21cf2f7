"""Disk space the store can always use: a pre-allocated reserve file released when the disk fills.

A full disk makes SQLite refuse every write (SQLITE_FULL), so readings read from the meters wait in
memory. Releasing the reserve gives SQLite room for them at once, before any is dropped and before a
shutdown (SIGTERM) would lose them (issue 16). The reserve is made again once the disk has room.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

#: Default reserve: room for roughly 40 000 readings in the store (about 200 bytes each, indexes included).
DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's "database or disk is full" and for ENOSPC / EDQUOT from the OS."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and is_disk_full(cause)


class DiskReserve:
    """A file of ``size_bytes`` beside the store (``<store>.reserve``), released when the disk fills."""

    def __init__(self, store_path: Path, size_bytes: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path = Path(str(store_path) + ".reserve")
        self.size_bytes = size_bytes

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size_bytes
        except OSError:
            return False

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has room for it and as much again; True if held.

        Never raises: a disk without room simply has no reserve yet.
        """
        if self.size_bytes <= 0 or self.held:
            return self.held
        try:
            if shutil.disk_usage(self.path.parent).free < 2 * self.size_bytes:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size_bytes)   # real blocks, not a sparse file
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    block = b"\0" * (1 << 20)
                    for _ in range(0, self.size_bytes, len(block)):
                        os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            self.path.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> int:
        """Delete the reserve; returns the bytes freed (0 if there was none)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return 0
        return size


__all__ = ["DEFAULT_RESERVE_BYTES", "DiskReserve", "is_disk_full"]
