"""Benchmark of the web UI: dashboard latency under concurrent clients while meters are polled.

    .venv/bin/python bench/bench_webui.py [--meters 32] [--clients 20] [--seconds 20] [--path /]

A real gateway runs 32 simulated meters (Eastron SDM630 profile, 10 points each, polled every 2 s on
four simulated Modbus TCP buses) with its store writer and emissions jobs, and serves the web UI with
cheroot on 127.0.0.1 (the daemon's own server). ``--clients`` threads, each logged in with its own
session and keep-alive connection, request ``--path`` back to back for ``--seconds``. Printed: requests,
throughput and the latency percentiles; the target is a 95th percentile under 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import load_profiles  # noqa: E402
from gateway.config import config_from_text  # noqa: E402
from gateway.daemon import Gateway  # noqa: E402
from gateway.paths import PROFILES_DIR  # noqa: E402
from gateway.runtime import Runtime  # noqa: E402
from webui import serve_gateway  # noqa: E402
from local_store import users  # noqa: E402

PASSWORD = "bench-password-1"


def config_text(meters: int, buses: int = 4) -> str:
    parts = ['[gateway]\nid = "bench-gw"\n[sync]\nenabled = false\n[web]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n']
    for b in range(buses):
        parts.append(f'[[buses]]\nname = "bus-{b}"\ntransport = "tcp"\nsimulated = true\ntimeout_s = 0.5\n')
    for m in range(meters):
        parts.append(f'[[meters]]\nid = "meter-{m:02d}"\nbus = "bus-{m % buses}"\ndevice_id = {m // buses + 1}\n'
                     f'profile = "eastron-sdm630"\npoll_interval_s = 2\nactivity = "electricity"\n')
    return "\n".join(parts)


def login(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with a logged-in session cookie."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/login")
    response = conn.getresponse()
    page = response.read().decode()
    cookie = response.getheader("Set-Cookie", "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    body = urllib.parse.urlencode({"csrf_token": token, "name": "bench", "password": PASSWORD})
    conn.request("POST", "/login", body=body, headers={"Cookie": cookie,
                                                       "Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    assert response.status == 302, response.status
    conn.cookie = response.getheader("Set-Cookie", "").split(";")[0]  # type: ignore[attr-defined]
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--path", default="/")
    parser.add_argument("--threads", type=int, default=8, help="web server worker threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        profiles = load_profiles(PROFILES_DIR)
        config = config_text(args.meters)
        from tests.conftest import free_port  # a free loopback port, as the tests pick it

        port = free_port()
        cfg = config_from_text(config.replace("port = 0", f"port = {port}"), "bench", profiles, Path(tmp))
        gateway = Gateway(replace(cfg, web=replace(cfg.web, enabled=True)), profiles)
        runtime = Runtime(gateway)
        gateway.web_factory = lambda: serve_gateway(runtime)     # as `carbon-gateway run` does
        gateway.start()
        try:
            assert gateway.store is not None
            users.add_user(gateway.store.db, "bench", PASSWORD, "viewer")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                answering = sum(1 for m in gateway.meter_status() if m.values)
                if answering == args.meters:
                    break
                time.sleep(0.5)
            print(f"{answering}/{args.meters} meters polled; {args.clients} clients on {args.path} "
                  f"for {args.seconds:.0f} s (cheroot, {args.threads} threads)")
            connections = [login(port) for _ in range(args.clients)]
            latencies: list[list[float]] = [[] for _ in connections]
            errors = [0]
            stop_at = time.monotonic() + args.seconds
            start = threading.Barrier(len(connections) + 1)

            def client(i: int) -> None:
                conn = connections[i]
                start.wait()
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    conn.request("GET", args.path, headers={"Cookie": conn.cookie})  # type: ignore[attr-defined]
                    response = conn.getresponse()
                    response.read()
                    latencies[i].append(time.perf_counter() - t0)
                    if response.status != 200:
                        errors[0] += 1

            threads = [threading.Thread(target=client, args=(i,)) for i in range(len(connections))]
            for t in threads:
                t.start()
            start.wait()
            began = time.monotonic()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - began
            for conn in connections:
                conn.close()
            flat = sorted(x for per in latencies for x in per)
            q = statistics.quantiles(flat, n=100)
            print(f"requests: {len(flat)} ({len(flat) / elapsed:.0f}/s), non-200: {errors[0]}")
            print(f"latency ms: p50 {q[49] * 1e3:.1f}, p95 {q[94] * 1e3:.1f}, p99 {q[98] * 1e3:.1f}, "
                  f"max {flat[-1] * 1e3:.1f}")
            stored = gateway.store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            print(f"readings stored meanwhile: {stored}")
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
