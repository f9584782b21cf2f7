"""Server-side sessions in the gateway's SQLite file: the cookie carries only a random id.

Only a logged-in session has a row. Before login (the login page's CSRF token, the language, a flash
message) the data travels in a cookie signed with the app's secret key, so anonymous requests write
nothing to the store (issue 15: 2,000 GETs of /login wrote 2,000 rows).
Logout deletes the row, so a copied cookie is worthless afterwards; login gets a new id (no session
fixation); a session ends after ``SESSION_IDLE_S`` without a request or ``SESSION_ABSOLUTE_S`` after it
began. Storage lives in the store behind :class:`gateway.runtime.Runtime`; this module only adapts it to Flask.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, request
from flask.sessions import SecureCookieSessionInterface, SessionInterface, SessionMixin
from itsdangerous import BadSignature
from werkzeug.datastructures import CallbackDict

from gateway.runtime import Runtime, Session

COOKIE_NAME = "cg_session"
ANON_COOKIE_NAME = "cg_anon"
#: requests a page makes by itself (the dashboard's refresh every 2 s): they do not show that someone is
#: there, so they never extend the idle timeout; an open dashboard on an unattended phone still logs out
BACKGROUND_ENDPOINTS = frozenset({"dashboard.api_status"})


class ServerSession(CallbackDict, SessionMixin):  # type: ignore[type-arg]
    def __init__(self, initial: dict | None = None, sid: str | None = None, last_seen: float = 0.0,
                 created_at: float = 0.0) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.last_seen = last_seen
        self.created_at = created_at
        self.modified = False
        self.regenerate = False   # login: a new id, the old row deleted
        self.ended = False        # logout: the row deleted, the cookie cleared
        self.stale = False        # the browser sent an id the store no longer has: clear that cookie


def _runtime(app: Flask) -> Runtime | None:
    runtime: Runtime | None = app.extensions.get("gateway_runtime")
    return runtime if runtime is not None and runtime.running else None


class SqliteSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        runtime = _runtime(app)
        sid = request.cookies.get(COOKIE_NAME, "")
        if runtime is not None and sid:
            found = runtime.load_session(sid, app.config["SESSION_IDLE_S"], app.config["SESSION_ABSOLUTE_S"])
            if found is not None:
                return ServerSession(found.data, found.id, found.last_seen, found.created_at)
            data = self._anonymous_data(app, request)
            if request.method == "GET":
                # the id was known to the browser but is gone: say so once on the login page
                data["expired"] = True
            stale = ServerSession(data)
            stale.stale = True
            return stale
        return ServerSession(self._anonymous_data(app, request))

    @staticmethod
    def _signer(app: Flask) -> Any:
        return SecureCookieSessionInterface().get_signing_serializer(app)

    def _anonymous_data(self, app: Flask, request: Request) -> dict[str, Any]:
        cookie = request.cookies.get(ANON_COOKIE_NAME, "")
        signer = self._signer(app)
        if not cookie or signer is None or len(cookie) > 4096:
            return {}
        try:
            data = signer.loads(cookie, max_age=app.config["SESSION_IDLE_S"])
        except BadSignature:       # forged, or signed before the secret changed: start afresh
            return {}
        return data if isinstance(data, dict) and "user" not in data else {}

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        runtime = _runtime(app)
        if runtime is None:
            return
        secure = app.config.get("SESSION_COOKIE_SECURE", False)
        cookie = {"path": "/", "httponly": True, "samesite": "Strict", "secure": secure}
        if session.ended:
            if session.sid:
                runtime.end_session(session.sid)
            response.delete_cookie(COOKIE_NAME, **cookie)
            response.delete_cookie(ANON_COOKIE_NAME, **cookie)
            return
        data = dict(session)
        if not data.get("user"):
            self._save_anonymous(app, session, data, response, runtime, cookie)
            return
        if session.sid is None or session.regenerate:
            if session.sid:
                runtime.end_session(session.sid)
            new = runtime.new_session(data["user"], data)
            response.set_cookie(COOKIE_NAME, new.id, **cookie)
            if request.cookies.get(ANON_COOKIE_NAME):
                response.delete_cookie(ANON_COOKIE_NAME, **cookie)
            return
        if not session.modified and request.endpoint in BACKGROUND_ENDPOINTS:
            return
        stored = Session(session.sid, data.get("user"), data, session.created_at, session.last_seen)
        runtime.save_session(stored, changed=session.modified)

    def _save_anonymous(self, app: Flask, session: ServerSession, data: dict[str, Any], response: Response,
                        runtime: Runtime, cookie: dict[str, Any]) -> None:
        """No row before login: a logged-in row whose user went away is ended, the rest is a signed cookie."""
        if session.sid:
            runtime.end_session(session.sid)
        if session.sid or session.stale:
            response.delete_cookie(COOKIE_NAME, **cookie)
        had_cookie = bool(request.cookies.get(ANON_COOKIE_NAME))
        if not data:
            if had_cookie:
                response.delete_cookie(ANON_COOKIE_NAME, **cookie)
            return
        if session.modified or not had_cookie or session.sid or session.stale:
            signer = self._signer(app)
            if signer is not None:
                response.set_cookie(ANON_COOKIE_NAME, signer.dumps(data), **cookie)
