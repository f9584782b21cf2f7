"""Load and validate meter profiles (register maps) from ``config/profiles/*.toml``.

A profile file has top-level ``id``, ``manufacturer``, ``model``, ``source`` (the public document the map
comes from), an optional ``[defaults]`` table applied to every point, and ``[[points]]``. See
``docs/profiles.md``. Every error names the file, the point and the fix.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.errors import ProfileError, not_utf8
from drivers.model import MAX_REGISTERS_PER_READ, REGISTER_COUNT, Point, Profile, Quantity, Signature

_POINT_KEYS = {"name", "address", "data_type", "quantity", "unit", "table", "word_order", "byte_order",
               "scale", "scale_register", "nan_values", "description", "secondary"}
_CHOICES = {
    "data_type": tuple(REGISTER_COUNT),
    "table": ("holding", "input"),
    "word_order": ("big", "little"),
    "byte_order": ("big", "little"),
    "quantity": tuple(q.value for q in Quantity),
    "secondary": ("none", "current", "voltage", "both"),
}


def _point(raw: dict[str, Any], where: str) -> Point:
    unknown = set(raw) - _POINT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ProfileError(f"{where}.{key}: unknown key; use one of {', '.join(sorted(_POINT_KEYS))}")
    for key in ("name", "address", "data_type", "quantity", "unit"):
        if key not in raw:
            raise ProfileError(f"{where}: missing '{key}'; every point needs name, address, data_type, quantity and unit")
    for key, choices in _CHOICES.items():
        if key in raw and raw[key] not in choices:
            raise ProfileError(f'{where}.{key} = "{raw[key]}": use one of {", ".join(choices)}')
    address = raw["address"]
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 0xFFFF:
        raise ProfileError(f"{where}.address = {address!r}: use a register address from 0 to 65535 "
                           "(the 0-based address sent on the wire, not 30001/40001 notation)")
    if address + REGISTER_COUNT[raw["data_type"]] - 1 > 0xFFFF:
        raise ProfileError(f"{where}.address = {address}: a {raw['data_type']} there runs past register 65535")
    scale = raw.get("scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale == 0 or not math.isfinite(scale):
        raise ProfileError(f"{where}.scale = {scale!r}: use a non-zero number, e.g. 0.01")
    scale_register = raw.get("scale_register")
    if scale_register is not None and (not isinstance(scale_register, int) or isinstance(scale_register, bool)
                                       or not 0 <= scale_register <= 0xFFFF):
        raise ProfileError(f"{where}.scale_register = {scale_register!r}: use the address (0-65535) of an i16 exponent")
    if raw["data_type"].startswith("f") and raw.get("nan_values"):
        raise ProfileError(f"{where}.nan_values: not allowed for float types; NaN and infinity are detected anyway")
    nan_values = raw.get("nan_values", [])
    # Compared with the decoded integer (decode.decode_raw), so signed types take signed sentinels.
    span = 1 << (16 * REGISTER_COUNT[raw["data_type"]])
    low, high = (-span // 2, span // 2 - 1) if raw["data_type"].startswith("i") else (0, span - 1)
    if not isinstance(nan_values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in nan_values):
        raise ProfileError(f"{where}.nan_values = {nan_values!r}: use a list of the integers ({low} to {high} for "
                           f"{raw['data_type']}) the meter sends for 'not available', e.g. [{high}]")
    secondary = raw.get("secondary", "none")
    allowed = _SECONDARY_OF.get(Quantity(raw["quantity"]), ("none",))
    if secondary not in allowed:
        raise ProfileError(f'{where}.secondary = "{secondary}": a {raw["quantity"]} value takes '
                           f'{" or ".join(allowed)} (docs/profiles.md: power and energy scale with CT x PT, '
                           "currents with the CT, voltages with the PT)")
    return Point(
        name=str(raw["name"]), address=address, data_type=raw["data_type"], quantity=Quantity(raw["quantity"]),
        unit=str(raw["unit"]), table=raw.get("table", "holding"), word_order=raw.get("word_order", "big"),
        byte_order=raw.get("byte_order", "big"), scale=float(scale), scale_register=scale_register,
        nan_values=tuple(nan_values), description=str(raw.get("description", "")),
        secondary=secondary,
    )


#: Which ``secondary`` marks make sense for a quantity (the ratio that turns it primary).
_SECONDARY_OF: dict[Quantity, tuple[str, ...]] = {
    Quantity.VOLTAGE: ("none", "voltage"),
    Quantity.CURRENT: ("none", "current"),
    **{q: ("none", "both", "current", "voltage") for q in (
        Quantity.ACTIVE_POWER, Quantity.REACTIVE_POWER, Quantity.APPARENT_POWER, Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT, Quantity.REACTIVE_ENERGY)},
}


_PROFILE_KEYS = {"id", "manufacturer", "model", "source", "description", "defaults", "points",
                 "max_registers_per_read", "identification", "signatures"}
_SIGNATURE_KEYS = {"address", "values", "data_type", "table"}


def _signature(raw: Any, where: str) -> Signature:
    if not isinstance(raw, dict) or set(raw) - _SIGNATURE_KEYS or not {"address", "values"} <= set(raw):
        raise ProfileError(f"{where}: use a table with address and values, and optionally data_type "
                           '("u16" or "u32") and table ("holding" or "input")')
    data_type, table = raw.get("data_type", "u16"), raw.get("table", "holding")
    if data_type not in ("u16", "u32"):
        raise ProfileError(f'{where}.data_type = "{data_type}": use u16 or u32')
    if table not in ("holding", "input"):
        raise ProfileError(f'{where}.table = "{table}": use holding or input')
    address, values = raw["address"], raw["values"]
    if not isinstance(address, int) or not 0 <= address <= 0xFFFF - REGISTER_COUNT[data_type] + 1:
        raise ProfileError(f"{where}.address = {address!r}: use a register address from 0 to 65535")
    limit = 1 << (16 * REGISTER_COUNT[data_type])
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and 0 <= v < limit for v in values):
        raise ProfileError(f"{where}.values = {values!r}: use a list of the {data_type} values that identify "
                           f"the model, e.g. [{0x1234}]")
    return Signature(address, tuple(values), data_type, table)
_IDENTIFICATION_KEYS = {"vendor_name", "product_code"}


def _identification(data: dict[str, Any], origin: str) -> tuple[str, str]:
    ident = data.get("identification", {})
    if not isinstance(ident, dict) or set(ident) - _IDENTIFICATION_KEYS or not all(
            isinstance(v, str) and v for v in ident.values()):
        raise ProfileError(f"{origin}: [identification]: use vendor_name and product_code, both non-empty "
                           "strings, as the meter answers them to Read Device Identification (FC 43/14)")
    return ident.get("vendor_name", ""), ident.get("product_code", "")


def parse_profile(data: dict[str, Any], origin: str) -> Profile:
    """Build a :class:`Profile` from parsed TOML; ``origin`` names the file in messages."""
    unknown = set(data) - _PROFILE_KEYS
    if unknown:
        raise ProfileError(f"{origin}: unknown key '{sorted(unknown)[0]}'; use one of {', '.join(sorted(_PROFILE_KEYS))}")
    for key in ("id", "manufacturer", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ProfileError(f"{origin}: missing '{key}'; a profile needs id, manufacturer and model")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ProfileError(f"{origin}: defaults = {defaults!r}: use a table, e.g. [defaults] with word_order = \"big\"")
    raw_points = data.get("points")
    if not isinstance(raw_points, list) or not raw_points:
        raise ProfileError(f"{origin}: no [[points]]; add at least one point")
    points = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_points):
        where = f"{origin}: points[{index}]"
        if not isinstance(raw, dict):
            raise ProfileError(f"{where}: must be a table ([[points]])")
        point = _point({**defaults, **raw}, where)
        if point.name in seen:
            raise ProfileError(f'{where}.name = "{point.name}": used twice; point names must be unique')
        seen.add(point.name)
        points.append(point)
    vendor_name, product_code = _identification(data, origin)
    raw_signatures = data.get("signatures", [])
    if not isinstance(raw_signatures, list):
        raise ProfileError(f"{origin}: signatures must be a list of tables ([[signatures]])")
    signatures = tuple(_signature(raw, f"{origin}: signatures[{i}]") for i, raw in enumerate(raw_signatures))
    max_read = data.get("max_registers_per_read", MAX_REGISTERS_PER_READ)
    if not isinstance(max_read, int) or not 1 <= max_read <= MAX_REGISTERS_PER_READ:
        raise ProfileError(f"{origin}: max_registers_per_read = {max_read!r}: use 1 to {MAX_REGISTERS_PER_READ}")
    return Profile(id=data["id"], manufacturer=data["manufacturer"], model=data["model"], points=tuple(points),
                   source=str(data.get("source", "")), description=str(data.get("description", "")),
                   max_registers_per_read=max_read, vendor_name=vendor_name, product_code=product_code, signatures=signatures)


def load_profile(path: Path) -> Profile:
    """Load one profile file.

    :raises ProfileError: unreadable TOML or an invalid entry, naming the file and point.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))   # -sig: a byte-order mark is not TOML
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: {not_utf8(exc)}: "
                           "save the profile as UTF-8 (not UTF-16)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}): fix that line (strings need quotes), or move the "
                           "file out of the profiles directory (docs/profiles.md)") from exc
    profile = parse_profile(data, str(path))
    if profile.id != path.stem:
        raise ProfileError(f'{path}: id = "{profile.id}" differs from the file name; rename the file to {profile.id}.toml')
    return profile


@dataclass(frozen=True)
class ProfileSet:
    """A profile directory as loaded: the good profiles by id, and why each other file did not load."""

    profiles: Mapping[str, Profile]
    broken: Mapping[str, str]   # file stem (the id a meter names) -> the ProfileError message: file, point, fix


def load_profile_set(directory: Path | Sequence[Path]) -> ProfileSet:
    """Every profile file in ``directory``; one broken file does not hide the others (the daemon disables only
    the meters that use it).

    ``directory`` may be a sequence: the first (the shipped library) must exist, later ones (site profiles,
    e.g. /etc/carbon-gateway/profiles) are read when present, and a later file wins over an earlier one with
    the same name.

    :raises ProfileError: the (first) directory itself is missing.
    """
    directories = [directory] if isinstance(directory, Path) else list(directory)
    if not directories[0].is_dir():
        raise ProfileError(f"{directories[0]}: profile directory not found")
    paths = {path.stem: path for d in directories if d.is_dir() for path in sorted(d.glob("*.toml"))}
    profiles: dict[str, Profile] = {}
    broken: dict[str, str] = {}
    for stem in sorted(paths):
        try:
            profile = load_profile(paths[stem])
        except ProfileError as exc:
            broken[stem] = str(exc)
        else:
            profiles[profile.id] = profile
    return ProfileSet(profiles, broken)


def load_profiles(directory: Path | Sequence[Path]) -> dict[str, Profile]:
    """All profiles in ``directory`` by id, for the commissioning commands, which show a broken file at once.

    :raises ProfileError: the directory is missing, or the first broken file (in name order).
    """
    found = load_profile_set(directory)
    if found.broken:
        raise ProfileError(next(iter(found.broken.values())))
    return dict(found.profiles)
