"""Sync fixtures: key pairs, a TLS mosquitto with a throwaway CA, a real PostgreSQL server."""

from __future__ import annotations

import datetime
import glob
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import LOOPBACK, Broker, free_port, make_broker, wait_until


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path          # a CA that did not sign the server: the gateway must refuse the broker


def _key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return key


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, san: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                                                                     x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    ca_key = _key_file(directory / "ca.key")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Throwaway test CA")])
    ca = _cert("Throwaway test CA", ca_key, ca_name, ca_key, ca=True)
    for name, san in (("server", True), ("client", False)):
        key = _key_file(directory / f"{name}.key")
        cert = _cert(name, key, ca_name, ca_key, ca=False, san=san)
        paths[name] = directory / f"{name}.crt"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other CA")])
    (directory / "other-ca.crt").write_bytes(
        _cert("Some other CA", other_key, other_name, other_key, ca=True).public_bytes(serialization.Encoding.PEM))
    return Pki(directory / "ca.crt", paths["server"], directory / "server.key", paths["client"],
               directory / "client.key", directory / "other-ca.crt")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def _start_tls_broker(tmp_path: Path, pki: Pki, require_certificate: bool) -> Broker:
    """mosquitto with TLS only and passwords; with ``require_certificate`` also a client certificate."""
    directory = tmp_path / ("mosquitto-tls" if require_certificate else "mosquitto-tls-password")
    directory.mkdir()
    passwords = directory / "passwd"
    passwords.write_text("")
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd is not installed: apt-get install mosquitto")
    for user, password in (("gw-1", "s3cret"), ("receiver", "rx-s3cret")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
    passwords.chmod(0o644)  # mosquitto may drop privileges and must still read it
    for path in (pki.server_key, pki.ca, pki.server_cert):
        path.chmod(0o644)
    broker = make_broker(directory)
    config = broker.config_path.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    config += (f"password_file {passwords}\ncafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
               f"require_certificate {str(require_certificate).lower()}\ntls_version tlsv1.2\n")
    if os.geteuid() == 0:
        # As root mosquitto drops to user "mosquitto", who cannot enter pytest's 0700 tmp dirs.
        config += "user root\n"
    broker.config_path.write_text(config)
    broker.start()
    return broker


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """mosquitto with TLS only, requiring a client certificate from the throwaway CA and a password."""
    yield from _running(_start_tls_broker(tmp_path, pki, require_certificate=True))


@pytest.fixture
def tls_password_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """mosquitto with TLS (server certificate only) and passwords: client certificates are optional."""
    yield from _running(_start_tls_broker(tmp_path, pki, require_certificate=False))


def _running(broker: Broker) -> Iterator[Broker]:
    try:
        yield broker
    finally:
        broker.stop()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    url: str
    restart: Callable[[], None]      # pg_ctl restart -m fast: every connection is cut (AdminShutdown)


@pytest.fixture
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server in a temporary directory, on a free loopback port."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed; apt-get install postgresql")
    # PostgreSQL refuses to run as root: run it as nobody, in a directory nobody owns.
    base = Path(f"/tmp/ceg-pg-{os.getpid()}-{free_port()}")
    base.mkdir(mode=0o700)
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "nobody")
        shutil.chown(sock, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    options = ["-o", f"-h {LOOPBACK} -p {port} -k {sock} -c fsync=off"]
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
                    *options, "start"], check=True, capture_output=True, timeout=90)
    try:
        import psycopg

        url = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"

        def ready() -> bool:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        def restart() -> None:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t",
                            "60", "-m", "fast", *options, "restart"], check=True, capture_output=True, timeout=90)

        wait_until(ready, timeout_s=30, message="PostgreSQL accepting connections")
        yield PostgresServer(url, restart)
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a real PostgreSQL server (see :func:`postgres_server`)."""
    return postgres_server.url
