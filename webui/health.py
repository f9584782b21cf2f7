"""``/healthz`` and ``/metrics``: for load balancers, monitoring and Prometheus, not for people.

``/metrics`` needs no login (scrapers cannot log in). When ``[web] metrics_token`` is set it wants
``Authorization: Bearer <token>``; without it, anyone who reaches the web port may read it, so the port
is on loopback by default. Neither page reveals secrets; both name meters and buses.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

bp = Blueprint("health", __name__)


def _runtime():  # type: ignore[no-untyped-def]
    return current_app.extensions.get("gateway_runtime")


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    runtime = _runtime()
    health = runtime.health() if runtime is not None else {"status": "no runtime"}
    return jsonify(health), 200 if health.get("status") == "ok" else 503


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    from gateway.metrics import CONTENT_TYPE, render

    runtime = _runtime()
    if runtime is None:
        return Response("# the gateway is not running\n", status=503, content_type=CONTENT_TYPE)
    token = getattr(getattr(runtime.config, "web", None), "metrics_token", None)
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("# send Authorization: Bearer <[web] metrics_token>\n", status=401,
                            content_type=CONTENT_TYPE, headers={"WWW-Authenticate": "Bearer"})
    return Response(render(runtime), content_type=CONTENT_TYPE)
