"""``python -m gateway``: the ``carbon-gateway`` command, for a release's venv run by path (the unit does so)."""

from gateway.cli import main

main(prog_name="carbon-gateway")
