"""Every command given a wrong --data-dir says which path is wrong and what to pass, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import foreign_database

CSV = "source,activity,start,end,amount,unit\nb,natural_gas,2025-01-01,2025-02-01,100,m3\n"


@pytest.mark.parametrize("args,message", [
    (["import", "{csv}", "--data-dir", "{file}/sub"],
     "{file}/sub: cannot create the data directory (Not a directory): choose a directory that can be created, "
     "e.g. --data-dir /var/lib/carbon-gateway"),
    (["restore", "{csv}", "--data-dir", "{file}/sub"],
     "{file}/sub/gateway.db.lock: cannot create the store's lock file (Not a directory); nothing was changed: "
     "check --data-dir (gateway.data_dir) names a writable directory"),
    (["keys", "--data-dir", "{file}/sub"],
     "{file}/sub/keys: cannot create the keys directory (Not a directory): check --data-dir names a writable "
     "directory"),
    (["receiver", "--broker", "127.0.0.1:1", "--data-dir", "{file}/sub"],
     "{file}/sub/keys: cannot create the keys directory (Not a directory): check --data-dir names a writable "
     "directory"),
    (["import", "{csv}", "--data-dir", "{foreign}"],
     "{foreign}/gateway.db: a SQLite database of another program (tables invoices), not a gateway store; nothing "
     "was changed: pass --data-dir pointing at the gateway's state directory, or move the file away"),
    (["report", "--from", "today", "--to", "tomorrow", "--data-dir", "{foreign}"],
     "{foreign}/gateway.db: a SQLite database of another program (tables invoices), not a gateway store; nothing "
     "was changed: pass --data-dir pointing at the gateway's state directory, or move the file away"),
    (["backup", "--data-dir", "{foreign}"],
     "{foreign}/gateway.db: a SQLite database of another program (tables invoices), not a gateway store; nothing "
     "was changed: pass --data-dir pointing at the gateway's state directory, or move the file away"),
    (["audit", "verify", "--data-dir", "{foreign}"],
     "{foreign}/gateway.db: a SQLite database of another program (tables invoices), not a gateway store; nothing "
     "was changed: pass --data-dir pointing at the gateway's state directory, or move the file away"),
])
def test_a_wrong_data_dir_is_named(tmp_path: Path, args: list[str], message: str) -> None:
    places = {"file": tmp_path / "afile", "foreign": tmp_path / "other", "csv": tmp_path / "in.csv"}
    places["file"].write_text("not a directory")
    places["csv"].write_text(CSV)
    foreign_before = foreign_database(places["foreign"] / "gateway.db")
    result = CliRunner().invoke(main, [a.format(**places) for a in args])
    assert (result.exit_code, result.output) == (1, f"Error: {message.format(**places)}\n")
    assert (places["foreign"] / "gateway.db").read_bytes() == foreign_before
    assert sorted(p.name for p in places["foreign"].iterdir()) == ["gateway.db"]   # no backup of it, no keys
