"""Profile conformance against an independent Modbus implementation (issue 13, part 3).

For every shipped profile, ``tests/drivers/golden/<profile>.toml`` holds raw register words at the addresses
the cited source gives (the vendor's register table or an open-source implementation the project did not
write), each with the value the source says they mean: ``expected = raw x resolution``, worked out with the
source's data type and resolution, not with the project's decoder. The independent libmodbus slave
(tests/independent_slave) serves exactly those words over Modbus TCP and over RTU on a socat pty, and the
project's ``carbon-gateway read --json`` must print exactly the expected values. A profile that reads the wrong
address, table (FC 03 vs FC 04), data type, word order or resolution fails here, which the simulator tests
cannot show (the simulator encodes with the same code that decodes).

``[[not_available]]`` entries are the words a meter sends for "no such quantity" (ABB's all-0xFF /
0x7FFF..): served instead of the normal words, ``read`` must mark those points invalid, never a number.
"""

from __future__ import annotations

import json
import math
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from drivers import load_profiles
from gateway.cli import main
from tests.conftest import open_pty_pair
from tests.independent_slave import IndependentSlave

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).with_name("golden")
PROFILES = load_profiles(ROOT / "config" / "profiles")
GOLDEN = {path.stem: tomllib.loads(path.read_text(encoding="utf-8")) for path in sorted(GOLDEN_DIR.glob("*.toml"))}

# struct formats of the source data types, big-endian; a word order of "little" reverses the 16-bit words.
_FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q", "i64": ">q", "f32": ">f", "f64": ">d"}


def encode_words(encoding: str, raw: float, word_order: str = "big") -> list[int]:
    """The register words of ``raw`` in the source's data type, with the standard library (struct), not the
    project's encoder."""
    if encoding.startswith("bcd"):
        digits = f"{int(raw):0{4 if encoding == 'bcd16' else 8}d}"
        data = bytes.fromhex(digits)
    else:
        fmt = _FORMATS[encoding]
        data = struct.pack(fmt, raw if encoding.startswith("f") else int(round(raw)))
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if word_order == "little" else words


def _entries(profile_id: str, key: str = "points") -> list[dict[str, Any]]:
    return list(GOLDEN[profile_id].get(key, []))


def _registers(profile_id: str, replace: dict[str, list[int]] | None = None) -> dict[tuple[str, int], int]:
    table: dict[tuple[str, int], int] = {}
    for entry in _entries(profile_id):
        words = (replace or {}).get(entry["name"], entry["words"])
        for offset, word in enumerate(words):
            key = (entry["table"], entry["address"] + offset)
            assert key not in table, f"{profile_id}: {entry['name']} overlaps another golden entry at {key}"
            table[key] = word
    return table


def test_every_profile_has_golden_contents_with_a_source() -> None:
    assert set(GOLDEN) == set(PROFILES), "each profile needs tests/drivers/golden/<id>.toml, and no stray files"
    for profile_id, golden in GOLDEN.items():
        text = (GOLDEN_DIR / f"{profile_id}.toml").read_text(encoding="utf-8")
        assert golden["profile"] == profile_id and golden["sources"] and "Source" in text, profile_id
        names = [e["name"] for e in _entries(profile_id)]
        assert sorted(names) == sorted(p.name for p in PROFILES[profile_id].points), (
            f"{profile_id}: the golden file and the profile must list the same points")


@pytest.mark.parametrize("profile_id", sorted(GOLDEN))
def test_golden_words_are_what_the_source_says(profile_id: str) -> None:
    """The words in each golden file are the source's encoding of ``expected / resolution`` (catches a typo in
    a hand-written word), and distinct points hold distinct values (so a read of the wrong point fails)."""
    seen: dict[float, str] = {}
    for entry in _entries(profile_id):
        raw = entry["expected"] / entry.get("resolution", 1)
        if not entry["encoding"].startswith("f"):
            assert raw == pytest.approx(round(raw), abs=1e-6), (entry["name"], raw)
        assert entry["words"] == encode_words(entry["encoding"], raw, entry.get("word_order", "big")), entry["name"]
        assert entry["expected"] not in seen, f"{entry['name']} and {seen.get(entry['expected'])} hold the same value"
        seen[entry["expected"]] = entry["name"]
    for entry in _entries(profile_id, "not_available"):
        assert entry["name"] in {e["name"] for e in _entries(profile_id)}


def _read(args: list[str], profile_id: str) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(main, ["read", *args, "--unit", "9", "--profile", profile_id, "--timeout", "3",
                                       "--json"])
    assert result.exit_code == 0, result.output
    return {row["point"]: row for row in json.loads(result.stdout)}   # stderr may hold a note (secondary side)


def _assert_reads(profile_id: str, rows: dict[str, dict[str, Any]], invalid: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for entry in _entries(profile_id):
        row = rows[entry["name"]]
        point = PROFILES[profile_id].point(entry["name"])
        if entry["name"] in invalid:
            assert row["quality"] != "ok" and row["value"] is None, row
            continue
        assert row["quality"] == "ok", row
        # The source's words decode to exactly the expected value; only float rounding of raw x resolution
        # (and an f32's own 24-bit precision, already in `expected`) may differ.
        assert math.isclose(row["value"], entry["expected"], rel_tol=1e-9, abs_tol=1e-12), (row, entry)
        assert row["unit"] == point.unit and [int(w, 16) for w in row["raw"]] == entry["words"], (row, entry)


def _serve_and_read(libmodbus_slave: Path, tmp_path: Path, transport: str, profile_id: str,
                    registers: dict[tuple[str, int], int]) -> dict[str, dict[str, Any]]:
    if transport == "tcp":
        with IndependentSlave(libmodbus_slave, registers, workdir=tmp_path, unit=9) as slave:
            return _read(["--tcp", f"127.0.0.1:{slave.port}"], profile_id)
    with open_pty_pair(tmp_path) as pair, IndependentSlave(libmodbus_slave, registers, workdir=tmp_path, unit=9,
                                                          serial_device=pair.device_side, baudrate=19200):
        return _read(["--serial", pair.gateway_side, "--baud", "19200"], profile_id)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize("profile_id", sorted(GOLDEN))
def test_profile_reads_the_golden_registers_from_libmodbus(libmodbus_slave: Path, tmp_path: Path, transport: str,
                                                           profile_id: str) -> None:
    rows = _serve_and_read(libmodbus_slave, tmp_path, transport, profile_id, _registers(profile_id))
    _assert_reads(profile_id, rows)


@pytest.mark.parametrize("profile_id", sorted(p for p in GOLDEN if GOLDEN[p].get("not_available")))
def test_not_available_sentinels_are_invalid_never_numbers(libmodbus_slave: Path, tmp_path: Path,
                                                            profile_id: str) -> None:
    """Two reads, so each keeps a valid energy point: every sentinel but energy_import's, then that one."""
    sentinels = {e["name"]: e["words"] for e in _entries(profile_id, "not_available")}
    for group in ({n: w for n, w in sentinels.items() if n != "energy_import"},
                  {n: w for n, w in sentinels.items() if n == "energy_import"}):
        if group:
            rows = _serve_and_read(libmodbus_slave, tmp_path, "tcp", profile_id, _registers(profile_id, group))
            _assert_reads(profile_id, rows, invalid=set(group))


@pytest.mark.parametrize("served,read_with", [("chint-dtsu666-h", "chint-dtsu666"), ("chint-dtsu666", "chint-dtsu666-h")])
def test_read_tells_which_dtsu666_energy_block_the_meter_answers(libmodbus_slave: Path, tmp_path: Path, served: str,
                                                                read_with: str) -> None:
    """A DTSU666 answers its energies either at 0x101E/0x1028 (chint-dtsu666) or at 0x401E/0x4028 (chint-dtsu666-h).
    Read with the other profile, ``read`` exits 1 naming the refused energy registers (exception 2), while the
    electrical values read; with the matching profile every point reads (docs/profiles.md, issue 13)."""
    with IndependentSlave(libmodbus_slave, _registers(served), workdir=tmp_path, unit=9) as slave:
        wrong = CliRunner().invoke(main, ["read", "--tcp", f"127.0.0.1:{slave.port}", "--unit", "9", "--profile",
                                          read_with, "--timeout", "3"])
        right = CliRunner().invoke(main, ["read", "--tcp", f"127.0.0.1:{slave.port}", "--unit", "9", "--profile",
                                          served, "--timeout", "3", "--json"])
    assert wrong.exit_code == 1, wrong.output
    assert "every energy point is invalid" in wrong.output and "exception code 2 (illegal data address)" in wrong.output
    voltage_l1 = next(e["expected"] for e in _entries(served) if e["name"] == "voltage_l1")
    assert [float(line.split()[1]) for line in wrong.output.splitlines() if line.startswith("voltage_l1 ")] == [
        pytest.approx(voltage_l1, abs=5e-5)]   # printed with 4 decimals
    assert right.exit_code == 0 and all(row["quality"] == "ok" for row in json.loads(right.stdout)), right.output
