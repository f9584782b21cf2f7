"""Key files of the store (the audit and backup keys): created once, owner-only, durably."""

from __future__ import annotations

import os
from pathlib import Path


def create_key_file(path: Path, text: str) -> bool:
    """Write ``text`` to a new file at ``path``, mode 0600 in a 0700 folder, synced to disk.

    :returns: False, writing nothing, when the file exists already (another process made it a moment
        ago): the caller then loads that one, so two processes starting together agree on one key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return True
