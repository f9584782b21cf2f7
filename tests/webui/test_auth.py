"""First boot, login, lock-out, sessions, CSRF, roles: the Flask test client against a running gateway."""

from __future__ import annotations

import html
import time

from local_store import audit, users
from tests.webui.conftest import PASSWORDS, add_users, csrf_token, login, post, set_up_admin
from gateway.runtime import Runtime
from webui import create_app
from webui.auth import is_public
from webui.sessions import ANON_COOKIE_NAME, COOKIE_NAME


def _cookie(client) -> str:  # type: ignore[no-untyped-def]
    cookie = client.get_cookie(COOKIE_NAME)
    return cookie.value if cookie else ""


def test_first_boot_asks_for_the_admin_password_and_no_default_exists(client, gateway) -> None:
    assert client.get("/").location == "/setup"
    assert client.get("/login").location == "/setup"
    page = post(client, "/setup", {"name": "admin", "password": "short", "confirm": "short"})
    assert page.status_code == 400
    assert "Use 10 to 256 characters." in page.get_data(as_text=True)
    page = post(client, "/setup", {"name": "admin", "password": "long-enough-1", "confirm": "long-enough-2"})
    assert "The two passwords differ." in page.get_data(as_text=True)
    page = post(client, "/setup", {"name": "bad name!", "password": "long-enough-1", "confirm": "long-enough-1"})
    assert "Use 1-32 letters, digits, '-', '_' or '.'." in html.unescape(page.get_data(as_text=True))
    assert not users.has_users(gateway.store.db)
    set_up_admin(client)
    assert client.get("/").status_code == 200
    row = gateway.store.db.execute("SELECT password_hash, role FROM web_users WHERE name = 'admin'").fetchone()
    assert row[0].startswith("scrypt:") and row[1] == "admin"
    # first boot cannot be replayed once an admin exists
    other = create_app({"TESTING": True}, runtime=Runtime(gateway)).test_client()
    assert other.get("/setup").location == "/login"
    assert [e.action for e in audit.entries(gateway.store.db)] == ["user.setup"]


def test_login_logout_and_a_new_session_id_at_login(app, gateway) -> None:
    set_up_admin(app.test_client())
    client = app.test_client()
    csrf_token(client)
    # before login the CSRF token lives in a signed cookie; the server has no session for it (issue 15)
    before = _cookie(client)
    assert before == "" and client.get_cookie(ANON_COOKIE_NAME) is not None
    page = post(client, "/login", {"name": "admin", "password": "wrong-password"})
    assert page.status_code == 401 and "Wrong user name or password." in page.get_data(as_text=True)
    login(client, "admin")
    after = _cookie(client)
    assert after and after != before, "login must issue a new session id"
    assert client.get("/").status_code == 200
    assert post(client, "/logout", form_url="/").location == "/login"
    assert client.get("/").location.startswith("/login")
    # the old cookie is dead on the server, not just forgotten by the browser
    thief = app.test_client()
    thief.set_cookie(COOKIE_NAME, after)
    assert thief.get("/").location.startswith("/login")
    actions = [e.action for e in audit.entries(gateway.store.db)]
    assert actions[:3] == ["logout", "login.ok", "login.failed"]
    # only the hash of the id is stored
    assert gateway.store.db.execute("SELECT COUNT(*) FROM web_sessions WHERE id_hash = ?", (after,)).fetchone()[0] == 0


def test_failed_logins_are_delayed_progressively(app, gateway) -> None:
    set_up_admin(app.test_client())
    client = app.test_client()
    for _ in range(3):
        page = post(client, "/login", {"name": "admin", "password": "wrong-password"})
        assert "Wrong user name or password." in page.get_data(as_text=True)
    page = post(client, "/login", {"name": "admin", "password": PASSWORDS["admin"]})
    assert "Too many failed logins: try again in 1 s." in page.get_data(as_text=True)
    assert users.lock_wait_s(4) == 2 and users.lock_wait_s(20) == users.MAX_LOCK_S
    time.sleep(1.1)
    login(client, "admin")
    # unknown names are throttled the same way: the delay does not tell which names exist
    for _ in range(4):
        page = post(client, "/login", {"name": "nobody", "password": "x"})
    assert "Too many failed logins" in page.get_data(as_text=True)


def test_one_password_tried_against_many_names_is_slowed_per_address(app, gateway) -> None:
    set_up_admin(app.test_client())
    sprayer = app.test_client()
    for i in range(users.ADDRESS_FREE_FAILURES):        # every name fails once only: no name is throttled
        page = post(sprayer, "/login", {"name": f"guess{i}", "password": "Winter2026!"})
        assert "Wrong user name or password." in page.get_data(as_text=True)
    page = post(sprayer, "/login", {"name": "admin", "password": PASSWORDS["admin"]})
    assert "Too many failed logins: try again in 1 s." in page.get_data(as_text=True)
    # the same account from another address is not locked out by the sprayer
    colleague = app.test_client()
    response = post(colleague, "/login", {"name": "admin", "password": PASSWORDS["admin"]},
                    environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert response.status_code == 302


def test_idle_and_absolute_timeouts_end_the_session(gateway) -> None:
    app = create_app({"TESTING": True, "SESSION_IDLE_S": 0.5}, runtime=Runtime(gateway))
    client = app.test_client()
    set_up_admin(client)
    assert client.get("/").status_code == 200
    time.sleep(0.7)
    assert client.get("/").location.startswith("/login")
    assert "Your session has ended. Please log in again." in client.get("/login").get_data(as_text=True)
    other = app.test_client()
    login(other, "admin")          # a second session, left idle
    time.sleep(0.7)
    login(client, "admin")
    # the login deleted the idle one without anyone visiting it: only the new session is left
    assert gateway.store.db.execute("SELECT COUNT(*) FROM web_sessions WHERE user = 'admin'").fetchone()[0] == 1
    app = create_app({"TESTING": True, "SESSION_ABSOLUTE_S": 1.0}, runtime=Runtime(gateway))
    client = app.test_client()
    login(client, "admin")
    for _ in range(3):
        assert client.get("/api/status").status_code == 200
        time.sleep(0.2)
    time.sleep(0.6)
    assert client.get("/api/status").status_code == 401


def test_cookie_flags_csrf_and_security_headers(client) -> None:
    set_up_admin(client)
    response = client.get("/login")
    response = client.post("/logout")       # no CSRF token
    assert response.status_code == 400
    assert "The form has expired. Reload the page and try again." in response.get_data(as_text=True)
    assert client.get("/").status_code == 200, "a refused POST does nothing"
    fresh = client.application.test_client()
    response = post(fresh, "/login", {"name": "admin", "password": PASSWORDS["admin"]})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    headers = client.get("/").headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    secure = create_app({"TESTING": True, "SESSION_COOKIE_SECURE": True}, runtime=client.application.extensions[
        "gateway_runtime"]).test_client()
    assert "Secure" in post(secure, "/login", {"name": "admin", "password": PASSWORDS["admin"]}).headers["Set-Cookie"]


def test_health_and_metrics_need_no_login(client) -> None:
    """/healthz and /metrics (``webui/health.py``) are read by supervisors and Prometheus, which cannot log in."""
    assert client.get("/healthz").status_code in (200, 503)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.get_data(as_text=True)
    assert create_app({"TESTING": True}).test_client().get("/healthz").status_code == 503


def test_every_view_is_public_or_needs_a_permission(app) -> None:
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        assert is_public(rule.endpoint) or hasattr(view, "permission"), rule.rule


# (url, method, who may) for every route; POSTs carry a valid CSRF token and an empty form
ROUTES = [
    ("/", "GET", "admin tech viewer"), ("/api/status", "GET", "admin tech viewer"),
    ("/buses", "GET", "admin tech viewer"), ("/meters", "GET", "admin tech viewer"),
    ("/emissions", "GET", "admin tech viewer"), ("/factors", "GET", "admin tech viewer"),
    ("/reports", "GET", "admin tech viewer"), ("/system", "GET", "admin tech viewer"),
    ("/account/password", "GET", "admin tech viewer"),
    ("/buses/new", "GET", "admin tech"), ("/buses/demo-bus/edit", "GET", "admin tech"),
    ("/meters/new", "GET", "admin tech"), ("/meters/main-incomer/edit", "GET", "admin tech"),
    ("/test-read", "GET", "admin tech"), ("/scan", "GET", "admin tech"), ("/config/export", "GET", "admin tech"),
    ("/audit", "GET", "admin tech"),
    ("/config/import", "GET", "admin"), ("/cloud", "GET", "admin"), ("/users", "GET", "admin"),
    ("/backup", "GET", "admin"), ("/backup/files/nobody", "GET", "admin"),
    ("/backup/now", "POST", "admin"), ("/backup/restore", "POST", "admin"),
    ("/upgrade", "GET", "admin"), ("/upgrade", "POST", "admin"),
    ("/buses/new", "POST", "admin tech"), ("/buses/demo-bus/edit", "POST", "admin tech"),
    ("/buses/demo-bus/delete", "POST", "admin tech"), ("/meters/new", "POST", "admin tech"),
    ("/meters/main-incomer/edit", "POST", "admin tech"), ("/meters/boiler-gas/delete", "POST", "admin tech"),
    ("/test-read", "POST", "admin tech"), ("/scan", "POST", "admin tech"),
    ("/trace", "GET", "admin tech viewer"), ("/factors/instruments", "POST", "admin"),
    ("/factors/choice", "POST", "admin"), ("/factors/custom", "POST", "admin"), ("/config/import", "POST", "admin"),
    ("/config/import/confirm", "POST", "admin"),
    ("/cloud", "POST", "admin"), ("/cloud/test", "POST", "admin"), ("/cloud/key", "POST", "admin"), ("/users", "POST", "admin"), ("/users/viewer/role", "POST", "admin"),
    ("/users/viewer/password", "POST", "admin"), ("/users/nobody/delete", "POST", "admin"),
    ("/account/password", "POST", "admin tech viewer"),
]


def test_every_route_for_every_role(app) -> None:
    admin = app.test_client()
    set_up_admin(admin)
    add_users(admin)
    clients = {"admin": admin}
    for name in ("tech", "viewer"):
        clients[name] = app.test_client()
        login(clients[name], name)
    anonymous = app.test_client()
    for url, method, allowed in ROUTES:
        for name, client in clients.items():
            if method == "GET":
                response = client.get(url)
            else:
                response = client.post(url, data={"csrf_token": csrf_token(client, "/")})
            expected_ok = name in allowed.split()
            assert (response.status_code != 403) == expected_ok, (name, method, url, response.status_code)
            assert response.status_code < 500, (name, method, url)
        response = anonymous.get(url) if method == "GET" else anonymous.post(url)
        assert response.status_code in (302, 400, 401), (method, url)  # login first (POST: CSRF first)
    assert "/scan" in {u for u, _, _ in ROUTES}
    covered = {(u, m) for u, m, _ in ROUTES}
    for rule in app.url_map.iter_rules():
        if is_public(rule.endpoint) or "<job_id>" in rule.rule or rule.rule == "/logout":  # logout: above
            continue
        methods = rule.methods & {"GET", "POST"}
        shown = {(rule.rule.replace("<name>", n).replace("<meter_id>", n), m)
                 for m in methods for n in ("demo-bus", "main-incomer", "boiler-gas", "viewer", "nobody")}
        assert shown & covered, f"no role test for {rule.rule}"


def test_the_dashboards_own_refresh_does_not_keep_a_session_alive(gateway) -> None:
    """/api/status is polled by the page every 2 s: only what a person does counts against the idle timeout."""
    client = create_app({"TESTING": True}, runtime=Runtime(gateway)).test_client()
    set_up_admin(client)
    db = gateway.store.db

    def last_seen() -> float:
        return db.execute("SELECT last_seen FROM web_sessions WHERE user = 'admin'").fetchone()[0]

    with db.conn:
        db.execute("UPDATE web_sessions SET last_seen = last_seen - 120")   # older than the 30-s touch interval
    before = last_seen()
    assert client.get("/api/status").status_code == 200
    assert last_seen() == before
    assert client.get("/").status_code == 200
    assert last_seen() > before + 100
