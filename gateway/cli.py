"""The ``carbon-gateway`` command: parses arguments, calls library functions, reports.

Each area keeps its commands in ``gateway/commands/<area>.py`` and exports them in
``COMMANDS``; this module only assembles the group. Library errors become
``click.ClickException`` (exit 1, no traceback); a broken config exits 2.
"""

from __future__ import annotations

import click

from gateway import __version__
from gateway.commands import (commissioning, factors, instruments, maintenance, operations, releases, reporting,
                              syncing)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carbon-gateway")
def main() -> None:
    """Carbon Edge Gateway: poll meters, compute CO2e locally, ship signed batches."""


for _module in (operations, commissioning, reporting, factors, instruments, syncing, maintenance, releases):
    for _command in _module.COMMANDS:
        main.add_command(_command)
