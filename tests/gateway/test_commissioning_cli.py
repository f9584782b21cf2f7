"""`simulate` and `read` as a technician runs them: two real processes over loopback TCP and a socat pty."""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import free_port, port_open, wait_until

EXE = str(Path(sys.executable).parent / "carbon-gateway")


def _simulate(*args: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, "simulate", "--profile", "eastron-sdm630", "--unit", "5", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def test_read_over_tcp_json_and_raw() -> None:
    port = free_port()
    simulator = _simulate("--tcp", f"127.0.0.1:{port}")
    try:
        wait_until(lambda: port_open(port), timeout_s=15, message="simulator")
        result = subprocess.run([EXE, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "5", "--profile",
                                 "eastron-sdm630", "--json"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        points = {p["point"]: p for p in json.loads(result.stdout)}
        assert 220 < points["voltage_l1"]["value"] < 240 and points["voltage_l1"]["unit"] == "V"
        assert len(points["energy_import"]["raw"]) == 2
        text = subprocess.run([EXE, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "5", "--profile",
                               "eastron-sdm630", "--raw"], capture_output=True, text=True, timeout=30).stdout
        assert "frequency" in text and " Hz  [" in text
    finally:
        _stop(simulator)


def test_read_over_rtu_through_a_socat_pty(pty_pair) -> None:
    simulator = _simulate("--serial", pty_pair.device_side)
    try:
        def answers() -> bool:
            result = subprocess.run([EXE, "read", "--serial", pty_pair.gateway_side, "--unit", "5", "--profile",
                                     "eastron-sdm630", "--json", "--timeout", "0.5"],
                                    capture_output=True, text=True, timeout=30)
            return result.returncode == 0 and "voltage_l1" in result.stdout

        wait_until(answers, timeout_s=20, interval_s=0.5, message="RTU answer")
    finally:
        _stop(simulator)


@pytest.mark.parametrize("args,message", [
    (["--tcp", "127.0.0.1:1", "--unit", "300", "--profile", "eastron-sdm630"], "Invalid value for '--unit': '300': use a Modbus unit id from 1 to 247"),
    (["--tcp", "nohost", "--unit", "1", "--profile", "eastron-sdm630"], "'nohost': use HOST:PORT"),
    (["--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "nope"], "'nope' is not a known profile; use one of"),
    (["--unit", "1", "--profile", "eastron-sdm630"], "give exactly one of --tcp HOST:PORT or --serial DEVICE"),
])
def test_read_refuses_bad_arguments_without_traceback(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["read", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    # Bad-input sweep: these raised ValueError or ZeroDivisionError from pyserial/pymodbus, or were refused
    # with a misleading "is another program using it?".
    (["read", "--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "eastron-sdm630", "--timeout", "-1"],
     "Invalid value for '--timeout': '-1': use a value from 0.05 to 30 s"),
    (["read", "--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "eastron-sdm630", "--timeout", "nan"],
     "Invalid value for '--timeout': 'nan': use a value from 0.05 to 30 s"),
    (["read", "--serial", "/dev/null", "--unit", "1", "--profile", "eastron-sdm630", "--baud", "0"],
     "Invalid value for '--baud': '0': use a value from 300 to 115200 baud"),
    (["read", "--tcp", "127.0.0.1:70000", "--unit", "1", "--profile", "eastron-sdm630"],
     "Invalid value for --tcp: '127.0.0.1:70000': use HOST:PORT with a port from 1 to 65535, e.g. 192.168.1.50:502"),
    (["scan", "--tcp", "127.0.0.1:1", "--units", "1", "--timeout", "-1"],
     "Invalid value for '--timeout': '-1': use a value from 0.05 to 30 s"),
    (["scan", "--serial", "/dev/null", "--bauds", "-9600", "--units", "1"],
     "Invalid value for --units/--bauds: '-9600': baud rates run from 300 to 115200, e.g. 9600,19200"),
    (["simulate", "--profile", "eastron-sdm630", "--unit", "1", "--slow", "nan"],
     "Invalid value for '--slow': 'nan' is not a number of seconds; use e.g. 0.5"),
    (["receiver", "--broker", "127.0.0.1:70000"],
     "Invalid value for --broker: '127.0.0.1:70000': use HOST:PORT with a port from 1 to 65535, "
     "e.g. broker.example.com:8883"),
])
def test_out_of_range_numbers_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.output.splitlines()[-1]) == (2, f"Error: {message}")


def test_read_of_a_meter_that_does_not_answer() -> None:
    port = free_port()
    result = CliRunner().invoke(main, ["read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--profile",
                                       "eastron-sdm630", "--timeout", "0.2"])
    assert result.exit_code == 1
    assert result.output == (f"Error: unit 1: cannot connect to 127.0.0.1:{port}: check the address and that "
                             "the device is powered and reachable\n")


def test_read_names_a_dead_meter_on_rtu(pty_pair) -> None:
    simulator = subprocess.Popen([EXE, "simulate", "--profile", "eastron-sdm630", "--unit", "5", "--profile",
                                  "eastron-sdm630", "--unit", "6", "--fault", "6:no_answer", "--serial",
                                  pty_pair.device_side], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def read(unit: str) -> subprocess.CompletedProcess:
            return subprocess.run([EXE, "read", "--serial", pty_pair.gateway_side, "--unit", unit, "--profile",
                                   "eastron-sdm630", "--timeout", "0.5"], capture_output=True, text=True, timeout=30)

        wait_until(lambda: read("5").returncode == 0, timeout_s=20, interval_s=0.5, message="RTU answer")
        result = read("6")
        assert result.returncode == 1
        # The SDM630's first request: its points from 0 (voltage L1) to 0x56/0x57 (maximum power demand),
        # bridging holes of at most 10 registers; the next point, 0x64, is 12 registers further (issue 13).
        assert result.stderr == "Error: unit 6: no reply within 0.5 s to input registers 0..87\n"
    finally:
        _stop(simulator)


def test_simulate_refuses_a_bad_fault() -> None:
    result = CliRunner().invoke(main, ["simulate", "--profile", "eastron-sdm630", "--unit", "5", "--fault", "5:fire"])
    assert result.exit_code == 2
    assert ("'5:fire': use UNIT:FAULT with one of the --unit ids and a fault among no_answer, exception, busy, "
            "garbage, crc, truncated, slow, holes, short_reads") in result.output


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_serial_port_without_permission_says_how_to_fix(pty_pair) -> None:
    """Issue 3: a serial port the user may not open (not in its group) gets a message that says so and how."""
    device = os.path.realpath(pty_pair.gateway_side)  # /dev/pts/N: root, group tty, mode 0620
    group = grp.getgrgid(os.stat(device).st_gid).gr_name
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", EXE, "read",
                             "--serial", device, "--unit", "1", "--profile", "eastron-sdm630"],
                            capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"Error: unit 1: no permission to open {device}: user nobody is not in its group "
                             f"{group}; run: sudo usermod -aG {group} nobody, then log in again (or restart the "
                             "service)\n")


def test_read_through_a_serial_device_server_rtu_over_tcp() -> None:
    port = free_port()
    simulator = _simulate("--tcp", f"127.0.0.1:{port}", "--rtu-over-tcp")
    try:
        wait_until(lambda: port_open(port), timeout_s=15, message="simulator")
        result = subprocess.run([EXE, "read", "--tcp", f"127.0.0.1:{port}", "--rtu-over-tcp", "--unit", "5",
                                 "--profile", "eastron-sdm630", "--json"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        points = {p["point"]: p for p in json.loads(result.stdout)}
        assert 220 < points["voltage_l1"]["value"] < 240 and points["frequency"]["unit"] == "Hz"
        # The same endpoint spoken to as plain Modbus TCP gets no valid answer: the framing differs.
        plain = subprocess.run([EXE, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "5", "--profile",
                                "eastron-sdm630", "--timeout", "0.3"], capture_output=True, text=True, timeout=30)
        assert plain.returncode == 1 and plain.stderr.startswith("Error: unit 5: ")
    finally:
        _stop(simulator)


@pytest.mark.parametrize("command", [
    ["scan", "--tcp", "127.0.0.1:1", "--units", "1"],
    ["read", "--tcp", "127.0.0.1:1", "--unit", "1", "--profile", "eastron-sdm630"],
])
def test_a_broken_profile_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    """Bad-input sweep: scan showed a ProfileError traceback for a profile with a TOML syntax error."""
    import gateway.commands.commissioning as commissioning

    (tmp_path / "broken.toml").write_text('id = "broken"\nmanufacturer =\n')
    monkeypatch.setattr(commissioning, "PROFILE_DIRS", (tmp_path,))
    result = CliRunner().invoke(main, command)
    assert (result.exit_code, result.output) == (
        1, f"Error: {tmp_path / 'broken.toml'}: not valid TOML (Invalid value (at line 2, column 15)): fix that line "
           "(strings need quotes), or move the file out of the profiles directory (docs/profiles.md)\n")
