"""Files that must survive a power cut whole: the old version or the new one, never half of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: written to a temporary file beside it, synced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (on Linux a rename is only on disk once its folder is)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:        # a folder that cannot be opened cannot be synced either; the rename stands
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
