"""``/healthz`` and ``/metrics``: for load balancers, monitoring and Prometheus, not for people.

``/metrics`` needs no login (scrapers cannot log in). When ``[web] metrics_token`` is set it wants
``Authorization: Bearer <token>``; without it, anyone who reaches the web port may read it, so the port
is on loopback by default. Neither page reveals secrets; both name meters and buses.
"""

from __future__ import annotations

import hmac

from typing import Any

from flask import Blueprint, Response, jsonify, request

from gateway.runtime import METRICS_CONTENT_TYPE as CONTENT_TYPE
from webui.auth import runtime_or_none

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    runtime = runtime_or_none()
    health = runtime.health() if runtime is not None else {"status": "no runtime"}
    return jsonify(health), 200 if health.get("status") == "ok" else 503


@bp.get("/metrics")
def metrics() -> Any:
    runtime = runtime_or_none()
    if runtime is None:
        return Response("# the gateway is not running\n", status=503, content_type=CONTENT_TYPE)
    token = runtime.config.web.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("# send Authorization: Bearer <[web] metrics_token>\n", status=401,
                            content_type=CONTENT_TYPE, headers={"WWW-Authenticate": "Bearer"})
    return Response(runtime.metrics_text(), content_type=CONTENT_TYPE)
