"""The simulator answers like a conforming Modbus server (issue 13), checked byte for byte against the
independent libmodbus slave (tests/independent_slave) serving the very same registers, over Modbus TCP and
over RTU on socat ptys, and against the specification where the two must agree.

What is compared: the reply to each request, as raw bytes (the TCP reply's PDU, the whole RTU frame with its
CRC). The registers are the simulator's at one frozen instant (``SimulatedDevice.frozen_at``), written into the
slave's table, so any difference is in how the two servers answer, not in the values.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU

from drivers import SimulatedDevice, SimulatorServer, load_profiles
from drivers.simulator import _MeterModel
from tests.conftest import modbus_tcp_exchange, open_pty_pair
from tests.independent_slave import IndependentSlave

PROFILES = load_profiles(Path(__file__).resolve().parents[2] / "config" / "profiles")
UNIT = 7
FROZEN_AT = 1_700_000_000.0


def _tcp(port: int, pdu: bytes, unit: int = UNIT) -> bytes:
    return modbus_tcp_exchange(port, pdu, unit)


def _rtu_frame(pdu: bytes, unit: int = UNIT) -> bytes:
    body = bytes([unit]) + pdu
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


class _Line:
    """The gateway end of a pty: write a frame, read the reply until the line has been quiet for a while."""

    def __init__(self, path: str) -> None:
        import termios
        import tty
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def exchange(self, frame: bytes, quiet_s: float = 0.15, timeout_s: float = 5.0) -> bytes:
        time.sleep(0.02)   # more than the 3.5-character silence at 9600 baud (4 ms) between frames
        os.write(self.fd, frame)
        reply, deadline = b"", time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], quiet_s if reply else 1.0)
            if not ready:
                if reply:
                    break
                continue
            reply += os.read(self.fd, 512)
        return reply

    def close(self) -> None:
        os.close(self.fd)


def _registers(profile_id: str) -> dict[tuple[str, int], int]:
    device = SimulatedDevice(UNIT, PROFILES[profile_id], frozen_at=FROZEN_AT)
    words = _MeterModel(device, FROZEN_AT).registers(FROZEN_AT)   # a frozen device's clock starts at frozen_at
    return {(table, address): word for table, table_words in words.items() for address, word in table_words.items()}


def _requests(profile_id: str) -> list[bytes]:
    """Requests a gateway sends and requests a conforming server must refuse, for this profile."""
    profile = PROFILES[profile_id]
    requests = []
    for point in profile.points:
        fc = 4 if point.table == "input" else 3
        requests.append(struct.pack(">BHH", fc, point.address, point.count))              # each point alone
        requests.append(struct.pack(">BHH", 7 - fc, point.address, point.count))          # the other table
    first = min(profile.points, key=lambda p: p.address)
    fc = 4 if first.table == "input" else 3
    last = max(p.address + p.count for p in profile.points if p.table == first.table)
    requests += [
        struct.pack(">BHH", fc, first.address, min(125, last - first.address)),   # a long read from the start
        struct.pack(">BHH", fc, first.address - 1, 2),                            # starts before the table
        struct.pack(">BHH", fc, last - 1, 2),                                     # runs past the table
        struct.pack(">BHH", fc, first.address, 0),                                # count 0: exception 3
        struct.pack(">BHH", fc, first.address, 126),                              # count 126: exception 3
        struct.pack(">BHH", 6, first.address, 0x1234),                            # a write to a measurement
        struct.pack(">BHHB", 16, first.address, 2, 4) + b"\x00\x01\x00\x02",       # the same with FC 16
        bytes([0x41]),                                                            # a function nobody has
        struct.pack(">BHH", fc, first.address, first.count),                      # and the line still works
    ]
    return requests


@contextmanager
def _both(kind: str, profile_id: str, binary: Path, tmp_path: Path) -> Iterator[tuple]:
    """(simulator endpoint, slave endpoint): TCP ports or pty lines."""
    registers = _registers(profile_id)
    device = SimulatedDevice(UNIT, PROFILES[profile_id], frozen_at=FROZEN_AT)
    if kind == "tcp":
        server = SimulatorServer([device]).start()
        try:
            with IndependentSlave(binary, registers, workdir=tmp_path, unit=UNIT, refuse_writes=2) as slave:
                yield server.port, slave.port
        finally:
            server.stop()
        return
    with open_pty_pair(tmp_path / "sim") as sim_pair, open_pty_pair(tmp_path / "slave") as slave_pair:
        server = SimulatorServer([device], serial_port=sim_pair.device_side).start()
        lines: list[_Line] = []
        try:
            with IndependentSlave(binary, registers, workdir=tmp_path, unit=UNIT, refuse_writes=2,
                                  serial_device=slave_pair.device_side):
                lines = [_Line(sim_pair.gateway_side), _Line(slave_pair.gateway_side)]
                yield lines[0], lines[1]
        finally:
            for line in lines:
                line.close()
            server.stop()


@pytest.mark.parametrize("profile_id", ["chint-dtsu666", "chint-ddsu666"])
@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_the_simulator_answers_as_the_independent_slave(kind: str, profile_id: str, libmodbus_slave: Path,
                                                        tmp_path: Path) -> None:
    (tmp_path / "sim").mkdir()
    (tmp_path / "slave").mkdir()
    with _both(kind, profile_id, libmodbus_slave, tmp_path) as (simulator, slave):
        for pdu in _requests(profile_id):
            if kind == "tcp":
                ours, theirs = _tcp(simulator, pdu), _tcp(slave, pdu)
            else:
                ours, theirs = simulator.exchange(_rtu_frame(pdu)), slave.exchange(_rtu_frame(pdu))
            assert ours == theirs, (pdu.hex(" "), ours.hex(" "), theirs.hex(" "))
            assert ours, pdu.hex(" ")   # every one of these requests gets an answer


@pytest.mark.parametrize("pdu,expected", [
    (bytes([3, 0x20, 0x06, 0, 0]), bytes([0x83, 3])),        # count 0: illegal data value
    (bytes([3, 0x20, 0x06, 0, 126]), bytes([0x83, 3])),      # count 126 > 125: illegal data value
    (bytes([3, 0xFF, 0xFF, 0, 2]), bytes([0x83, 2])),        # past register 65535: illegal data address
    (bytes([4, 0x20, 0x06, 0, 2]), bytes([0x84, 2])),        # FC 04 on a meter with holding registers only
    (bytes([0x41, 0, 0]), bytes([0xC1, 1])),                 # unknown function: exception 1 for *that* function
    (bytes([0x2B, 0x0D]), bytes([0xAB, 1])),                 # FC 43 with an MEI type other than 14
    (bytes([6, 0x20, 0x06, 0xAB, 0xCD]), bytes([0x86, 2])),  # writes to measurements: not a writable address
    (bytes([16, 0x20, 0x06, 0, 0, 0]), bytes([0x90, 3])),    # FC 16 with quantity 0: illegal data value
])
def test_spec_answers_over_tcp(pdu: bytes, expected: bytes) -> None:
    server = SimulatorServer([SimulatedDevice(UNIT, PROFILES["chint-dtsu666"])]).start()
    try:
        assert _tcp(server.port, pdu) == expected
        assert _tcp(server.port, bytes([3, 0x20, 0x06, 0, 2]))[:2] == bytes([3, 4])   # then a read works
    finally:
        server.stop()


def test_an_absent_unit_behind_tcp_is_a_gateway_exception_and_read_says_so() -> None:
    """Exception 0x0B (gateway target device failed to respond), not 4 (device failure)."""
    from drivers import BusConfig, DriverError, read_meter

    server = SimulatorServer([SimulatedDevice(UNIT, PROFILES["chint-dtsu666"])]).start()
    try:
        assert _tcp(server.port, bytes([3, 0x20, 0x06, 0, 2]), unit=9) == bytes([0x83, 0x0B])
        with pytest.raises(DriverError) as error:
            read_meter(BusConfig("t", "tcp", port=server.port, timeout_s=2.0), 9, PROFILES["chint-dtsu666"])
    finally:
        server.stop()
    assert str(error.value).startswith("no unit 9 answers behind the gateway (exception code 11 (gateway target "
                                       "did not respond) for holding registers ")
    assert str(error.value).endswith("): check the unit id, and the serial line, baud rate and parity between the "
                                     "gateway and the meter")


def test_rtu_unknown_function_is_answered_and_the_next_frame_too(tmp_path: Path) -> None:
    with open_pty_pair(tmp_path) as pair:
        server = SimulatorServer([SimulatedDevice(UNIT, PROFILES["chint-dtsu666"])],
                                 serial_port=pair.device_side).start()
        line = _Line(pair.gateway_side)
        try:
            assert line.exchange(_rtu_frame(bytes([0x41]))) == _rtu_frame(bytes([0xC1, 1]))
            assert line.exchange(_rtu_frame(bytes([0x41, 1, 2, 3]))) == _rtu_frame(bytes([0xC1, 1]))
            assert line.exchange(_rtu_frame(bytes([3, 0x20, 0x06, 0, 0]))) == _rtu_frame(bytes([0x83, 3]))
            reply = line.exchange(_rtu_frame(bytes([3, 0x20, 0x06, 0, 2])))
            assert reply[:3] == bytes([UNIT, 3, 4]) and len(reply) == 9
            assert FramerRTU.check_CRC(reply[:-2], int.from_bytes(reply[-2:], "big"))
            assert line.exchange(_rtu_frame(bytes([3, 0x20, 0x06, 0, 2]), unit=9), quiet_s=0.3, timeout_s=1.0) == b""
        finally:
            line.close()
            server.stop()
