"""Server-side sessions in the gateway's SQLite file: the cookie carries only a random id.

Logout deletes the row, so a copied cookie is worthless afterwards; login gets a new id (no session
fixation); a session ends after ``SESSION_IDLE_S`` without a request or ``SESSION_ABSOLUTE_S`` after it
began. Storage lives in the store behind :class:`gateway.runtime.Runtime`; this module only adapts it to Flask.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from gateway.runtime import Runtime, Session

COOKIE_NAME = "cg_session"
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
            if request.method == "GET":
                # the id was known to the browser but is gone: say so once on the login page
                return ServerSession({"expired": True})
        return ServerSession()

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        runtime = _runtime(app)
        if runtime is None:
            return
        secure = app.config.get("SESSION_COOKIE_SECURE", False)
        if session.ended:
            if session.sid:
                runtime.end_session(session.sid)
            response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict", secure=secure)
            return
        data = dict(session)
        if session.sid is None or session.regenerate:
            if not data and session.sid is None:
                return        # nothing to keep: no row, no cookie
            if session.sid:
                runtime.end_session(session.sid)
            new = runtime.new_session(data.get("user"), data)
            response.set_cookie(COOKIE_NAME, new.id, path="/", httponly=True, samesite="Strict", secure=secure)
            return
        if not session.modified and request.endpoint in BACKGROUND_ENDPOINTS:
            return
        stored = Session(session.sid, data.get("user"), data, session.created_at, session.last_seen)
        runtime.save_session(stored, changed=session.modified)
