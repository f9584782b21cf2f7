"""`carbon-gateway keys` and `carbon-gateway receiver stats`: output, files 0600, errors without tracebacks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import Quantity, Reading
from gateway.cli import main
from local_store import open_store
from sync import Receiver, ReceiverSettings, SyncService, SyncSettings, outbox
from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key
from tests.conftest import foreign_database


def test_keys_generate_show_rotate(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "--receiver"])
    assert first.exit_code == 0, first.output
    ids = re.findall(r"fingerprint ([0-9a-f]{16})  \(current\)", first.output)
    assert len(ids) == 2
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "keys").iterdir())
    again = runner.invoke(main, ["keys", "--data-dir", str(tmp_path)])
    assert re.findall(r"fingerprint ([0-9a-f]{16})", again.output) == ids   # not regenerated
    rotated = runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "rotate"])
    assert rotated.exit_code == 0 and f"gateway key rotated: {ids[0]} -> " in rotated.output
    shown = runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "show"])
    assert f"gateway-signing.{ids[0]}.pub  fingerprint {ids[0]}  (retired)" in shown.output
    rotated = runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "rotate", "--receiver"])
    assert f"receiver key rotated: {ids[1]} -> " in rotated.output
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "keys").iterdir())


def test_keys_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "--data-dir", str(tmp_path / "none"), "show"])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'none' / 'keys'}: no keys here; run `carbon-gateway keys "
                             f"--data-dir {tmp_path / 'none'}` to create them\n")
    result = runner.invoke(main, ["keys", "--data-dir", str(tmp_path / "none"), "rotate", "--receiver"])
    assert result.exit_code == 1 and "no receiver key to rotate; run `carbon-gateway keys --receiver` first" in result.output
    (tmp_path / "bad" / "keys").mkdir(parents=True)
    (tmp_path / "bad" / "keys" / "gateway-signing.key").write_text("not a key")
    result = runner.invoke(main, ["keys", "--data-dir", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "gateway-signing.key: not a PEM private key" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    (["receiver", "--data-dir", "{tmp}", "stats"],
     "{tmp}/receiver.db: a SQLite database of another program (tables invoices), not a receiver database; nothing "
     "was changed: pass --database or --data-dir naming the receiver's own file"),
    (["keys", "--data-dir", "{tmp}"],
     "{tmp}/keys/gateway-signing.key: not a PEM private key (the file is damaged or holds something else): "
     "restore it from your copy, or move it away and run `carbon-gateway keys` to make a new one (then give the "
     "receiver the new public key)"),
    (["keys", "--data-dir", "{tmp}", "show"],
     "{tmp}/keys/gateway-signing.pub: not a PEM public key (the file is damaged or holds something else): copy "
     "the right .pub file there again"),
])
def test_foreign_or_damaged_files_are_named_and_left_alone(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad-input sweep: receiver stats turned another program's file into WAL mode and added its tables."""
    before = foreign_database(tmp_path / "receiver.db")
    (tmp_path / "keys").mkdir()
    for name in ("gateway-signing.key", "gateway-signing.pub"):
        (tmp_path / "keys" / name).write_text("not a key")
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert (result.exit_code, result.output) == (1, f"Error: {message.format(tmp=tmp_path)}\n")
    assert (tmp_path / "receiver.db").read_bytes() == before


def test_receiver_stats_json(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["receiver", "--data-dir", str(tmp_path), "stats", "--json"])
    assert missing.exit_code == 1
    assert "receiver.db: no receiver database; run `carbon-gateway receiver` first" in missing.output
    runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "--receiver"])
    rx = Receiver(ReceiverSettings(tmp_path / "receiver.db", tmp_path / "keys", tmp_path / "trusted"))
    assert rx.handle(b"CEG1\x05\x00{}") is None
    # A gateway gw-1: batches 1 and 3 arrive (2 is missing), 1 twice, and a copy of 3 with a flipped byte.
    ensure_gateway_key(tmp_path / "gw" / "keys")
    (tmp_path / "trusted").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "gw" / "keys" / GATEWAY_PUB, tmp_path / "trusted" / "gw-1.pub")
    store = open_store(tmp_path / "gw" / "gateway.db")
    service = SyncService(SyncSettings("gw-1", tmp_path / "gw" / "keys", tmp_path / "keys" / RECEIVER_PUB), store)
    for k, n in enumerate((10, 4, 7)):
        store.insert_readings([Reading("m", "energy_import", 1_795_000_000.0 + 100 * k + i, float(i), "kWh",
                                       Quantity.ENERGY_IMPORT) for i in range(n)])
        service.fill(force=True)
    first, _, third = (row.message for row in outbox.unacked(store.db, 3))
    store.close()
    flipped = bytearray(third)
    flipped[-1] ^= 0x80
    assert [rx.handle(m)[1]["status"] for m in (first, third, first)] == ["committed", "committed", "duplicate"]
    assert rx.handle(bytes(flipped)) is None     # bad signature: refused, no ack
    rx.stop()
    result = runner.invoke(main, ["receiver", "--data-dir", str(tmp_path), "stats", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "?": {"batches": 0, "readings": 0, "last_seq": None, "missing_seqs": 0, "first_missing": [], "chain_breaks": 0,
              "rejections": {"malformed": 1}, "quarantined": 0, "streams": 0},
        "gw-1": {"batches": 2, "readings": 17, "last_seq": 3, "missing_seqs": 1, "first_missing": [2],
                 "chain_breaks": 0, "rejections": {"bad_signature": 1}, "quarantined": 0, "streams": 1}}


def test_receiver_command_receives_and_stops_cleanly_on_sigterm(tmp_path: Path, mqtt_broker) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from drivers import Quantity, Reading
    from local_store import open_store
    from sync import BrokerSettings, SyncService, SyncSettings, receiver_stats
    from sync.keys import GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key
    from tests.conftest import wait_until

    root = Path(__file__).resolve().parents[2]
    rx_dir, gw_dir = tmp_path / "rx", tmp_path / "gw"
    log = tmp_path / "receiver.log"
    process = subprocess.Popen([sys.executable, "-c", "from gateway.cli import main; main()", "receiver",
                                "--broker", f"127.0.0.1:{mqtt_broker.port}", "--data-dir", str(rx_dir)], cwd=root,
                               env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
                               stderr=log.open("w"))
    try:
        wait_until(lambda: "connected to broker" in log.read_text(), timeout_s=20, message="receiver command up")
        ensure_gateway_key(gw_dir / "keys")
        shutil.copy(gw_dir / "keys" / GATEWAY_PUB, rx_dir / "trusted" / "gw-1.pub")
        store = open_store(gw_dir / "gateway.db")
        store.insert_readings([Reading("m", "energy_import", 1_795_000_000.0 + i, float(i), "kWh",
                                       Quantity.ENERGY_IMPORT) for i in range(30)])
        service = SyncService(SyncSettings("gw-1", gw_dir / "keys", rx_dir / "keys" / RECEIVER_PUB,
                                           BrokerSettings(port=mqtt_broker.port), batch_max_age_s=0.0, tick_s=0.05),
                              store)
        service.start()
        try:
            wait_until(lambda: service.status().backlog_readings == 0, timeout_s=20, message="acknowledged")
        finally:
            service.stop()
            store.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert receiver_stats(rx_dir / "receiver.db")["gw-1"]["readings"] == 30


def test_receiver_command_rejects_a_bad_broker_argument(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["receiver", "--broker", "nohost", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "'nohost': use HOST:PORT" in result.output


def test_reconnect_waits_grow_exponentially_with_jitter() -> None:
    from sync.mqtt import BrokerSettings, Link

    link = Link(BrokerSettings(backoff_min_s=1.0, backoff_max_s=8.0), client_id="jitter-test")
    waits = []
    for _ in range(6):
        link._schedule_reconnect()
        waits.append(link.client._reconnect_min_delay)
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings)), waits
    assert len({round(w, 6) for w in waits}) > 1   # jittered, not lock-step
