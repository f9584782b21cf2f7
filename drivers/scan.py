"""Find the meters on a bus and identify their profiles.

A unit id "answers" when it returns registers or a Modbus exception (a device is there, even if it refuses
the address); silence until the timeout, or a gateway's "no such unit" (exception 0x0A/0x0B), means nobody is
home. Each answering unit is identified at once (so a scan cut short keeps what it found, ``on_result``):

1. Read Device Identification (FC 43/14, basic objects): a meter that implements it names its vendor and
   product code, and the profile declaring that product code (``[identification]``) is taken as it is.
2. Signature registers: a profile may declare registers whose value names the model (``[[signatures]]``);
   a unit whose registers hold those values is that model, and a profile whose signature does not match is
   ruled out.
3. Otherwise every remaining candidate profile is tried with one read (``BusPoller.probe``: the planned
   request that holds most of its points), and the profile whose points read plausibly scores highest:
   mains voltage, grid frequency, non-negative counters, and numbers of the type the profile says (an integer
   counter read as a float comes out near 1e-38, a float read as an integer near 1.1e9; this is what tells a
   heat meter from a gas totaliser or a pulse counter with the same register layout). Profiles that fit
   equally well, on as many points, are not guessed between: the result names no profile and lists them
   (``ScanResult.profile is None`` with ``candidates``), for the technician to confirm with ``read``.

Requests per answering unit, counted in the tests: one presence read, one identification request, one read
per signature register, one probe per candidate profile, then the chosen profile's full read (its plan,
usually one to three requests). A silent unit id costs one timeout.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from drivers.bus import GATEWAY_CODES, BusPoller
from drivers.decode import decode_raw
from drivers.errors import BusError, DecodeError, ExceptionResponseError
from drivers.model import REGISTER_COUNT, BusConfig, Point, Profile, Quantity, Ratios, Reading

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
    profile: str | None          # best guess; None when no profile fits, or several fit equally (candidates)
    score: float                 # share of the profile's points that read plausibly, 0..1
    candidates: tuple[tuple[str, float], ...]  # other profiles that fit, best first
    readings: tuple[Reading, ...] = ()
    identified_by: str = ""      # "device identification" (FC 43/14) | "signature registers" | "plausibility" | ""
    vendor_name: str = ""        # as the device answered FC 43/14, if it did
    product_code: str = ""

    @property
    def undecided(self) -> bool:
        """Several profiles fit equally: the scan cannot tell which model it is (confirm with ``read``)."""
        return self.profile is None and bool(self.candidates)


def _wrong_type(point: Point, raw: tuple[int, ...]) -> bool:
    """Whether ``raw`` looks like another data type than the point's: an integer register read as a float
    (a tiny non-zero float, below 1e-20), or a float read as a 32-bit integer (a value of at least 2**29
    whose bits are a float between 0.001 and 1e7)."""
    if len(raw) != point.count:
        return False
    if point.data_type in ("f32", "f64"):
        try:
            value = decode_raw(point, raw)
        except DecodeError:
            return False
        return value != 0 and abs(value) < 1e-20
    if point.data_type in ("u32", "i32"):
        try:
            as_int = decode_raw(replace(point, nan_values=()), raw)
            as_float = decode_raw(replace(point, data_type="f32", nan_values=()), raw)
        except (DecodeError, struct.error):
            return False
        return abs(as_int) >= 2 ** 29 and 1e-3 <= abs(as_float) <= 1e7
    return False


def plausibility(readings: Iterable[Reading], profile: Profile | None = None) -> float:
    """Share of readings that decoded, fall in their quantity's plausible range and, with ``profile``, look
    like the data type its point names."""
    readings = list(readings)
    if not readings:
        return 0.0
    points = {p.name: p for p in profile.points} if profile is not None else {}
    good = 0
    for r in readings:
        if r.quality != "ok" or r.value is None or not math.isfinite(r.value):
            continue
        point = points.get(r.point)
        if point is not None and _wrong_type(point, r.raw):
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
        return exc.code not in (4, *GATEWAY_CODES)
    except BusError:
        return False  # silence (or noise) until the timeout: nobody home
    return True


def scan_bus(bus: BusConfig, units: Iterable[int], profiles: Mapping[str, Profile],
             progress: Callable[[int, int, int], None] | None = None, min_score: float = 0.8,
             poller: BusPoller | None = None, on_result: Callable[[ScanResult], None] | None = None,
             ratios: Ratios = Ratios()) -> list[ScanResult]:
    """Probe ``units`` on ``bus``; ``progress(done, total, device_id)`` is called after each unit id, and
    ``on_result(result)`` as soon as a unit is identified, so a caller that stops the scan (an exception from
    either callback ends it) keeps what was found. Readings are primary by ``ratios``.

    Every request goes through one :class:`BusPoller`, so the scan keeps the RTU inter-frame silence, flushes
    stale input and checks each reply against its request like polling does. Pass the ``poller`` that owns
    the bus in a running gateway to scan a serial line while it is being polled (a second owner of a serial
    port is refused); the scan's reads are transactions of their own and change nothing the live meters'
    plans learned. Otherwise the scan opens the bus itself and closes it at the end.

    :raises BusError: the bus itself cannot be opened (no such serial port, nothing listening).
    """
    unit_list = [u for u in units if 1 <= u <= 247]
    owner = poller or BusPoller(bus, [], {})
    results: list[ScanResult] = []
    try:
        owner.open()
        for done, device_id in enumerate(unit_list, 1):
            if _answers(owner, device_id):
                vendor, product = owner.identify(device_id)
                result = _identify_profile(owner, device_id, vendor, product, profiles, min_score, ratios)
                results.append(result)
                if on_result is not None:
                    on_result(result)
            if progress is not None:
                progress(done, len(unit_list), device_id)
        return results
    finally:
        if poller is None:
            owner.close()


def _full_read(poller: BusPoller, device_id: int, profile: Profile, ratios: Ratios) -> tuple[Reading, ...]:
    try:
        return tuple(poller.read_once(device_id, profile, meter_id="scan", ratios=ratios))
    except BusError:
        return ()


def _identify_profile(poller: BusPoller, device_id: int, vendor: str, product: str,
                      profiles: Mapping[str, Profile], min_score: float, ratios: Ratios) -> ScanResult:
    named = [p for p in profiles.values() if product and p.product_code.casefold() == product.casefold()]
    if named:
        readings = _full_read(poller, device_id, named[0], ratios)
        return ScanResult(device_id, named[0].id, round(plausibility(readings, named[0]), 3), (), readings,
                          "device identification", vendor, product)
    candidates = []
    for profile in profiles.values():
        if not profile.signatures:
            candidates.append(profile)
        elif _signature_matches(poller, device_id, profile):
            readings = _full_read(poller, device_id, profile, ratios)
            return ScanResult(device_id, profile.id, round(plausibility(readings, profile), 3), (), readings,
                              "signature registers", vendor, product)
    scores: list[tuple[str, float, int]] = []
    for profile in candidates:
        try:
            probed = poller.probe(device_id, profile, ratios)
        except BusError:
            continue  # this profile's registers are not there
        scores.append((profile.id, round(plausibility(probed, profile), 3), len(probed)))
    scores.sort(key=lambda s: (s[1], s[2]), reverse=True)
    fitting = [s for s in scores if s[1] >= min_score]
    if not fitting:
        return ScanResult(device_id, None, 0.0, (), (), "", vendor, product)
    best = fitting[0]
    tied = [s for s in fitting if s[1:] == best[1:]]
    if len(tied) > 1:   # the registers cannot tell these models apart: say so rather than guess
        return ScanResult(device_id, None, best[1], tuple((s[0], s[1]) for s in fitting), (), "", vendor, product)
    profile = profiles[best[0]]
    return ScanResult(device_id, best[0], best[1], tuple((s[0], s[1]) for s in fitting[1:]),
                      _full_read(poller, device_id, profile, ratios), "plausibility", vendor, product)


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
