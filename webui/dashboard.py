"""The dashboard: live value per meter with its age, bus health, sync backlog, today's emissions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, session, url_for
from flask_babel import get_locale
from markupsafe import Markup

from gateway.runtime import Runtime
from webui.auth import requires, runtime

bp = Blueprint("dashboard", __name__)

LANGUAGES = ("en", "zh_Hans_CN")


def status(rt: Runtime) -> dict:
    """Everything the dashboard shows, as JSON-able data."""
    now = time.time()
    meters: list[dict] = []
    buses: dict[str, dict] = {}
    for m in rt.meter_status():
        meters.append({
            "id": m.meter_id, "bus": m.bus, "device_id": m.device_id, "profile": m.profile,
            "state": m.stats.state, "error": m.stats.last_error, "warning": m.warning,
            "requests": m.stats.requests, "timeouts": m.stats.timeouts, "exceptions": m.stats.exceptions,
            "points": [{**v, "age_s": round(now - v["timestamp"], 1)} for v in m.values],
        })
        bus = buses.setdefault(m.bus, {"name": m.bus, "meters": 0, "answering": 0, "requests": 0, "timeouts": 0,
                                       "exceptions": 0})
        bus["meters"] += 1
        bus["answering"] += m.stats.state == "ok"
        for key in ("requests", "timeouts", "exceptions"):
            bus[key] += getattr(m.stats, key)
    sync = rt.sync_status()
    summary = rt.emissions_summary()
    clock = rt.clock()      # the same state as the System page and /healthz
    return {
        "clock": {"synchronized": clock.synchronized, "detail": clock.detail},
        "meters": meters,
        "buses": list(buses.values()),
        "sync": None if sync is None else {
            "connected": sync.connected, "backlog_batches": sync.backlog_batches,
            "backlog_readings": sync.backlog_readings, "last_ack_at": sync.last_ack_at,
            "last_ack_age_s": None if sync.last_ack_at is None else round(now - sync.last_ack_at),
            "last_error": sync.last_error, "alarm": sync.alarm},
        "emissions": None if summary is None else {
            "today_tco2e": summary.today.total_t, "today_scope1": summary.today.scope_1_t,
            "today_scope2": summary.today.scope_2_t, "month_tco2e": summary.month.total_t,
            "month_scope1": summary.month.scope_1_t, "month_scope2": summary.month.scope_2_t},
    }


def _cached(key: str, make: Callable[[], Any]) -> Any:
    """One value for every client for ``STATUS_CACHE_S``: twenty phones polling cost one query and one render.

    The meters are polled every few seconds at most, so a second-old snapshot shows nothing stale
    that the "s ago" beside each value does not already say.
    """
    ttl = current_app.config["STATUS_CACHE_S"]
    cache = current_app.extensions.setdefault("status_cache", {})
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    value = make()
    cache[key] = (now, value)
    return value


@bp.get("/")
@requires("view")
def index() -> Any:
    lang = str(get_locale())
    main = _cached(f"main-{lang}", lambda: Markup(render_template(
        "dashboard_main.html", status=_cached("status", lambda: status(runtime())))))
    return render_template("dashboard.html", main=main)


@bp.get("/api/status")
@requires("view")
def api_status() -> Any:
    return jsonify(_cached("status", lambda: status(runtime())))


@bp.get("/lang/<code>")
def set_language(code: str) -> Any:
    if code in LANGUAGES:
        session["lang"] = code
    back = request.referrer or ""
    # stay on the page the switch was clicked on, but only within this site
    if back.startswith(request.host_url):
        return redirect(back)
    return redirect(url_for("dashboard.index"))
