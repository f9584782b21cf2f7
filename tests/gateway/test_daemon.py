"""The daemon's operations: SIGHUP reload with roll-back, graceful SIGTERM, the watchdog on a hung loop,
and a store that refuses writes (full disk) while polling goes on in memory."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.daemon import Gateway
from gateway.notify import Notifier, WatchdogFeeder
from local_store.backup import StoreLock
from tests.conftest import wait_until
from tests.gateway.conftest import fast_demo

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "carbon-gateway"
DEMO = (ROOT / "config" / "gateway.toml").read_text()
HEADLESS = (DEMO.replace("[web]\nenabled = true", "[web]\nenabled = false")
            .replace("[sync]\nenabled = true", "[sync]\nenabled = false")
            .replace("poll_interval_s = 2", "poll_interval_s = 0.5"))


def _audit_actions(db: Path) -> list[str]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []


class NotifySocket:
    """The systemd side of the notify protocol: a datagram socket the test owns."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, message: str, timeout_s: float = 20) -> None:
        start = len(self.messages)
        wait_until(lambda: message in self.drain()[start:], timeout_s=timeout_s, message=f"notify {message!r}")

    def close(self) -> None:
        self.sock.close()


def test_sighup_reloads_a_good_config_keeps_the_running_one_on_a_bad_one_and_sigterm_is_clean(tmp_path: Path) -> None:
    config, data = tmp_path / "gw.toml", tmp_path / "data"
    config.write_text(HEADLESS)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    log_file = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen([str(EXE), "run", "--config", str(config), "--data-dir", str(data)],
                               env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        notify.wait_for("WATCHDOG=1")
        config.write_text(HEADLESS.replace("poll_interval_s = 0.5", "poll_interval_s = 1", 1))
        process.send_signal(1)  # SIGHUP
        wait_until(lambda: "config.reload" in _audit_actions(data / "gateway.db"), timeout_s=20,
                   message="the reload in the audit log")
        assert "RELOADING=1" in notify.drain()
        config.write_text(HEADLESS.replace("device_id = 2", "device_id = 300"))   # fails validation
        process.send_signal(1)
        wait_until(lambda: "config.reload_failed" in _audit_actions(data / "gateway.db"), timeout_s=20,
                   message="the refused reload in the audit log")
        notify.wait_for("WATCHDOG=1")   # still polling with the previous config
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
        log_file.close()
        notify.drain()
        notify.close()
    log = (tmp_path / "stderr.log").read_text()
    assert f"config reloaded from {config}" in log
    assert (f"config reload from {config} refused, the running config stays: {config}: meters[1].device_id = 300: "
            f"use a Modbus unit id from 1 to 247") in log
    assert process.returncode == 0 and "STOPPING=1" in notify.messages
    # Graceful: every connection closed (so SQLite removed the WAL), the lock released, the file intact.
    assert not Path(f"{data / 'gateway.db'}-wal").exists()
    lock = StoreLock(data / "gateway.db")
    assert lock.acquire()
    lock.release()
    conn = sqlite3.connect(data / "gateway.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        detail = json.loads(conn.execute("SELECT detail FROM audit_log WHERE action = 'config.reload'").fetchone()[0])
        assert detail["old_sha256"] != detail["new_sha256"]
    finally:
        conn.close()


@pytest.fixture
def gateway(tmp_path: Path):
    gw = Gateway(fast_demo(tmp_path / "data"))
    gw.start()
    wait_until(lambda: gw.last_store_ok, timeout_s=15, message="the first stored readings")
    try:
        yield gw
    finally:
        gw.stop()


def test_the_watchdog_stops_when_a_bus_loop_hangs(gateway: Gateway, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    feeder = WatchdogFeeder(Notifier(), gateway.progress)
    release = threading.Event()
    try:
        wait_until(feeder.tick, timeout_s=10, message="a first ping")
        wait_until(feeder.tick, timeout_s=10, message="a second ping")
        poller = next(iter(gateway._pollers.values()))
        real_poll = poller.poll_due

        def hung_poll(*args, **kwargs):  # type: ignore[no-untyped-def]
            release.wait(timeout=30)      # a driver stuck in a read that never times out
            return real_poll(*args, **kwargs)

        poller.poll_due = hung_poll  # type: ignore[method-assign]
        time.sleep(1.5)               # the bus loop's last beat before it hung may still earn one ping
        feeder.tick()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not feeder.tick(), "the watchdog was fed while a bus loop hung"
            time.sleep(0.2)
        release.set()
        wait_until(feeder.tick, timeout_s=10, message="pings once the loop runs again")
        assert notify.drain().count("WATCHDOG=1") >= 3
    finally:
        release.set()
        notify.close()


def _refuse_writes(db, how: str) -> None:  # type: ignore[no-untyped-def]
    if how == "read-only":
        db.execute("PRAGMA query_only = ON")            # SQLITE_READONLY, as on a read-only data directory
        return
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")     # SQLITE_FULL once the free pages are used, as on a full disk
    for _ in range(100_000):
        try:
            db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
            db.execute("INSERT INTO filler VALUES (zeroblob(256))")
        except sqlite3.OperationalError:
            return


def _accept_writes(db, how: str) -> None:  # type: ignore[no-untyped-def]
    db.execute("PRAGMA query_only = OFF" if how == "read-only" else "PRAGMA max_page_count = 1073741823")


@pytest.mark.parametrize("how,error", [("read-only", "attempt to write a readonly database"),
                                       ("full", "database or disk is full")])
def test_a_store_that_refuses_writes_keeps_readings_in_memory_and_writes_them_when_it_accepts_again(
        gateway: Gateway, caplog: pytest.LogCaptureFixture, how: str, error: str) -> None:
    assert gateway.store is not None and gateway._scheduler is not None
    gateway._scheduler.pause_job("store-writer")   # the test drives the writer, on its own connection
    gateway.flush_readings()
    db = gateway.store.db
    stored_before = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    _refuse_writes(db, how)
    caplog.set_level(logging.INFO, logger="gateway.daemon")
    progress = gateway.progress()
    results: list[int] = []
    deadline = time.monotonic() + 30
    while results[-3:] != [0, 0, 0] and time.monotonic() < deadline:
        wait_until(lambda: gateway._readings.qsize(), timeout_s=10, message="new readings polled")
        results.append(gateway.flush_readings())
    stored_meanwhile = sum(results)      # a full disk may still take a row or two into half-empty pages
    held = gateway.held_readings()
    assert results[-3:] == [0, 0, 0] and held > 0
    assert gateway.progress() > progress                    # polling goes on, the watchdog is still fed
    health = gateway.health()
    assert health["status"] == "degraded" and error in health["store_error"]
    _accept_writes(db, how)                                  # space returns / the directory is writable again
    written = 0

    def flushed() -> bool:
        nonlocal written
        written += gateway.flush_readings()                  # the retry may wait out its backoff first
        return gateway.store_error == ""

    wait_until(flushed, timeout_s=20, message="the held readings written")
    assert written >= held and gateway.readings_dropped == 0 and gateway.held_readings() == 0
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == stored_before + stored_meanwhile + written
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if how == "full":   # the disk reserve is released first (issue 16); here the page limit stays, so it cannot help
        reserve = errors.pop(0)
        assert reserve.startswith("the disk is full: released the 8.4 MB reserve ("), reserve
    assert errors == [f"storing readings: {gateway.config.database}: {error}: readings are kept in memory "
                      f"(up to 150000) and written when the store accepts them again; free disk space or make "
                      f"the data directory writable"]
    assert "storing readings works again (the error was seen " in caplog.text


def test_memory_is_bounded_while_the_store_refuses_writes(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.daemon as daemon

    monkeypatch.setattr(daemon, "MAX_HELD_READINGS", 40)
    assert gateway.store is not None and gateway._scheduler is not None
    gateway._scheduler.pause_job("store-writer")
    db = gateway.store.db
    db.execute("PRAGMA query_only = ON")
    try:
        for _ in range(4):
            wait_until(lambda: gateway._readings.qsize(), timeout_s=10, message="new readings polled")
            gateway.flush_readings(force=True)
        biggest_batch = max(len(b) for b in gateway._held)
        assert gateway.readings_dropped > 0
        assert gateway._held_count <= 40 + biggest_batch      # the newest batch is always kept whole
        assert gateway.health()["readings_dropped"] == gateway.readings_dropped
    finally:
        db.execute("PRAGMA query_only = OFF")


def test_a_second_daemon_on_the_same_data_refuses_to_start(gateway: Gateway, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(HEADLESS)
    result = subprocess.run([str(EXE), "run", "--config", str(config), "--data-dir", str(gateway.config.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: cannot start: {gateway.config.database}: in use by another carbon-gateway process (lock "
        f"{gateway.config.database}.lock): stop it first (systemctl stop carbon-gateway)")


def test_under_journald_lines_carry_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    """systemd points stderr at the journal and names it in JOURNAL_STREAM; journald adds the time."""
    config = tmp_path / "gw.toml"
    config.write_text(HEADLESS)
    log_path = tmp_path / "journal.txt"
    with log_path.open("w") as log_file:
        st = os.fstat(log_file.fileno())
        process = subprocess.Popen([str(EXE), "run", "--config", str(config), "--data-dir", str(tmp_path / "data")],
                                   env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                                   stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            wait_until(lambda: "gateway stopped" in log_path.read_text() or "started:" in log_path.read_text(),
                       timeout_s=20, message="the start line")
        finally:
            process.terminate()
            process.wait(timeout=30)
    lines = log_path.read_text().splitlines()
    assert f"<6>gateway.daemon: gateway demo-gateway started: 1 bus(es), 3 meter(s), data in {tmp_path / 'data'}" in lines
    assert all(line.startswith("<") for line in lines), lines


def test_a_repeated_error_is_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.logs import RepeatedError

    caplog.set_level(logging.INFO, logger="test.repeats")
    errors = RepeatedError(logging.getLogger("test.repeats"), "meter m1")
    for _ in range(5):
        errors.failed("timeout after 1.0 s")
    errors.failed("CRC error")
    errors.ok()
    errors.ok()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "meter m1: timeout after 1.0 s"),
        ("ERROR", "meter m1: the previous error repeated 4 more time(s)"),
        ("ERROR", "meter m1: CRC error"),
        ("INFO", "meter m1 works again (the error was seen 1 time(s))"),
    ]


def test_a_gateway_without_meters_warns_once_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It starts (its simulated bus has nothing to serve) and says why nothing is stored."""
    caplog.set_level(logging.WARNING, logger="gateway.daemon")
    gw = Gateway(fast_demo(tmp_path / "data", meters=(), sources=()))
    gw.start()
    try:
        assert [(r.levelname, r.getMessage()) for r in caplog.records if "meters" in r.getMessage()] == [(
            "WARNING", "no meters configured: nothing is polled and no readings are stored; add a [[meters]] table "
                       "per meter (bus, device_id, profile; `carbon-gateway scan` finds them, docs/configuration.md), "
                       "then reload the gateway (systemctl reload carbon-gateway)")]
    finally:
        gw.stop()
