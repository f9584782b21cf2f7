"""The technicians' web UI: a Flask application factory, one blueprint per page group, served by cheroot.

It calls the gateway only through :class:`gateway.runtime.Runtime`, the typed service interface (issue 12).

Blueprints: ``auth`` (first boot, login, logout), ``dashboard`` (live values, /api/status, language),
``health`` (/healthz, /metrics: no login), ``commissioning`` (buses, meters, scan, test-read, config
export/import), ``emissions`` (charts, factors, reports), ``admin`` (cloud and keys, users, audit log,
system, backup).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Flask, g, render_template, request, session
from flask_babel import Babel
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from gateway.runtime import Runtime
from webui import admin, auth, commissioning, dashboard, emissions, health, labels
from webui.server import TlsFiles, WebServer, ensure_self_signed, fingerprint, serve
from webui.sessions import SqliteSessionInterface

log = logging.getLogger(__name__)

LANGUAGES = dashboard.LANGUAGES

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _select_locale() -> str:
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return "zh_Hans_CN" if request.accept_languages.best_match(["en", "zh"]) == "zh" else "en"


def create_app(test_config: dict | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app over ``runtime``, the running gateway's service interface."""
    app = Flask(__name__)
    app.config.update(
        # kept in the store, so CSRF tokens in open forms survive a restart
        SECRET_KEY=runtime.secret("flask_secret_key") if runtime is not None and runtime.running
        else secrets.token_hex(32),
        BABEL_DEFAULT_LOCALE="en",
        SESSION_IDLE_S=30 * 60, SESSION_ABSOLUTE_S=12 * 3600,
        SESSION_COOKIE_SECURE=False,          # set by serve(..., tls=...) for HTTPS
        WTF_CSRF_TIME_LIMIT=None,             # bound by the session's own timeouts instead
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,  # restore uploads; everything else is small
        SCAN_TIMEOUT_S=120.0,
        STATUS_CACHE_S=1.0,                   # dashboard snapshot shared by all clients (webui/dashboard.py)
    )
    if test_config:
        app.config.update(test_config)
    app.session_interface = SqliteSessionInterface()
    Babel(app, locale_selector=_select_locale)
    CSRFProtect(app)
    app.extensions["gateway_runtime"] = runtime
    for module in (auth, dashboard, commissioning, emissions, admin, health):  # health: /healthz, /metrics
        app.register_blueprint(module.bp)
    app.before_request(auth.load_user)

    app.add_template_filter(labels.activity_label, "activity")
    app.add_template_filter(labels.transport_label, "transport")
    app.add_template_filter(labels.part_label, "config_part")

    @app.template_filter("utc")
    def utc(ts: float | None) -> str:
        return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))

    @app.context_processor
    def helpers() -> dict:
        return {"can": auth.can, "lang": _select_locale(), "user": g.get("user")}

    @app.after_request
    def security_headers(response):  # type: ignore[no-untyped-def]
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"   # CSRF checks need the Referer on HTTPS
        response.headers["Cache-Control"] = response.headers.get("Cache-Control", "no-store")
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(error):  # type: ignore[no-untyped-def]
        return render_template("error.html", message=_("The form has expired. Reload the page and try again.")), 400

    @app.errorhandler(HTTPException)
    def http_error(error):  # type: ignore[no-untyped-def]
        messages = {
            400: _("The request was not understood."),
            403: _("Your role does not allow this page."),
            404: _("Page not found."),
            405: _("This address does not accept that method."),
            413: _("The upload is too large."),
            503: _("The gateway is not running."),
        }
        message = messages.get(error.code or 500, _("The request was not understood."))
        return render_template("error.html", message=message), error.code

    @app.errorhandler(Exception)
    def unexpected(error):  # type: ignore[no-untyped-def]
        # A bug must not show a traceback; it is logged and the user gets a page that says so.
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return render_template("error.html", message=_("Something went wrong; the details are in the log.")), 500

    return app


def tls_files(runtime: Runtime) -> TlsFiles | None:
    """The certificate to serve with, made self-signed on first boot unless the config names one."""
    web, data_dir = runtime.config.web, runtime.config.data_dir
    if not web.tls:
        return None
    if web.cert_file is not None and web.key_file is not None:    # the config requires both or neither
        return TlsFiles(web.cert_file, web.key_file)
    files = TlsFiles(data_dir / "web" / "cert.pem", data_dir / "web" / "key.pem")
    if ensure_self_signed(files.cert_file, files.key_file, web.host):
        log.warning("made a self-signed HTTPS certificate %s (SHA-256 %s); install your own with "
                    "web.cert_file and web.key_file", files.cert_file, fingerprint(files.cert_file))
    return files


def serve_gateway(runtime: Runtime) -> tuple[WebServer, str]:
    """The daemon's web server, bound: HTTPS unless the UI listens on loopback only. Returns (server, url).

    The CLI hands this to the daemon (``Gateway.web_factory``); the daemon never imports the web UI."""
    web = runtime.config.web
    tls = tls_files(runtime)
    app = create_app({"SESSION_COOKIE_SECURE": tls is not None}, runtime=runtime)
    server = serve(app, web.host, web.port, tls=tls)
    return server, f"{'https' if tls else 'http'}://{web.host}:{web.port}"


__all__ = ["create_app", "serve", "serve_gateway", "tls_files", "LANGUAGES"]
