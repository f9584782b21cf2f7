"""Shared fixtures: real processes on loopback, free ports, bounded waits, leak checks.

Every fixture here starts a *real* thing (mosquitto, socat) on 127.0.0.1 and waits for
readiness with a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers import Profile

LOOPBACK = "127.0.0.1"


#: The ten Eastron SDM630 points (input registers 0..11, 52..53, 70..75) that the fault and planner tests were
#: worked out on; the shipped profile has ~60 points since issue 13, which would change every request range.
SDM630_BASIC_POINTS = ("voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
                       "active_power", "frequency", "energy_import", "energy_export")


def sdm630_basic(profile: Profile) -> Profile:
    """The shipped SDM630 profile cut down to :data:`SDM630_BASIC_POINTS` (same id, same point definitions)."""
    return dataclasses.replace(profile, points=tuple(p for p in profile.points if p.name in SDM630_BASIC_POINTS))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def trusted_pair(receiver_dir: Path, gateway_data_dir: Path, gateway_id: str = "demo-gateway") -> Path:
    """Key pairs for a gateway and a receiver that trusts it; returns the receiver's public sealing key."""
    from sync.keys import GATEWAY_PUB, ensure_gateway_key, ensure_receiver_key

    ensure_receiver_key(receiver_dir / "keys")
    ensure_gateway_key(gateway_data_dir / "keys")
    (receiver_dir / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(gateway_data_dir / "keys" / GATEWAY_PUB, receiver_dir / "trusted" / f"{gateway_id}.pub")
    return receiver_dir / "keys" / "receiver-sealing.pub"


def foreign_database(path: Path) -> bytes:
    """A SQLite file of another program (one table, ``invoices``) at ``path``; returns its bytes, to check
    that nothing was changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    return path.read_bytes()


def with_web(gateway):  # type: ignore[no-untyped-def]
    """Hand ``gateway`` its web server the way ``carbon-gateway run`` does (the daemon never imports webui)."""
    from gateway.runtime import Runtime
    from webui import serve_gateway

    runtime = Runtime(gateway)
    gateway.web_factory = lambda: serve_gateway(runtime)
    return gateway


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """A mosquitto process on loopback that a test may stop and start again."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [_mosquitto_binary(), "-c", str(self.config_path)],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: port_open(self.port), timeout_s=10, message=f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


def _mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("mosquitto is not installed: run ./scripts/test, which installs it")


def make_broker(directory: Path, extra_config: str = "") -> Broker:
    """Write a mosquitto config for a free loopback port (anonymous, no persistence)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} {LOOPBACK}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stdout\n"
        "max_inflight_messages 100\n"
        "max_queued_messages 100000\n"
        + extra_config
    )
    return Broker(LOOPBACK, port, config, directory / "mosquitto.log")


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto broker for one test."""
    broker = make_broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class PtyPair:
    """Two connected pseudo-terminals made by socat: a meter on one end, the gateway on the other."""

    device_side: str
    gateway_side: str


def modbus_tcp_exchange(port: int, pdu: bytes, unit: int) -> bytes:
    """One raw Modbus TCP request to 127.0.0.1:``port``; the reply's PDU (function code and data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack(">HHHB", 0x0102, 0, len(pdu) + 1, unit) + pdu)
        reply = b""
        while len(reply) < 7 or len(reply) < 6 + struct.unpack(">H", reply[4:6])[0]:
            chunk = sock.recv(300)
            assert chunk, f"connection closed after {reply.hex(' ')}"
            reply += chunk
    assert reply[:2] == b"\x01\x02" and reply[6] == unit, reply.hex(" ")
    return reply[7:]


@contextlib.contextmanager
def open_pty_pair(directory: Path) -> Iterator[PtyPair]:
    """A socat pseudo-terminal pair with its links in ``directory``, for as long as the block runs."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed: run ./scripts/test, which installs it")
    a, b = directory / "ttyDEVICE", directory / "ttyGATEWAY"
    process = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: a.exists() and b.exists(), timeout_s=10, message="socat pty pair")
        yield PtyPair(str(a), str(b))
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    with open_pty_pair(tmp_path) as pair:
        yield pair


@pytest.fixture(scope="session")
def libmodbus_slave(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The independent Modbus slave (libmodbus, tests/independent_slave/slave.c) built once per session; run it
    with ``tests.independent_slave.IndependentSlave(libmodbus_slave, registers, workdir=tmp_path)``."""
    from tests.independent_slave import SlaveError, build_slave

    try:
        return build_slave(tmp_path_factory.mktemp("libmodbus-slave"))
    except SlaveError as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (pymodbus ``system_health_check`` in spirit)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
                  and not t.name.startswith(("pydevd", "asyncio_"))]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


# --- the shipped package: built once per test session, installed without -e -------------------------------

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Wheelhouse:
    """The project wheel built from this tree and every dependency wheel for this machine, in one directory
    (``pip install --no-index --find-links directory`` installs from it offline)."""

    directory: Path
    wheel: Path


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    from gateway.bundle import build_wheel, download_dependencies

    directory = tmp_path_factory.mktemp("wheelhouse")
    wheel = build_wheel(REPO, directory)
    download_dependencies(wheel, directory)   # from pip's cache when it has them, else from PyPI
    return Wheelhouse(directory, wheel)


def base_python() -> str:
    """The interpreter a box would use (Debian's /usr/bin/python3 when it is this Python's version)."""
    import sys

    debian = Path("/usr/bin/python3")
    if debian.exists():
        version = subprocess.run([str(debian), "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        if version == str(tuple(sys.version_info[:2])):
            return str(debian)
    return sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user outside this checkout: no venv, no PYTHONPATH, no config override."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "CARBON_GATEWAY_CONFIG_DIR", "CARBON_GATEWAY_DATA_DIR",
                        "CARBON_GATEWAY_SITE_PROFILES", "PYTHONHOME"}}
    return {**env, **extra}


def interrupt(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Ctrl-C a command-line process and wait for it; killed if it does not stop within ``timeout_s``."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
