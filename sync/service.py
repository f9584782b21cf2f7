"""The gateway side of sync: fill the outbox, publish batches, drop them when the receiver acknowledges.

Acknowledgements arrive on paho's thread and are queued; all SQLite work happens on the ``sync`` thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from local_store import Store
from local_store.backup import restore_marker
from sync import outbox
from sync.errors import KeyFileError
from sync.keys import ensure_gateway_key, load_public
from sync.mqtt import BrokerSettings, Link

log = logging.getLogger(__name__)

#: While over the disk budget with nothing newly acknowledged, pruning is retried this often.
PRUNE_RETRY_S = 600.0


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
    bandwidth_bytes_per_s: float | None = None  # cap for metered links; None: no cap
    disk_budget_bytes: int | None = None         # gateway.db (+ WAL) size that raises the alarm
    raw_retention_days: float | None = None      # synced raw readings older than this are pruned (daemon job)

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
    alarm: str = ""              # e.g. the disk budget is exceeded; unsynced data is kept regardless
    disk_bytes: int = 0          # gateway.db pages in use plus its WAL (Store.used_bytes)
    synced_through: int = 0      # readings with an id up to this one are acknowledged by the receiver
    pruned_readings: int = 0     # synced raw readings deleted to stay within the disk budget, since start


class SyncService:
    """Fills the outbox and publishes it; see docs/sync-protocol.md for ordering and acknowledgements."""

    def __init__(self, settings: SyncSettings, store: Store) -> None:
        self._derived_at = -1e9
        self.settings = settings
        self.store = store
        self._acks: queue.Queue[tuple[str, int]] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()   # an ack arrived: free a window slot now, not at the next tick
        self._thread: threading.Thread | None = None
        self._link: Link | None = None
        self._key_error = ""
        self._rejected = ""              # the receiver's last refusal; cleared by the next acknowledgement
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._sessions_seen = 0
        self._pruned = 0
        self._last_prune = (-1, 0.0)     # (synced_through, when) of a pruning that stayed over the budget
        self._conflict = ""              # the receiver holds other content under one of our numbers
        self._budget_alarm_on = False
        self._follow_restore()
        self._status = self._current_status()

    def _follow_restore(self) -> None:
        """A restored store starts a new sync stream (issue 16): nothing that left the gateway after the
        backup is ever sent again under the same (stream, sequence) or (stream, reading id)."""
        marker = restore_marker(self.store.db)
        if marker is None:
            return
        new = outbox.follow_restore(self.store.db, marker.id, marker.next_reading_id)
        if new is not None:
            log.warning("this store was restored from a backup of %s: new batches go out in sync stream %s "
                        "(from sequence %d, readings from id %d on are new), so numbers already sent are not reused",
                        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(marker.backup_created_at)), new.id,
                        new.lineage[-1][1], new.lineage[-1][2])

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
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._link is not None:
            self._link.stop()

    def status(self) -> SyncStatus:
        return self._status

    # -- the sync thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        failing = ""     # the error of the current episode: logged once at ERROR, not every tick (issue 16)
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep syncing; the error is shown in status
                error = f"sync failed: {exc}"
                if not failing:
                    log.error("%s (e.g. the disk is full); unsynced data is kept and sync retries every tick", error)
                    log.debug("sync tick failed", exc_info=True)
                failing = error
                self._status = self._status_despite(error)
            else:
                if failing:
                    log.info("sync works again")
                failing = ""
            self._wake.wait(self.settings.tick_s)
            self._wake.clear()

    def _status_despite(self, error: str) -> SyncStatus:
        """The status while a tick fails (a full disk refuses writes): what can still be read, not zeros."""
        try:
            status = self._current_status()
        except Exception:  # noqa: BLE001 - the store cannot even be read: keep the last known figures
            status = self._status
        link = self._link
        return replace(status, connected=bool(link and link.connected.is_set()), last_error=error)

    def tick(self, force: bool = False) -> None:
        """Apply acknowledgements, keep within the disk budget, fill the outbox, publish what is due."""
        self._apply_acks()
        self.keep_within_budget()
        self.fill(force=force)
        self._publish_due()
        self._status = self._current_status()

    def _apply_acks(self) -> None:
        db = self.store.db
        while True:
            try:
                stream_id, seq = self._acks.get_nowait()
                outbox.acknowledge(db, seq, stream_id)
            except queue.Empty:
                return

    def keep_within_budget(self) -> int:
        """Over ``disk_budget_bytes``, prune raw readings the receiver has committed, oldest first.

        Policy (docs/sync-protocol.md, "Disk budget"): synced raw data goes first and the log says so;
        unsynced data is never deleted to make room: if pruning is not enough, ``status().alarm`` stays
        until the link returns. Returns how many readings were pruned.
        """
        budget = self.settings.disk_budget_bytes
        if budget is None or self.store.used_bytes() <= budget:
            return 0
        synced = outbox.synced_through(self.store.db)
        last_synced, last_at = self._last_prune
        if synced == last_synced and time.monotonic() - last_at < PRUNE_RETRY_S:
            # Pruning could not get within the budget and nothing more was acknowledged since: only the
            # moving keep window can free more, so do not rescan every tick.
            return 0
        result = self.store.prune_synced_readings(synced, budget)
        self._last_prune = (synced, time.monotonic()) if result.used_bytes_after > budget else (-1, 0.0)
        if result.deleted:
            self._pruned += result.deleted
            until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.until_ts or 0))
            log.warning("disk budget %.1f MB: pruned %d raw readings already committed at the receiver (ids <= %d, "
                        "up to %s); %.1f MB now in use", budget / 1e6, result.deleted, result.through_id, until,
                        result.used_bytes_after / 1e6)
        return result.deleted

    def _current_status(self) -> SyncStatus:
        db = self.store.db
        batches, readings = outbox.backlog(db)
        pending, _ = outbox.pending_readings(self.store)
        link = self._link
        error = self._key_error or (link.last_error if link else "") or self._rejected
        disk = self.store.used_bytes()
        alarm = ""
        budget = self.settings.disk_budget_bytes
        if budget is not None and disk > budget:
            # Policy (docs/sync-protocol.md, "Disk budget"): never drop unsynced data to make room.
            alarm = (f"disk budget exceeded: {disk / 1e6:.1f} MB used of {budget / 1e6:.1f} MB after pruning "
                     f"{self._pruned} synced raw readings; {readings + pending} unsynced readings are kept "
                     f"(never deleted): restore the link to the receiver or raise sync.disk_budget_mb")
            if not self._budget_alarm_on:                 # logged when it starts; the status carries it meanwhile
                log.error(alarm)
        self._budget_alarm_on = bool(alarm)
        alarm = "; ".join(a for a in (self._conflict, alarm) if a)
        return SyncStatus(self.settings.enabled, bool(link and link.connected.is_set()), batches, readings + pending,
                          outbox.last_ack_at(db), error, alarm, disk, outbox.synced_through(db), self._pruned)

    def synced_through(self) -> int:
        """Readings with ids up to this are committed at the receiver: raw data that retention may prune."""
        return outbox.synced_through(self.store.db)

    def _keys(self) -> tuple[Any, Any] | None:
        """(receiver public key, gateway signing key), or None with ``_key_error`` saying why."""
        if self.settings.receiver_public_key is None:
            return None
        try:
            keys = load_public(self.settings.receiver_public_key), ensure_gateway_key(self.settings.keys_dir)
        except KeyFileError as exc:
            self._key_error = str(exc)
            return None
        self._key_error = ""
        return keys

    def reseal_backlog(self) -> tuple[int, int]:
        """Seal the batches that never left the gateway (cut small during an outage, every
        ``batch_max_age_s``) again as batches of up to ``batch_max_readings``: fewer, larger messages
        when the link returns (issue 16). Only the tail of never-published batches of the current stream
        is resealed, under the same sequence numbers and chain; a batch that was ever published is kept
        as it is. Returns (batches before, batches after)."""
        keys = self._keys()
        if keys is None:
            return 0, 0
        receiver, signer = keys
        before, upto = outbox.unseal_unsent_tail(self.store.db, self.settings.batch_max_readings)
        if not before:
            return 0, 0
        after = 0
        while outbox.cursor(self.store.db) < upto and outbox.make_batch(
                self.store, self.settings.gateway_id, self.settings.batch_max_readings, receiver, signer) is not None:
            after += 1
        log.info("link back: re-sealed %d unsent batches as %d (up to %d readings each)", before, after,
                 self.settings.batch_max_readings)
        return before, after

    def fill(self, force: bool = False) -> int:
        """Seal full (or old enough) batches of readings, then a batch of derived data if it is due;
        returns how many readings batches were made."""
        if self.settings.receiver_public_key is None:
            self._key_error = ("no receiver public key configured (sync.receiver_public_key); readings wait "
                               "unbatched on disk")
            return 0
        keys = self._keys()
        if keys is None:
            return 0
        receiver, signer = keys
        made = 0
        while not self._stop.is_set():
            pending, oldest = outbox.pending_readings(self.store)
            old_enough = oldest is not None and time.time() - oldest >= self.settings.batch_max_age_s
            if not pending or not (force or old_enough or pending >= self.settings.batch_max_readings):
                break
            if outbox.make_batch(self.store, self.settings.gateway_id, self.settings.batch_max_readings,
                                 receiver, signer) is None:  # type: ignore[arg-type]
                break
            made += 1
        if not self._stop.is_set():
            self._fill_derived(force, receiver, signer)
        return made

    def _fill_derived(self, force: bool, receiver: Any, signer: Any) -> None:
        """Derived data (emissions, intervals, factors, activity data, instruments) at most once per
        ``batch_max_age_s``, after the readings it was computed from (issue 14 part 8)."""
        now = time.monotonic()
        if not force and now - self._derived_at < max(self.settings.batch_max_age_s, 1.0):
            return
        self._derived_at = now
        outbox.make_derived_batch(self.store, self.settings.gateway_id, receiver, signer)

    def _take_tokens(self, size: int) -> bool:
        """Token bucket for ``bandwidth_bytes_per_s``; a message larger than one second's worth waits for a full bucket."""
        rate = self.settings.bandwidth_bytes_per_s
        if rate is None:
            return True
        now = time.monotonic()
        capacity = max(rate, float(size))
        self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True

    def _publish_due(self) -> None:
        """Send within the in-flight window: the newest batch first (live data is not held behind a
        backlog after an outage), then the backlog oldest first."""
        link = self._link
        if link is None or not link.connected.is_set():
            return
        db = self.store.db
        if link.connects != self._sessions_seen:
            # A new session: what was in flight on the old one may be gone (no persistent session),
            # so send it again now rather than after ack_timeout_s; the receiver deduplicates.
            self._sessions_seen = link.connects
            self.reseal_backlog()        # before anything of the backlog is published in this session
            outbox.forget_in_flight(db)
        now = time.time()
        slots = outbox.window(db, self.settings.max_inflight)
        # Counted over the whole outbox: the live batch sent ahead of the backlog is not among the slots.
        free = self.settings.max_inflight - outbox.in_flight(db, now - self.settings.ack_timeout_s)
        due = [s for s in slots if s.sent_at is None or now - s.sent_at >= self.settings.ack_timeout_s]
        newest = outbox.newest(db)
        # "Live" = sealed during this session, i.e. not part of a backlog from an outage; it jumps the queue
        # once, and the backlog still drains oldest first.
        if newest is not None and newest.created_at >= link.connected_at and \
                (newest.sent_at is None or now - newest.sent_at >= self.settings.ack_timeout_s):
            due = [newest] + [s for s in due if s.seq != newest.seq]
        for slot in due[:max(free, 0)]:
            message = outbox.message(db, slot.seq)
            if message is None:   # acknowledged meanwhile
                continue
            if not self._take_tokens(len(message)):
                return
            link.publish(self.settings.batch_topic(), message)
            outbox.mark_sent(db, slot.seq)

    def _on_message(self, message: Any) -> None:
        try:
            ack = json.loads(message.payload)
            if ack.get("status") in ("committed", "duplicate"):
                self._acks.put((str(ack.get("stream", "")), int(ack["seq"])))
                self._rejected = ""
                self._wake.set()
            elif ack.get("reason") == "conflict":
                # Not a key problem: the receiver holds a different batch under this number, so this store
                # reused numbers that had already left it (copied or restored without a new stream).
                error = (f"sync conflict: the receiver already holds a different batch {ack.get('seq')} of this "
                         f"gateway{' (stream ' + str(ack['stream']) + ')' if ack.get('stream') else ''}: this store "
                         "reused numbers that had already been sent (it was copied, or restored without "
                         "`carbon-gateway restore`); the receiver kept the first and quarantined this one. Stop "
                         "the gateway and run `carbon-gateway sync new-stream` (docs/operations.md, \"Restore\")")
                if not self._conflict:     # one ERROR line per episode; the status carries the latest
                    log.error(error)
                self._conflict = error
            else:
                # The batch stays in the outbox and is resent: a receiver that learns our key recovers it.
                # Receivers ack a refusal only after checking our signature (issue 16), so it is not our key.
                hint = ("the receiver does not hold the key it was sealed to: check sync.receiver_public_key"
                        if ack.get("reason") == "unknown_key" else "see the receiver's log for why")
                error = f"receiver rejected batch {ack.get('seq')}: {ack.get('reason')}; it stays in the outbox ({hint})"
                if error != self._rejected:
                    log.error(error)
                self._rejected = error
        except (ValueError, KeyError, TypeError, AttributeError):
            log.error("unreadable acknowledgement on %s", message.topic)
