"""The independent slave (libmodbus, tests/independent_slave) itself: what it serves is exactly the table it was
given, FC 03 and FC 04 apart, with libmodbus's exception codes, over TCP and RTU on a socat pty, so other tests
(the profile conformance, the simulator comparison) can lean on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import BusConfig, BusPoller, ExceptionResponseError, SerialSettings
from tests.conftest import modbus_tcp_exchange, open_pty_pair
from tests.independent_slave import IndependentSlave

# Words picked by hand: 0x4366 0x0000 is IEEE 754 230.0 (sign 0, exponent 0x86 = 134 -> 2^7,
# mantissa 1 + 0x660000/2^23 = 1.796875; 1.796875 x 128 = 230.0).
TABLE = {("holding", 0x2006): 0x4366, ("holding", 0x2007): 0x0000, ("holding", 0x2009): 0x1234,
         ("input", 0): 0x0001, ("input", 1): 0xFFFF}


def _poller(bus: BusConfig) -> BusPoller:
    return BusPoller(bus, [], {})


@pytest.fixture(params=["tcp", "rtu"])
def slave_bus(request: pytest.FixtureRequest, libmodbus_slave: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "tcp":
        with IndependentSlave(libmodbus_slave, TABLE, workdir=tmp_path, unit=7) as slave:
            yield BusConfig("t", "tcp", port=slave.port, timeout_s=2.0)
    else:
        with open_pty_pair(tmp_path) as pair, IndependentSlave(libmodbus_slave, TABLE, workdir=tmp_path, unit=7,
                                                              serial_device=pair.device_side):
            yield BusConfig("r", "rtu", serial=SerialSettings(pair.gateway_side, 9600), timeout_s=2.0)


def test_serves_exactly_the_table_fc03_and_fc04_apart(slave_bus: BusConfig) -> None:
    poller = _poller(slave_bus)
    try:
        # 0x2008 lies between two table entries: served as 0 (the span 0x2006..0x2009 is mapped).
        assert poller.read_registers(7, "holding", 0x2006, 4) == [0x4366, 0x0000, 0x0000, 0x1234]
        assert poller.read_registers(7, "input", 0, 2) == [0x0001, 0xFFFF]
        # Outside the span, and the same address in the other table: exception 2 (illegal data address).
        for table, address in (("holding", 0x2005), ("holding", 0x2009 + 1), ("input", 0x2006), ("holding", 0)):
            with pytest.raises(ExceptionResponseError) as error:
                poller.read_registers(7, table, address, 1)
            assert error.value.code == 2, (table, address)
    finally:
        poller.close()


def test_rtu_answers_only_its_own_unit(libmodbus_slave: Path, tmp_path: Path) -> None:
    with open_pty_pair(tmp_path) as pair, IndependentSlave(libmodbus_slave, TABLE, workdir=tmp_path, unit=7,
                                                          serial_device=pair.device_side):
        poller = _poller(BusConfig("r", "rtu", serial=SerialSettings(pair.gateway_side, 9600), timeout_s=3.0))  # generous: a loaded CI machine
        try:
            assert poller.read_registers(7, "input", 0, 1) == [1]
            with pytest.raises(Exception) as error:
                poller.read_registers(8, "input", 0, 1)
            assert not isinstance(error.value, ExceptionResponseError)   # silence, not an exception reply
            assert poller.read_registers(7, "input", 1, 1) == [0xFFFF]   # and the line still works
        finally:
            poller.close()


@pytest.mark.parametrize("refuse_writes,pdu,expected", [
    (0, bytes([3, 0x20, 0x06, 0, 0]), bytes([0x83, 3])),          # count 0: illegal data value
    (0, bytes([4, 0, 0, 0, 126]), bytes([0x84, 3])),              # count 126 > 125: illegal data value
    (0, bytes([4, 0, 0, 0, 3]), bytes([0x84, 2])),                # runs past the table: illegal data address
    (0, bytes([0x41, 0, 0]), bytes([0xC1, 1])),                   # unknown function: illegal function
    (0, bytes([6, 0x20, 0x09, 0xAB, 0xCD]), bytes([6, 0x20, 0x09, 0xAB, 0xCD])),   # a write is stored (echo)
    (2, bytes([6, 0x20, 0x09, 0xAB, 0xCD]), bytes([0x86, 2])),    # --refuse-writes 2
    (2, bytes([16, 0x20, 0x06, 0, 1, 2, 0, 0]), bytes([0x90, 2])),
])
def test_libmodbus_answers(libmodbus_slave: Path, tmp_path: Path, refuse_writes: int, pdu: bytes,
                           expected: bytes) -> None:
    """What libmodbus answers to edge requests: the reference the simulator is compared with."""
    with IndependentSlave(libmodbus_slave, TABLE, workdir=tmp_path, unit=7, refuse_writes=refuse_writes) as slave:
        assert modbus_tcp_exchange(slave.port, pdu, 7) == expected
        # and a refused write leaves the register as it was
        assert modbus_tcp_exchange(slave.port, bytes([3, 0x20, 0x09, 0, 1]), 7) == bytes(
            [3, 2, 0xAB, 0xCD] if expected[0] == 6 else [3, 2, 0x12, 0x34])
