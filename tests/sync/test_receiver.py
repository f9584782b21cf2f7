"""The receiver on its own (no broker): bad input, reordering, gaps, conflicts, key rotation, PostgreSQL."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import open_store
from sync import BatchRejected, Receiver, ReceiverSettings, SyncService, SyncSettings, receiver_stats
from sync import outbox
from sync.batches import WireReading, decode_readings, encode_readings, encode_readings_v1
from sync.crypto import MAGIC, BatchHeader
from sync.keys import (GATEWAY_PUB, RECEIVER_PUB, ensure_gateway_key, ensure_receiver_key, rotate_gateway_key,
                       rotate_receiver_key)
from sync.storage import ReceiverDb


def _readings(n: int, start: float = 1_795_000_000.0) -> list[Reading]:
    return [Reading("main", "energy_import", start + i, 1000.0 + i * 0.01, "kWh", Quantity.ENERGY_IMPORT)
            for i in range(n)]


@dataclass
class Rig:
    store: object
    service: SyncService
    receiver_settings: ReceiverSettings
    gw_keys: Path
    rx_keys: Path
    trusted: Path

    def batch(self, n: int, start: float) -> bytes:
        """Store n readings and seal them into the next batch; returns its message."""
        self.store.insert_readings(_readings(n, start))
        assert self.service.fill(force=True) == 1
        return outbox.unacked(self.store.db, 10**6)[-1].message


@pytest.fixture
def rig(tmp_path: Path):
    gw_keys, rx_keys, trusted = tmp_path / "gw-keys", tmp_path / "rx-keys", tmp_path / "trusted"
    ensure_gateway_key(gw_keys)
    ensure_receiver_key(rx_keys)
    trusted.mkdir()
    shutil.copy(gw_keys / GATEWAY_PUB, trusted / "gw-1.pub")
    store = open_store(tmp_path / "gateway.db")
    settings = SyncSettings("gw-1", gw_keys, rx_keys / RECEIVER_PUB, batch_max_readings=1000)
    yield Rig(store, SyncService(settings, store), ReceiverSettings(tmp_path / "receiver.db", rx_keys, trusted),
              gw_keys, rx_keys, trusted)
    store.close()


def _count(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def test_bad_input_is_rejected_with_its_reason_and_never_stops_the_receiver(rig: Rig, caplog) -> None:
    caplog.set_level("WARNING", logger="sync.receiver")
    message = rig.batch(20, 1_795_000_000.0)
    receiver = Receiver(rig.receiver_settings)
    header_len = struct.unpack_from("<H", message, 4)[0]
    bad = {
        "empty": b"",
        "garbage": b"\x00" * 100,
        "truncated": message[:len(message) // 2],
        "padded": message + b"\x00",
        "oversized": MAGIC + b"\xff" * (16 * 1024 * 1024 + 1),
        "header not JSON": message[:6] + b"{" * header_len + message[6 + header_len:],
    }
    for name, payload in bad.items():
        assert receiver.handle(payload) is None, name
    flipped = bytearray(message)
    flipped[len(message) // 2] ^= 0x01       # one bit inside the ciphertext
    # Issue 16: a message whose signature fails is refused without an ack (it may be forged).
    assert receiver.handle(bytes(flipped)) is None
    # Still working after all that:
    assert receiver.handle(message)[1] == {"seq": 1, "status": "committed"}
    receiver.stop()
    assert _count(rig.receiver_settings.database) == 20
    stats = receiver_stats(rig.receiver_settings.database)
    assert stats["?"]["rejections"] == {"malformed": 5, "oversized": 1}
    assert stats["gw-1"]["rejections"] == {"bad_signature": 1}
    # ... and each rejection is logged with its reason.
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected batch ")]
    assert [m.split(": ")[1] for m in logged] == ["malformed"] * 4 + ["oversized", "malformed", "bad_signature"]
    assert logged[-1].startswith("rejected batch gw-1/1: bad_signature: ")


def test_payload_round_trips_exactly_and_refuses_inconsistent_columns() -> None:
    import zlib

    import numpy as np

    readings = [
        WireReading(1, "m", "energy", 1_795_000_000.123, 12345 * 0.001, "kWh", "energy_import", "ok"),  # decimal
        WireReading(2, "m", "power", 1_795_000_000.125, float(np.float32(41.7)), "kW", "active_power", "ok"),  # f32
        WireReading(3, "m", "pf", 1_795_000_000.126, 0.1 + 0.2, "-", "power_factor", "ok"),  # needs f64
        WireReading(5, "m", "energy", 1_795_000_005.2, None, "kWh", "energy_import", "invalid", "CRC error"),
        WireReading(9, "m", "energy", 1_795_000_010.0, 12346 * 0.001, "kWh", "energy_import", "ok"),
        WireReading(10, "m", "pf", 1_795_000_010.1, -1e300, "-", "power_factor", "ok"),
    ]
    blob = encode_readings(readings)
    assert blob[0] == 3 and decode_readings(blob) == readings   # bit-exact values, ids, reasons
    assert decode_readings(encode_readings(readings, 2)) == readings   # formats 2 and 1 from old outboxes
    assert decode_readings(encode_readings_v1(readings)) == readings
    for blob in (blob, encode_readings(readings, 2)):
        body = zlib.decompress(blob[1:])
        for broken in (body[:-1], body + b"\x00", body[:16] + b"[" + body[17:]):
            with pytest.raises(BatchRejected) as info:
                decode_readings(blob[:1] + zlib.compress(broken))
            assert info.value.reason == "malformed"
    # Format 3: a row naming a (flags, reason) pair that is not in the batch's table.
    body = bytearray(zlib.decompress(encode_readings(readings)[1:]))
    meta_len = struct.unpack_from("<I", body, 0)[0]
    body[16 + meta_len + 24 * len(readings)] = 9
    with pytest.raises(BatchRejected) as info:
        decode_readings(b"\x03" + zlib.compress(bytes(body)))
    assert info.value.reason == "malformed" and "not in the table" in info.value.detail
    with pytest.raises(BatchRejected) as info:
        decode_readings(b"\x02" + zlib.compress(b"\x00" * (65 * 1024 * 1024)))   # a decompression bomb
    assert info.value.reason == "oversized"


def test_reordered_duplicated_deliveries_store_each_reading_once_and_gaps_are_named(rig: Rig) -> None:
    messages = [rig.batch(10, 1_795_000_000.0 + 100 * i) for i in range(5)]
    receiver = Receiver(rig.receiver_settings)
    # seq 4 is held back: a gap; others arrive out of order and twice.
    order = [messages[2], messages[0], messages[2], messages[4], messages[1], messages[0]]
    statuses = [receiver.handle(m)[1]["status"] for m in order]
    assert statuses == ["committed", "committed", "duplicate", "committed", "committed", "duplicate"]
    stats = receiver_stats(rig.receiver_settings.database)["gw-1"]
    assert (stats["batches"], stats["readings"], stats["last_seq"]) == (4, 40, 5)
    assert (stats["missing_seqs"], stats["first_missing"], stats["chain_breaks"]) == (1, [4], 0)
    assert receiver.handle(messages[3])[1]["status"] == "committed"
    receiver.stop()
    stats = receiver_stats(rig.receiver_settings.database)["gw-1"]
    assert (stats["missing_seqs"], stats["readings"], stats["chain_breaks"]) == (0, 50, 0)
    stored = [(r.id, r.value) for r in rig.store.readings_after(0, 100)]
    with sqlite3.connect(rig.receiver_settings.database) as conn:
        assert conn.execute("SELECT reading_id, value FROM readings ORDER BY reading_id").fetchall() == stored


def test_same_sequence_with_other_content_is_quarantined(rig: Rig, tmp_path: Path) -> None:
    first = rig.batch(10, 1_795_000_000.0)
    receiver = Receiver(rig.receiver_settings)
    assert receiver.handle(first)[1]["status"] == "committed"
    # A gateway restored from an old backup re-issues seq 1 with other readings.
    other_store = open_store(tmp_path / "restored.db")
    other_store.insert_readings(_readings(7, 1_796_000_000.0))
    restored = SyncService(rig.service.settings, other_store)
    restored.fill(force=True)
    conflicting = outbox.unacked(other_store.db, 1)[0].message
    other_store.close()
    assert receiver.handle(conflicting)[1] == {"seq": 1, "status": "rejected", "reason": "conflict"}
    receiver.stop()
    stats = receiver_stats(rig.receiver_settings.database)["gw-1"]
    assert (stats["readings"], stats["quarantined"], stats["rejections"]) == (10, 1, {"conflict": 1})


def test_wrong_keys_are_rejected(rig: Rig, tmp_path: Path) -> None:
    message = rig.batch(5, 1_795_000_000.0)
    # A receiver that does not hold the key the batch was sealed to.
    stranger_keys = tmp_path / "stranger"
    ensure_receiver_key(stranger_keys)
    stranger = Receiver(ReceiverSettings(tmp_path / "stranger.db", stranger_keys, rig.trusted))
    assert stranger.handle(message)[1]["reason"] == "unknown_key"
    stranger.stop()
    # A trusted key for gw-1 that is not the one that signed.
    impostor = tmp_path / "impostor"
    ensure_gateway_key(impostor)
    shutil.copy(impostor / GATEWAY_PUB, rig.trusted / "gw-1.pub")
    receiver = Receiver(rig.receiver_settings)
    assert receiver.handle(message) is None       # its signature cannot be checked: no ack (issue 16)
    # A trusted file that is not a key at all: rejected, the receiver keeps going.
    (rig.trusted / "gw-1.pub").write_text("not a key")
    assert receiver.handle(message) is None
    receiver.stop()
    assert receiver_stats(rig.receiver_settings.database)["gw-1"]["rejections"] == {"unknown_key": 2}
    assert _count(rig.receiver_settings.database) == 0


def test_both_key_pairs_rotate_without_losing_a_batch(rig: Rig) -> None:
    before = rig.batch(10, 1_795_000_000.0)            # signed by key A, sealed to receiver key X
    old_gw, new_gw = rotate_gateway_key(rig.gw_keys)
    old_rx, new_rx = rotate_receiver_key(rig.rx_keys)  # the gateway still holds X's public key file? no:
    assert old_gw != new_gw and old_rx != new_rx
    # The receiver trusts the gateway's new key too (trusted/<gateway_id>/), the gateway gets the new
    # receiver public key at the same path its settings name.
    (rig.trusted / "gw-1").mkdir()
    shutil.copy(rig.gw_keys / GATEWAY_PUB, rig.trusted / "gw-1" / f"{new_gw}.pub")
    after = rig.batch(10, 1_795_000_100.0)             # signed by key B, sealed to receiver key Y
    receiver = Receiver(rig.receiver_settings)
    assert receiver.handle(after)[1]["status"] == "committed"
    assert receiver.handle(before)[1]["status"] == "committed"   # the backlog from before the rotation
    receiver.stop()
    assert _count(rig.receiver_settings.database) == 20
    for keys_dir in (rig.gw_keys, rig.rx_keys):
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys_dir.iterdir())


def test_postgresql_store_is_idempotent(rig: Rig, postgres_url: str) -> None:
    messages = [rig.batch(25, 1_795_000_000.0 + 100 * i) for i in range(3)]
    settings = ReceiverSettings(postgres_url, rig.rx_keys, rig.trusted)
    receiver = Receiver(settings)
    statuses = [receiver.handle(m)[1]["status"] for m in (messages[1], messages[0], messages[1], messages[2])]
    assert statuses == ["committed", "committed", "duplicate", "committed"]
    assert receiver.handle(b"garbage") is None
    receiver.stop()
    stats = receiver_stats(postgres_url)["gw-1"]
    assert (stats["batches"], stats["readings"], stats["last_seq"], stats["missing_seqs"]) == (3, 75, 3, 0)
    assert receiver_stats(postgres_url)["?"]["rejections"] == {"malformed": 1}
    db = ReceiverDb(postgres_url)
    try:
        got = db.query("SELECT reading_id, timestamp, value FROM readings ORDER BY reading_id")
    finally:
        db.close()
    assert got == [(r.id, r.timestamp, r.value) for r in rig.store.readings_after(0, 1000)]


def test_header_fields_of_the_wrong_type_or_topic_are_rejected(rig: Rig) -> None:
    import json as _json

    message = rig.batch(5, 1_795_000_000.0)
    receiver = Receiver(rig.receiver_settings)
    header_len = struct.unpack_from("<H", message, 4)[0]
    header = _json.loads(message[6:6 + header_len])
    for field, value in (("seq", "1"), ("seq", 0), ("count", True), ("gateway_id", ""), ("created_at", None)):
        forged = _json.dumps({**header, field: value}, sort_keys=True, separators=(",", ":")).encode()
        bad = message[:4] + struct.pack("<H", len(forged)) + forged + message[6 + header_len:]
        assert receiver.handle(bad) is None, (field, value)
    assert receiver.handle(message, topic="carbon/other-gw/batch") is None
    assert receiver.handle(message, topic="carbon/gw-1/batch")[1]["status"] == "committed"
    receiver.stop()
    stats = receiver_stats(rig.receiver_settings.database)
    assert stats["?"]["rejections"] == {"malformed": 5}
    assert stats["gw-1"]["rejections"] == {"wrong_topic": 1}


def test_any_single_flipped_byte_is_rejected(rig: Rig) -> None:
    import random

    message = rig.batch(50, 1_795_000_000.0)
    receiver = Receiver(rig.receiver_settings)
    rng = random.Random(5)
    positions = sorted(set(range(0, 80)) | set(rng.sample(range(len(message)), 120)) | set(range(len(message) - 70, len(message))))
    for position in positions:
        flipped = bytearray(message)
        flipped[position] ^= 1 << rng.randrange(8)
        ack = receiver.handle(bytes(flipped))
        assert ack is None or ack[1]["status"] == "rejected", (position, ack)
    assert receiver.handle(message)[1]["status"] == "committed"   # and the genuine one still goes in
    receiver.stop()
    assert _count(rig.receiver_settings.database) == 50
    rejected = sum(sum(s["rejections"].values()) for s in receiver_stats(rig.receiver_settings.database).values())
    assert rejected == len(positions)


def test_issue16_a_receiver_database_from_before_sync_streams_is_rebuilt_with_its_rows(tmp_path: Path) -> None:
    from sync.storage import ReceiverDb

    path = tmp_path / "old-receiver.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
        CREATE TABLE batches (gateway_id TEXT NOT NULL, seq BIGINT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL,
            count INTEGER NOT NULL, received_at REAL NOT NULL, chain_ok INTEGER NOT NULL, PRIMARY KEY (gateway_id, seq));
        CREATE TABLE readings (gateway_id TEXT NOT NULL, reading_id BIGINT NOT NULL, seq BIGINT NOT NULL,
            meter_id TEXT NOT NULL, point TEXT NOT NULL, timestamp REAL NOT NULL, value REAL, unit TEXT NOT NULL,
            quantity TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (gateway_id, reading_id));
        INSERT INTO batches VALUES ('gw-1', 1, 'h', '', 1, 1.0, 1);
        INSERT INTO readings VALUES ('gw-1', 7, 1, 'm', 'p', 2.0, 3.0, 'kWh', 'energy_import', 'ok', '');
        """)
    db = ReceiverDb(path)
    try:
        assert db.query("SELECT gateway_id, stream, seq FROM batches") == [("gw-1", "", 1)]
        assert db.query("SELECT stream, reading_id, value FROM readings") == [("", 7, 3.0)]
        # The same reading id in another stream is another reading now.
        db.execute("INSERT INTO readings VALUES ('gw-1', 7, 2, 'm', 'p', 4.0, 5.0, 'kWh', 'energy_import', 'ok', '',"
                   " 'abc')")
        assert len(db.query("SELECT 1 FROM readings")) == 2
    finally:
        db.close()
    db = ReceiverDb(path)      # opening again changes nothing
    assert len(db.query("SELECT 1 FROM readings")) == 2
    db.close()
