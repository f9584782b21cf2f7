"""Find the meters on a bus and guess their profiles.

A unit id "answers" when it returns registers or a Modbus exception (a device is there, even if it refuses
the address); silence until the timeout means nobody is home. Each answering unit is then read with every
candidate profile, and the profile whose points all read and look plausible (mains voltage, grid
frequency, non-negative counters) scores highest. Bounded: at most one timeout per silent unit id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pymodbus.exceptions import ModbusException

from drivers.bus import BusPoller, make_client
from drivers.errors import BusError
from drivers.model import BusConfig, Profile, Quantity, Reading

#: Values a point of each quantity can take on a working meter.
_PLAUSIBLE: dict[Quantity, tuple[float, float]] = {
    Quantity.VOLTAGE: (90.0, 480.0),
    Quantity.FREQUENCY: (45.0, 65.0),
    Quantity.POWER_FACTOR: (-1.0, 1.0),
    Quantity.CURRENT: (0.0, 10_000.0),
    Quantity.TEMPERATURE: (-40.0, 400.0),
}


@dataclass(frozen=True)
class ScanResult:
    device_id: int
    profile: str | None          # best guess, None when no profile fits
    score: float                 # share of the profile's points that read plausibly, 0..1
    candidates: tuple[tuple[str, float], ...]  # other profiles that fit, best first
    readings: tuple[Reading, ...] = ()


def plausibility(readings: Iterable[Reading]) -> float:
    """Share of readings that decoded and fall in their quantity's plausible range."""
    readings = list(readings)
    if not readings:
        return 0.0
    good = 0
    for r in readings:
        if r.quality != "ok" or r.value is None or not math.isfinite(r.value):
            continue
        low, high = _PLAUSIBLE.get(r.quantity, (0.0 if r.quantity.cumulative else -1e12, 1e12))
        good += low <= r.value <= high
    return good / len(readings)


def _answers(bus: BusConfig, client, device_id: int) -> bool:  # type: ignore[no-untyped-def]
    """A device is at ``device_id`` if it sends anything valid back to a one-register read."""
    try:
        response = client.read_holding_registers(0, count=1, device_id=device_id)
    except ModbusException:
        client.close()
        return False
    # Exception code 4/10/11 from a TCP server or gateway means "no such unit behind me".
    return not response.isError() or getattr(response, "exception_code", 0) not in (4, 10, 11)


def scan_bus(bus: BusConfig, units: Iterable[int], profiles: Mapping[str, Profile],
             progress: Callable[[int, int, int], None] | None = None, min_score: float = 0.8) -> list[ScanResult]:
    """Probe ``units`` on ``bus``; ``progress(done, total, device_id)`` is called after each unit id.

    :raises BusError: the bus itself cannot be opened (no such serial port, nothing listening).
    """
    unit_list = [u for u in units if 1 <= u <= 247]
    client = make_client(bus)
    found: list[int] = []
    try:
        if not client.connect():
            from drivers.bus import _describe_open_failure
            raise BusError(_describe_open_failure(bus))
        for done, device_id in enumerate(unit_list, 1):
            if _answers(bus, client, device_id):
                found.append(device_id)
            if bus.inter_request_delay_s:
                time.sleep(bus.inter_request_delay_s)
            if progress is not None:
                progress(done, len(unit_list), device_id)
    finally:
        client.close()
    results = []
    poller = BusPoller(bus, [], {})
    try:
        for device_id in found:
            scores = []
            best_readings: tuple[Reading, ...] = ()
            for profile in profiles.values():
                try:
                    readings = poller.read_once(device_id, profile)
                except BusError:
                    continue  # this profile's registers are not there
                score = plausibility(readings)
                scores.append((profile.id, round(score, 3), len(profile.points)))
                if score >= max((s for _, s, _ in scores), default=0) and not best_readings:
                    best_readings = tuple(readings)
            scores.sort(key=lambda s: (s[1], s[2]), reverse=True)
            fitting = [(pid, score) for pid, score, _ in scores if score >= min_score]
            best = fitting[0][0] if fitting else None
            if best is not None:
                best_readings = tuple(poller.read_once(device_id, profiles[best]))
            results.append(ScanResult(device_id, best, fitting[0][1] if fitting else 0.0, tuple(fitting[1:]),
                                      best_readings if best else ()))
    finally:
        poller.close()
    return results


def parse_units(text: str) -> list[int]:
    """``"1-10,20,30-32"`` -> unit ids; raises ValueError with the fix."""
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"'{part}': use unit ids like 1-247 or 1,2,5-9")
        first, last = int(low), int(high or low)
        if not (1 <= first <= last <= 247):
            raise ValueError(f"'{part}': unit ids run from 1 to 247")
        units.extend(range(first, last + 1))
    return units
