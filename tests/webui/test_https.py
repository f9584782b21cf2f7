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
    files = tls_files(gateway)
    assert files is not None and files.key_file.stat().st_mode & 0o777 == 0o600
    first = fingerprint(files.cert_file)
    assert tls_files(gateway).cert_file.read_bytes() == files.cert_file.read_bytes(), "made once, then kept"
    server, url = serve_gateway(gateway)
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
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            plain.request("GET", "/")
            status = plain.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            status = None
        assert status in (None, 400), "no plain HTTP on the HTTPS port"
        plain.close()
    finally:
        server.close()
        thread.join(timeout=10)
    assert len(first) == 95
