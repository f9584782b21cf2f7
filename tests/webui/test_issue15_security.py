"""Issue 15's security holes, reproduced against a running gateway and shown closed.

- parallel wrong passwords were checked 24 times out of 25 (the failure count was read before the hash
  and written after it); now they are throttled exactly as the same attempts made one after another;
- every anonymous GET wrote a session row; now only a login does;
- ``next=/%09/host`` came back as ``Location: //host`` and ``next=/%0A/...`` answered 500;
- scrypt (32 MiB each) ran for every concurrent login, without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from local_store import users
from tests.webui.conftest import PASSWORDS, csrf_token, post, set_up_admin


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap the real scrypt check: how many ran, and the most at once."""
    seen = {"calls": 0, "running": 0, "most": 0}
    lock = threading.Lock()
    real: Callable[[str, str], bool] = users.check_password_hash

    def counted(stored: str, password: str) -> bool:
        with lock:
            seen["calls"] += 1
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            return real(stored, password)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(users, "check_password_hash", counted)
    return seen


def _outcome(db, name: str, password: str, now: float) -> str:  # type: ignore[no-untyped-def]
    try:
        users.authenticate(db, name, password, now=now)
    except users.UserError as exc:
        return exc.code
    return "ok"


def test_parallel_wrong_passwords_are_throttled_like_serial_ones(gateway, monkeypatch) -> None:
    db = gateway.store.db
    users.add_user(db, "serial", "serial-pass-123", "admin")
    users.add_user(db, "parallel", "parallel-pass-12", "admin")
    now = 1_900_000_000.0      # one instant for every attempt, so no lock runs out in between
    serial = [_outcome(db, "serial", "wrong-password", now) for _ in range(25)]
    # 3 free attempts (FREE_FAILURES), then the lock of 2**0 = 1 s holds every later attempt at `now`
    assert serial == ["bad_login"] * users.FREE_FAILURES + ["locked"] * (25 - users.FREE_FAILURES)

    hashes = _count_hashes(monkeypatch)
    store = gateway.store

    def attempt(_: int) -> str:
        return _outcome(store.db, "parallel", "wrong-password", now)   # each worker thread: its own connection

    with ThreadPoolExecutor(max_workers=25) as pool:
        parallel = sorted(pool.map(attempt, range(25)))
    assert parallel.count("bad_login") == users.FREE_FAILURES, parallel
    assert parallel.count("locked") == 25 - users.FREE_FAILURES
    assert hashes["calls"] == users.FREE_FAILURES
    # the right password is refused while locked, and accepted once the lock has run out
    assert _outcome(db, "parallel", "parallel-pass-12", now) == "locked"
    assert _outcome(db, "parallel", "parallel-pass-12", now + 2.0) == "ok"


def test_parallel_wrong_passwords_through_the_login_form(app, monkeypatch) -> None:
    set_up_admin(app.test_client())
    hashes = _count_hashes(monkeypatch)

    def attempt(_: int) -> int:
        client = app.test_client()
        page = post(client, "/login", {"name": "admin", "password": "wrong-password"})
        return page.status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        statuses = list(pool.map(attempt, range(25)))
    assert all(status in (401, 200) for status in statuses), statuses
    # Serially the 4th attempt comes within the 1 s lock; in parallel no attempt can slip between a read and
    # a write of the count. Only if the machine needed over 1 s per hash could a 4th or 5th run, as serially.
    assert users.FREE_FAILURES <= hashes["calls"] <= users.FREE_FAILURES + 2, hashes
    assert hashes["most"] <= users.MAX_PARALLEL_HASHES


def test_concurrent_logins_hash_at_most_two_at_a_time(gateway, monkeypatch) -> None:
    db = gateway.store.db
    for i in range(8):
        users.add_user(db, f"user{i}", f"password-{i:04d}", "viewer")
    hashes = _count_hashes(monkeypatch)
    store = gateway.store
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda i: _outcome(store.db, f"user{i}", f"password-{i:04d}", 1e9), range(8)))
    assert outcomes == ["ok"] * 8
    assert hashes["calls"] == 8 and 1 <= hashes["most"] <= users.MAX_PARALLEL_HASHES


def test_anonymous_requests_write_no_session_rows(app, gateway) -> None:
    set_up_admin(app.test_client())
    db = gateway.store.db
    rows_before = db.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0]
    for _ in range(2000):
        assert app.test_client().get("/login").status_code == 200
    assert db.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0] == rows_before
    # the login form still works from that state, and only the login makes a row
    client = app.test_client()
    assert post(client, "/login", {"name": "admin", "password": PASSWORDS["admin"]}).status_code == 302
    assert db.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0] == rows_before + 1


def test_a_forged_anonymous_cookie_is_ignored(app) -> None:
    set_up_admin(app.test_client())
    client = app.test_client()
    client.set_cookie("cg_anon", "eyJ1c2VyIjoiYWRtaW4ifQ.forged.signature")
    assert client.get("/").location.startswith("/login")
    csrf_token(client)     # a fresh token is issued; the forged cookie gave nothing


@pytest.mark.parametrize("target", ["/%09/evil.example", "/%0A/evil.example", "//evil.example",
                                    "/%5C/evil.example", "https://evil.example/", "/%0D%0ASet-Cookie:x=1"])
def test_next_must_be_a_same_site_path(app, target: str) -> None:
    set_up_admin(app.test_client())
    client = app.test_client()
    page = post(client, f"/login?next={target}", {"name": "admin", "password": PASSWORDS["admin"]},
                form_url="/login")
    assert page.status_code == 302
    assert page.headers["Location"] == "/"


def test_a_same_site_next_is_kept(app) -> None:
    set_up_admin(app.test_client())
    client = app.test_client()
    page = post(client, "/login?next=/meters%3Fx%3D1", {"name": "admin", "password": PASSWORDS["admin"]},
                form_url="/login")
    assert page.headers["Location"] == "/meters?x=1"


def test_ids_are_shown_as_words_in_the_users_language(admin) -> None:
    """Issue 15: zh-CN showed raw activity ids (``natural_gas``) on the meter list, factors and reports."""
    admin.get("/lang/zh_Hans_CN")
    meters = admin.get("/meters").get_data(as_text=True)
    assert "天然气" in meters and ">natural_gas<" not in meters
    buses = admin.get("/buses").get_data(as_text=True)
    assert ">tcp<" not in buses
    factors = admin.get("/factors").get_data(as_text=True)
    assert ">natural_gas<" not in factors and "天然气" in factors
