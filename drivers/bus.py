"""Bus owners: one :class:`BusPoller` per serial line or TCP endpoint serialises every request on it.

A dead or slow meter costs at most one timeout per cycle: after a missed reply the meter's remaining
requests are skipped and it is retried with exponential back-off, so the other meters keep their
schedule (a common complaint against gateways that retry every register of a dead meter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.decode import decode_point, decode_raw
from drivers.errors import BusError, DecodeError, DriverError
from drivers.model import BusConfig, MeterConfig, Point, Profile, Reading
from drivers.planner import ReadRequest, plan_reads

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


@dataclass(frozen=True)
class MeterStats:
    requests: int = 0
    timeouts: int = 0
    exceptions: int = 0
    decode_errors: int = 0
    last_ok_at: float | None = None     # UTC epoch seconds of the last complete read
    last_error: str = ""
    latency_ms: float | None = None     # of the last successful cycle
    state: str = "unknown"              # ok | failing | disabled


def make_client(bus: BusConfig) -> ModbusTcpClient | ModbusSerialClient:
    """A pymodbus client for the bus; nothing is opened yet."""
    if bus.transport == "tcp":
        return ModbusTcpClient(bus.host, port=bus.port, timeout=bus.timeout_s, retries=bus.retries)
    if bus.transport == "rtu_over_tcp":
        # Serial device servers pass RTU frames (with CRC) through a TCP socket unchanged.
        return ModbusTcpClient(bus.host, port=bus.port, framer=FramerType.RTU, timeout=bus.timeout_s,
                               retries=bus.retries)
    if bus.serial is None:
        raise BusError(f"bus {bus.name}: transport 'rtu' needs serial settings (port, baud rate)")
    s = bus.serial
    return ModbusSerialClient(s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits,
                              bytesize=s.bytesize, timeout=bus.timeout_s, retries=bus.retries)


def _describe_open_failure(bus: BusConfig) -> str:
    if bus.transport == "rtu" and bus.serial is not None:
        import os
        port = bus.serial.port
        if not os.path.exists(port):
            return f"serial port {port} does not exist: check the cable/adapter and the port name (ls /dev/serial/by-id/)"
        if not os.access(port, os.R_OK | os.W_OK):
            return (f"no permission to open {port}: add the gateway's user to the dialout group "
                    "(sudo usermod -aG dialout USER) and log in again")
        return f"cannot open serial port {port}"
    return f"cannot connect to {bus.host}:{bus.port}: check the address and that the device is powered and reachable"


class BusPoller:
    """Owns one bus. Thread-safe: a lock serialises requests, so the web UI can test-read meanwhile."""

    def __init__(self, bus: BusConfig, meters: Sequence[MeterConfig], profiles: Mapping[str, Profile]) -> None:
        self.bus = bus
        self.meters = [m for m in meters if m.bus == bus.name]
        for meter in self.meters:
            if meter.profile not in profiles:
                raise DriverError(f"meter {meter.id}: unknown profile '{meter.profile}'")
        self.profiles = dict(profiles)
        self._plans = {m.id: plan_reads(profiles[m.profile], bus.max_gap_registers) for m in self.meters}
        self._client = make_client(bus)
        self._lock = threading.Lock()
        self._stats = {m.id: MeterStats(state="unknown" if m.enabled else "disabled") for m in self.meters}
        self._next_due = {m.id: 0.0 for m in self.meters}
        self._failures = {m.id: 0 for m in self.meters}
        self._last_request_end = 0.0

    # -- polling ---------------------------------------------------------------------------------
    def poll_due(self, now_monotonic: float | None = None) -> list[Reading]:
        """Poll every enabled meter whose interval has elapsed; never raises for a meter's failure."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        readings: list[Reading] = []
        for meter in self.meters:
            if not meter.enabled or self._next_due[meter.id] > now:
                continue
            readings.extend(self._poll_meter(meter, now))
        return readings

    def next_due_in(self, now_monotonic: float | None = None) -> float:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        due = [self._next_due[m.id] for m in self.meters if m.enabled]
        return max(0.0, min(due) - now) if due else 1.0

    def stats(self) -> dict[str, MeterStats]:
        return dict(self._stats)

    def _poll_meter(self, meter: MeterConfig, now: float) -> list[Reading]:
        started = time.monotonic()
        try:
            readings = self._read(meter.id, meter.device_id, self.profiles[meter.profile], self._plans[meter.id])
        except BusError as exc:
            self._failures[meter.id] += 1
            backoff = min(meter.poll_interval_s * 2 ** (self._failures[meter.id] - 1), MAX_BACKOFF_S)
            self._next_due[meter.id] = now + backoff
            stats = self._stats[meter.id]
            if stats.last_error != str(exc):  # log the first of identical errors only, until a success
                log.error("meter %s (bus %s, device %d): %s; retrying in %.0f s",
                          meter.id, self.bus.name, meter.device_id, exc, backoff)
            self._stats[meter.id] = replace(stats, state="failing", last_error=str(exc))
            return []
        if self._failures[meter.id]:
            log.info("meter %s answers again", meter.id)
        self._failures[meter.id] = 0
        self._next_due[meter.id] = now + meter.poll_interval_s
        self._stats[meter.id] = replace(self._stats[meter.id], state="ok", last_error="", last_ok_at=time.time(),
                                        latency_ms=(time.monotonic() - started) * 1000)
        return readings

    # -- requests ----------------------------------------------------------------------------------
    def _request(self, meter_id: str, device_id: int, req: ReadRequest) -> list[int]:
        if self.bus.inter_request_delay_s:
            pause = self._last_request_end + self.bus.inter_request_delay_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        stats = self._stats.get(meter_id)
        if stats is not None:
            self._stats[meter_id] = replace(stats, requests=stats.requests + 1)
        if not self._client.connected and not self._client.connect():
            raise BusError(_describe_open_failure(self.bus))
        read = (self._client.read_input_registers if req.table == "input" else self._client.read_holding_registers)
        try:
            response = read(req.address, count=req.count, device_id=device_id)
        except ModbusException as exc:
            if stats is not None:
                self._stats[meter_id] = replace(self._stats[meter_id], timeouts=self._stats[meter_id].timeouts + 1)
            self._client.close()  # drop half-read frames so the next request starts clean
            raise BusError(f"no valid reply to {req.table} registers {req.address}..{req.address + req.count - 1}: {exc}") from exc
        finally:
            self._last_request_end = time.monotonic()
        if response.isError():
            if stats is not None:
                self._stats[meter_id] = replace(self._stats[meter_id], exceptions=self._stats[meter_id].exceptions + 1)
            code = getattr(response, "exception_code", "?")
            raise BusError(f"exception code {code} for {req.table} registers {req.address}..{req.address + req.count - 1}")
        if len(response.registers) != req.count:
            raise BusError(f"reply has {len(response.registers)} registers, asked for {req.count}")
        return list(response.registers)

    def _read(self, meter_id: str, device_id: int, profile: Profile, plan: Sequence[ReadRequest]) -> list[Reading]:
        with self._lock:
            blocks = [(req, self._request(meter_id, device_id, req)) for req in plan]
        timestamp = time.time()
        words: dict[tuple[str, int], int] = {}
        for req, registers in blocks:
            for offset, word in enumerate(registers):
                words[(req.table, req.address + offset)] = word
        return [self._decode(meter_id, device_id, point, words, timestamp) for req, _ in blocks for point in req.points]

    def _decode(self, meter_id: str, device_id: int, point: Point, words: dict, timestamp: float) -> Reading:
        raw = tuple(words[(point.table, point.address + i)] for i in range(point.count))
        try:
            exponent = 0
            if point.scale_register is not None:
                exponent = int(decode_raw(replace(point, data_type="i16", scale=1.0, nan_values=()),
                                          [words[(point.table, point.scale_register)]]))
            value = decode_point(point, raw, exponent)
        except DecodeError as exc:
            stats = self._stats.get(meter_id)
            if stats is not None:
                self._stats[meter_id] = replace(stats, decode_errors=stats.decode_errors + 1)
            return Reading(meter_id, point.name, timestamp, None, point.unit, point.quantity, "invalid",
                           f"device {device_id} register {point.address}: {exc}", raw)
        return Reading(meter_id, point.name, timestamp, value, point.unit, point.quantity, raw=raw)

    def read_once(self, device_id: int, profile: Profile, meter_id: str = "test-read") -> list[Reading]:
        """One read of every point of ``profile`` at ``device_id``, through this bus's owner.

        :raises BusError: the device did not answer or refused a request.
        """
        return self._read(meter_id, device_id, profile, plan_reads(profile, self.bus.max_gap_registers))

    def close(self) -> None:
        with self._lock:
            self._client.close()


def read_meter(bus: BusConfig, device_id: int, profile: Profile) -> list[Reading]:
    """One-shot read of one meter (the ``read`` command); opens and closes the bus."""
    if not 1 <= device_id <= 247:
        raise DriverError(f"unit id {device_id} is outside 1-247; use the meter's Modbus address")
    poller = BusPoller(bus, [], {})
    try:
        return poller.read_once(device_id, profile)
    finally:
        poller.close()
