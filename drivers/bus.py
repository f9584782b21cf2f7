"""Bus owners: one :class:`BusPoller` per serial line or TCP endpoint serialises every request on it.

A dead or slow meter costs at most one timeout per cycle: after a missed reply the meter's remaining
requests are skipped and it is retried with exponential back-off, so the other meters keep their
schedule (a common complaint against gateways that retry every register of a dead meter).

RTU framing: RTU frames carry no transaction id, so a late reply to an earlier request could be taken for
the answer to the next one. Before each request the poller therefore waits out the 3.5-character silence
(and the bus's configured pause), discards whatever is still in the receive buffer, and checks every reply
against its request: unit id, function code and byte count. A reply that fails its CRC, arrives cut short
or is garbage is counted as such, not as a plain timeout, so a technician can tell noise from a dead meter.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU

from drivers.decode import make_decoder
from drivers.errors import BusError, DecodeError, DriverError, ExceptionResponseError, RefusedError
from drivers.model import BusConfig, MeterConfig, Point, Profile, Ratios, Reading
from drivers.planner import BusCost, DeviceLimits, ReadRequest, plan_reads, split_request

log = logging.getLogger(__name__)

# pymodbus logs every missed reply at ERROR, every cycle, without the meter's name. The bus owner logs the
# first of identical errors with meter, device id and registers and stays quiet until the next success
# (STYLE "Errors"), so pymodbus' own messages are only wanted when someone turns them on explicitly.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

MAX_BACKOFF_S = 300.0

#: Modbus exception codes a device sends when it does not like the address range or length of a read.
REFUSED_RANGE_CODES = {2: "illegal data address", 3: "illegal data value"}
EXCEPTION_NAMES = {1: "illegal function", **REFUSED_RANGE_CODES, 4: "device failure", 5: "acknowledge",
                   6: "device busy", 10: "gateway path unavailable", 11: "gateway target did not respond"}
#: Exception codes a Modbus TCP gateway (serial device server) sends for a unit id nobody answers behind it.
GATEWAY_CODES = {10, 11}


@dataclass(frozen=True)
class MeterStats:
    requests: int = 0
    timeouts: int = 0                   # no reply at all within the bus timeout
    exceptions: int = 0                 # Modbus exception responses
    decode_errors: int = 0
    last_ok_at: float | None = None     # UTC epoch seconds of the last complete read
    last_error: str = ""
    latency_ms: float | None = None     # of the last successful cycle
    state: str = "unknown"              # ok | failing | disabled
    crc_errors: int = 0                 # replies whose CRC did not match (noise, termination, two masters)
    framing_errors: int = 0             # replies cut short, garbage, or not matching the request
    request_latency_ms: float | None = None  # request -> reply, moving average over good replies
    polls: int = 0                      # poll cycles started (answered or not)
    late_polls: int = 0                 # started more than half an interval after their scheduled time
    skipped_polls: int = 0              # scheduled times that passed with no poll (the bus was busy, issue 17)


def _serial_char_s(bus: BusConfig) -> float:
    if bus.serial is None:
        return 0.0
    s = bus.serial
    return (1 + s.bytesize + (0 if s.parity == "N" else 1) + s.stopbits) / s.baudrate


def make_client(bus: BusConfig, trace_packet=None) -> ModbusTcpClient | ModbusSerialClient:  # type: ignore[no-untyped-def]
    """A pymodbus client for the bus; nothing is opened yet. ``trace_packet`` sees every frame (pymodbus hook)."""
    if bus.transport == "tcp":
        return ModbusTcpClient(bus.host, port=bus.port, timeout=bus.timeout_s, retries=bus.retries,
                               trace_packet=trace_packet)
    if bus.transport == "rtu_over_tcp":
        # Serial device servers pass RTU frames (with CRC) through a TCP socket unchanged.
        return ModbusTcpClient(bus.host, port=bus.port, framer=FramerType.RTU, timeout=bus.timeout_s,
                               retries=bus.retries, trace_packet=trace_packet)
    if bus.serial is None:
        raise BusError(f"bus {bus.name}: transport 'rtu' needs serial settings (port, baud rate)")
    s = bus.serial
    return ModbusSerialClient(s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits,
                              bytesize=s.bytesize, timeout=bus.timeout_s, retries=bus.retries,
                              trace_packet=trace_packet)


def describe_open_failure(bus: BusConfig) -> str:
    """Why the bus could not be opened, and what to do about it."""
    if bus.transport == "rtu" and bus.serial is not None:
        import grp
        import os
        import pwd
        import stat
        port = bus.serial.port
        if not os.path.exists(port):
            return f"serial port {port} does not exist: check the cable/adapter and the port name (ls /dev/serial/by-id/)"
        if not os.access(port, os.R_OK | os.W_OK):
            user = pwd.getpwuid(os.geteuid()).pw_name
            try:
                group = grp.getgrgid(os.stat(port).st_gid).gr_name
            except KeyError:
                group = "dialout"
            return (f"no permission to open {port}: user {user} is not in its group {group}; "
                    f"run: sudo usermod -aG {group} {user}, then log in again (or restart the service)")
        if not stat.S_ISCHR(os.stat(port).st_mode):     # a typo'd path: a directory or a regular file
            return (f"{port} is not a serial device: name the adapter, e.g. /dev/ttyUSB0 "
                    f"(ls /dev/serial/by-id/)")
        return f"cannot open serial port {port}: is another program using it? (fuser {port})"
    return f"cannot connect to {bus.host}:{bus.port}: check the address and that the device is powered and reachable"


#: One reply of a read: the request, its prepared points (see ``BusPoller._prepare``) and the registers.
Block = tuple[ReadRequest, tuple, list[int]]


def _word(blocks: Sequence[Block], point: Point) -> int:
    """The scale-factor register of ``point`` from whichever reply of the read holds it."""
    address = point.scale_register
    assert address is not None
    for req, _, registers in blocks:
        if req.table == point.table and req.address <= address < req.address + len(registers):
            return registers[address - req.address]
    raise DecodeError(f"scale-factor register {point.scale_register} was not read (the device refused it)")


def _span(req: ReadRequest) -> str:
    return f"{req.table} registers {req.address}..{req.address + req.count - 1}"


class BusPoller:
    """Owns one bus. Thread-safe: a lock serialises requests, so the web UI can test-read meanwhile."""

    def __init__(self, bus: BusConfig, meters: Sequence[MeterConfig], profiles: Mapping[str, Profile]) -> None:
        self.bus = bus
        self.meters = [m for m in meters if m.bus == bus.name]
        for meter in self.meters:
            if meter.enabled and meter.profile not in profiles:   # a disabled meter may name a broken profile
                raise DriverError(f"meter {meter.id}: unknown profile '{meter.profile}'")
        self.profiles = dict(profiles)
        self.cost = BusCost.for_bus(bus)
        self._rtu = bus.transport in ("rtu", "rtu_over_tcp")
        self._rx = b""  # bytes received for the request in flight (pymodbus trace hook)
        self._client = make_client(bus, self._trace_packet)
        self._lock = threading.Lock()
        # Mutable counters per meter (a frozen MeterStats is built on demand: this is the per-request hot path).
        self._stats: dict[str, dict[str, Any]] = {
            m.id: MeterStats(state="unknown" if m.enabled else "disabled").__dict__.copy() for m in self.meters}
        self._decoders: dict[tuple[str, str], tuple[Point, Callable[[Sequence[int]], float]]] = {}
        self._next_due = {m.id: 0.0 for m in self.meters}
        self._on_schedule: set[str] = set()   # meters polled on their schedule (not first, not backing off)
        self._failures = {m.id: 0 for m in self.meters}
        # What each device refused, per (device id, profile id): a test read or scan with another profile
        # learns nothing the live meter's plan uses (issue 13).
        self._limits: dict[tuple[int, str], DeviceLimits] = {}
        self._plans: dict[tuple[int, str], tuple[DeviceLimits, Profile, list[tuple[ReadRequest, tuple]]]] = {}
        self._last_request_end = 0.0
        # RTU: a frame ends after 3.5 silent characters; at more than 19200 baud the standard fixes 1.75 ms.
        char_s = _serial_char_s(bus) if bus.transport == "rtu" else 0.0
        self._silence_s = max(3.5 * char_s, 0.00175) if char_s else 0.0
        self._pause_s = max(self._silence_s, bus.inter_request_delay_s)
        self._serial = bus.transport == "rtu"

    # -- polling ---------------------------------------------------------------------------------
    def poll_due(self, now_monotonic: float | None = None) -> list[Reading]:
        """Poll every enabled meter whose interval has elapsed; never raises for a meter's failure.

        Each meter keeps a monotonic schedule (issue 17): the next poll is due one interval after the previous
        one was *due*, not after it ran, so a slow cycle does not shift every later poll. A poll that starts
        more than half an interval after its time counts as late; scheduled times that passed while the bus
        was busy count as skipped (``MeterStats.late_polls``, ``skipped_polls``), so nothing is lost unseen.
        After a failure the meter backs off and its schedule starts afresh when it answers again.
        """
        entered = time.monotonic()
        now = entered if now_monotonic is None else now_monotonic
        readings: list[Reading] = []
        for meter in self.meters:
            if not meter.enabled:
                continue
            started = now + (time.monotonic() - entered)   # the meters before it on the bus took time
            if self._next_due[meter.id] > started:
                continue
            readings.extend(self._poll_meter(meter, started))
        return readings

    def next_due_in(self, now_monotonic: float | None = None) -> float:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        due = [self._next_due[m.id] for m in self.meters if m.enabled]
        return max(0.0, min(due) - now) if due else 1.0

    def stats(self) -> dict[str, MeterStats]:
        return {meter_id: MeterStats(**fields) for meter_id, fields in self._stats.items()}

    def limits(self) -> dict[tuple[int, str], DeviceLimits]:
        """What each device was seen to refuse, by (device id, profile id) (the read planner plans around it)."""
        return dict(self._limits)

    def plan(self, device_id: int, profile: Profile) -> list[ReadRequest]:
        """The requests the next read of ``profile`` at ``device_id`` will send."""
        return [req for req, _ in self._prepared_plan(device_id, profile)]

    def _prepared_plan(self, device_id: int, profile: Profile, keep: bool = True) -> list[tuple[ReadRequest, tuple]]:
        """The plan for ``profile`` at ``device_id`` with what was learned; cached only when ``keep``."""
        limits = self._limits.get((device_id, profile.id), DeviceLimits())
        cached = self._plans.get((device_id, profile.id))
        # A profile edited and reloaded under the same id is a different object: plan it afresh.
        if cached is None or cached[0] != limits or cached[1] is not profile:
            plan = plan_reads(profile, self.bus.max_gap_registers, cost=self.cost, limits=limits)
            cached = (limits, profile, [(req, self._prepare(profile, req)) for req in plan])
            if keep:
                self._plans[(device_id, profile.id)] = cached
        return cached[2]

    def _prepare(self, profile: Profile, req: ReadRequest) -> tuple:
        """Per point of ``req``: (point, offset in the reply, register count, decoder, scale-factor offset).

        The scale-factor offset is None without a scale register, and -1 when the planner put the scale
        register into another request (it is then looked up among all replies of the read).
        """
        entries = []
        for point in req.points:
            cached = self._decoders.get((profile.id, point.name))
            if cached is None or cached[0] is not point:
                cached = self._decoders[(profile.id, point.name)] = (point, make_decoder(point))
            scale_offset = None
            if point.scale_register is not None:
                scale_offset = point.scale_register - req.address
                if not 0 <= scale_offset < req.count:
                    scale_offset = -1
            entries.append((point, point.address - req.address, point.count, cached[1], scale_offset))
        return tuple(entries)

    def _schedule(self, meter: MeterConfig, now: float) -> float | None:
        """Count this poll, and whether it is late or skipped times; the time it was due (None: unscheduled)."""
        stats = self._stats[meter.id]
        stats["polls"] += 1
        due = self._next_due[meter.id]
        if meter.id not in self._on_schedule:
            return None
        interval = meter.poll_interval_s
        late_s = now - due
        if late_s > interval / 2:
            stats["late_polls"] += 1
        skipped = int(late_s // interval)
        if skipped > 0:
            stats["skipped_polls"] += skipped
            due += skipped * interval
        return due

    def _poll_meter(self, meter: MeterConfig, now: float) -> list[Reading]:
        started = time.monotonic()
        due = self._schedule(meter, now)
        missed: BusError | None = None
        try:
            readings, missed = self._read(meter.id, meter.device_id, self.profiles[meter.profile], meter.ratios)
        except BusError as failure:
            readings, missed = [], failure
        if missed is not None:
            # The blocks read before a missed reply are kept (issue 13); the rest of the cycle is skipped.
            error = str(missed)
            self._failures[meter.id] += 1
            backoff = min(meter.poll_interval_s * 2 ** (self._failures[meter.id] - 1), MAX_BACKOFF_S)
            self._next_due[meter.id] = now + backoff
            self._on_schedule.discard(meter.id)   # back-off: no late or skipped polls until it answers again
            stats = self._stats[meter.id]
            if stats["last_error"] != error:  # log the first of identical errors only, until a success
                log.error("meter %s (bus %s, device %d): %s; retrying in %.0f s",
                          meter.id, self.bus.name, meter.device_id, error, backoff)
            stats.update(state="failing", last_error=error)
            return readings
        if self._failures[meter.id]:
            log.info("meter %s answers again", meter.id)
        self._failures[meter.id] = 0
        self._next_due[meter.id] = (now if due is None else due) + meter.poll_interval_s
        self._on_schedule.add(meter.id)
        self._stats[meter.id].update(state="ok", last_error="", last_ok_at=time.time(),
                                     latency_ms=(time.monotonic() - started) * 1000)
        return readings

    # -- requests ----------------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx = b""
        else:
            self._rx = data  # pymodbus passes the whole buffer received so far
        return data

    def _count(self, meter_id: str, **increments: int) -> None:
        stats = self._stats.get(meter_id)
        if stats is not None:
            for key, value in increments.items():
                stats[key] += value

    def _before_request(self) -> None:
        """Wait out the inter-frame silence and the configured pause, then drop stale input."""
        if self._pause_s:
            remaining = self._last_request_end + self._pause_s - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
        socket = getattr(self._client, "socket", None)
        if socket is None:
            return
        if self._serial:
            socket.reset_input_buffer()  # a late reply to an earlier request must not pass for this one
        elif self._rtu:  # RTU over TCP: the same, on the device server's socket
            socket.setblocking(False)
            try:
                while socket.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._client.close()  # the device server dropped the connection: reconnect on the next request

    def _classify_failure(self, device_id: int, req: ReadRequest) -> tuple[str, str]:
        """(stats counter, message) for a request that got no valid reply, from the bytes that did arrive."""
        rx = self._rx
        what = _span(req)
        if not rx:
            return "timeouts", f"no reply within {self.bus.timeout_s:g} s to {what}"
        if self._rtu:
            expected = 5 + 2 * req.count
            fc = 4 if req.table == "input" else 3
            if len(rx) >= 5 and rx[0] == device_id and rx[1] == fc | 0x80:
                expected = 5
            if len(rx) >= expected and rx[0] == device_id:
                body, crc = rx[:expected - 2], rx[expected - 2:expected]
                if FramerRTU.compute_CRC(body) != int.from_bytes(crc, "big"):
                    return "crc_errors", f"CRC error in the reply to {what} (noise on the line? check termination and shielding)"
            if rx[0] == device_id and rx[1:2] in (bytes([fc]), bytes([fc | 0x80])) and len(rx) < expected:
                return "framing_errors", f"truncated reply to {what}: {len(rx)} of {expected} bytes"
        return "framing_errors", f"garbled reply to {what}: {rx[:16].hex(' ')}{' ...' if len(rx) > 16 else ''}"

    def _request(self, meter_id: str, device_id: int, req: ReadRequest) -> list[int]:
        self._before_request()
        stats = self._stats.get(meter_id)
        if stats is not None:
            stats["requests"] += 1
        if not self._client.connected and not self._client.connect():
            raise BusError(describe_open_failure(self.bus))
        read = (self._client.read_input_registers if req.table == "input" else self._client.read_holding_registers)
        self._rx = b""
        sent = time.monotonic()
        try:
            response = read(req.address, count=req.count, device_id=device_id)
        except (ModbusException, ValueError, IndexError, struct.error) as exc:
            counter, message = self._classify_failure(device_id, req)
            self._count(meter_id, **{counter: 1})
            if self.bus.transport == "tcp":
                self._client.close()  # a TCP stream with half a frame in it cannot be resynchronised
            # RTU over TCP keeps its connection: the device server passes bytes, a late or broken reply is
            # drained before the next request (_before_request), and reconnecting costs every meter behind it.
            raise BusError(message) from exc
        finally:
            self._last_request_end = time.monotonic()
        fc = 4 if req.table == "input" else 3
        if response.dev_id != device_id or response.function_code not in (fc, fc | 0x80):
            self._count(meter_id, framing_errors=1)
            raise BusError(f"reply from unit {response.dev_id} with function code {response.function_code} "
                           f"does not match the request to unit {device_id}, function code {fc}")
        if response.isError():
            self._count(meter_id, exceptions=1)
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            message = f"exception code {code} ({name}) for {_span(req)}"
            if code in GATEWAY_CODES:
                message = (f"no unit {device_id} answers behind the gateway ({message}): check the unit id, and the "
                           "serial line, baud rate and parity between the gateway and the meter")
            raise (RefusedError if code in REFUSED_RANGE_CODES else ExceptionResponseError)(message, code)
        if len(response.registers) != req.count:
            self._count(meter_id, framing_errors=1)
            raise BusError(f"reply has {len(response.registers)} registers, asked for {req.count} ({_span(req)})")
        if stats is not None:
            latency_ms, average = (self._last_request_end - sent) * 1000, stats["request_latency_ms"]
            stats["request_latency_ms"] = latency_ms if average is None else 0.8 * average + 0.2 * latency_ms
        return list(response.registers)

    def _read(self, meter_id: str, device_id: int, profile: Profile, ratios: Ratios = Ratios(),
              learn: bool = True) -> tuple[list[Reading], BusError | None]:
        """Run the plan; a refused range is split, a missed reply ends the read. Returns the readings (primary:
        secondary-side points are multiplied by ``ratios``) and the missed reply, if any, which left the points
        not yet read invalid. What the device refused is remembered for (device, profile) only when ``learn``:
        a test read or scan runs on its own and leaves the live plan as it was (issue 13).

        :raises BusError: nothing was read (no reply, or every register refused).
        """
        blocks: list[Block] = []
        refused: list[tuple[ReadRequest, RefusedError]] = []
        missed: BusError | None = None
        key = (device_id, profile.id)
        with self._lock:
            known = key in self._limits
            limits = self._limits.get(key, DeviceLimits())
            plan = self._prepared_plan(device_id, profile, keep=learn)
            try:
                # Until the device has accepted a read, refused ranges are put aside rather than split: a device
                # that is not this model (scan tries every profile) refuses everything, and splitting each range
                # down to single points would cost twice as many requests for nothing.
                deferred, limits = self._run(meter_id, device_id, profile, plan, blocks, refused, limits,
                                             may_defer=not known)
                if deferred and (blocks or self._accepts_a_point(meter_id, device_id, deferred[0][0])):
                    refused.clear()
                    _, limits = self._run(meter_id, device_id, profile, deferred, blocks, refused, limits,
                                          may_defer=False)
            except BusError as exc:
                if not blocks:
                    raise
                missed = exc
            # Remember what the device refused only if it accepted something: a device that refuses all is
            # the wrong model (or the wrong unit id), and its limits would mislead the next read.
            if blocks and learn:
                self._limits[key] = limits
        if not blocks:
            # it answered, with a refusal: a RefusedError, so a shell says "check the profile", not "no answer"
            raise RefusedError(f"refuses every register of profile {profile.id} ({refused[0][1]}): "
                               "is it the right profile?", refused[0][1].code)
        timestamp = time.time()
        readings = self._decode(meter_id, device_id, blocks, ratios, timestamp)
        done = {r.point for r in readings}
        not_read = [(p, str(exc)) for req, exc in refused for p in req.points]
        if missed is not None:
            refused_names = {p.name for p, _ in not_read}
            not_read += [(p, f"not read this cycle: {missed}") for p in profile.points
                         if p.name not in done and p.name not in refused_names]
        if not_read or [e for _, e, _ in blocks] != [e for _, e in plan]:
            # plans run in address order; refused, split and skipped ranges come back out of it
            readings += [Reading(meter_id, p.name, timestamp, None, p.unit, p.quantity, "invalid",
                                 f"device {device_id} register {p.address}: {reason}") for p, reason in not_read]
            rank = {p.name: i for i, p in enumerate(sorted(profile.points, key=lambda p: (p.table, p.address)))}
            readings.sort(key=lambda r: rank[r.point])
        return readings, missed

    def _decode(self, meter_id: str, device_id: int, blocks: Sequence[Block], ratios: Ratios,
                timestamp: float) -> list[Reading]:
        """The readings in ``blocks``, primary (secondary-side points x ``ratios``); bad bytes read invalid."""
        readings = []
        for _, entries, registers in blocks:
            for point, offset, count, decoder, scale_offset in entries:
                raw = tuple(registers[offset:offset + count])
                try:
                    value = decoder(raw)
                    if scale_offset is not None:
                        exponent = registers[scale_offset] if scale_offset >= 0 else _word(blocks, point)
                        value *= 10.0 ** (exponent - 0x10000 if exponent & 0x8000 else exponent)  # signed i16
                except DecodeError as exc:
                    self._count(meter_id, decode_errors=1)
                    readings.append(Reading(meter_id, point.name, timestamp, None, point.unit, point.quantity,
                                            "invalid", f"device {device_id} register {point.address}: {exc}", raw))
                    continue
                if point.secondary != "none":
                    value *= ratios.factor(point.secondary)
                readings.append(Reading(meter_id, point.name, timestamp, value, point.unit, point.quantity, raw=raw))
        return readings

    def probe(self, device_id: int, profile: Profile, ratios: Ratios = Ratios()) -> list[Reading]:
        """One request for ``profile`` at ``device_id`` (scan's test of a candidate): the planned request that
        holds the most points, decoded; a device that refuses it for its length (exception 3) is asked for the
        first point alone. Learns nothing.

        :raises BusError: no reply, or the range refused (:class:`RefusedError`): not this model.
        """
        plan = self._prepared_plan(device_id, profile, keep=False)
        req, entries = max(plan, key=lambda item: len(item[0].points))
        with self._lock:
            try:
                blocks: list[Block] = [(req, entries, self._request("scan", device_id, req))]
            except RefusedError as exc:
                if exc.code != 3 or len(req.points) < 2:
                    raise
                point = req.points[0]
                req = ReadRequest(point.table, point.address, point.count, (point,))
                blocks = [(req, self._prepare(profile, req), self._request("scan", device_id, req))]
        return self._decode("scan", device_id, blocks, ratios, time.time())

    def _run(self, meter_id: str, device_id: int, profile: Profile, plan: Sequence[tuple[ReadRequest, tuple]],
             blocks: list[Block], refused: list[tuple[ReadRequest, RefusedError]],
             limits: DeviceLimits, may_defer: bool) -> tuple[list[tuple[ReadRequest, tuple]], DeviceLimits]:
        """Send ``plan``, appending replies to ``blocks``; split refused ranges, or put them aside while
        ``may_defer`` and nothing has been accepted yet. Returns (what was put aside, the limits learned)."""
        pending = list(plan)
        deferred: list[tuple[ReadRequest, tuple]] = []
        while pending:
            req, entries = pending.pop(0)
            try:
                blocks.append((req, entries, self._request(meter_id, device_id, req)))
            except RefusedError as exc:
                if may_defer and not blocks:
                    deferred.append((req, entries))
                    refused.append((req, exc))
                    continue
                split = split_request(req, limits, exc.code)
                if split is None:
                    refused.append((req, exc))
                    continue
                halves, limits = split
                log.info("device %d on bus %s refuses %s (%s); splitting it", device_id, self.bus.name, _span(req), exc)
                pending[:0] = [(half, self._prepare(profile, half)) for half in halves]
        if blocks and deferred:  # accepted something after all: the ranges put aside are split now
            refused[:] = [(r, e) for r, e in refused if all(r is not d for d, _ in deferred)]
            more, limits = self._run(meter_id, device_id, profile, deferred, blocks, refused, limits, False)
            return more, limits
        return deferred, limits

    def _accepts_a_point(self, meter_id: str, device_id: int, req: ReadRequest) -> bool:
        """Whether the device reads the first point of a refused range on its own (then it refused the range
        for its length or holes, and the range is worth splitting; otherwise it is the wrong model)."""
        point = req.points[0]
        try:
            self._request(meter_id, device_id, ReadRequest(point.table, point.address, point.count, (point,)))
        except RefusedError:
            return False
        return True

    def read_once(self, device_id: int, profile: Profile, meter_id: str = "test-read",
                  ratios: Ratios = Ratios()) -> list[Reading]:
        """One read of every point of ``profile`` at ``device_id``, through this bus's owner, as a transaction
        of its own: it waits for the request in flight, holds the bus until it is done, and uses but never
        changes what the live meters' plans learned (a wrong profile tried here cannot stop a live meter).
        Points not read because a reply was missed half-way read ``invalid`` with the reason.

        :raises BusError: the device did not answer or refused every request.
        """
        return self._read(meter_id, device_id, profile, ratios, learn=False)[0]

    def open(self) -> None:
        """Open the bus now (it opens on the first request otherwise).

        :raises BusError: no such serial port, no permission, or nothing listening; the message says which.
        """
        with self._lock:
            if not self._client.connected and not self._client.connect():
                raise BusError(describe_open_failure(self.bus))

    def identify(self, device_id: int) -> tuple[str, str]:
        """(vendor name, product code) by Read Device Identification (FC 43/14, basic objects), or
        ("", "") when the device does not implement it (most meters answer exception 1 or stay silent)."""
        with self._lock:
            self._before_request()
            if not self._client.connected and not self._client.connect():
                raise BusError(describe_open_failure(self.bus))
            try:
                response = self._client.read_device_information(read_code=1, object_id=0, device_id=device_id)
            except (ModbusException, ValueError, IndexError, struct.error):
                if self.bus.transport != "rtu":
                    self._client.close()
                return "", ""
            finally:
                self._last_request_end = time.monotonic()
        if response.isError() or response.dev_id != device_id:
            return "", ""
        info = getattr(response, "information", {})

        def text(key: int) -> str:
            value = info.get(key, b"")
            return (value if isinstance(value, bytes) else b"".join(value)).decode("ascii", "replace").strip()
        return text(0), text(1)

    def read_registers(self, device_id: int, table: str, address: int, count: int) -> list[int]:
        """Raw registers, through this bus's owner (signature checks, a technician's look at a range).

        :raises BusError: no valid reply; :class:`ExceptionResponseError` for an exception response.
        """
        with self._lock:
            return self._request("raw-read", device_id, ReadRequest(table, address, count, ()))  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            self._client.close()


def read_meter(bus: BusConfig, device_id: int, profile: Profile, ratios: Ratios = Ratios()) -> list[Reading]:
    """One-shot read of one meter (the ``read`` command), primary values by ``ratios``; opens and closes the bus."""
    if not 1 <= device_id <= 247:
        raise DriverError(f"unit id {device_id} is outside 1-247; use the meter's Modbus address")
    poller = BusPoller(bus, [], {})
    try:
        return poller.read_once(device_id, profile, ratios=ratios)
    finally:
        poller.close()
