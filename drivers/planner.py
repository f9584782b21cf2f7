"""Read planner: the requests that cover a meter's points in the least bus time.

The cost model is wire time, not request count alone. On Modbus RTU a read of ``n`` registers costs an
8-byte request, a ``5 + 2n``-byte reply, two 3.5-character silences and the device's turnaround; bridging a
hole of ``g`` unused registers costs ``2g`` bytes more in the reply. So neighbouring points are coalesced
when the hole is cheaper than a new request, within the device's read limit (at most 125 registers) and the
configured ``max_gap``. Among plans of equal cost the one with fewer requests wins. The optimum is found
exactly by dynamic programming over the points sorted by address (points of one meter number in the tens).

Devices differ in what they accept: some answer "illegal data address" (exception 2) to a read that bridges
reserved registers, others "illegal data value" (3) to a read longer than they like. :func:`split_request`
cuts such a request in two, and :class:`DeviceLimits` remembers what the device refused, so the next plan
avoids it: exception 2 teaches a hole (a cut the next plan does not bridge), exception 3 a size (a shorter
read limit). No plan holds a request over 125 registers, and a point is always read, alone if need be, however
low a learned limit is (issue 13: a limit of 1 register once produced one 8228-register read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from drivers.model import MAX_REGISTERS_PER_READ, BusConfig, Point, Profile, RegisterTable

#: Bytes of a read request (unit id, function code, address, count, CRC) and of a reply without its data
#: (unit id, function code, byte count, CRC), on RTU.
RTU_REQUEST_BYTES = 8
RTU_REPLY_OVERHEAD_BYTES = 5
#: Typical time a meter takes between the end of a request and the start of its reply.
DEFAULT_TURNAROUND_S = 0.005


@dataclass(frozen=True)
class ReadRequest:
    table: RegisterTable
    address: int
    count: int
    points: tuple[Point, ...]


@dataclass(frozen=True)
class BusCost:
    """Wire time of requests on one bus, in character times (one byte on the wire, start/stop bits included)."""

    char_s: float = 10 / 9600           # seconds per character: (start + 8 data + parity + stop) / baud rate
    overhead_chars: float = (RTU_REQUEST_BYTES + RTU_REPLY_OVERHEAD_BYTES + 7
                             + DEFAULT_TURNAROUND_S * 9600 / 10)

    @classmethod
    def for_bus(cls, bus: BusConfig, turnaround_s: float = DEFAULT_TURNAROUND_S) -> BusCost:
        """The cost model for ``bus``.

        RTU: character time from the line settings. RTU over TCP: the serial line behind the device server
        dominates; its baud rate is not known here, so 9600 8N1 is assumed. Modbus TCP: a request costs a
        round trip (the turnaround), a register next to nothing (100 Mbit/s), so holes up to ``max_gap`` are
        always bridged.
        """
        if bus.transport == "rtu" and bus.serial is not None:
            s = bus.serial
            char_s = (1 + s.bytesize + (0 if s.parity == "N" else 1) + s.stopbits) / s.baudrate
        elif bus.transport == "rtu_over_tcp":
            char_s = 10 / 9600
        else:
            char_s = 8 / 100e6
        frame = RTU_REQUEST_BYTES + RTU_REPLY_OVERHEAD_BYTES + (7.0 if bus.transport != "tcp" else 8.0)
        extra = max(bus.inter_request_delay_s, 0.0) + turnaround_s
        return cls(char_s, frame + extra / char_s)

    def request_chars(self, count: int) -> float:
        return self.overhead_chars + 2 * count

    def plan_seconds(self, plan: Sequence[ReadRequest]) -> float:
        """Modelled wire time of ``plan``, in seconds."""
        return sum(self.request_chars(r.count) for r in plan) * self.char_s


@dataclass(frozen=True)
class DeviceLimits:
    """What one device was seen to refuse: a shorter read limit, and addresses a read must not bridge into."""

    max_count: int = MAX_REGISTERS_PER_READ
    cuts: frozenset[tuple[str, int]] = field(default_factory=frozenset)  # (table, address) starting a new read


@dataclass(frozen=True)
class _Span:
    table: RegisterTable
    address: int
    count: int
    point: Point | None        # None: a scale-factor register read for its points

    @property
    def end(self) -> int:
        return self.address + self.count


def _spans(points: Sequence[Point]) -> list[_Span]:
    spans = []
    for point in points:
        spans.append(_Span(point.table, point.address, point.count, point))
        if point.scale_register is not None:
            spans.append(_Span(point.table, point.scale_register, 1, None))
    spans.sort(key=lambda s: (s.table, s.address, s.count))
    return spans


def plan_reads(profile: Profile, max_gap: int = 10, max_count: int | None = None,
               points: Sequence[Point] | None = None, cost: BusCost | None = None,
               limits: DeviceLimits | None = None) -> list[ReadRequest]:
    """The cheapest requests that cover ``points`` (default: all of the profile's).

    :param max_gap: never bridge a hole of more than this many registers.
    :param max_count: read at most this many registers at once (besides the profile's and the device's limit).
    :param cost: the bus's cost model (default: RTU at 9600 baud).
    :param limits: what the device was seen to refuse.
    """
    cost = cost or BusCost()
    limits = limits or DeviceLimits()
    limit = min(max_count or MAX_REGISTERS_PER_READ, profile.max_registers_per_read, limits.max_count)
    spans = _spans(points if points is not None else profile.points)
    n = len(spans)
    # best[j] = (cost, requests, start index of the last request) for the first j spans.
    best: list[tuple[float, int, int]] = [(0.0, 0, 0)] + [(float("inf"), 0, 0)] * n
    for i in range(n):
        if best[i][0] == float("inf"):
            continue
        end = spans[i].end
        for j in range(i, n):
            span = spans[j]
            if j > i:
                if (span.table != spans[i].table or span.address - end > max_gap
                        or (span.address > end - 1 and (span.table, span.address) in limits.cuts)):
                    break
                end = max(end, span.end)
            if j > i and end - spans[i].address > limit:
                break  # a span alone is always a request: a point cannot be read in pieces
            candidate = (best[i][0] + cost.request_chars(end - spans[i].address), best[i][1] + 1, i)
            if candidate[:2] < best[j + 1][:2]:
                best[j + 1] = candidate
    requests: list[ReadRequest] = []
    j = n
    while j > 0:
        i = best[j][2]
        requests.append(_request(spans[i:j]))
        j = i
    return requests[::-1]


def _request(spans: Sequence[_Span]) -> ReadRequest:
    start = spans[0].address
    end = max(s.end for s in spans)
    return ReadRequest(spans[0].table, start, end - start, tuple(s.point for s in spans if s.point is not None))


def split_request(request: ReadRequest, limits: DeviceLimits,
                  code: int = 2) -> tuple[list[ReadRequest], DeviceLimits] | None:
    """Cut a request refused with exception ``code`` in two and learn what to avoid; None if it cannot be cut.

    Exception 2 (illegal data address) teaches a hole: the request is cut at its widest hole (the device
    probably has no registers there), or in the middle when it has none, and the cut is remembered. Exception 3
    (illegal data value: the count) teaches a size: the request is cut in the middle and the read limit lowered
    to the longer half, never below one point.
    """
    spans = _spans(request.points)
    if len(spans) < 2:
        return None
    cut_at, widest, end = 0, -1, spans[0].end
    for k in range(1, len(spans)):
        hole = spans[k].address - end
        if hole > widest and spans[k].address >= end:
            cut_at, widest = k, hole
        end = max(end, spans[k].end)
    if code != 3 and widest > 0:
        learned = replace(limits, cuts=limits.cuts | {(spans[cut_at].table, spans[cut_at].address)})
        return [_request(spans[:cut_at]), _request(spans[cut_at:])], learned
    middle = request.address + request.count // 2
    # the first span from the middle on that does not overlap its predecessors (else the last such span)
    end, cut_at = spans[0].end, 0
    for k in range(1, len(spans)):
        if spans[k].address >= end and (cut_at == 0 or spans[cut_at].address < middle):
            cut_at = k
        end = max(end, spans[k].end)
    if cut_at == 0:
        return None  # overlapping points only: nothing to cut between
    halves = [_request(spans[:cut_at]), _request(spans[cut_at:])]
    if code == 3:
        longest_point = max(s.count for s in spans)
        learned = replace(limits, max_count=max(longest_point, min(limits.max_count, max(h.count for h in halves))))
    else:
        learned = replace(limits, cuts=limits.cuts | {(spans[cut_at].table, spans[cut_at].address)})
    return halves, learned


def one_request_per_point(profile: Profile) -> list[ReadRequest]:
    """The naive plan (one read per point): the benchmark's baseline."""
    return [_request([s]) if s.point is None else ReadRequest(s.table, s.address, s.count, (s.point,))
            for s in _spans(profile.points)]


def fewest_requests(profile: Profile, limit: int = MAX_REGISTERS_PER_READ) -> list[ReadRequest]:
    """The plan with the fewest requests, ignoring holes (greedy from the lowest address is optimal for
    covering sorted intervals with windows of at most ``limit`` registers): the benchmark's yardstick."""
    spans = _spans(profile.points)
    requests: list[ReadRequest] = []
    group: list[_Span] = []
    for span in spans:
        if group and (span.table != group[0].table or max(span.end, *(s.end for s in group))
                      - group[0].address > min(limit, profile.max_registers_per_read)):
            requests.append(_request(group))
            group = []
        group.append(span)
    if group:
        requests.append(_request(group))
    return requests
