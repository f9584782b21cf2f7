"""Read planner: the fewest requests that cover a meter's points.

Neighbouring registers of the same table are coalesced while the span stays within the device's
read limit and the hole between them is at most ``max_gap`` registers; a hole costs two bytes of wire
time per register, a new request costs a whole request/response frame (about 16 bytes on RTU), so
bridging small holes is cheaper in bus time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.model import Point, Profile, RegisterTable


@dataclass(frozen=True)
class ReadRequest:
    table: RegisterTable
    address: int
    count: int
    points: tuple[Point, ...]


def plan_reads(profile: Profile, max_gap: int = 10, max_count: int | None = None,
               points: Sequence[Point] | None = None) -> list[ReadRequest]:
    """Group ``points`` (default: all of the profile's) into coalesced register reads."""
    limit = min(max_count or profile.max_registers_per_read, profile.max_registers_per_read)
    spans: list[tuple[RegisterTable, int, int, Point | None]] = []
    for point in points if points is not None else profile.points:
        spans.append((point.table, point.address, point.count, point))
        if point.scale_register is not None:
            spans.append((point.table, point.scale_register, 1, None))
    spans.sort(key=lambda s: (s[0], s[1]))
    requests: list[ReadRequest] = []
    current: list[tuple[RegisterTable, int, int, Point | None]] = []
    for span in spans:
        if current:
            table, start = current[0][0], current[0][1]
            end = max(s[1] + s[2] for s in current)
            if (span[0] == table and span[1] - end <= max_gap
                    and max(end, span[1] + span[2]) - start <= limit):
                current.append(span)
                continue
            requests.append(_request(current))
        current = [span]
    if current:
        requests.append(_request(current))
    return requests


def _request(spans: list) -> ReadRequest:
    start = spans[0][1]
    end = max(s[1] + s[2] for s in spans)
    return ReadRequest(spans[0][0], start, end - start, tuple(s[3] for s in spans if s[3] is not None))
