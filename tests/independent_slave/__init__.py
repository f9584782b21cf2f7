"""An independent Modbus slave for the tests: libmodbus (Debian ``libmodbus-dev``), not pymodbus and not the
project's code, serving a register table over Modbus TCP or Modbus RTU on a serial device (issue 13).

``slave.c`` beside this file is a small program over the public libmodbus API; :func:`build_slave` compiles it
with gcc into a temporary directory (once per test session, see the ``libmodbus_slave`` fixture in
``tests/conftest.py``). :class:`IndependentSlave` runs it with a table of raw register words and waits until it
listens.

    with IndependentSlave(binary, {("holding", 0x2006): 0x4366, ("holding", 0x2007): 0}, workdir=tmp_path) as s:
        BusConfig("t", "tcp", port=s.port)

Each table is served from its lowest to its highest address (registers in between read 0); outside that span
the slave answers exception 2, and a table with no registers answers exception 2 to every read, so FC 03 and
FC 04 are kept apart.
"""

from __future__ import annotations

import hashlib
import selectors
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

SOURCE = Path(__file__).with_name("slave.c")
#: The Debian package that provides the headers and the library (installed by ./scripts/test).
DEBIAN_PACKAGE = "libmodbus-dev"

Registers = Mapping[tuple[str, int], int]   # ("holding" | "input", 0-based address) -> 16-bit word


class SlaveError(RuntimeError):
    """The independent slave could not be built or started; the message says what to install or check."""


def build_slave(directory: Path) -> Path:
    """Compile ``slave.c`` against libmodbus into ``directory``; returns the executable.

    :raises SlaveError: gcc or libmodbus-dev is missing, or the build failed (with gcc's message).
    """
    gcc = shutil.which("gcc")
    if gcc is None or not Path("/usr/include/modbus/modbus.h").exists():
        raise SlaveError(f"gcc and {DEBIAN_PACKAGE} are needed for the independent Modbus slave: run "
                         "./scripts/test, which installs them")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = directory / f"libmodbus-slave-{digest}"
    if binary.exists():
        return binary
    result = subprocess.run([gcc, "-O1", "-Wall", "-o", str(binary), str(SOURCE), "-I/usr/include/modbus", "-lmodbus"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SlaveError(f"building {SOURCE.name} failed:\n{result.stderr}")
    return binary


def write_table(registers: Registers, path: Path) -> Path:
    """The slave's table file: one ``h|i ADDRESS VALUE`` line per register."""
    lines = []
    for (table, address), word in sorted(registers.items()):
        if table not in ("holding", "input"):
            raise ValueError(f"table {table!r}: use holding or input")
        if not (0 <= address <= 0xFFFF and 0 <= word <= 0xFFFF):
            raise ValueError(f"{table} {address}: address and word must be 0..65535, got {word}")
        lines.append(f"{table[0]} 0x{address:04X} 0x{word:04X}")
    path.write_text("\n".join(lines) + "\n")
    return path


class IndependentSlave:
    """A running libmodbus slave; use as a context manager. ``port`` (TCP) or ``device`` (RTU) says where."""

    def __init__(self, binary: Path, registers: Registers, *, workdir: Path, serial_device: str | None = None,
                 baudrate: int = 9600, parity: str = "N", stop_bits: int = 1, unit: int = 1,
                 refuse_writes: int = 0, debug: bool = False, start_timeout_s: float = 15.0) -> None:
        self.binary = binary
        self.registers = dict(registers)
        self.workdir = workdir
        self.serial_device = serial_device
        self.unit = unit
        self.port = 0
        self.device = serial_device or ""
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.table_path = write_table(self.registers, workdir / f"slave-{stamp}.tbl")
        self.log_path = workdir / f"slave-{stamp}.log"
        args = [str(binary), "--table", str(self.table_path), "--unit", str(unit)]
        if serial_device:
            args += ["--rtu", serial_device, "--baud", str(baudrate), "--parity", parity, "--stop", str(stop_bits)]
        else:
            args += ["--tcp", "0"]
        if refuse_writes:
            args += ["--refuse-writes", str(refuse_writes)]
        if debug:
            args.append("--debug")
        self._args = args
        self._start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> IndependentSlave:
        """Start the slave and wait (bounded) for its READY line.

        :raises SlaveError: it exited or did not listen in time, with its stderr.
        """
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self._args, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.process.stdout is not None
        # The READY line comes after listen()/open(); a bounded wait, since readline alone could block forever.
        deadline = time.monotonic() + self._start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise SlaveError(f"the libmodbus slave did not start within {self._start_timeout_s}s: "
                                     f"{self.log_path.read_text()}")
                if selector.select(timeout=remaining):
                    line = self.process.stdout.readline()
                    if line.startswith("READY "):
                        break
                    if not line:   # EOF: the process ended
                        self.process.wait(timeout=5)
                        raise SlaveError(f"the libmodbus slave exited ({self.process.returncode}): "
                                         f"{self.log_path.read_text()}")
        if not self.serial_device:
            self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> IndependentSlave:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
