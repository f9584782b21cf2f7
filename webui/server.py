"""Serving the UI: waitress for plain HTTP (the loopback demo), cheroot for HTTPS.

Waitress has no TLS, so HTTPS is served by cheroot (CherryPy's production WSGI server) with the
standard library's ``ssl``. On first boot a self-signed certificate is made with ``cryptography``
(EC P-256, the host's names and addresses in subjectAltName); an installer replaces it by setting
``web.cert_file`` / ``web.key_file`` to their own. Both servers are bound when :func:`serve`
returns, run with ``.run()`` in a thread and stop with ``.close()``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from waitress import create_server

CERT_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path


def ensure_self_signed(cert_file: Path, key_file: Path, host: str) -> bool:
    """Make a self-signed certificate for ``host`` unless both files exist; returns True if it made one.

    The key file is written 0600 before any key byte goes in.
    """
    if cert_file.exists() and key_file.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    addresses = {"127.0.0.1"} | ({host} if host not in ("0.0.0.0", "::", "") else set())
    for address in sorted(addresses):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Carbon Edge Gateway {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def fingerprint(cert_file: Path) -> str:
    """SHA-256 of the certificate, as browsers show it (to check a self-signed one on first visit)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


class _HttpsServer:
    """cheroot bound now; the same ``run()`` / ``close()`` as waitress' server."""

    def __init__(self, app: Any, host: str, port: int, tls: TlsFiles, threads: int) -> None:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        self._server = wsgi.Server((host, port), app, numthreads=threads, server_name="carbon-gateway")
        adapter = BuiltinSSLAdapter(str(tls.cert_file), str(tls.key_file))
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server.ssl_adapter = adapter
        self._server.prepare()     # binds; errors (port taken) surface here, before start-up reports success
        self.effective_port = self._server.bind_addr[1]

    def run(self) -> None:
        self._server.serve()

    def close(self) -> None:
        self._server.stop()


class _HttpServer:
    def __init__(self, app: Any, host: str, port: int, threads: int) -> None:
        self._server = create_server(app, host=host, port=port, threads=threads, ident="carbon-gateway")
        self.effective_port = self._server.effective_port
        self.task_dispatcher = self._server.task_dispatcher

    def run(self) -> None:
        self._server.run()

    def close(self) -> None:
        self._server.task_dispatcher.shutdown(timeout=5)   # workers first: they write to the trigger close() closes
        self._server.close()


def serve(app: Any, host: str, port: int, threads: int = 8, tls: TlsFiles | None = None) -> Any:
    """A server bound now: HTTPS when ``tls`` is given, else plain HTTP; ``.run()`` in a thread, ``.close()``."""
    if tls is not None:
        return _HttpsServer(app, host, port, tls, threads)
    return _HttpServer(app, host, port, threads)
