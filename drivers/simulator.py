"""Simulated meters: serve any profile over Modbus TCP, RTU (serial) or RTU-over-TCP with plausible values
that advance in time, and misbehave on request like real meters do (see :data:`FAULTS`).

Counters are the exact integral of a slowly varying load, so energy grows consistently with power:
``P(t) = P0 * (1 + A sin(w t))`` and ``E(t) = E0 + P0 * (t + A (1 - cos(w t)) / w) / 3600``.

It answers like a conforming Modbus server (the specification, "MODBUS Application Protocol V1.1b3", and
libmodbus, which the tests compare it with), not like pymodbus' defaults (issue 13):

- FC 03 serves only the holding registers of the profile, FC 04 only its input registers; a read of the other
  table is refused with exception 2, so a profile that names the wrong table fails in the tests as on site.
- A read count of 0 or over 125 is exception 3 (illegal data value), a range past register 65535 exception 2.
- Any other function is exception 1 (illegal function) for that function, on TCP and on RTU, where the frame
  of an unknown function is found by its CRC so the next frame is answered as usual.
- A write (FC 06/16) to a measuring register is exception 2, illegal data address: the address is not a
  writable one, which the specification's FC 06/16 state diagrams answer with 2 (3 is for a bad value or
  count, and a malformed FC 16 - quantity outside 1-123 or a byte count that does not match - still gets 3).
- A unit id nobody serves is exception 0x0B (gateway target device failed to respond) on Modbus TCP, as a
  gateway answers, and silence on RTU and RTU over TCP, as on a real line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.mei_message import ReadDeviceInformationResponse
from pymodbus.framer import FramerRTU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.decode import encode_point
from drivers.errors import DriverError
from drivers.model import REGISTER_COUNT, Point, Profile, Quantity

log = logging.getLogger(__name__)

#: Mean hourly growth of each cumulative quantity, and the matching instantaneous level.
_RATE_PER_H = {
    Quantity.ENERGY_IMPORT: 120.0, Quantity.ENERGY_EXPORT: 0.0, Quantity.REACTIVE_ENERGY: 30.0,
    Quantity.GAS_VOLUME: 40.0, Quantity.HEAT_ENERGY: 5.6, Quantity.STEAM_MASS: 2.0,
    Quantity.WATER_VOLUME: 5.0, Quantity.PULSE_COUNT: 1000.0,
}
SECONDARY_CT_RATIO = 20.0        # the CTs (100/5 A) a simulated secondary-side meter is connected through
SCALE_EXPONENT = -1              # what a simulated scale-factor register holds
_SWING = 0.2                      # +-20 % load variation
_OMEGA = 2 * math.pi / 600.0      # one load cycle every 10 minutes

Fault = str

#: What a simulated device can be told to do wrong, as a technician meets it on site.
FAULTS: dict[str, str] = {
    "no_answer": "never replies (dead meter, wrong unit id, A/B swapped)",
    "exception": "answers every read with exception 2, illegal data address",
    "busy": "answers every read with exception 6, device busy",
    "garbage": "replies with bytes that are no Modbus frame (two masters, wrong baud rate)",
    "crc": "replies with a broken CRC (noise, missing termination); RTU only",
    "truncated": "replies with the last three bytes missing",
    "slow": "replies after slow_s seconds",
    "holes": "only the profile's registers exist: a read bridging reserved registers gets exception 2",
    "short_reads": "refuses reads of more than max_read registers with exception 3, illegal data value",
    "half_silent": "never replies to reads starting in the upper half of its register map (firmware that hangs "
                   "on part of it), so a read of several blocks misses the later ones",
}


@dataclass(frozen=True)
class SimulatedDevice:
    device_id: int
    profile: Profile
    faults: frozenset[Fault] = field(default_factory=frozenset)
    slow_s: float = 0.5             # reply delay with the "slow" fault
    max_read: int = 16              # longest read accepted with the "short_reads" fault
    frozen_at: float | None = None  # serve the values of this UTC time for ever (byte-for-byte comparisons)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise DriverError(f"simulator: unknown fault '{sorted(unknown)[0]}'; use one of {', '.join(FAULTS)}")
        if not 1 <= self.device_id <= 247:
            raise DriverError(f"simulator: unit id {self.device_id} is outside 1-247")


class _MeterModel:
    """Values of one simulated meter at a given time."""

    def __init__(self, device: SimulatedDevice, started: float) -> None:
        self.device = device
        self.started = started
        cumulative = [p.quantity for p in device.profile.points if p.quantity.cumulative]
        self.main_rate = _RATE_PER_H.get(cumulative[0], 10.0) if cumulative else 10.0
        addresses = [p.address for p in device.profile.points]
        self.middle_address = (min(addresses) + max(addresses)) / 2
        self.drop_reply = False         # the "half_silent" fault: the reply now being sent is swallowed

    def load(self, t: float) -> float:
        return 1.0 + _SWING * math.sin(_OMEGA * t)

    def value(self, point: Point, now: float) -> float:
        t = now - self.started
        q = point.quantity
        if q.cumulative:
            rate = _RATE_PER_H.get(q, 10.0)
            start = 10_000.0 + 1_000.0 * self.device.device_id if rate else 12.5
            return start + rate * (t + _SWING * (1 - math.cos(_OMEGA * t)) / _OMEGA) / 3600.0
        ripple = 0.002 * math.sin(now * 1.7 + self.device.device_id)
        # A secondary-side meter sits behind current transformers: its power and current registers hold the
        # secondary reading (here behind 100/5 A CTs), which is what fits them (the Acrel ADL400's 16-bit
        # power words in W top out at 32.767 kW).
        ct = SECONDARY_CT_RATIO if point.secondary in ("current", "both") else 1.0
        if q is Quantity.ACTIVE_POWER:
            return _RATE_PER_H[Quantity.ENERGY_IMPORT] * self.load(t) / ct
        if q is Quantity.VOLTAGE:
            return 230.0 * (1 + ripple)
        if q is Quantity.CURRENT:
            return _RATE_PER_H[Quantity.ENERGY_IMPORT] * self.load(t) * 1000 / (3 * 230.0) / ct
        if q is Quantity.FREQUENCY:
            return 50.0 + ripple
        if q is Quantity.POWER_FACTOR:
            return 0.95
        if q is Quantity.FLOW_RATE:
            return self.main_rate * self.load(t)
        if q is Quantity.TEMPERATURE:
            return 25.0 if self.main_rate > 20 else 180.0
        if q is Quantity.PRESSURE:
            return 300.0
        return 1.0

    def registers(self, now: float) -> dict[str, dict[int, int]]:
        """Register words by table ("holding", "input") and address."""
        out: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        for point in self.device.profile.points:
            value = self.value(point, now)
            table = out[point.table]
            if point.scale_register is not None:
                # Serve a non-zero power-of-ten exponent (-1), as SunSpec-style meters do, so the scale-factor
                # path is exercised: value = raw * scale * 10**-1.
                table[point.scale_register] = SCALE_EXPONENT & 0xFFFF
                value /= 10.0 ** SCALE_EXPONENT
            for offset, word in enumerate(encode_point(point, value)):
                table[point.address + offset] = word
        for signature in self.device.profile.signatures:
            words = signature.values[0].to_bytes(2 * REGISTER_COUNT[signature.data_type], "big")
            for offset in range(0, len(words), 2):
                out[signature.table][signature.address + offset // 2] = int.from_bytes(words[offset:offset + 2], "big")
        return out


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SimulatorServer:
    """Several simulated meters (one RS-485 line's worth) behind one Modbus TCP, RTU or RTU-over-TCP server."""

    def __init__(self, devices: Sequence[SimulatedDevice], host: str = "127.0.0.1", port: int = 0,
                 serial_port: str | None = None, baudrate: int = 9600, rtu_over_tcp: bool = False) -> None:
        """Serve Modbus TCP on ``host:port`` (0: a free port), Modbus RTU on ``serial_port``, or RTU frames
        over TCP (a serial device server) with ``rtu_over_tcp``."""
        if not devices:
            raise DriverError("simulator: no devices to serve")
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise DriverError(f"simulator: unit id {max(ids, key=ids.count)} used twice; give each meter its own")
        self.host = host
        self.rtu_over_tcp = rtu_over_tcp
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.port = 0 if serial_port else (port or _free_port(host))
        started = time.time()
        self._models = {d.device_id: _MeterModel(d, started if d.frozen_at is None else d.frozen_at)
                        for d in devices}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._received: dict[int, int] = {}   # complete request frames per unit id (the scan's cost, in tests)

    async def _action(self, model: _MeterModel, function_code: int, start_address: int, address: int,
                      count: int, current_registers: list[int], set_values: object) -> ExcCodes | None:
        faults = model.device.faults
        if "slow" in faults:
            await asyncio.sleep(model.device.slow_s)
        if "exception" in faults:
            return ExcCodes.ILLEGAL_ADDRESS
        if "busy" in faults:
            return ExcCodes.DEVICE_BUSY
        if "short_reads" in faults and count > model.device.max_read:
            return ExcCodes.ILLEGAL_VALUE
        if "half_silent" in faults and address > model.middle_address:
            model.drop_reply = True
        table = "input" if function_code == 4 else "holding"
        now = model.device.frozen_at if model.device.frozen_at is not None else time.time()
        for register, word in model.registers(now)[table].items():
            index = register - start_address
            if 0 <= index < len(current_registers):
                current_registers[index] = word
        return None

    @staticmethod
    def _spans(profile: Profile, table: str) -> list[tuple[int, int]]:
        """(address, count) of every register of ``table`` the profile names, sorted."""
        return sorted({(p.address, p.count) for p in profile.points if p.table == table}
                      | {(p.scale_register, 1) for p in profile.points
                         if p.scale_register is not None and p.table == table}
                      | {(s.address, REGISTER_COUNT[s.data_type]) for s in profile.signatures if s.table == table})

    def _blocks(self, model: _MeterModel, table: str) -> list[SimData]:
        spans = self._spans(model.device.profile, table)
        if not spans:
            # pymodbus wants every table non-empty; reads of a table the profile lacks are refused with
            # exception 2 before they get here (_screen), so this register is never served.
            return [SimData(0xFFFF, count=1, values=0, datatype=DataType.REGISTERS)]
        if "holes" in model.device.faults:
            blocks: list[list[int]] = []  # [start, end) of registers that exist
            for address, count in spans:
                if blocks and address <= blocks[-1][1]:
                    blocks[-1][1] = max(blocks[-1][1], address + count)
                else:
                    blocks.append([address, address + count])
        else:  # reserved registers between points read as 0, as on most meters
            blocks = [[spans[0][0], max(a + c for a, c in spans)]]
        return [SimData(start, count=end - start, values=0, datatype=DataType.REGISTERS) for start, end in blocks]

    def _device(self, model: _MeterModel) -> SimDevice:
        # Four separate tables (coils, discrete inputs, holding, input registers): FC 03 and FC 04 apart.
        no_bits = [SimData(0, count=1, values=False, datatype=DataType.BITS)]   # never served: see _screen
        return SimDevice(id=model.device.device_id,
                         simdata=(no_bits, list(no_bits), self._blocks(model, "holding"), self._blocks(model, "input")),
                         action=functools.partial(self._action, model))

    # -- requests pymodbus would answer unlike the specification (see the module docstring) --------------------
    def _frame(self, data: bytes) -> tuple[int, int, int, bytes] | None:
        """(length, unit id, transaction id, PDU) of the first complete request in ``data``; None when it is not
        complete yet (or, on RTU, fails its CRC: pymodbus then discards it as garbage)."""
        if not (self.serial_port is not None or self.rtu_over_tcp):
            if len(data) < 8:
                return None
            length = 6 + int.from_bytes(data[4:6], "big")
            if len(data) < length:
                return None
            return length, data[6], int.from_bytes(data[0:2], "big"), data[7:length]
        if len(data) < 4:
            return None
        fc = data[1]
        size: int | None = None
        if fc in (1, 2, 3, 4, 5, 6):
            size = 8
        elif fc in (15, 16) and len(data) >= 7:
            size = 9 + data[6]
        elif fc == 43 and data[2] == 14:
            size = 7
        if size is None:
            # A function this server does not know: RTU frames are delimited by silence, not by length, so its
            # end is where the CRC matches (libmodbus reads until the line is quiet, to the same effect).
            size = next((n for n in range(4, min(len(data), 256) + 1)
                         if FramerRTU.check_CRC(data[:n - 2], int.from_bytes(data[n - 2:n], "big"))), None)
            if size is None:
                return None
        if len(data) < size or not FramerRTU.check_CRC(data[:size - 2], int.from_bytes(data[size - 2:size], "big")):
            return None
        return size, data[0], 0, data[1:size - 2]

    def _screen(self, data: bytes) -> tuple[int, ExceptionResponse | None] | None:
        """The answer to the first request in ``data`` where it is the simulator's own: (bytes used, exception
        response or None for silence); None when pymodbus answers it (a valid read, FC 43/14)."""
        frame = self._frame(data)
        if frame is None:
            return None
        used, unit, tid, pdu = frame
        self._received[unit] = self._received.get(unit, 0) + 1
        fc = pdu[0] if pdu else 0

        def refuse(code: ExcCodes) -> tuple[int, ExceptionResponse]:
            return used, ExceptionResponse(fc & 0x7F, code, device_id=unit, transaction=tid)
        model = self._models.get(unit)
        if model is None:
            if self.serial_port is not None or self.rtu_over_tcp:
                return used, None                       # nobody home on an RS-485 line
            return refuse(ExcCodes.GATEWAY_NO_RESPONSE)
        if fc in (3, 4):
            if len(pdu) != 5:
                return refuse(ExcCodes.ILLEGAL_VALUE)
            address, count = int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
            if not 1 <= count <= 125:
                return refuse(ExcCodes.ILLEGAL_VALUE)
            if address + count > 0x10000 or not self._spans(model.device.profile, "input" if fc == 4 else "holding"):
                return refuse(ExcCodes.ILLEGAL_ADDRESS)
            return None
        if fc in (6, 16):
            if fc == 16:
                count = int.from_bytes(pdu[3:5], "big") if len(pdu) >= 6 else 0
                if not 1 <= count <= 123 or len(pdu) != 6 + 2 * count or pdu[5] != 2 * count:
                    return refuse(ExcCodes.ILLEGAL_VALUE)
            elif len(pdu) != 5:
                return refuse(ExcCodes.ILLEGAL_VALUE)
            return refuse(ExcCodes.ILLEGAL_ADDRESS)     # measurements are read-only
        if fc == 43 and len(pdu) >= 2 and pdu[1] == 14:
            return None
        return refuse(ExcCodes.ILLEGAL_FUNCTION)

    # -- faults below the register level: pymodbus' trace hooks see every frame and PDU sent ------------
    def _unit_of(self, packet: bytes) -> int:
        rtu = self.serial_port is not None or self.rtu_over_tcp
        return packet[0] if rtu else (packet[6] if len(packet) > 6 else 0)

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        model = self._models.get(self._unit_of(packet))
        if model is None:
            return b"" if self.serial_port is not None else packet  # nobody home on an RS-485 line
        faults = model.device.faults
        if "no_answer" in faults or model.drop_reply:
            model.drop_reply = False
            return b""
        if "garbage" in faults:
            return bytes((0x5A + 37 * i) & 0xFF for i in range(len(packet)))
        if "crc" in faults and (self.serial_port is not None or self.rtu_over_tcp):
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        if "truncated" in faults:
            return packet[:-3]
        return packet

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """Answer Read Device Identification (FC 43/14) per device, as the real model does or does not."""
        if not sending or not isinstance(pdu, ReadDeviceInformationResponse):
            return pdu
        model = self._models.get(pdu.dev_id)
        if model is None or not model.device.profile.product_code:
            code = ExcCodes.GATEWAY_NO_RESPONSE if model is None else ExcCodes.ILLEGAL_FUNCTION
            return ExceptionResponse(pdu.function_code, code, device_id=pdu.dev_id, transaction=pdu.transaction_id)
        profile = model.device.profile
        pdu.information = {0: profile.vendor_name.encode(), 1: profile.product_code.encode(), 2: b"sim-1.0"}
        return pdu

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        assert self._loop is not None
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() instead of dying silently in a thread
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        # The server binds to the running loop, so it is built inside it.
        devices = [self._device(m) for m in self._models.values()]
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial_port:
            server = _SerialServer(self, devices, framer=FramerType.RTU, port=self.serial_port,
                                        baudrate=self.baudrate, ignore_missing_devices=True,
                                        trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        else:
            framer = FramerType.RTU if self.rtu_over_tcp else FramerType.SOCKET
            server = _TcpServer(self, devices, address=(self.host, self.port), framer=framer,
                                     ignore_missing_devices=self.rtu_over_tcp,
                                     trace_packet=self._trace_packet, trace_pdu=self._trace_pdu)
        self._server = server
        task = asyncio.ensure_future(server.serve_forever())
        for _ in range(200):
            if server.transport is not None or task.done():
                break
            await asyncio.sleep(0.01)
        self._ready.set()
        await task

    def requests_received(self, device_id: int) -> int:
        """How many complete requests addressed to ``device_id`` arrived (answered or not)."""
        return self._received.get(device_id, 0)

    def expected(self, device_id: int, point_name: str, at: float) -> float:
        """The value the simulated meter ``device_id`` holds for ``point_name`` at UTC time ``at``."""
        model = self._models[device_id]
        return model.value(model.device.profile.point(point_name), at)

    def start(self, timeout_s: float = 10.0) -> SimulatorServer:
        """Serve in a background thread; return once the port accepts connections."""
        # Checked first: pymodbus' serial server may report itself ready before it has opened the device.
        if self.serial_port and not os.path.exists(self.serial_port):
            raise DriverError(f"simulator: serial device {self.serial_port} does not exist: name the device side of "
                              "the line, e.g. /dev/ttyUSB1, or a pty from `socat -d -d pty,raw,echo=0 pty,raw,echo=0`")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"simulator-{self.port}", daemon=True)
        self._thread.start()
        where = self.serial_port or f"{self.host}:{self.port}"
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.stop()
            fix = "is the address on this machine and the port free?" if not self.serial_port else \
                "is it a serial device that no other program holds?"
            raise DriverError(f"simulator: cannot serve on {where}: {str(self._error).rstrip('.')}: {fix}")
        if self.serial_port:
            log.info("simulator serving %d meter(s) on %s", len(self._models), where)
            return self
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("simulator serving %d meter(s) on %s:%d", len(self._models), self.host, self.port)
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise DriverError(f"simulator: {self.host}:{self.port} did not accept connections within {timeout_s}s")

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            try:
                future.result(timeout=5)
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.debug("simulator shutdown raised", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None


class _ConformingHandler(ServerRequestHandler):
    """pymodbus' request handler with the simulator's own answers in front (``SimulatorServer._screen``)."""

    def __init__(self, owner: ModbusTcpServer | ModbusSerialServer, simulator: SimulatorServer) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)
        self.simulator = simulator

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        screened = self.simulator._screen(data)
        if screened is None:
            return int(super().callback_data(data, addr))
        used, response = screened
        if response is not None:
            self.server_send(response, addr)   # through pdu_send, so the trace hooks' faults still apply
        return used


class _Conforming:
    """Mixed into pymodbus' servers: every connection gets a :class:`_ConformingHandler`."""

    def __init__(self, simulator: SimulatorServer, *args: object, **kwargs: object) -> None:
        self._simulator = simulator
        super().__init__(*args, **kwargs)

    def callback_new_connection(self) -> ServerRequestHandler:
        return _ConformingHandler(self, self._simulator)  # type: ignore[arg-type]


class _TcpServer(_Conforming, ModbusTcpServer):
    pass


class _SerialServer(_Conforming, ModbusSerialServer):
    pass
