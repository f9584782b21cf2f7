"""``run``: the daemon."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import click

from drivers import DriverError, ProfileError, load_profiles
from local_store import StoreError
from sync import SyncError

from gateway.config import ConfigError, load_config
from gateway.notify import Notifier, watchdog_interval_s
from gateway.paths import PROFILES_DIR


class ConfigProblem(click.ClickException):
    """A config that cannot be used: exit status 2 and nothing started."""

    exit_code = 2


def _load(config: Path | None, data_dir: Path | None):  # type: ignore[no-untyped-def]
    try:
        profiles = load_profiles(PROFILES_DIR)
        return load_config(config, profiles, data_dir), profiles
    except (ConfigError, ProfileError) as exc:
        raise ConfigProblem(str(exc)) from exc


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file. Default: the embedded demo, config/gateway.toml.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the SQLite file, keys and backups live (overrides gateway.data_dir).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def run(config_path: Path | None, data_dir: Path | None, log_level: str) -> None:
    """Run the gateway: poll meters, store, compute emissions, sync, serve the web UI.

    Stops cleanly on SIGTERM or Ctrl-C. A config error exits with status 2 before anything starts.
    """
    from gateway.daemon import Gateway

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # bus errors are reported per meter by drivers
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run would drown the journal
    config, profiles = _load(config_path, data_dir)
    stop = threading.Event()
    # Signal handlers only set a flag; the main thread does the work.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    gateway = Gateway(config, profiles)
    try:
        gateway.start()
    except (DriverError, StoreError, SyncError, OSError) as exc:
        gateway.stop()
        raise click.ClickException(f"cannot start: {exc}") from exc
    notifier = Notifier()
    notifier.ready(f"polling {len(config.meters)} meter(s)")
    if config.web.enabled:
        click.echo(f"Carbon Edge Gateway {config.gateway_id}: web UI on {'https' if config.web.tls else 'http'}://{config.web.host}:{config.web.port} "
                   f"· data in {config.data_dir} · Ctrl-C to stop", err=True)
    ping_every_s = watchdog_interval_s() or 5.0
    last_ping_for = 0.0
    try:
        while not stop.wait(min(ping_every_s, 0.5)):
            # Ping only for progress: a poll -> store cycle newer than the one the last ping was for.
            if gateway.last_store_ok > last_ping_for:
                last_ping_for = gateway.last_store_ok
                notifier.watchdog()
    finally:
        notifier.stopping()
        gateway.stop()


COMMANDS: list[click.Command] = [run]
