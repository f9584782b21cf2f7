"""The packages type-check with mypy (``check_untyped_defs``, see pyproject.toml), as STYLE.md asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["gateway", "drivers", "local_store", "sync", "webui"]


def test_packages_type_check() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", *PACKAGES], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
