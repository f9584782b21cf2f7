"""Build hook: the wheel carries ``config/`` (default config, profiles, factors) as ``gateway/shipped/``.

``config/`` stays the one editable source in the repository; an editable install reads it in place
(gateway/paths.py looks for ``gateway/shipped`` first, then for the checkout's ``config/``).
Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithShippedConfig(build_py):
    """``build_py`` that also copies the TOML files of ``config/`` into ``<build_lib>/gateway/shipped/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:   # the checkout's config/ is read in place
            return
        target = Path(self.build_lib) / "gateway" / "shipped"
        shutil.rmtree(target, ignore_errors=True)
        for source in sorted((HERE / "config").rglob("*.toml")):
            destination = target / source.relative_to(HERE / "config")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithShippedConfig})
