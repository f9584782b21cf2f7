"""The technicians' web UI: a Flask application factory served by waitress."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, abort, jsonify, render_template, request, session, redirect, url_for
from flask_babel import Babel, gettext as _
from waitress import create_server

LANGUAGES = ("en", "zh_Hans_CN")


def _select_locale() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(["en", "zh"]) == "zh" and "zh_Hans_CN" or "en"


def _status(runtime: Any) -> dict:
    """Everything the dashboard shows, as JSON-able data."""
    now = time.time()
    meters = []
    for m in runtime.meter_status():
        meters.append({
            "id": m.meter_id, "bus": m.bus, "device_id": m.device_id, "profile": m.profile,
            "state": m.stats.state, "error": m.stats.last_error,
            "requests": m.stats.requests, "timeouts": m.stats.timeouts, "exceptions": m.stats.exceptions,
            "points": [{**v, "age_s": round(now - v["timestamp"], 1)} for v in m.values],
        })
    sync = runtime.sync_status()
    summary = runtime.emissions_summary()
    return {
        "meters": meters,
        "sync": None if sync is None else {
            "connected": sync.connected, "backlog_batches": sync.backlog_batches,
            "backlog_readings": sync.backlog_readings, "last_ack_at": sync.last_ack_at, "last_error": sync.last_error},
        "emissions": None if summary is None else {
            "today_tco2e": summary.today.total_t, "today_scope1": summary.today.scope_1_t,
            "today_scope2": summary.today.scope_2_t, "month_tco2e": summary.month.total_t},
    }


def create_app(test_config: dict | None = None, runtime: Any = None) -> Flask:
    """Build the app; ``runtime`` is the running gateway (see ``gateway.daemon.Gateway``)."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=__import__("secrets").token_hex(32), SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", BABEL_DEFAULT_LOCALE="en")
    if test_config:
        app.config.update(test_config)
    Babel(app, locale_selector=_select_locale)
    app.extensions["gateway_runtime"] = runtime
    from webui.health import bp as health_bp   # /healthz, /metrics (issue 7)
    app.register_blueprint(health_bp)

    @app.after_request
    def security_headers(response):  # type: ignore[no-untyped-def]
        response.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                                       "img-src 'self' data:; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/")
    def dashboard():  # type: ignore[no-untyped-def]
        if runtime is None:
            abort(503)
        return render_template("dashboard.html", status=_status(runtime), lang=_select_locale())

    @app.get("/api/status")
    def api_status():  # type: ignore[no-untyped-def]
        if runtime is None:
            abort(503)
        return jsonify(_status(runtime))

    @app.get("/lang/<code>")
    def set_language(code: str):  # type: ignore[no-untyped-def]
        if code in LANGUAGES:
            session["lang"] = code
        return redirect(url_for("dashboard"))

    @app.errorhandler(404)
    def not_found(error):  # type: ignore[no-untyped-def]
        return render_template("error.html", message=_("Page not found.")), 404

    @app.errorhandler(503)
    def unavailable(error):  # type: ignore[no-untyped-def]
        return render_template("error.html", message=_("The gateway is not running.")), 503

    return app


def serve(app: Flask, host: str, port: int) -> Any:
    """A waitress server bound now; call ``.run()`` in a thread and ``.close()`` to stop it."""
    return create_server(app, host=host, port=port, threads=4, ident="carbon-gateway")


__all__ = ["create_app", "serve"]
