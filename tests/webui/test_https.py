"""HTTPS: a self-signed certificate made on first boot, served by cheroot; Secure cookies; HSTS."""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import replace
from pathlib import Path

from drivers import load_profiles
from gateway.config import config_from_text
from gateway.paths import PROFILES_DIR
from tests.conftest import free_port
from tests.webui.conftest import DEMO_TOML
from gateway.runtime import Runtime
from webui import serve_gateway, tls_files
from webui.server import fingerprint


def test_config_turns_https_on_beyond_loopback(tmp_path: Path) -> None:
    profiles = load_profiles(PROFILES_DIR)
    demo = config_from_text(DEMO_TOML, "demo", profiles, tmp_path)
    assert not demo.web.tls
    lan = config_from_text(DEMO_TOML.replace("[web]\nenabled = false", '[web]\nhost = "0.0.0.0"'), "lan", profiles,
                           tmp_path)
    assert lan.web.tls and lan.web.cert_file is None


def test_self_signed_certificate_on_first_boot_and_https_served(gateway, tmp_path: Path) -> None:
    port = free_port()
    gateway.config = replace(gateway.config, web=replace(gateway.config.web, tls=True, port=port))
    files = tls_files(Runtime(gateway))
    assert files is not None and files.key_file.stat().st_mode & 0o777 == 0o600
    first = fingerprint(files.cert_file)
    assert tls_files(Runtime(gateway)).cert_file.read_bytes() == files.cert_file.read_bytes(), "made once, then kept"
    server, url = serve_gateway(Runtime(gateway))
    thread = threading.Thread(target=server.run, name="test-https", daemon=True)
    thread.start()
    try:
        assert url == f"https://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(files.cert_file))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        connection.request("GET", "/setup")
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200 and "set the administrator password" in body
        assert "Secure" in response.getheader("Set-Cookie") and "HttpOnly" in response.getheader("Set-Cookie")
        assert response.getheader("Strict-Transport-Security") == "max-age=31536000"
        connection.close()
        # plain HTTP to the HTTPS port: a redirect to the same page over HTTPS, not a reset connection (issue 15)
        for _ in range(5):      # a reset is a race between the answer and the close: try it several times
            plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            plain.request("GET", "/login?next=/meters")
            answer = plain.getresponse()
            assert (answer.status, answer.getheader("Location")) == (
                301, f"https://127.0.0.1:{port}/login?next=/meters")
            assert answer.read().decode() == f"This gateway serves its web UI over HTTPS: https://127.0.0.1:{port}/login?next=/meters\n"
            plain.close()
    finally:
        server.close()
        thread.join(timeout=10)
    assert len(first) == 95


def test_plain_http_answer_refuses_what_it_cannot_redirect_safely() -> None:
    from webui.server import plain_http_answer

    assert plain_http_answer(b"GET /x HTTP/1.1\nHost: gw.local:8443").startswith(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://gw.local:8443/x\r\n")
    for head in (b"GET /x HTTP/1.1\nHost: evil.example/\r\nX: y", b"GET //x\r\nHost: a", b"GET /x HTTP/1.1"):
        assert plain_http_answer(head).startswith(b"HTTP/1.1 400 Bad Request\r\n"), head
