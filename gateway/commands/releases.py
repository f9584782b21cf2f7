"""``upgrade``: install a signed release bundle beside the running one; roll back by itself (gateway/upgrade.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from gateway.commands.operations import load_or_exit
from gateway.upgrade import UpgradeError, UpgradeSettings, run_request, upgrade

_DEFAULTS = UpgradeSettings()


@click.command("upgrade")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=False)
@click.option("--request", "request_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Run the upgrade asked for in the web UI (<data_dir>/upgrade/request.json); "
                   "carbon-gateway-upgrade.service does this.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("/etc/carbon-gateway/gateway.toml"), show_default=True, help="The service's config.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("/var/lib/carbon-gateway"), show_default=True, help="The service's state directory.")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default=_DEFAULTS.prefix,
              show_default=True, help="Where releases/ and the current link are.")
@click.option("--keys", "keys", type=click.Path(path_type=Path), multiple=True,
              help="Trusted release public keys (files or directories of *.pub). "
                   "Default: /etc/carbon-gateway/release-keys.")
@click.option("--force", is_flag=True, help="Install an older version than the running one (going back on purpose).")
@click.option("--health-timeout", type=click.FloatRange(5, 3600), default=_DEFAULTS.health_timeout_s,
              show_default=True, help="Seconds the new release has to answer /healthz before it is rolled back.")
@click.option("--stop-command", default=shlex.join(_DEFAULTS.stop_command), show_default=True,
              help="How the service is stopped.")
@click.option("--start-command", default=shlex.join(_DEFAULTS.start_command), show_default=True,
              help="How the service is started.")
@click.option("--python", "python", default=_DEFAULTS.python, show_default=True,
              help="The interpreter for the new release's virtual environment.")
@click.option("--find-links", type=click.Path(path_type=Path, file_okay=False, exists=True), multiple=True,
              help="More local wheel directories (for a bundle built without its dependencies).")
def upgrade_command(bundle: Path | None, request_file: Path | None, config_path: Path, data_dir: Path, prefix: Path, keys: tuple[Path, ...],
                    force: bool, health_timeout: float, stop_command: str, start_command: str, python: str,
                    find_links: tuple[Path, ...]) -> None:
    """Upgrade to a signed release BUNDLE (scripts/release), offline, with automatic rollback.

    Refuses an unsigned, tampered or untrusted bundle and a downgrade (without --force), and then changes
    nothing. Otherwise: backup of the store, install into PREFIX/releases/<version>, stop, switch
    PREFIX/current, start, wait for /healthz to answer with the new version; if it does not within
    --health-timeout: switch back, restore the store if the new release migrated it, start the old one.
    Everything goes into the audit log. Run it as root (it writes PREFIX and restarts the service).
    """
    if (bundle is None) == (request_file is None):
        raise click.UsageError("give a BUNDLE file, or --request FILE")
    config, _ = load_or_exit(config_path, data_dir)
    settings = UpgradeSettings(prefix=prefix, trusted_keys=keys or _DEFAULTS.trusted_keys,
                               stop_command=shlex.split(stop_command), start_command=shlex.split(start_command),
                               health_timeout_s=health_timeout, python=python, find_links=find_links, force=force)
    try:
        if request_file is not None:
            result = run_request(request_file, config, settings, log=lambda line: click.echo(line, err=True))
        else:
            assert bundle is not None
            result = upgrade(bundle, config, settings, log=lambda line: click.echo(line, err=True))
    except UpgradeError as exc:
        raise click.ClickException(str(exc)) from None
    if result.outcome == "upgraded":
        click.echo(f"upgraded {result.from_version} -> {result.to_version}")
        return
    click.echo(f"rolled back to {result.from_version}: {result.reason}"
               + ("; the pre-upgrade store was restored" if result.store_restored else ""))
    raise click.exceptions.Exit(1)


COMMANDS: list[click.Command] = [upgrade_command]
