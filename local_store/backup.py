"""Encrypted, consistent online backups of the store file, and a restore that checks before it replaces.

A backup is taken with SQLite's online backup API in one step (``Connection.backup(pages=-1)``): it
reads one consistent snapshot while the daemon keeps writing (WAL readers never block the writer).
The snapshot is checked (``PRAGMA quick_check``), compressed and encrypted in 1 MiB chunks with
AES-256-GCM, so memory stays bounded on a small box. File layout (format 1)::

    magic    16 bytes  b"CARBONGW-BACKUP\\n"
    version   2 bytes  big-endian, 1
    key id    8 bytes  SHA-256(key)[:8]: says "made with another key" before any decryption
    nonce     8 bytes  random prefix; chunk i uses nonce || i (4 bytes)
    meta len  4 bytes, meta: JSON (created_at, source file, schema migrations)
    chunks    4-byte length + ciphertext; AAD = SHA-256(header) || i || final flag

The header is authenticated by every chunk, and the final flag makes a truncated file fail. The meta
also carries the audit key (``keys/audit.key``) sealed with the backup key (AES-256-GCM, its own nonce),
so a restore into a fresh data directory puts back the key that ``audit verify`` needs (issue 16). A
restore marks the restored file (``store_meta`` key ``restored``: a fresh id and the next reading id),
so sync starts a new sync stream and never reuses a number that left the gateway after the backup. A
restore
decrypts into a temporary file beside the store, runs ``PRAGMA integrity_check``, checks that every
migration in it is known to this version, and only then moves the live file aside and puts the
restored one in its place, while no daemon holds the store lock (:func:`hold_store_lock`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import sqlite_utils

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from local_store.errors import StoreError
from local_store.files import fsync_dir
from local_store.keyfiles import create_key_file
from local_store.readings import highest_reading_id, reading_count

MAGIC = b"CARBONGW-BACKUP\n"
FORMAT_VERSION = 1
SUFFIX = ".cgbak"
KEY_FILE = "backup.key"
AUDIT_KEY_FILE = "audit.key"
RESTORED_META_KEY = "restored"          # store_meta: {"id", "at", "backup_created_at", "next_reading_id"}
_AUDIT_KEY_AAD = b"carbon-gateway backup: audit key"
CHUNK_BYTES = 1 << 20
_FIXED = struct.Struct(">16sH8s8sI")
_NAME = re.compile(r"^gateway-(\d{6})-(\d{8}T\d{6}Z)" + re.escape(SUFFIX) + r"$")


class BackupError(StoreError):
    """A backup cannot be made, or a file cannot be restored; the message says why and what to do."""


@dataclass(frozen=True)
class BackupSettings:
    """The ``[backup]`` config section: scheduled backups and how many are kept.

    :param directory: where scheduled backups go (default ``<data_dir>/backups``).
    """

    enabled: bool = True
    interval_h: float = 24.0
    keep: int = 7
    directory: Path | None = None


@dataclass(frozen=True)
class RestoreResult:
    store_path: Path
    backup_created_at: float
    readings: int
    audit_entries: int
    previous_copy: Path | None      # the replaced store, kept beside it (None when there was none)
    staged: bool = False            # True: waiting beside the store until the next start
    audit_key: str = ""             # "restored", "kept" (the same key was in place), "supplied", or "" (none needed)


# -- key ------------------------------------------------------------------------------------------
def ensure_backup_key(key_path: Path) -> bytes:
    """The backup key at ``key_path``, generated (0600) on first use."""
    if not key_path.exists():
        create_key_file(key_path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return load_backup_key(key_path)


def load_backup_key(key_path: Path) -> bytes:
    """:raises BackupError: missing or malformed key file (naming it and the fix)."""
    try:
        text = key_path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"{key_path}: cannot read the backup key ({exc}): copy the key file of the gateway "
                          f"that made the backup there, or pass it with --key") from exc
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BackupError(f"{key_path}: not a backup key (expected 32 bytes in base64): use the backup.key file "
                          f"from the gateway's keys directory")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _seal_audit_key(key: bytes, audit_key_path: Path) -> str | None:
    """The audit key file's bytes sealed with the backup key (base64 of nonce || ciphertext), or None."""
    try:
        content = Path(audit_key_path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"{audit_key_path}: cannot read the audit key to put it in the backup "
                          f"({exc.strerror or exc}): check the keys directory's permissions") from exc
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, content, _AUDIT_KEY_AAD)).decode()


def _open_audit_key(key: bytes, sealed: object, backup_file: Path) -> bytes:
    try:
        blob = base64.b64decode(str(sealed), validate=True)
        return AESGCM(key).decrypt(blob[:12], blob[12:], _AUDIT_KEY_AAD)
    except (ValueError, InvalidTag) as exc:
        raise BackupError(f"{backup_file}: the audit key inside is damaged; nothing was replaced: use another "
                          f"backup") from exc


# -- store lock -----------------------------------------------------------------------------------
class StoreLock:
    """An advisory lock the daemon holds while it runs, so a restore never replaces a file in use."""

    def __init__(self, store_path: Path) -> None:
        self.path = Path(str(store_path) + ".lock")
        self._handle: IO[bytes] | None = None

    def acquire(self) -> bool:
        """:raises BackupError: the lock file cannot be created (the data directory is wrong)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("ab")
        except OSError as exc:
            raise BackupError(f"{self.path}: cannot create the store's lock file ({exc.strerror}); nothing was "
                              f"changed: check --data-dir (gateway.data_dir) names a writable directory") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def hold_store_lock(store_path: Path) -> StoreLock:
    """Take the store lock for a running daemon.

    :raises BackupError: another process (a second daemon, a restore) holds it.
    """
    lock = StoreLock(store_path)
    if not lock.acquire():
        raise BackupError(f"{store_path}: in use by another carbon-gateway process (lock {lock.path}): "
                          f"stop it first (systemctl stop carbon-gateway)")
    return lock


# -- backup ---------------------------------------------------------------------------------------
def _known_migrations() -> set[str]:
    from local_store.db import migrations
    return {m.name for m in migrations._migrations}


def _applied_migrations(conn: sqlite3.Connection) -> tuple[str, ...]:
    try:
        rows = conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'local_store' ORDER BY id")
        return tuple(r[0] for r in rows)
    except sqlite3.DatabaseError:
        return ()


def _next_name(dest_dir: Path, now: float) -> Path:
    # A sequence number orders backups even when the clock steps backwards (retention keeps the newest).
    seqs = [int(m.group(1)) for p in dest_dir.iterdir() if (m := _NAME.match(p.name))]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return dest_dir / f"gateway-{max(seqs, default=0) + 1:06d}-{stamp}{SUFFIX}"


def _header(key: bytes, meta: dict) -> tuple[bytes, bytes]:
    nonce_prefix = secrets.token_bytes(8)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    header = _FIXED.pack(MAGIC, FORMAT_VERSION, bytes.fromhex(key_id(key)), nonce_prefix, len(meta_bytes)) + meta_bytes
    return header, nonce_prefix


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(6)
    pending = b""
    while block := handle.read(CHUNK_BYTES):
        pending += compressor.compress(block)
        while len(pending) >= CHUNK_BYTES:
            yield pending[:CHUNK_BYTES]
            pending = pending[CHUNK_BYTES:]
    yield pending + compressor.flush()


def create_backup(store_path: Path, dest_dir: Path, key_path: Path, now: float | None = None,
                  audit_key_path: Path | None = None) -> Path:
    """Write an encrypted, consistent backup of the store into ``dest_dir``; returns its path.

    Safe while the daemon writes. The key at ``key_path`` is created (0600) on first use.

    :param audit_key_path: the audit key to carry, sealed with the backup key (default: ``audit.key``
        beside ``key_path``, the gateway's keys directory); a missing file is simply not carried.

    :raises BackupError: the store is missing or damaged, or the destination cannot be written
        (naming the path and the OS error, e.g. a full disk).
    """
    store_path, dest_dir = Path(store_path), Path(dest_dir)
    if not store_path.exists():
        raise BackupError(f"{store_path}: no store to back up: check --data-dir")
    key = ensure_backup_key(key_path)
    created_at = time.time() if now is None else now
    snapshot = store_path.with_name(f".{store_path.name}.backup-{secrets.token_hex(4)}.tmp")
    partial: Path | None = None
    try:
        source = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)           # pages=-1: one step, one consistent snapshot
            check = target.execute("PRAGMA quick_check").fetchone()[0]
            migrations = _applied_migrations(target)
        finally:
            target.close()
            source.close()
        if check != "ok":
            raise BackupError(f"{store_path}: the store is damaged ({check}); no backup was written: "
                              f"restore the last good backup (docs/operations.md)")
        dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = _next_name(dest_dir, created_at)
        partial = path.with_name(path.name + ".partial")
        meta = {"created_at": created_at, "source": store_path.name, "migrations": list(migrations)}
        sealed_audit_key = _seal_audit_key(key, audit_key_path or key_path.with_name(AUDIT_KEY_FILE))
        if sealed_audit_key is not None:
            meta["audit_key"] = sealed_audit_key
        header, nonce_prefix = _header(key, meta)
        aad_base = hashlib.sha256(header).digest()
        aes = AESGCM(key)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, snapshot.open("rb") as plain:
            out.write(header)

            def seal(index: int, chunk: bytes, final: bool) -> None:
                nonce = nonce_prefix + struct.pack(">I", index)
                sealed = aes.encrypt(nonce, chunk, aad_base + struct.pack(">IB", index, final))
                out.write(struct.pack(">I", len(sealed)) + sealed)

            # Hold one chunk back: only the last one carries the final flag (truncation shows).
            index, held = 0, None
            for chunk in _chunks(plain):
                if held is not None:
                    seal(index, held, False)
                    index += 1
                held = chunk
            seal(index, held or b"", True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        fsync_dir(dest_dir)
        return path
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{store_path}: cannot take the snapshot for a backup ({exc}): free space beside the "
                          f"store if the disk is full, else run `carbon-gateway doctor`") from exc
    except OSError as exc:
        raise BackupError(f"{dest_dir}: cannot write the backup ({exc.strerror or exc}): free space or choose "
                          f"another directory ([backup] directory, or --dest)") from exc
    finally:
        snapshot.unlink(missing_ok=True)
        if partial is not None:
            partial.unlink(missing_ok=True)


def list_backups(dest_dir: Path) -> list[Path]:
    """Backups in ``dest_dir``, oldest first (by sequence number, not by clock)."""
    if not dest_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in dest_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_backups(dest_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups; returns the deleted paths."""
    backups = list_backups(dest_dir)
    doomed = backups[:-keep] if keep > 0 else backups
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# -- restore --------------------------------------------------------------------------------------
def _read_header(handle: IO[bytes], backup_file: Path) -> tuple[bytes, dict, str, bytes]:
    fixed = handle.read(_FIXED.size)
    if len(fixed) < _FIXED.size or not fixed.startswith(MAGIC):
        raise BackupError(f"{backup_file}: not a Carbon Edge Gateway backup (no backup header); "
                          f"nothing was replaced: choose a {SUFFIX} file made by `carbon-gateway backup`")
    _, version, kid, nonce_prefix, meta_len = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise BackupError(f"{backup_file}: backup format {version} is not known to this version (it reads "
                          f"format {FORMAT_VERSION}); nothing was replaced: upgrade carbon-gateway first")
    meta_bytes = handle.read(meta_len) if meta_len < 65536 else b""
    try:
        meta = json.loads(meta_bytes) if len(meta_bytes) == meta_len else None
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise BackupError(f"{backup_file}: the backup header is damaged; nothing was replaced: use another backup")
    return fixed + meta_bytes, meta, kid.hex(), nonce_prefix


def read_backup_info(backup_file: Path) -> tuple[dict, str]:
    """The header's metadata (created_at, source, migrations) and key id, without the key.

    :raises BackupError: not a gateway backup, or one in a format this version cannot read.
    """
    try:
        with Path(backup_file).open("rb") as handle:
            _, meta, kid, _ = _read_header(handle, backup_file)
    except OSError as exc:
        raise BackupError(f"{backup_file}: cannot read ({exc.strerror or exc}); nothing was replaced") from exc
    return meta, kid


def _decrypt_to(backup_file: Path, key: bytes, out_path: Path) -> dict:
    with Path(backup_file).open("rb") as handle, out_path.open("wb") as out:
        header, meta, kid, nonce_prefix = _read_header(handle, backup_file)
        if kid != key_id(key):
            raise BackupError(f"{backup_file}: encrypted with another key (key id {kid}, this key is {key_id(key)}); "
                              f"nothing was replaced: pass the backup.key of the gateway that made it with --key")
        aes = AESGCM(key)
        decompressor = zlib.decompressobj()
        aad_base = hashlib.sha256(header).digest()
        index, final = 0, False
        while not final:
            size_bytes = handle.read(4)
            sealed = handle.read(struct.unpack(">I", size_bytes)[0]) if len(size_bytes) == 4 else b""
            if not sealed:
                raise BackupError(f"{backup_file}: truncated after {index} chunk(s); nothing was replaced: "
                                  f"copy the file again or use another backup")
            nonce = nonce_prefix + struct.pack(">I", index)
            plain = None
            for final in (False, True):
                try:
                    plain = aes.decrypt(nonce, sealed, aad_base + struct.pack(">IB", index, final))
                    break
                except InvalidTag:
                    continue
            if plain is None:
                raise BackupError(f"{backup_file}: chunk {index} is corrupt or was altered (authentication failed); "
                                  f"nothing was replaced: use another backup")
            out.write(decompressor.decompress(plain))
            index += 1
        out.write(decompressor.flush())
        if handle.read(1):
            raise BackupError(f"{backup_file}: data after the final chunk (altered); nothing was replaced: "
                              f"use another backup")
        out.flush()
        os.fsync(out.fileno())
    return meta


def _check_database(path: Path, backup_file: Path) -> tuple[int, int]:
    """Integrity and schema of a decrypted backup; returns (readings, audit entries)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                raise BackupError(f"{backup_file}: the database inside fails its integrity check "
                                  f"({'; '.join(result[:3])}); nothing was replaced: use another backup")
            applied = set(_applied_migrations(conn))
            unknown = applied - _known_migrations()
            if unknown:
                raise BackupError(f"{backup_file}: made by a newer version (migrations {', '.join(sorted(unknown))}); "
                                  f"nothing was replaced: upgrade carbon-gateway first")
            if not applied:
                raise BackupError(f"{backup_file}: the database inside is not a gateway store (no schema); "
                                  f"nothing was replaced")
            readings = reading_count(conn)
            has_audit = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_log'").fetchone()
            audit_entries = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] if has_audit else 0
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{backup_file}: the data inside is not a usable SQLite database ({exc}); "
                          f"nothing was replaced") from exc
    return readings, audit_entries


def _prepare(backup_file: Path, store_path: Path, key_path: Path) -> tuple[Path, dict, int, int, bytes | None]:
    """Decrypt and check; returns (temp file, meta, readings, audit entries, the audit key it carries)."""
    read_backup_info(backup_file)       # a foreign or newer file is refused before the key is needed
    key = load_backup_key(key_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    temp = store_path.with_name(f".{store_path.name}.restore-{secrets.token_hex(4)}.tmp")
    try:
        meta = _decrypt_to(backup_file, key, temp)
        readings, audit_entries = _check_database(temp, backup_file)
        audit_key = _open_audit_key(key, meta["audit_key"], backup_file) if "audit_key" in meta else None
    except zlib.error as exc:
        temp.unlink(missing_ok=True)
        raise BackupError(f"{backup_file}: the data inside cannot be decompressed ({exc}); nothing was replaced") from exc
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise BackupError(f"{store_path.parent}: cannot write the restored file ({exc.strerror or exc}); "
                          f"nothing was replaced: free space and try again") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, meta, readings, audit_entries, audit_key


def _mark_restored(path: Path, backup_created_at: float) -> None:
    """Record in the restored file that it is a restore: sync reads this and starts a new sync stream
    whose readings begin at ``next_reading_id``, so no number that left the gateway after the backup is
    reused (issue 16)."""
    conn = sqlite3.connect(path)
    try:
        marker = {"id": secrets.token_hex(8), "at": time.time(), "backup_created_at": backup_created_at,
                  "next_reading_id": highest_reading_id(conn) + 1}
        with conn:
            conn.execute("INSERT INTO store_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                         "value = excluded.value", (RESTORED_META_KEY, json.dumps(marker)))
    finally:
        conn.close()


@dataclass(frozen=True)
class RestoreMarker:
    """What a restore wrote into the restored file (see :func:`restore_marker`)."""

    id: str                  # fresh for every restore
    at: float
    backup_created_at: float
    next_reading_id: int     # readings from this id on were written after the restore


def restore_marker(db: sqlite_utils.Database) -> RestoreMarker | None:
    """The last restore's marker in the store ``db``, or None if the file was never restored."""
    row = db.execute("SELECT value FROM store_meta WHERE key = ?", (RESTORED_META_KEY,)).fetchone()
    if not row:
        return None
    data = json.loads(row[0])
    return RestoreMarker(str(data["id"]), float(data["at"]), float(data["backup_created_at"]),
                         int(data["next_reading_id"]))


def _has_sealed_audit_entries(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_log'").fetchone():
            return False
        return conn.execute("SELECT 1 FROM audit_log WHERE hash LIKE 'h1:%' LIMIT 1").fetchone() is not None
    finally:
        conn.close()


def _audit_key_to_install(temp: Path, carried: bytes | None, audit_key_path: Path, supplied: Path | None,
                          backup_file: Path) -> tuple[bytes | None, str]:
    """Which audit key the restored store needs at ``audit_key_path``: (bytes to write or None, outcome).

    :raises BackupError: the backup does not carry its audit key (made by an older version), its entries
        are sealed, and neither ``supplied`` nor an existing key file can provide it.
    """
    if supplied is not None:
        try:
            return Path(supplied).read_bytes(), "supplied"
        except OSError as exc:
            raise BackupError(f"{supplied}: cannot read the audit key ({exc.strerror or exc}); nothing was "
                              f"replaced") from exc
    if carried is not None:
        return carried, "restored"
    if not _has_sealed_audit_entries(temp):
        return None, ""
    if audit_key_path.exists():
        return None, "kept"
    raise BackupError(f"{backup_file}: this backup does not carry the audit key (made by an older version) and "
                      f"{audit_key_path} does not exist, so `audit verify` could not check its sealed entries; "
                      f"nothing was replaced: copy the old gateway's keys/{AUDIT_KEY_FILE} there, or pass it "
                      f"with --audit-key")


def _install_audit_key(content: bytes | None, audit_key_path: Path) -> str:
    """Write the restored audit key; a different key already there is kept aside. Returns the outcome."""
    if content is None:
        return ""
    if audit_key_path.exists():
        if audit_key_path.read_bytes() == content:
            return "kept"
        aside = audit_key_path.with_name(f"{audit_key_path.name}.before-restore-"
                                         f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.replace(audit_key_path, aside)
    create_key_file(audit_key_path, content.decode("utf-8"))
    return "restored"


def _swap_in(temp: Path, store_path: Path) -> Path | None:
    # The live file's -wal belongs to it: left in place SQLite would replay it into the restored file.
    previous = None
    if store_path.exists():
        previous = store_path.with_name(f"{store_path.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        os.replace(store_path, previous)
        for suffix in ("-wal", "-shm"):
            side = Path(str(store_path) + suffix)
            if side.exists():
                os.replace(side, Path(str(previous) + suffix))
    os.replace(temp, store_path)
    fsync_dir(store_path.parent)
    return previous


def _default_audit_key(store_path: Path) -> Path:
    return Path(store_path).parent / "keys" / AUDIT_KEY_FILE


def restore_backup(backup_file: Path, store_path: Path, key_path: Path, audit_key_path: Path | None = None,
                   audit_key_source: Path | None = None) -> RestoreResult:
    """Check ``backup_file`` completely, then replace the store with it (the daemon must be stopped).

    The replaced file is kept beside it as ``<store>.before-restore-<time>``. The audit key the backup
    carries is put at ``audit_key_path`` (default ``keys/audit.key`` beside the store); a different key
    there is kept as ``audit.key.before-restore-<time>``. The restored file is marked as a restore, so
    sync starts a new sync stream.

    :param audit_key_source: the old gateway's audit key file, for a backup made before backups
        carried it.
    :raises BackupError: a foreign, corrupt, truncated or newer backup, a wrong key, a running daemon,
        or a sealed audit log whose key is nowhere to be had; in every case nothing was replaced.
    """
    store_path = Path(store_path)
    audit_key_path = Path(audit_key_path) if audit_key_path else _default_audit_key(store_path)
    lock = StoreLock(store_path)
    if not lock.acquire():
        raise BackupError(f"{store_path}: the gateway is running; nothing was replaced: stop it first "
                          f"(systemctl stop carbon-gateway), restore, then start it")
    try:
        temp, meta, readings, audit_entries, carried = _prepare(Path(backup_file), store_path, key_path)
        try:
            content, planned = _audit_key_to_install(temp, carried, audit_key_path, audit_key_source,
                                                     Path(backup_file))
            _mark_restored(temp, float(meta.get("created_at", 0)))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        previous = _swap_in(temp, store_path)
        installed = _install_audit_key(content, audit_key_path)
        outcome = planned if planned in ("supplied", "kept") else installed or planned
    finally:
        lock.release()
    return RestoreResult(store_path, float(meta.get("created_at", 0)), readings, audit_entries, previous,
                         audit_key=outcome)


def check_backup(backup_file: Path, store_path: Path, key_path: Path) -> RestoreResult:
    """Everything a restore checks (header, key, every chunk, integrity, schema), replacing nothing.

    The decrypted copy is written beside ``store_path`` (same protection as the store) and removed.
    """
    store_path = Path(store_path)
    temp, meta, readings, audit_entries, carried = _prepare(Path(backup_file), store_path, key_path)
    temp.unlink(missing_ok=True)
    return RestoreResult(store_path, float(meta.get("created_at", 0)), readings, audit_entries, None,
                         audit_key="carried" if carried is not None else "")


def stage_restore(backup_file: Path, store_path: Path, key_path: Path, audit_key_path: Path | None = None,
                  audit_key_source: Path | None = None) -> RestoreResult:
    """Check ``backup_file`` completely and leave it beside the store; the next start swaps it in.

    For a running gateway (the web UI): restart the service to finish (:func:`apply_staged_restore`).
    The audit key the backup carries waits beside it too and is put in place at that start.
    """
    store_path = Path(store_path)
    audit_key_path = Path(audit_key_path) if audit_key_path else _default_audit_key(store_path)
    temp, meta, readings, audit_entries, carried = _prepare(Path(backup_file), store_path, key_path)
    try:
        content, outcome = _audit_key_to_install(temp, carried, audit_key_path, audit_key_source, Path(backup_file))
        _mark_restored(temp, float(meta.get("created_at", 0)))
        pending_key = _staged_audit_key(store_path)
        pending_key.unlink(missing_ok=True)
        if content is not None:
            create_key_file(pending_key, content.decode("utf-8"))
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, staged_path(store_path))
    fsync_dir(store_path.parent)
    return RestoreResult(store_path, float(meta.get("created_at", 0)), readings, audit_entries, None, staged=True,
                         audit_key=outcome)


def _staged_audit_key(store_path: Path) -> Path:
    return Path(str(store_path) + ".restore-pending.audit-key")


def staged_path(store_path: Path) -> Path:
    return Path(str(store_path) + ".restore-pending")


def apply_staged_restore(store_path: Path, audit_key_path: Path | None = None) -> Path | None:
    """At start, before the store is opened: swap in a staged restore and its audit key. Returns the
    replaced file's copy."""
    store_path = Path(store_path)
    staged = staged_path(store_path)
    if not staged.exists():
        return None
    previous = _swap_in(staged, store_path) or store_path
    pending_key = _staged_audit_key(store_path)
    if pending_key.exists():
        _install_audit_key(pending_key.read_bytes(), Path(audit_key_path) if audit_key_path
                           else _default_audit_key(store_path))
        pending_key.unlink()
    return previous


__all__ = ["BackupError", "BackupSettings", "RestoreResult", "StoreLock", "create_backup",
           "restore_backup", "check_backup", "stage_restore", "apply_staged_restore", "list_backups", "prune_backups",
           "ensure_backup_key", "load_backup_key", "read_backup_info", "hold_store_lock", "KEY_FILE", "AUDIT_KEY_FILE",
           "RESTORED_META_KEY", "RestoreMarker", "restore_marker"]
