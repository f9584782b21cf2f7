"""The unit file passes systemd's own checks, and the daemon speaks the notify protocol honestly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "carbon-gateway.service"
EXE = Path(sys.executable).parent / "carbon-gateway"
#: The unit runs the release's interpreter (`python -m gateway`), so a venv moved by an upgrade still runs.
UNIT_PYTHON = "/opt/carbon-gateway/current/bin/python"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze missing: ./scripts/test installs it")


@needs_systemd_analyze
@pytest.mark.parametrize("name", ["carbon-gateway.service", "carbon-gateway-upgrade.service",
                                  "carbon-gateway-upgrade.path"])
def test_unit_verifies(tmp_path: Path, name: str) -> None:
    # verify also checks that ExecStart exists, so point it at this checkout's command.
    for unit_file in UNIT.parent.glob("carbon-gateway*"):
        (tmp_path / unit_file.name).write_text(unit_file.read_text().replace(UNIT_PYTHON, sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "carbon-gateway" in line]
    assert result.returncode == 0 and not problems, problems


@needs_systemd_analyze
def test_unit_exposure_is_2_or_lower() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    line = [l for l in result.stdout.splitlines() if "Overall exposure level" in l][0]
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.0, line
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "SupplementaryGroups=dialout", "ProtectSystem=strict",
                    "StateDirectory=", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                    "CapabilityBoundingSet=\n", "RestrictAddressFamilies=", "MemoryMax="):
        assert setting in text, setting


def test_install_script_dry_run_lists_the_steps() -> None:
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh"), "--dry-run"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "-m venv /opt/carbon-gateway/releases/<version>" in result.stdout
    assert "+ ln -sfn releases/<version> /opt/carbon-gateway/current" in result.stdout
    assert "+ systemctl enable --now carbon-gateway.service carbon-gateway-upgrade.path" in result.stdout
    assert "--groups dialout carbon-gateway" in result.stdout
    result = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh"), "--dry-run", "--uninstall"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "+ systemctl disable --now carbon-gateway.service carbon-gateway-upgrade.path",
        "+ rm -f /etc/systemd/system/carbon-gateway.service /etc/systemd/system/carbon-gateway-upgrade.path "
        "/etc/systemd/system/carbon-gateway-upgrade.service",
        "+ systemctl daemon-reload", "+ rm -rf /opt/carbon-gateway",
        "kept /etc/carbon-gateway and /var/lib/carbon-gateway (config, data, keys); remove them by hand if wanted"]


def test_ready_then_watchdog_pings_only_while_polling(tmp_path: Path) -> None:
    """READY=1 after start; WATCHDOG=1 while poll -> store cycles succeed; STOPPING=1 on SIGTERM."""
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(1.0)
    config = tmp_path / "gw.toml"
    config.write_text((ROOT / "config" / "gateway.toml").read_text()
                      .replace("[web]\nenabled = true", "[web]\nenabled = false")
                      .replace("[sync]\nenabled = true", "[sync]\nenabled = false")
                      .replace("poll_interval_s = 2", "poll_interval_s = 0.5"))
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen([str(EXE), "run", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m in messages) < 3:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
        assert messages[0].startswith("READY=1\nSTATUS=polling 3 meter(s)"), messages
        assert messages.count("WATCHDOG=1") >= 3, messages
    finally:
        process.terminate()
        process.wait(timeout=30)
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        sock.close()
    assert "STOPPING=1" in messages and process.returncode == 0


def _notifications(tmp_path: Path, config: Path, enough: Callable[[list[str]], bool], timeout_s: float,
                   env: dict[str, str] | None = None) -> list[str]:
    """Run the daemon with a notify socket as systemd gives it; the messages it sent until ``enough`` of them."""
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(0.5)
    process = subprocess.Popen([str(EXE), "run", "--config", str(config), "--data-dir", str(tmp_path / "d")],
                               env={**os.environ, "NOTIFY_SOCKET": notify_path, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not enough(messages):
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
    finally:
        process.terminate()
        process.wait(timeout=30)
        sock.close()
    return messages


def test_watchdog_keeps_pinging_while_meters_are_dead_but_the_loop_runs(tmp_path: Path) -> None:
    """A dead meter is an alarm, not a hang: restarting would not revive it and would lose held readings."""
    dead_port = free_port()
    config = tmp_path / "gw.toml"
    config.write_text((ROOT / "config" / "gateway.toml").read_text()
                      .replace("simulated = true", f"port = {dead_port}")
                      .replace("[web]\nenabled = true", "[web]\nenabled = false")
                      .replace("[sync]\nenabled = true", "[sync]\nenabled = false"))
    messages = _notifications(tmp_path, config, lambda m: m.count("WATCHDOG=1") >= 2, timeout_s=20,
                              env={"WATCHDOG_USEC": "1000000"})
    assert messages[0].startswith("READY=1"), messages
    assert messages.count("WATCHDOG=1") >= 2, messages


def test_the_production_template_waits_for_the_first_boot_setup(tmp_path: Path) -> None:
    """install.sh's config: no simulated bus, no demo key, no public dashboard, HTTPS; the service says it waits."""
    from drivers import load_profile_set
    from gateway.config import load_config
    from gateway.paths import CONFIG_DIR, PROFILES_DIR

    template = CONFIG_DIR / "production.toml"
    web_port = free_port()
    config = tmp_path / "gateway.toml"
    # on a test machine the UI listens on loopback only; everything else as installed
    config.write_text(template.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
                      .replace("port = 8443", f"port = {web_port}"))
    found = load_profile_set(PROFILES_DIR)
    loaded = load_config(template, found.profiles, data_dir_override=tmp_path / "d")
    assert not loaded.buses and not loaded.meters and not loaded.simulated_buses and not loaded.demo_receiver_key
    assert loaded.web.tls and not loaded.web.public_dashboard and loaded.web.host == "0.0.0.0"
    assert not loaded.sync.enabled and loaded.data_dir == tmp_path / "d"
    messages = _notifications(tmp_path, config, lambda m: bool(m), timeout_s=60)
    assert messages == ["READY=1\nSTATUS=no meters yet: waiting for the first-boot setup in the web UI"], messages
    assert (tmp_path / "d" / "web" / "cert.pem").exists()      # HTTPS: a self-signed certificate on first boot
