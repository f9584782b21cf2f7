"""``receiver`` (the cloud side), ``keys`` and ``sync`` (the gateway's sync stream)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import click

from sync import BrokerSettings, Receiver, ReceiverSettings, SyncError, receiver_stats
from sync.keys import (GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key, key_id, load_public,
                       rotate_gateway_key, rotate_receiver_key)

from gateway.commands.commissioning import host_port
from gateway.paths import DEFAULT_DATA_DIR


@click.group(invoke_without_command=True)
@click.option("--broker", default="127.0.0.1:1883", show_default=True, metavar="HOST:PORT")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("receiver-data"),
              show_default=True, help="Receiver database (receiver.db), keys/ and trusted/ (<gateway_id>.pub).")
@click.option("--topic-prefix", default="carbon", show_default=True)
@click.option("--database", metavar="PATH|URL", default=None,
              help="Where batches are stored: a SQLite file (default DATA_DIR/receiver.db) or a postgresql:// URL.")
@click.option("--share-group", default="receivers", show_default=True,
              help="MQTT 5 shared-subscription group; receivers in one group split the batches.")
@click.option("--tls/--no-tls", default=False, help="Connect to the broker over TLS.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CA certificate that signed the broker's (default: the system trust store).")
@click.option("--client-cert", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--client-key", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--username", default=None)
@click.option("--password", default=None, envvar="CEG_RECEIVER_PASSWORD", help="Or set CEG_RECEIVER_PASSWORD.")
@click.option("--client-id", default=None,
              help="MQTT client id, stable across restarts (default: receiver-<host name>); one per receiver.")
@click.option("--session-expiry", "session_expiry_s", type=click.IntRange(0, 2**32 - 1), default=3600,
              show_default=True, help="Seconds the broker keeps this receiver's session (and the batches for "
              "it) while it is away; 0: none.")
@click.pass_context
def receiver(ctx: click.Context, broker: str, data_dir: Path, topic_prefix: str, database: str | None,
             share_group: str, tls: bool, ca_file: Path | None, client_cert: Path | None, client_key: Path | None,
             username: str | None, password: str | None, client_id: str | None, session_expiry_s: int) -> None:
    """The cloud-side receiver: subscribe, verify, decrypt, store idempotently, acknowledge.

    Runs until Ctrl-C. Trust a gateway by copying its gateway-signing.pub to DATA_DIR/trusted/<gateway_id>.pub.
    """
    target: Path | str = database if database and "://" in database else Path(database or data_dir / "receiver.db")
    ctx.obj = target
    if ctx.invoked_subcommand is not None:
        return
    host, port = host_port(broker, "--broker", "broker.example.com:8883")
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ensure_receiver_key(data_dir / "keys")
        (data_dir / "trusted").mkdir(parents=True, exist_ok=True)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename}: cannot create ({exc.strerror}): check --data-dir") from exc
    settings = ReceiverSettings(target, data_dir / "keys", data_dir / "trusted",
                                BrokerSettings(host=host, port=port, tls=tls, ca_file=ca_file,
                                               client_cert=client_cert, client_key=client_key, username=username,
                                               password=password, session_expiry_s=session_expiry_s),
                                topic_prefix=topic_prefix, share_group=share_group,
                                client_id=client_id or f"receiver-{socket.gethostname()}")
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
def stats(database: Path | str, as_json: bool) -> None:
    """Per gateway: batches, readings, last sequence, missing sequences, rejections by reason."""
    if isinstance(database, Path) and not database.exists():
        raise click.ClickException(f"{database}: no receiver database; run `carbon-gateway receiver` first")
    try:
        result = receiver_stats(database)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for gateway_id, s in result.items():
        click.echo(f"{gateway_id}: {s['batches']} batches, {s['readings']} readings, last seq {s['last_seq']}, "
                   f"missing {s['missing_seqs']}, chain breaks {s['chain_breaks']}, quarantined {s['quarantined']}, "
                   f"rejected {s['rejections']}")


@receiver.command("acl")
@click.option("--passwords", "passwords_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="username:password lines for gateways and receivers (stored hashed); without a password a "
              "client must use a client certificate (use_identity_as_username).")
@click.option("--receiver-user", "receiver_users", multiple=True, default=("receiver",), show_default=True,
              help="Broker username of a receiver (repeat for several).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the JSON here (0600) instead of printing it.")
@click.pass_context
def acl(ctx: click.Context, passwords_file: Path | None, receiver_users: tuple[str, ...], output: Path | None) -> None:
    """The broker ACL for the gateways in DATA_DIR/trusted/, for mosquitto's dynamic security plugin.

    Each gateway may publish only on <prefix>/<gateway_id>/batch and read only its own acks; receivers
    take every batch and publish acks; everything else is denied. Use the file as the plugin's
    plugin_opt_config_file (docs/sync-protocol.md, "Broker access control").
    """
    from sync.acl import dynsec_config, read_passwords, trusted_gateway_ids

    params = ctx.parent.params if ctx.parent else {}
    data_dir = Path(params.get("data_dir") or "receiver-data")
    try:
        gateways = trusted_gateway_ids(data_dir / "trusted")
        if not gateways:
            raise SyncError(f"{data_dir / 'trusted'}: no trusted gateway keys (<gateway_id>.pub): trust the "
                            "gateways first, then make the ACL")
        config = dynsec_config(gateways, receiver_users, params.get("topic_prefix") or "carbon",
                               params.get("share_group") or "receivers",
                               read_passwords(passwords_file) if passwords_file else None)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    text = json.dumps(config, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write ({exc.strerror})") from exc
    click.echo(f"ACL for {len(gateways)} gateway(s) and {len(receiver_users)} receiver(s) written to {output}",
               err=True)


@click.group(invoke_without_command=True)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_DATA_DIR,
              show_default=True, help="The gateway's (or receiver's) data directory; keys live in DATA_DIR/keys.")
@click.option("--receiver", "with_receiver", is_flag=True, help="Also make a receiver key pair (demo, tests).")
@click.pass_context
def keys(ctx: click.Context, data_dir: Path, with_receiver: bool) -> None:
    """Generate missing keys (files 0600) and show fingerprints; `keys show`, `keys rotate`."""
    ctx.obj = data_dir / "keys"
    if ctx.invoked_subcommand is not None:
        return
    try:
        ensure_gateway_key(ctx.obj)
        if with_receiver:
            ensure_receiver_key(ctx.obj)
    except (SyncError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    _show(ctx.obj)


def _show(keys_dir: Path) -> None:
    if not keys_dir.is_dir():
        raise click.ClickException(f"{keys_dir}: no keys here; run `carbon-gateway keys --data-dir "
                                   f"{keys_dir.parent}` to create them")
    try:
        for path in sorted(keys_dir.glob("*.pub")):
            state = "current" if path.name in (GATEWAY_PUB, RECEIVER_PUB) else "retired"
            click.echo(f"{path}  fingerprint {key_id(load_public(path))}  ({state})")
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc


@keys.command("show")
@click.pass_obj
def keys_show(keys_dir: Path) -> None:
    """Show public keys and fingerprints, current and retired."""
    _show(keys_dir)


@keys.command("rotate")
@click.option("--gateway", "which", flag_value="gateway", default=True, help="Rotate the gateway's signing key.")
@click.option("--receiver", "which", flag_value="receiver", help="Rotate the receiver's sealing key.")
@click.pass_obj
def keys_rotate(keys_dir: Path, which: str) -> None:
    """Replace a key pair; the old one is kept (retired) so no sealed batch is lost.

    Gateway: copy the new gateway-signing.pub to the receiver's trusted/<gateway_id>/ before or right
    after rotating. Receiver: give gateways the new receiver-sealing.pub; keep the retired private key
    until their outboxes have drained.
    """
    try:
        old, new = (rotate_gateway_key if which == "gateway" else rotate_receiver_key)(keys_dir)
    except (SyncError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{which} key rotated: {old} -> {new}")
    _show(keys_dir)


@click.group("sync")
def sync_group() -> None:
    """The gateway's sync streams (docs/sync-protocol.md, "Sync streams")."""


@sync_group.command("new-stream")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The gateway's TOML config (default: the embedded demo config).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="The gateway's state directory (overrides gateway.data_dir).")
def new_stream(config_path: Path | None, data_dir: Path | None) -> None:
    """Start a new sync stream after a sync conflict (a copied store). Stop the gateway first.

    The batches the receiver has not acknowledged are sealed again in the new stream, so nothing is
    lost. `carbon-gateway restore` does this by itself; this is for a store copied by hand.
    """
    from local_store import StoreError, open_store
    from local_store.backup import StoreLock
    from sync import outbox

    from gateway.commands.operations import load_or_exit

    config, _ = load_or_exit(config_path, data_dir)
    if not config.database.exists():
        raise click.ClickException(f"{config.database}: no gateway database here: pass --data-dir DIR")
    lock = StoreLock(config.database)
    if not lock.acquire():
        raise click.ClickException(f"{config.database}: the gateway is running; nothing was changed: stop it first "
                                   "(systemctl stop carbon-gateway)")
    try:
        with open_store(config.database) as store:
            stream = outbox.new_stream(store.db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lock.release()
    click.echo(f"new sync stream {stream.id}: unacknowledged readings from id {stream.lineage[-1][2]} on are sent "
               f"again in it, from sequence {stream.lineage[-1][1]}; start the gateway")


COMMANDS: list[click.Command] = [receiver, keys, sync_group]
