"""Serving the UI: cheroot (CherryPy's production WSGI server) for plain HTTP and HTTPS alike.

One server for both (issue 12): plain HTTP for the loopback demo, HTTPS with the standard library's
``ssl`` everywhere else. A browser that speaks plain HTTP to the HTTPS port is redirected to the same
address over HTTPS rather than left with a reset connection.
On first boot a self-signed certificate is made with ``cryptography`` (EC P-256, the host's names and
addresses in subjectAltName); an installer replaces it by setting ``web.cert_file`` / ``web.key_file`` to
their own. The server is bound when :func:`serve` returns, runs with ``.run()`` in a thread and stops with
``.close()``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


class WebServer(Protocol):
    """A bound web server."""

    effective_port: int

    def run(self) -> None: ...

    def close(self) -> None: ...


_HTTP_START = re.compile(rb"^[A-Z]{3,7} ")
_REQUEST_LINE = re.compile(rb"^[A-Z]{3,7} (/[!-~]*) HTTP/1\.[01]\r?$")
_HOST = re.compile(rb"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")


def plain_http_answer(head: bytes) -> bytes:
    """What a plain-HTTP request to the HTTPS port gets: a redirect to the same path over HTTPS, or, when
    its request line or Host header cannot be trusted to build one, a 400 that says to use https://."""
    lines = head.split(b"\n")
    request = _REQUEST_LINE.match(lines[0])
    host = next((line.split(b":", 1)[1].strip() for line in lines[1:] if line.lower().startswith(b"host:")), b"")
    if request is not None and _HOST.match(host):
        location = b"https://" + host + request.group(1)
        body = b"This gateway serves its web UI over HTTPS: " + location + b"\n"
        return (b"HTTP/1.1 301 Moved Permanently\r\nLocation: " + location + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    body = b"This port speaks HTTPS only: open the address with https://\n"
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body)


def _tls_adapter(tls: TlsFiles) -> Any:
    """cheroot's TLS adapter, which also answers plain HTTP on the HTTPS port with a redirect.

    cheroot's own answer to plain HTTP is a 400 written and closed with the request still unread, so the
    kernel resets the connection and the browser shows "connection reset" instead (issue 15). Here the first
    bytes are peeked before the TLS handshake: a TLS ClientHello starts with 0x16, an HTTP request with its
    method. The request head is read in full before the answer, so closing does not reset.
    """
    from cheroot import errors
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    class Adapter(BuiltinSSLAdapter):  # type: ignore[misc]
        def wrap(self, sock: socket.socket) -> Any:
            try:
                first = sock.recv(8, socket.MSG_PEEK)
            except OSError as exc:
                raise errors.FatalSSLAlert(*exc.args) from exc
            if _HTTP_START.match(first):
                head = b""
                try:
                    while b"\r\n\r\n" not in head and len(head) < 8192:
                        chunk = sock.recv(8192 - len(head))
                        if not chunk:
                            break
                        head += chunk
                    sock.sendall(plain_http_answer(head.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")))
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                sock.close()
                raise errors.FatalSSLAlert("plain HTTP on the HTTPS port: redirected to https://")
            return super().wrap(sock)

    adapter = Adapter(str(tls.cert_file), str(tls.key_file))
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    return adapter


class _Server:
    """cheroot, bound now, with TLS when ``tls`` is given."""

    def __init__(self, app: Any, host: str, port: int, threads: int, tls: TlsFiles | None) -> None:
        from cheroot import wsgi

        # A request queue bounded by the pool: a burst waits in the listen backlog instead of in memory.
        self._server = wsgi.Server((host, port), app, numthreads=threads, server_name="carbon-gateway",
                                   request_queue_size=64)
        if tls is not None:
            self._server.ssl_adapter = _tls_adapter(tls)
        self._server.prepare()     # binds; errors (port taken) surface here, before start-up reports success
        self.effective_port: int = self._server.bind_addr[1]

    def run(self) -> None:
        self._server.serve()

    def close(self) -> None:
        self._server.stop()


def serve(app: Any, host: str, port: int, threads: int = 8, tls: TlsFiles | None = None) -> WebServer:
    """A server bound now: HTTPS when ``tls`` is given, else plain HTTP; ``.run()`` in a thread, ``.close()``."""
    return _Server(app, host, port, threads, tls)
