"""Issue 16, part 4: bytes on the wire in the field, sealed and signed as the outbox does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_sync", ROOT / "bench" / "bench_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_sync", module)
    spec.loader.exec_module(module)
    return module


def test_issue16_the_realistic_field_case_is_at_most_4_bytes_per_reading() -> None:
    bench = _bench()
    # 10 minutes x 60 polls x 5 meters x 4 points = 12 000 readings, cut every 30 s: 20 batches of 600.
    readings = bench.realistic_readings(minutes=10)
    assert len(readings) == 12_000 and all(r.reason == "clock_unsynchronised" for r in readings)
    realistic = bench.wire_bytes_per_reading(readings, 30.0)
    # Large batches of the same kind of data cost less per reading (the fixed ~400 bytes of header,
    # key ids, HPKE encapsulation, tag and signature, and the series table, are shared by more readings).
    large = bench.wire_bytes_per_reading(readings, None, 12_000)
    assert large < realistic <= 4.0, (realistic, large)
