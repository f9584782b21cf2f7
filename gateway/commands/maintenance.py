"""CLI commands of this area; ``gateway.cli`` adds everything in ``COMMANDS``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
