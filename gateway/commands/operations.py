"""``run``: the daemon."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from drivers import DriverError, Profile, ProfileError, load_profile_set
from local_store import StoreError
from sync import SyncError

from gateway.config import ConfigError, GatewayConfig, check_web_port, load_config
from gateway.logs import configure_logging, under_journald
from gateway.notify import Notifier, WatchdogFeeder, watchdog_interval_s
from gateway.paths import PROFILE_DIRS

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class ConfigProblem(click.ClickException):
    """A config that cannot be used: exit status 2 and nothing started."""

    exit_code = 2


def load_config_and_profiles(config: Path | None, data_dir: Path | None) -> tuple[GatewayConfig, dict[str, Profile]]:
    """The config and the profiles that loaded; a meter whose profile file is broken is disabled with the
    error as its alarm (``GatewayConfig.disabled_meters``), the other meters run.

    :raises ConfigError: the config cannot be used (a meter naming a profile that does not exist included).
    :raises ProfileError: the profile directory is missing.
    """
    found = load_profile_set(PROFILE_DIRS)
    return load_config(config, found.profiles, data_dir, broken_profiles=found.broken), dict(found.profiles)


def load_or_exit(config: Path | None, data_dir: Path | None) -> tuple[GatewayConfig, dict[str, Profile]]:
    """The config and profiles, or exit 2 with the config error's message."""
    try:
        return load_config_and_profiles(config, data_dir)
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

    Stops cleanly on SIGTERM or Ctrl-C; SIGHUP (systemctl reload) re-reads the config and keeps the
    running one when the new one fails to load or to start. A config error at start exits with status 2
    before anything starts.
    """
    from gateway.daemon import Gateway
    from gateway.runtime import Runtime

    configure_logging(log_level)
    config, profiles = load_or_exit(config_path, data_dir)
    try:
        check_web_port(config)       # before the data directory is written
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    stop, reload_requested = threading.Event(), threading.Event()
    # Signal handlers only set flags; the main thread does the work.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    gateway = Gateway(config, profiles)
    runtime = Runtime(gateway)
    if config.web.enabled:
        # The CLI builds the web server and hands it to the daemon: the daemon never imports the web UI.
        from webui import serve_gateway

        gateway.web_factory = lambda: serve_gateway(runtime)
    try:
        gateway.start()
    except (DriverError, StoreError, SyncError, OSError) as exc:
        gateway.stop()
        raise click.ClickException(f"cannot start: {exc}") from exc
    notifier = Notifier()
    notifier.ready(_status(config))
    if config.web.enabled and not under_journald():   # the journal has the log line already
        click.echo(f"Carbon Edge Gateway {config.gateway_id}: web UI on {'https' if config.web.tls else 'http'}://{config.web.host}:{config.web.port} "
                   f"· data in {config.data_dir} · Ctrl-C to stop", err=True)
    ping_every_s = watchdog_interval_s() or 5.0
    feeder = WatchdogFeeder(notifier, gateway.progress)
    try:
        while not stop.wait(min(ping_every_s, 0.5)):
            if reload_requested.is_set():
                reload_requested.clear()
                notifier.reloading()
                reload_config(runtime, config_path, data_dir)
                notifier.ready(_status(gateway.config))
            feeder.tick()   # pings only if every bus loop and the store writer came round since the last ping
    finally:
        notifier.stopping()
        runtime.close()
        gateway.stop()


def _status(config: GatewayConfig) -> str:
    """systemd's STATUS= line: what the service does (`systemctl status` shows it)."""
    if not config.meters:   # the production template before commissioning
        return "no meters yet: waiting for the first-boot setup in the web UI"
    return f"polling {len(config.meters)} meter(s)"


def reload_config(runtime: Runtime, config_path: Path | None, data_dir: Path | None) -> bool:
    """SIGHUP: re-read the config file and the profile files and apply them through the service interface (the
    same reload as a web edit); keep the running config when it fails. A broken profile file disables only the
    meters that use it. Logged here, audited by the runtime."""
    from gateway.runtime import ApplyError

    where = str(config_path or "the embedded default config")
    try:
        runtime.reload_from_file(lambda: load_config_and_profiles(config_path, data_dir), where)
    except ApplyError as exc:
        log.error("config reload from %s refused, the running config stays: %s", where, exc)
        return False
    log.info("config reloaded from %s", where)
    return True


COMMANDS: list[click.Command] = [run]
