"""The gateway side of sync: fill the outbox, publish batches, drop them when the receiver acknowledges.

Acknowledgements arrive on paho's thread and are queued; all SQLite work happens on the ``sync`` thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_store import Store
from sync import outbox
from sync.errors import KeyFileError
from sync.keys import ensure_gateway_key, load_public
from sync.mqtt import BrokerSettings, Link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncSettings:
    gateway_id: str
    keys_dir: Path
    receiver_public_key: Path | None = None     # the cloud's X25519 key; without it batches are not sealed yet
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    enabled: bool = True
    topic_prefix: str = "carbon"
    batch_max_readings: int = 5000
    batch_max_age_s: float = 30.0
    max_inflight: int = 10
    ack_timeout_s: float = 30.0
    tick_s: float = 0.5

    def batch_topic(self) -> str:
        return f"{self.topic_prefix}/{self.gateway_id}/batch"

    def ack_topic(self) -> str:
        return f"{self.topic_prefix}/{self.gateway_id}/ack"


@dataclass(frozen=True)
class SyncStatus:
    enabled: bool
    connected: bool
    backlog_batches: int
    backlog_readings: int        # in unacknowledged batches plus not yet batched
    last_ack_at: float | None
    last_error: str


class SyncService:
    def __init__(self, settings: SyncSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._acks: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: Link | None = None
        self._key_error = ""
        outbox.ensure_schema(store.db)
        self._status = self._current_status()

    def start(self) -> None:
        if not self.settings.enabled:
            return
        outbox.forget_in_flight(self.store.db)
        self._link = Link(self.settings.broker, client_id=f"gateway-{self.settings.gateway_id}",
                          on_message=self._on_message, subscriptions=(self.settings.ack_topic(),))
        self._link.start()
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._link is not None:
            self._link.stop()

    def status(self) -> SyncStatus:
        return self._status

    # -- the sync thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep syncing; the error is shown in status
                log.exception("sync tick failed")
                self._status = SyncStatus(True, False, 0, 0, None, f"sync failed: {exc}")
            self._stop.wait(self.settings.tick_s)

    def tick(self, force: bool = False) -> None:
        """Apply acknowledgements, fill the outbox, publish what is due."""
        db = self.store.db
        while True:
            try:
                outbox.acknowledge(db, self._acks.get_nowait())
            except queue.Empty:
                break
        self.fill(force=force)
        self._publish_due()
        self._status = self._current_status()

    def _current_status(self) -> SyncStatus:
        db = self.store.db
        batches, readings = outbox.backlog(db)
        pending, _ = outbox.pending_readings(db)
        link = self._link
        error = self._key_error or (link.last_error if link else "")
        return SyncStatus(self.settings.enabled, bool(link and link.connected.is_set()), batches, readings + pending,
                          outbox.last_ack_at(db), error)

    def fill(self, force: bool = False) -> int:
        """Seal full (or old enough) batches; returns how many were made."""
        if self.settings.receiver_public_key is None:
            self._key_error = "no receiver public key configured; readings wait unbatched"
            return 0
        try:
            receiver = load_public(self.settings.receiver_public_key)
            signer = ensure_gateway_key(self.settings.keys_dir)
        except KeyFileError as exc:
            self._key_error = str(exc)
            return 0
        self._key_error = ""
        db = self.store.db
        made = 0
        while True:
            pending, oldest = outbox.pending_readings(db)
            old_enough = oldest is not None and time.time() - oldest >= self.settings.batch_max_age_s
            if not pending or not (force or old_enough or pending >= self.settings.batch_max_readings):
                return made
            if outbox.make_batch(db, self.settings.gateway_id, self.settings.batch_max_readings,
                                 receiver, signer) is None:  # type: ignore[arg-type]
                return made
            made += 1

    def _publish_due(self) -> None:
        link = self._link
        if link is None or not link.connected.is_set():
            return
        now = time.time()
        for row in outbox.unacked(self.store.db, self.settings.max_inflight):
            if row.sent_at is None or now - row.sent_at >= self.settings.ack_timeout_s:
                link.publish(self.settings.batch_topic(), row.message)
                outbox.mark_sent(self.store.db, row.seq)

    def _on_message(self, message: Any) -> None:
        try:
            ack = json.loads(message.payload)
            if ack.get("status") in ("committed", "duplicate"):
                self._acks.put(int(ack["seq"]))
            else:
                log.error("receiver rejected batch %s: %s", ack.get("seq"), ack.get("reason"))
        except (ValueError, KeyError, TypeError):
            log.error("unreadable acknowledgement on %s", message.topic)
