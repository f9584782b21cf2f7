"""`carbon-gateway keys` and `carbon-gateway receiver stats`: output, files 0600, errors without tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main
from sync import Receiver, ReceiverSettings


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


def test_receiver_stats_json(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["receiver", "--data-dir", str(tmp_path), "stats", "--json"])
    assert missing.exit_code == 1
    assert "receiver.db: no receiver database; run `carbon-gateway receiver` first" in missing.output
    runner.invoke(main, ["keys", "--data-dir", str(tmp_path), "--receiver"])
    rx = Receiver(ReceiverSettings(tmp_path / "receiver.db", tmp_path / "keys", tmp_path / "trusted"))
    assert rx.handle(b"CEG1\x05\x00{}") is None
    rx.stop()
    result = runner.invoke(main, ["receiver", "--data-dir", str(tmp_path), "stats", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"?": {"batches": 0, "readings": 0, "last_seq": None, "missing_seqs": 0,
                                               "first_missing": [], "chain_breaks": 0,
                                               "rejections": {"malformed": 1}, "quarantined": 0}}
