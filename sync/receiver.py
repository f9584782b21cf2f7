"""The cloud-side receiver: subscribe, verify, decrypt, store idempotently, then acknowledge.

At-least-once on the wire, exactly-once in effect: a batch is stored under (gateway, sequence) in one
transaction before its acknowledgement is published, so a replay finds it and only gets the ack again.
The same (gateway, sequence) with different content is quarantined, never stored over the first.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sync.batches import decode_readings
from sync.crypto import BatchHeader, message_hash, open_message, parse_header
from sync.errors import BatchRejected, KeyFileError
from sync.keys import RECEIVER_KEY, key_id, load_private, load_public
from sync.mqtt import BrokerSettings, Link

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL,
    count INTEGER NOT NULL, received_at REAL NOT NULL, chain_ok INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    gateway_id TEXT NOT NULL, reading_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    meter_id TEXT NOT NULL, point TEXT NOT NULL, timestamp REAL NOT NULL, value REAL,
    unit TEXT NOT NULL, quantity TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (gateway_id, reading_id)
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, gateway_id TEXT, seq INTEGER, reason TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, message BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class ReceiverSettings:
    database: Path                      # SQLite file of the receiver
    keys_dir: Path                      # holds receiver-sealing.key
    trusted_dir: Path                   # <gateway_id>.pub: the Ed25519 keys of known gateways
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    topic_prefix: str = "carbon"
    share_group: str = "receivers"      # MQTT 5 shared subscription: receivers split the load


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    return conn


class Receiver:
    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self._key: X25519PrivateKey | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._link: Link | None = None

    def _receiver_key(self) -> X25519PrivateKey:
        if self._key is None:
            key = load_private(self.settings.keys_dir / RECEIVER_KEY)
            if not isinstance(key, X25519PrivateKey):
                raise KeyFileError(f"{self.settings.keys_dir / RECEIVER_KEY}: not an X25519 key")
            self._key = key
        return self._key

    def _gateway_key(self, header: BatchHeader) -> Ed25519PublicKey:
        path = self.settings.trusted_dir / f"{header.gateway_id}.pub"
        if not path.exists() or "/" in header.gateway_id:
            raise BatchRejected("unknown_gateway", f"no trusted key {path.name} for gateway {header.gateway_id}")
        key = load_public(path)
        if not isinstance(key, Ed25519PublicKey) or key_id(key) != header.gateway_key_id:
            raise BatchRejected("unknown_key", f"gateway {header.gateway_id} signed with key {header.gateway_key_id}, "
                                "which is not its trusted key")
        return key

    def start(self) -> None:
        self._receiver_key()  # fail at start, not on the first batch
        self._conn = connect(self.settings.database)
        topic = f"$share/{self.settings.share_group}/{self.settings.topic_prefix}/+/batch"
        self._link = Link(self.settings.broker, client_id=f"receiver-{id(self):x}", on_message=self._on_message,
                          subscriptions=(topic,))
        self._link.start()

    def stop(self) -> None:
        if self._link is not None:
            self._link.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _on_message(self, message: Any) -> None:
        ack = self.handle(bytes(message.payload))
        if ack is not None and self._link is not None:
            gateway_id, body = ack
            self._link.publish(f"{self.settings.topic_prefix}/{gateway_id}/ack", json.dumps(body).encode())

    def handle(self, message: bytes) -> tuple[str, dict] | None:
        """Process one message; returns (gateway id, acknowledgement) to publish, or None if unaddressable."""
        if self._conn is None:
            self._conn = connect(self.settings.database)
        header: BatchHeader | None = None
        try:
            header = parse_header(message)[0]
            _, payload = open_message(message, self._gateway_key(header), self._receiver_key())
            readings = decode_readings(payload)
            if len(readings) != header.count:
                raise BatchRejected("malformed", f"header says {header.count} readings, payload has {len(readings)}")
            status = self._store(header, message, readings)
            return header.gateway_id, {"seq": header.seq, "status": status}
        except BatchRejected as exc:
            self._reject(header, exc.reason, exc.detail)
            if header is None:
                return None
            return header.gateway_id, {"seq": header.seq, "status": "rejected", "reason": exc.reason}

    def _reject(self, header: BatchHeader | None, reason: str, detail: str) -> None:
        log.warning("rejected batch %s/%s: %s: %s", header.gateway_id if header else "?",
                    header.seq if header else "?", reason, detail)
        assert self._conn is not None
        with self._lock, self._conn:
            self._conn.execute("INSERT INTO rejections(at, gateway_id, seq, reason, detail) VALUES (?,?,?,?,?)",
                               (time.time(), header.gateway_id if header else None, header.seq if header else None,
                                reason, detail))

    def _store(self, header: BatchHeader, message: bytes, readings: list) -> str:
        digest = message_hash(message)
        assert self._conn is not None
        with self._lock, self._conn:
            row = self._conn.execute("SELECT hash FROM batches WHERE gateway_id = ? AND seq = ?",
                                     (header.gateway_id, header.seq)).fetchone()
            if row is not None:
                if row[0] == digest:
                    return "duplicate"
                self._conn.execute("INSERT INTO quarantine(at, gateway_id, seq, message) VALUES (?,?,?,?)",
                                   (time.time(), header.gateway_id, header.seq, message))
                raise BatchRejected("conflict", f"gateway {header.gateway_id} seq {header.seq} arrived again with "
                                    "different content; quarantined")
            previous = self._conn.execute("SELECT hash FROM batches WHERE gateway_id = ? AND seq = ?",
                                          (header.gateway_id, header.seq - 1)).fetchone()
            chain_ok = previous is None or previous[0] == header.prev_hash
            if not chain_ok:
                log.error("gateway %s seq %d: previous-batch hash does not match the stored batch %d",
                          header.gateway_id, header.seq, header.seq - 1)
            self._conn.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?)",
                               (header.gateway_id, header.seq, digest, header.prev_hash, header.count,
                                time.time(), int(chain_ok)))
            self._conn.executemany(
                "INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(header.gateway_id, r.reading_id, header.seq, r.meter_id, r.point, r.timestamp, r.value, r.unit,
                  r.quantity, r.quality, r.reason) for r in readings])
        return "committed"


def receiver_stats(database: Path) -> dict[str, dict]:
    """Per gateway: batches, readings, last sequence, missing sequences and rejections by reason."""
    conn = connect(database)
    try:
        stats: dict[str, dict] = {}
        for gateway_id, batches, last_seq, count in conn.execute(
                "SELECT gateway_id, COUNT(*), MAX(seq), SUM(count) FROM batches GROUP BY gateway_id"):
            stats[gateway_id] = {"batches": batches, "readings": count or 0, "last_seq": last_seq,
                                 "missing_seqs": last_seq - batches, "rejections": {}}
        for gateway_id, reason, n in conn.execute(
                "SELECT COALESCE(gateway_id, '?'), reason, COUNT(*) FROM rejections GROUP BY 1, 2"):
            stats.setdefault(gateway_id, {"batches": 0, "readings": 0, "last_seq": None, "missing_seqs": 0,
                                          "rejections": {}})["rejections"][reason] = n
        return stats
    finally:
        conn.close()
