"""The cloud-side receiver: subscribe, verify, decrypt, store idempotently, then acknowledge.

At-least-once on the wire, exactly-once in effect: a batch is stored under (gateway, sequence) in one
transaction before its acknowledgement is published, so a replay finds it and only gets the ack again.
The same (gateway, sequence) with different content is quarantined, never stored over the first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sync.batches import decode_derived, decode_readings
from sync.crypto import KINDS, BatchHeader, message_hash, open_message, parse_header, verify_signature
from sync.errors import BatchRejected, KeyFileError
from sync.keys import receiver_keys, trusted_gateway_keys
from sync.mqtt import BrokerSettings, Link
from sync.storage import ReceiverDb

log = logging.getLogger(__name__)

#: Rejection rows kept (oldest go first); ``rejection_counts`` keeps the totals by gateway and reason.
MAX_REJECTIONS = 10_000
#: Reconnecting to a database that went away: the wait doubles from the first to the last.
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 0.5, 5.0
#: Rejections answered with a "rejected" ack: only where the gateway's signature has been checked, so a
#: forged message never makes the receiver publish on a gateway's ack topic (issue 16).

@dataclass(frozen=True)
class ReceiverSettings:
    database: Path | str                # SQLite file, or a postgresql:// URL
    keys_dir: Path                      # holds receiver-sealing.key
    trusted_dir: Path                   # <gateway_id>.pub: the Ed25519 keys of known gateways
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    topic_prefix: str = "carbon"
    share_group: str = "receivers"      # MQTT 5 shared subscription: receivers split the load
    #: MQTT client id; keep it stable across restarts so the broker's persistent session (BrokerSettings.
    #: session_expiry_s) holds the batches published meanwhile. None: a fresh one per process.
    client_id: str | None = None
    max_rejections: int = MAX_REJECTIONS


def connect(database: Path | str) -> ReceiverDb:
    """Open (and create) the receiver's database: a SQLite path or a ``postgresql://`` URL."""
    return ReceiverDb(database)


class Receiver:
    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self._keys: dict[str, X25519PrivateKey] | None = None
        self._conn: ReceiverDb | None = None
        self._lock = threading.Lock()
        self._link: Link | None = None
        self._held: list[tuple[bytes, str | None]] = []   # messages taken while the database was down
        self._held_lock = threading.Lock()
        self._stopped = threading.Event()
        self._healer: threading.Thread | None = None
        self._rejections_since_trim = 0
        self.db_down = ""             # why, while the database is unreachable (then no batch is taken)

    def _receiver_key(self, key_id: str | None = None) -> X25519PrivateKey:
        if self._keys is None:
            self._keys = receiver_keys(self.settings.keys_dir)  # current and retired keys (rotation)
        if key_id is None:
            return next(iter(self._keys.values()))
        key = self._keys.get(key_id)
        if key is None:
            self._keys = receiver_keys(self.settings.keys_dir)  # a key may have been added since
            key = self._keys.get(key_id)
        if key is None:
            raise BatchRejected("unknown_key", f"sealed to receiver key {key_id}, which this receiver does not hold")
        return key

    def _gateway_key(self, header: BatchHeader) -> Ed25519PublicKey:
        keys = trusted_gateway_keys(self.settings.trusted_dir, header.gateway_id)
        if not keys:
            raise BatchRejected("unknown_gateway", f"no trusted key for gateway {header.gateway_id!r} "
                                f"(expected {header.gateway_id}.pub or {header.gateway_id}/*.pub in the trusted dir)")
        key = keys.get(header.gateway_key_id)
        if key is None:
            raise BatchRejected("unknown_key", f"gateway {header.gateway_id} signed with key {header.gateway_key_id}, "
                                "which is not one of its trusted keys")
        return key

    def start(self) -> None:
        self._receiver_key()  # fail at start, not on the first batch
        self._conn = connect(self.settings.database)
        topic = f"$share/{self.settings.share_group}/{self.settings.topic_prefix}/+/batch"
        # Manual acks: a batch is PUBACKed to the broker only once it is stored and its ack published, so
        # one taken but not handled when the receiver stops is delivered again to its session (issue 16).
        self._link = Link(self.settings.broker, client_id=self.settings.client_id or f"receiver-{id(self):x}",
                          on_message=self._on_message, subscriptions=(topic,), manual_ack=True)
        self._link.start()

    def stop(self) -> None:
        self._stopped.set()          # from now on messages are left to the broker (not handled, not acked)
        if self._healer is not None:
            self._healer.join(timeout=15)   # before the link stops: it may be resuming it
        if self._link is not None:
            self._link.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _on_message(self, message: Any) -> None:
        # Runs on paho's network thread: an exception escaping here would stop the receiver.
        if self._stopped.is_set():         # stopping: the broker delivers it again to this session
            return
        payload, topic = bytes(message.payload), message.topic
        with self._held_lock:
            if self.db_down:               # arrived before the pause took effect: keep it for later
                self._held.append((payload, topic))
                self._link_ack(message)
                return
        try:
            self._process(payload, topic)
        except Exception as exc:  # noqa: BLE001 - no ack, so the gateway resends
            if self._conn is not None and isinstance(exc, self._conn.connection_errors):
                self._database_lost(payload, topic, exc)
            else:
                log.exception("receiver could not process a message on %s; not acknowledged", topic)
        self._link_ack(message)

    def _link_ack(self, message: Any) -> None:
        if self._link is not None:
            self._link.ack(message)

    def _process(self, payload: bytes, topic: str | None) -> None:
        ack = self.handle(payload, topic=topic)
        if ack is not None and self._link is not None:
            gateway_id, body = ack
            self._link.publish(f"{self.settings.topic_prefix}/{gateway_id}/ack", json.dumps(body).encode())

    def _database_lost(self, payload: bytes, topic: str | None, exc: Exception) -> None:
        """Keep the message, stop taking batches (the other receivers of the share group take them) and
        reconnect in the background; nothing needs a restart by hand (issue 16)."""
        with self._held_lock:
            self._held.append((payload, topic))
            if self.db_down:
                return
            self.db_down = f"{type(exc).__name__}: {str(exc).strip()}"
        log.error("receiver database unreachable (%s): stopped taking batches (the broker keeps them for this "
                  "receiver's session; other receivers of share group %r go on) and reconnecting with backoff; "
                  "%d batch(es) held", self.db_down, self.settings.share_group, len(self._held))
        self._healer = threading.Thread(target=self._heal, name="receiver-db-heal", daemon=True)
        self._healer.start()

    def _heal(self) -> None:
        if self._link is not None:
            # Off the broker (not unsubscribed): the persistent session keeps our share of the batches
            # queued instead of the broker dropping what nobody subscribes to (issue 16).
            self._link.pause()
        delay = DB_RETRY_MIN_S
        while not self._stopped.wait(delay):
            delay = min(delay * 2, DB_RETRY_MAX_S)
            try:
                fresh = connect(self.settings.database)
            except Exception as exc:  # noqa: BLE001 - still down: try again later
                log.debug("receiver database still unreachable: %s", exc)
                continue
            old, self._conn = self._conn, fresh
            if old is not None:
                try:
                    old.close()
                except Exception:  # noqa: BLE001 - it is broken; only its resources go
                    pass
            if self._link is not None and not self._stopped.is_set():
                self._link.resume()       # back on the broker first, so the held batches' acks can go out
                self._link.connected.wait(10.0)
            if self._drain_held():
                log.info("receiver database reachable again: held batches stored, taking batches again")
                return
            if self._link is not None:
                self._link.pause()

    def _drain_held(self) -> bool:
        """Process the messages held while the database was down; False if it went away again."""
        while True:
            with self._held_lock:
                if not self._held:
                    self.db_down = ""
                    return True
                payload, topic = self._held[0]
            try:
                self._process(payload, topic)
            except Exception as exc:  # noqa: BLE001
                if self._conn is not None and isinstance(exc, self._conn.connection_errors):
                    return False
                log.exception("receiver could not process a held message on %s; not acknowledged", topic)
            with self._held_lock:
                self._held.pop(0)

    def handle(self, message: bytes, topic: str | None = None) -> tuple[str, dict] | None:
        """Process one message; returns (gateway id, acknowledgement) to publish, or None if unaddressable.

        :param topic: where it arrived; a batch must come on its own gateway's topic.
        """
        if self._conn is None:
            self._conn = connect(self.settings.database)
        header: BatchHeader | None = None
        verified = False
        try:
            header = parse_header(message)[0]
            if topic is not None and topic != f"{self.settings.topic_prefix}/{header.gateway_id}/batch":
                raise BatchRejected("wrong_topic", f"batch of gateway {header.gateway_id} arrived on {topic}")
            gateway_key = self._gateway_key(header)
            verify_signature(message, gateway_key)
            verified = True       # from here on the gateway itself sent it: it may hear why it was refused
            _, payload = open_message(message, gateway_key, self._receiver_key(header.receiver_key_id))
            if header.kind not in KINDS:
                raise BatchRejected("malformed", f"batch kind {header.kind!r} is not known to this receiver "
                                    f"(it reads {', '.join(KINDS)}): upgrade the receiver")
            derived: dict | None = None
            readings: list = []
            if header.kind == "derived":
                try:
                    derived = decode_derived(payload)
                except ValueError as exc:
                    raise BatchRejected("malformed", str(exc)) from None
            else:
                readings = decode_readings(payload)
                if len(readings) != header.count:
                    raise BatchRejected("malformed", f"header says {header.count} readings, payload has {len(readings)}")
            status = self._store(header, message, readings, derived)
            return header.gateway_id, self._ack(header, status)
        except KeyFileError as exc:  # a trusted key file that does not parse: the operator must fix it
            self._reject(header, "unknown_key", str(exc))
            return None     # the signature could not be checked: no ack (it could be forged)
        except BatchRejected as exc:
            self._reject(header, exc.reason, exc.detail)
            if header is None or not verified:   # unaddressable, or not proven to come from the gateway
                return None
            return header.gateway_id, self._ack(header, "rejected", exc.reason)

    @staticmethod
    def _ack(header: BatchHeader, status: str, reason: str = "") -> dict:
        body: dict = {"seq": header.seq, "status": status}
        if header.stream:          # a gateway's first stream is "", and older gateways read no stream key
            body["stream"] = header.stream
        if reason:
            body["reason"] = reason
        return body

    def _reject(self, header: BatchHeader | None, reason: str, detail: str) -> None:
        log.warning("rejected batch %s/%s: %s: %s", header.gateway_id if header else "?",
                    header.seq if header else "?", reason, detail)
        assert self._conn is not None
        gateway = header.gateway_id if header else None
        with self._lock, self._conn.transaction():
            self._conn.execute("INSERT INTO rejections(at, gateway_id, seq, reason, detail) VALUES (?,?,?,?,?)",
                               (time.time(), gateway, header.seq if header else None, reason, detail[:500]))
            self._conn.execute("INSERT INTO rejection_counts (gateway_id, reason, count) VALUES (?, ?, 1) "
                               "ON CONFLICT (gateway_id, reason) DO UPDATE SET count = rejection_counts.count + 1",
                               (gateway or "?", reason))
            self._rejections_since_trim += 1
            if self._rejections_since_trim >= max(1, self.settings.max_rejections // 10):
                # Bounded: a flood of forged messages cannot fill the disk; the totals stay in rejection_counts.
                self._rejections_since_trim = 0
                self._conn.execute("DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?",
                                   (self.settings.max_rejections,))

    def _store(self, header: BatchHeader, message: bytes, readings: list, derived: dict | None = None) -> str:
        assert self._conn is not None
        for attempt in range(3):
            try:
                status = self._store_once(header, message, readings, derived)
                break
            except self._conn.integrity_errors:
                # Another receiver of the shared subscription committed the same batch between our
                # check and our insert (a redelivery went to both); look again, it is now a duplicate.
                if attempt == 2:
                    raise
        if status == "conflict":
            raise BatchRejected("conflict", f"gateway {header.gateway_id} seq {header.seq} arrived again with "
                                "different content; quarantined")
        return status

    def _store_once(self, header: BatchHeader, message: bytes, readings: list, derived: dict | None = None) -> str:
        digest = message_hash(message)
        db = self._conn
        assert db is not None
        gateway, stream = header.gateway_id, header.stream
        with self._lock, db.transaction():
            row = db.query("SELECT hash FROM batches WHERE gateway_id = ? AND stream = ? AND seq = ?",
                           (gateway, stream, header.seq))
            if row:
                if row[0][0] == digest:
                    return "duplicate"
                # Committed (not rolled back): the evidence is kept even though the batch is refused.
                db.execute("INSERT INTO quarantine(at, gateway_id, seq, message) VALUES (?,?,?,?)",
                           (time.time(), gateway, header.seq, message))
                return "conflict"
            predecessor = stream     # the stream holding batch seq - 1
            for i, (name, first_seq, first_reading_id) in enumerate(header.lineage):
                db.execute("INSERT INTO streams (gateway_id, stream, parent, first_seq, first_reading_id, first_seen) "
                           "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                           (gateway, name, header.lineage[i - 1][0] if i else None, first_seq, first_reading_id,
                            time.time()))
                if name == stream and i and first_seq == header.seq:
                    predecessor = header.lineage[i - 1][0]
            # Batches may arrive out of order (backlog and live interleave), so check the chain link on
            # both sides: our prev_hash against the stored predecessor, and a stored successor against us.
            # The first batch of a stream follows the last one its parent had sealed before the backup.
            previous = db.query("SELECT hash FROM batches WHERE gateway_id = ? AND stream = ? AND seq = ?",
                                (gateway, predecessor, header.seq - 1))
            chain_ok = not previous or previous[0][0] == header.prev_hash
            if not chain_ok:
                log.error("gateway %s seq %d: previous-batch hash does not match the stored batch %d",
                          gateway, header.seq, header.seq - 1)
            db.execute("INSERT INTO batches (gateway_id, seq, hash, prev_hash, count, received_at, chain_ok, stream) "
                       "VALUES (?,?,?,?,?,?,?,?)",
                       (gateway, header.seq, digest, header.prev_hash, header.count, time.time(), int(chain_ok),
                        stream))
            broken = db.execute("UPDATE batches SET chain_ok = 0 WHERE gateway_id = ? AND stream = ? AND seq = ? "
                                "AND prev_hash != ?", (gateway, stream, header.seq + 1, digest)).rowcount
            if broken:
                log.error("gateway %s seq %d: its prev_hash does not match the batch %d just stored",
                          gateway, header.seq + 1, header.seq)
            # A reading is (gateway, the stream it was first written in, id): after a restore the new
            # stream re-sends readings of the backup (their origin is the old stream, where they may be
            # stored already) and its own readings never collide with the old stream's later ones.
            db.executemany(
                "INSERT INTO readings (gateway_id, reading_id, seq, meter_id, point, timestamp, value, unit, quantity, "
                "quality, reason, stream) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                [(gateway, r.reading_id, header.seq, r.meter_id, r.point, r.timestamp, r.value, r.unit,
                  r.quantity, r.quality, r.reason, header.origin(r.reading_id)) for r in readings])
            if derived is not None:
                _store_derived(db, gateway, header.seq, derived)
        return "committed"


def _store_derived(db: ReceiverDb, gateway: str, seq: int, d: dict) -> None:
    """Store a ``derived`` batch's rows: one row per emission version (a repeat only updates when it was
    superseded), the newest interval and factor rows, activity data and instruments once (issue 14)."""
    db.executemany(
        "INSERT INTO derived_emissions (gateway_id, source_id, activity, origin, start_ts, end_ts, amount, unit, "
        "energy_gj, co2_t, ch4_t, n2o_t, co2e_t, scope, iso_category, factor_refs, gwp, region, status, "
        "measured_fraction, calculated_at, superseded_at, seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (gateway_id, source_id, activity, origin, start_ts, calculated_at) DO UPDATE SET "
        "superseded_at = excluded.superseded_at, seq = excluded.seq",
        [(gateway, *row, seq) for row in d["emissions"]])
    db.executemany(
        "INSERT INTO derived_intervals (gateway_id, source_id, start_ts, end_ts, amount, unit, status, "
        "measured_fraction, flags, covered_s, complete) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT "
        "(gateway_id, source_id, start_ts) DO UPDATE SET end_ts = excluded.end_ts, amount = excluded.amount, "
        "status = excluded.status, measured_fraction = excluded.measured_fraction, flags = excluded.flags, "
        "covered_s = excluded.covered_s, complete = excluded.complete",
        [(gateway, *row) for row in d["intervals"]])
    db.executemany(
        "INSERT INTO derived_factors (gateway_id, ref, id, version, valid_from, valid_to, activity, parameter, value, "
        "unit, region, year, source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        [(gateway, *row) for row in d["factors"]])
    db.executemany(
        "INSERT INTO derived_activity (gateway_id, activity_id, source_id, activity, start_ts, end_ts, amount, unit, "
        "amount_original, unit_original, origin, line) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        [(gateway, *row) for row in d["activity_data"]])
    db.executemany(
        "INSERT INTO derived_instruments (gateway_id, instrument_id, kind, source_id, start_ts, end_ts, mwh, "
        "factor_t_per_mwh, reference) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        [(gateway, *row) for row in d["instruments"]])


def recomputed_tco2e(db: ReceiverDb, gateway_id: str, start_ts: float, end_ts: float) -> float:
    """The gateway's location-based total for [start_ts, end_ts), recomputed from the derived data received:
    per figure (source, activity, origin, start) its newest version, unless superseded, counted with the
    share of its time inside the period, as the gateway's reports count it."""
    rows = db.query(
        "SELECT e.start_ts, e.end_ts, e.co2e_t FROM derived_emissions e WHERE e.gateway_id = ? AND e.superseded_at "
        "IS NULL AND e.start_ts < ? AND e.end_ts > ? AND e.calculated_at = (SELECT MAX(calculated_at) FROM "
        "derived_emissions n WHERE n.gateway_id = e.gateway_id AND n.source_id = e.source_id AND n.activity = "
        "e.activity AND n.origin = e.origin AND n.start_ts = e.start_ts)", (gateway_id, end_ts, start_ts))
    return sum(co2e * (min(b, end_ts) - max(a, start_ts)) / max(b - a, 1) for a, b, co2e in rows)


def receiver_stats(database: Path | str) -> dict[str, dict]:
    """Per gateway: batches, readings, last sequence, missing sequences, chain breaks, rejections by reason."""
    conn = connect(database)
    try:
        stats: dict[str, dict] = {}

        def empty() -> dict:
            return {"batches": 0, "readings": 0, "last_seq": None, "missing_seqs": 0, "first_missing": [],
                    "chain_breaks": 0, "rejections": {}, "quarantined": 0, "streams": 0}

        first_seqs = {(g, st): int(f) for g, st, f in conn.query("SELECT gateway_id, stream, first_seq FROM streams")}
        for gateway_id, stream, batches, last_seq, count, breaks in conn.query(
                "SELECT gateway_id, stream, COUNT(*), MAX(seq), SUM(count), SUM(1 - chain_ok) FROM batches "
                "GROUP BY gateway_id, stream ORDER BY gateway_id, MIN(received_at)"):
            entry = stats.setdefault(gateway_id, empty())
            first = first_seqs.get((gateway_id, stream), 1)
            missing = int(last_seq) - first + 1 - int(batches)
            entry["batches"] += int(batches)
            entry["readings"] += int(count or 0)
            entry["last_seq"] = int(last_seq)       # of the newest stream
            entry["missing_seqs"] += max(missing, 0)
            entry["chain_breaks"] += int(breaks or 0)
            entry["streams"] += 1
            if missing > 0:  # name the first few holes so an operator can look for them
                entry["first_missing"] += [row[0] for row in conn.query(
                    "WITH RECURSIVE s(n) AS (SELECT ? UNION ALL SELECT n + 1 FROM s WHERE n < ?) "
                    "SELECT n FROM s WHERE n NOT IN (SELECT seq FROM batches WHERE gateway_id = ? AND stream = ?) "
                    "LIMIT 10", (first, last_seq, gateway_id, stream))]
        for gateway_id, reason, n in conn.query("SELECT gateway_id, reason, count FROM rejection_counts"):
            stats.setdefault(gateway_id, empty())["rejections"][reason] = int(n)
        for gateway_id, n in conn.query("SELECT gateway_id, COUNT(*) FROM quarantine GROUP BY 1"):
            stats.setdefault(gateway_id, empty())["quarantined"] = int(n)
        return stats
    finally:
        conn.close()
