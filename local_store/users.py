"""Web UI accounts, server-side sessions and login throttling, in the gateway's SQLite file.

No default account exists: the first user is created by the first-boot form (:func:`create_first_admin`).
Passwords are hashed with scrypt (werkzeug). A session row holds only a SHA-256 of the random id the
browser keeps in its cookie, so a copy of the database cannot be used to take over a session.
Failed logins are counted per user name, known or not (a stranger learns nothing from the delay):
after :data:`FREE_FAILURES` failures every further attempt waits twice as long, up to
:data:`MAX_LOCK_S`. They are also counted per client address, more leniently
(:data:`ADDRESS_FREE_FAILURES`, since technicians may share one), so trying one password against many
names is slowed too. Callers write the audit entry for each change inside the same transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Literal

import sqlite_utils
from werkzeug.security import check_password_hash, generate_password_hash

from local_store.db import write_transaction
from local_store.errors import StoreError

Role = Literal["admin", "technician", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "technician", "viewer")
MIN_PASSWORD_LENGTH = 10
FREE_FAILURES = 3          # attempts before delays start, per user name
ADDRESS_FREE_FAILURES = 10  # ... per client address (password spraying across names)
MAX_LOCK_S = 900.0         # the longest wait between attempts (15 min)
_DUMMY_HASH = generate_password_hash("not a password", method="scrypt")
#: scrypt needs 32 MiB per check: two at a time bounds a burst of logins on a Raspberry Pi to 64 MiB
MAX_PARALLEL_HASHES = 2
HASH_QUEUE_WAIT_S = 10.0
_hash_slots = threading.BoundedSemaphore(MAX_PARALLEL_HASHES)


class UserError(StoreError):
    """A user change or login was refused; ``code`` says why, for translated messages."""

    def __init__(self, code: str, message: str, wait_s: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.wait_s = wait_s


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: float
    password_changed_at: float


@dataclass(frozen=True)
class Session:
    id: str                    # the cookie value (only its hash is stored)
    user: str | None
    data: dict[str, Any]
    created_at: float
    last_seen: float


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], row[3])


def check_name(name: str) -> str:
    name = name.strip()
    if not (1 <= len(name) <= 32) or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError("bad_name", f"user name {name!r}: use 1-32 letters, digits, '-', '_' or '.'")
    return name


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError("short_password", f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 256:
        raise UserError("long_password", "the password may have at most 256 characters")


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError("bad_role", f"role {role!r}: use one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def has_users(db: sqlite_utils.Database) -> bool:
    return db.execute("SELECT 1 FROM web_users LIMIT 1").fetchone() is not None


def list_users(db: sqlite_utils.Database) -> list[User]:
    return [_user(r) for r in db.execute(
        "SELECT name, role, created_at, password_changed_at FROM web_users ORDER BY name")]


def get_user(db: sqlite_utils.Database, name: str) -> User | None:
    row = db.execute("SELECT name, role, created_at, password_changed_at FROM web_users WHERE name = ?",
                     (name,)).fetchone()
    return _user(row) if row else None


def add_user(db: sqlite_utils.Database, name: str, password: str, role: str, now: float | None = None) -> User:
    """Create an account. :raises UserError: bad name, short password, unknown role or name taken."""
    name = check_name(name)
    check_password(password)
    role = _check_role(role)
    now = time.time() if now is None else now
    with _hash_slot():
        hashed = generate_password_hash(password, method="scrypt")
    with write_transaction(db):
        if get_user(db, name) is not None:
            raise UserError("name_taken", f"user name {name!r} is taken: choose another")
        db.execute("INSERT INTO web_users (name, password_hash, role, created_at, password_changed_at)"
                   " VALUES (?,?,?,?,?)", (name, hashed, role, now, now))
    return User(name, role, now, now)


def create_first_admin(db: sqlite_utils.Database, name: str, password: str) -> User:
    """The first-boot account; refused once any account exists (the form cannot be replayed)."""
    with write_transaction(db):
        if has_users(db):
            raise UserError("already_set_up", "the gateway already has an administrator: log in instead")
        return add_user(db, name, password, "admin")


def _admins(db: sqlite_utils.Database) -> int:
    return int(db.execute("SELECT COUNT(*) FROM web_users WHERE role = 'admin'").fetchone()[0])


def set_role(db: sqlite_utils.Database, name: str, role: str) -> None:
    role = _check_role(role)
    with write_transaction(db):
        user = get_user(db, name)
        if user is None:
            raise UserError("no_such_user", f"no user {name!r}")
        if user.role == "admin" and role != "admin" and _admins(db) == 1:
            raise UserError("last_admin", "the last administrator cannot lose the admin role: make another admin first")
        db.execute("UPDATE web_users SET role = ? WHERE name = ?", (role, name))


def set_password(db: sqlite_utils.Database, name: str, password: str, now: float | None = None) -> None:
    """New password; every session of that user ends (a stolen session dies with the old password)."""
    check_password(password)
    now = time.time() if now is None else now
    with _hash_slot():
        hashed = generate_password_hash(password, method="scrypt")
    with write_transaction(db):
        if get_user(db, name) is None:
            raise UserError("no_such_user", f"no user {name!r}")
        db.execute("UPDATE web_users SET password_hash = ?, password_changed_at = ? WHERE name = ?",
                   (hashed, now, name))
        db.execute("DELETE FROM web_sessions WHERE user = ?", (name,))


def delete_user(db: sqlite_utils.Database, name: str) -> None:
    with write_transaction(db):
        user = get_user(db, name)
        if user is None:
            raise UserError("no_such_user", f"no user {name!r}")
        if user.role == "admin" and _admins(db) == 1:
            raise UserError("last_admin", "the last administrator cannot be deleted: make another admin first")
        db.execute("DELETE FROM web_users WHERE name = ?", (name,))
        db.execute("DELETE FROM web_sessions WHERE user = ?", (name,))


def lock_wait_s(failures: int, free: int = FREE_FAILURES) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: 0, 0, 0, 1, 2, 4, ... 900."""
    return 0.0 if failures < free else min(MAX_LOCK_S, 2.0 ** (failures - free))


@contextlib.contextmanager
def _hash_slot() -> Iterator[None]:
    """scrypt takes 32 MiB and most of a core: at most :data:`MAX_PARALLEL_HASHES` run at once.

    :raises UserError: ``busy`` when no slot frees up within :data:`HASH_QUEUE_WAIT_S`.
    """
    if not _hash_slots.acquire(timeout=HASH_QUEUE_WAIT_S):
        raise UserError("busy", "the gateway is busy checking other logins: try again in a few seconds", 5.0)
    try:
        yield
    finally:
        _hash_slots.release()


def _lock_wait(db: sqlite_utils.Database, counters: dict[str, int], now: float) -> tuple[float, dict[str, Any]]:
    rows = {key: db.execute("SELECT failures, locked_until FROM web_login_failures WHERE name = ?",
                            (key,)).fetchone() for key in counters}
    return max((row[1] - now for row in rows.values() if row is not None), default=0.0), rows


def authenticate(db: sqlite_utils.Database, name: str, password: str, now: float | None = None,
                 client: str | None = None) -> User:
    """Check a login. :raises UserError: ``locked`` (with ``wait_s``), ``busy`` or ``bad_login``.

    The attempt is counted as a failure *before* the hash is checked, in the transaction that reads the
    counters, and cleared on success: parallel guesses see each other and are throttled exactly as the
    same guesses made one after another (issue 15).

    :param client: the client's address, counted as well (its key starts with "@", which no user name has).
    """
    fixed_now = now
    counters = {name.strip().lower()[:64]: FREE_FAILURES}
    if client:
        counters["@" + client[:64]] = ADDRESS_FREE_FAILURES

    def refuse_if_locked(wait_s: float) -> None:
        if wait_s > 0:
            raise UserError("locked", f"too many failed logins: try again in {wait_s:.0f} s", wait_s)

    # a locked account is refused at once, without queueing for a hash slot
    refuse_if_locked(_lock_wait(db, counters, time.time() if fixed_now is None else fixed_now)[0])
    with _hash_slot():
        now = time.time() if fixed_now is None else fixed_now
        with write_transaction(db):
            wait_s, rows = _lock_wait(db, counters, now)
            refuse_if_locked(wait_s)
            for key, free in counters.items():
                failures = (rows[key][0] if rows[key] else 0) + 1
                db.execute("INSERT INTO web_login_failures (name, failures, locked_until) VALUES (?,?,?)"
                           " ON CONFLICT (name) DO UPDATE SET failures = excluded.failures,"
                           " locked_until = excluded.locked_until", (key, failures, now + lock_wait_s(failures, free)))
        found = db.execute("SELECT password_hash FROM web_users WHERE name = ?", (name.strip(),)).fetchone()
        # Hash even for unknown names, so the reply time does not tell which names exist.
        ok = check_password_hash(found[0] if found else _DUMMY_HASH, password) and found is not None
    if not ok:
        raise UserError("bad_login", "wrong user name or password")
    with write_transaction(db):
        for key in counters:
            db.execute("DELETE FROM web_login_failures WHERE name = ?", (key,))
    user = get_user(db, name.strip())
    assert user is not None
    return user


# -- sessions ----------------------------------------------------------------------------------------------
def _hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def new_session(db: sqlite_utils.Database, user: str | None, data: dict[str, Any] | None = None,
                now: float | None = None) -> Session:
    now = time.time() if now is None else now
    session = Session(secrets.token_urlsafe(32), user, dict(data or {}), now, now)
    with write_transaction(db):
        db.execute("INSERT INTO web_sessions (id_hash, user, data, created_at, last_seen) VALUES (?,?,?,?,?)",
                   (_hash_id(session.id), user, json.dumps(session.data), now, now))
    return session


def load_session(db: sqlite_utils.Database, session_id: str, idle_s: float, absolute_s: float,
                 now: float | None = None) -> Session | None:
    """The live session with this id, or None (unknown, idle too long, or too old: then it is deleted)."""
    now = time.time() if now is None else now
    if not session_id or len(session_id) > 100:
        return None
    key = _hash_id(session_id)
    row = db.execute("SELECT user, data, created_at, last_seen FROM web_sessions WHERE id_hash = ?", (key,)).fetchone()
    if row is None:
        return None
    if now - row[3] > idle_s or now - row[2] > absolute_s:
        end_session(db, session_id)
        return None
    return Session(session_id, row[0], json.loads(row[1]), row[2], row[3])


def save_session(db: sqlite_utils.Database, session: Session, touch_every_s: float = 30.0,
                 now: float | None = None, changed: bool = True) -> None:
    """Write the session's data; ``last_seen`` is refreshed at most every ``touch_every_s`` when unchanged."""
    now = time.time() if now is None else now
    if not changed and now - session.last_seen < touch_every_s:
        return
    with write_transaction(db):
        db.execute("UPDATE web_sessions SET data = ?, last_seen = ? WHERE id_hash = ?",
                   (json.dumps(session.data), now, _hash_id(session.id)))


def end_session(db: sqlite_utils.Database, session_id: str) -> None:
    with write_transaction(db):
        db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (_hash_id(session_id),))


def purge_sessions(db: sqlite_utils.Database, idle_s: float, absolute_s: float, now: float | None = None) -> int:
    """Delete expired sessions; returns how many."""
    now = time.time() if now is None else now
    with write_transaction(db):
        return db.execute("DELETE FROM web_sessions WHERE last_seen < ? OR created_at < ?",
                          (now - idle_s, now - absolute_s)).rowcount


def setting(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM web_settings WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def secret(db: sqlite_utils.Database, key: str) -> str:
    """A random secret made once and kept (e.g. the key that signs CSRF tokens)."""
    with write_transaction(db):
        value = setting(db, key)
        if value is None:
            value = secrets.token_hex(32)
            db.execute("INSERT INTO web_settings (key, value) VALUES (?, ?)", (key, value))
    return value
