"""``receiver`` (the cloud side) and ``keys``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from sync import BrokerSettings, Receiver, ReceiverSettings, SyncError, receiver_stats
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key, key_id, load_public

from gateway.paths import DEFAULT_DATA_DIR


@click.group(invoke_without_command=True)
@click.option("--broker", default="127.0.0.1:1883", show_default=True, metavar="HOST:PORT")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("receiver-data"),
              show_default=True, help="Receiver database (receiver.db), keys/ and trusted/ (<gateway_id>.pub).")
@click.option("--topic-prefix", default="carbon", show_default=True)
@click.pass_context
def receiver(ctx: click.Context, broker: str, data_dir: Path, topic_prefix: str) -> None:
    """The cloud-side receiver: subscribe, verify, decrypt, store idempotently, acknowledge.

    Runs until Ctrl-C. Trust a gateway by copying its gateway-signing.pub to DATA_DIR/trusted/<gateway_id>.pub.
    """
    ctx.obj = data_dir
    if ctx.invoked_subcommand is not None:
        return
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"'{broker}': use HOST:PORT", param_hint="--broker")
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_receiver_key(data_dir / "keys")
    (data_dir / "trusted").mkdir(parents=True, exist_ok=True)
    settings = ReceiverSettings(data_dir / "receiver.db", data_dir / "keys", data_dir / "trusted",
                                BrokerSettings(host=host, port=int(port)), topic_prefix=topic_prefix)
    rx = Receiver(settings)
    try:
        rx.start()
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"receiver on {broker}; public key {data_dir / 'keys' / RECEIVER_PUB}", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        rx.stop()


@receiver.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def stats(data_dir: Path, as_json: bool) -> None:
    """Per gateway: batches, readings, last sequence, missing sequences, rejections by reason."""
    database = data_dir / "receiver.db"
    if not database.exists():
        raise click.ClickException(f"{database}: no receiver database; run `carbon-gateway receiver` first")
    result = receiver_stats(database)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for gateway_id, s in result.items():
        click.echo(f"{gateway_id}: {s['batches']} batches, {s['readings']} readings, last seq {s['last_seq']}, "
                   f"missing {s['missing_seqs']}, rejected {s['rejections']}")


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_DATA_DIR,
              show_default=True, help="The gateway's data directory (keys live in DATA_DIR/keys).")
@click.option("--receiver", "with_receiver", is_flag=True, help="Also make a receiver key pair (demo, tests).")
def keys(data_dir: Path, with_receiver: bool) -> None:
    """Generate the gateway's keys if missing (files 0600) and show fingerprints."""
    keys_dir = data_dir / "keys"
    try:
        ensure_gateway_key(keys_dir)
        if with_receiver:
            ensure_receiver_key(keys_dir)
        for name in (GATEWAY_PUB, RECEIVER_PUB):
            path = keys_dir / name
            if path.exists():
                click.echo(f"{path}  fingerprint {key_id(load_public(path))}")
    except (SyncError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


COMMANDS: list[click.Command] = [receiver, keys]
