"""Find the meters on a bus and identify their profiles.

A unit id "answers" when it returns registers or a Modbus exception (a device is there, even if it refuses
the address); silence until the timeout means nobody is home. Each answering unit is then identified:

1. Read Device Identification (FC 43/14, basic objects): a meter that implements it names its vendor and
   product code, and the profile declaring that product code (``[identification]``) is taken as it is.
2. Signature registers: a profile may declare registers whose value names the model (``[[signatures]]``);
   a unit whose registers hold those values is that model, and a profile whose signature does not match is
   ruled out.
3. Otherwise the unit is read with every remaining candidate profile, and the profile whose points all read and look
   plausible (mains voltage, grid frequency, non-negative counters) scores highest; layouts that read the
   same are listed as candidates for the technician to confirm with ``read``.

Bounded: at most one timeout per silent unit id, and per answering unit one identification request plus one
read per profile (plus one per signature register).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from drivers.bus import BusPoller
from drivers.errors import BusError, ExceptionResponseError
from drivers.model import REGISTER_COUNT, BusConfig, Profile, Quantity, Reading

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
    identified_by: str = ""      # "device identification" (FC 43/14) | "signature registers" | "plausibility" | ""
    vendor_name: str = ""        # as the device answered FC 43/14, if it did
    product_code: str = ""


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


def _answers(poller: BusPoller, device_id: int) -> bool:
    """A device is at ``device_id`` if it sends anything valid back to a one-register read."""
    try:
        poller.read_registers(device_id, "holding", 0, 1)
    except ExceptionResponseError as exc:
        # Exception code 4/10/11 from a TCP server or gateway means "no such unit behind me".
        return exc.code not in (4, 10, 11)
    except BusError:
        return False  # silence (or noise) until the timeout: nobody home
    return True


def scan_bus(bus: BusConfig, units: Iterable[int], profiles: Mapping[str, Profile],
             progress: Callable[[int, int, int], None] | None = None, min_score: float = 0.8,
             poller: BusPoller | None = None) -> list[ScanResult]:
    """Probe ``units`` on ``bus``; ``progress(done, total, device_id)`` is called after each unit id.

    Every request goes through one :class:`BusPoller`, so the scan keeps the RTU inter-frame silence, flushes
    stale input and checks each reply against its request like polling does. Pass the ``poller`` that owns
    the bus in a running gateway to scan a serial line while it is being polled (a second owner of a serial
    port is refused); otherwise the scan opens the bus itself and closes it at the end.

    :raises BusError: the bus itself cannot be opened (no such serial port, nothing listening).
    """
    unit_list = [u for u in units if 1 <= u <= 247]
    owner = poller or BusPoller(bus, [], {})
    try:
        owner.open()
        found: dict[int, tuple[str, str]] = {}
        for done, device_id in enumerate(unit_list, 1):
            if _answers(owner, device_id):
                found[device_id] = owner.identify(device_id)
            if progress is not None:
                progress(done, len(unit_list), device_id)
        return [_identify_profile(owner, device_id, vendor, product, profiles, min_score)
                for device_id, (vendor, product) in found.items()]
    finally:
        if poller is None:
            owner.close()


def _identify_profile(poller: BusPoller, device_id: int, vendor: str, product: str,
                      profiles: Mapping[str, Profile], min_score: float) -> ScanResult:
    named = [p for p in profiles.values() if product and p.product_code.casefold() == product.casefold()]
    if named:
        readings = tuple(poller.read_once(device_id, named[0]))
        return ScanResult(device_id, named[0].id, round(plausibility(readings), 3), (), readings,
                          "device identification", vendor, product)
    candidates = []
    for profile in profiles.values():
        if not profile.signatures:
            candidates.append(profile)
        elif _signature_matches(poller, device_id, profile):
            readings = tuple(poller.read_once(device_id, profile))
            return ScanResult(device_id, profile.id, round(plausibility(readings), 3), (), readings,
                              "signature registers", vendor, product)
    scores: list[tuple[str, float, int, tuple[Reading, ...]]] = []
    for profile in candidates:
        try:
            readings = tuple(poller.read_once(device_id, profile))
        except BusError:
            continue  # this profile's registers are not there
        scores.append((profile.id, round(plausibility(readings), 3), len(profile.points), readings))
    scores.sort(key=lambda s: (s[1], s[2]), reverse=True)
    fitting = [s for s in scores if s[1] >= min_score]
    if not fitting:
        return ScanResult(device_id, None, 0.0, (), (), "", vendor, product)
    best = fitting[0]
    return ScanResult(device_id, best[0], best[1], tuple((s[0], s[1]) for s in fitting[1:]), best[3],
                      "plausibility", vendor, product)


def _signature_matches(poller: BusPoller, device_id: int, profile: Profile) -> bool:
    for signature in profile.signatures:
        count = REGISTER_COUNT[signature.data_type]
        try:
            words = poller.read_registers(device_id, signature.table, signature.address, count)
        except BusError:
            return False
        if int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big") not in signature.values:
            return False
    return True


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
