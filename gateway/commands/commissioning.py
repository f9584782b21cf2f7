"""``read`` and ``simulate``: commissioning a meter on site."""

from __future__ import annotations

import json
import math
import signal
import threading

import click

from drivers import (BusConfig, DriverError, Profile, Ratios, Reading, SimulatedDevice, SimulatorServer, load_profiles,
                     read_meter)
from drivers.model import SerialSettings
from drivers.simulator import FAULTS

from gateway.paths import PROFILE_DIRS
from gateway.rules import BUS, METER, click_option


class _Seconds(click.FloatRange):
    """A FloatRange that also refuses nan, which passes every comparison-based range check."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds; use e.g. 0.5", param, ctx)
        return seconds


def _ratio_options(command):  # type: ignore[no-untyped-def]
    """--ct and --pt, checked by the [[meters]] ct_ratio/pt_ratio rules: values the profile marks secondary-side
    are shown primary (issue 13)."""
    command = click_option(METER["pt_ratio"], "--pt", "pt", default=1.0,
                           help="Voltage transformer ratio, e.g. 10000/100 (values shown primary).")(command)
    return click_option(METER["ct_ratio"], "--ct", "ct", default=1.0,
                        help="Current transformer ratio, e.g. 100/5 (values shown primary).")(command)


def all_energy_invalid(readings: list[Reading]) -> str | None:
    """Why a read is no use for emissions: every cumulative (energy, volume, ...) point is invalid; else None."""
    counters = [r for r in readings if r.quantity.cumulative]
    if not counters or any(r.quality == "ok" for r in counters):
        return None
    return "every energy point is invalid (" + "; ".join(f"{r.point}: {r.reason}" for r in counters) + ")"


# The bus and meter options are checked by the config's rules (gateway/rules.py): the range a [[buses]]
# table accepts is the range --baud and --timeout accept, with the same message.
_PORT = BUS["port"]


def host_port(value: str, param_hint: str = "--tcp", example: str = "192.168.1.50:502") -> tuple[str, int]:
    """``HOST:PORT`` with a port the config accepts (1 to 65535), or a usage error naming the option."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not _PORT.low <= int(port) <= _PORT.high:  # type: ignore[operator]
        raise click.BadParameter(f"'{value}': use HOST:PORT with a port from 1 to 65535, e.g. {example}",
                                 param_hint=param_hint)
    return host, int(port)


def _profiles() -> dict[str, Profile]:
    try:
        return load_profiles(PROFILE_DIRS)
    except DriverError as exc:
        raise click.ClickException(str(exc)) from exc


def _profile(profile_id: str) -> Profile:
    profiles = _profiles()
    if profile_id not in profiles:
        raise click.BadParameter(f"'{profile_id}' is not a known profile; use one of {', '.join(sorted(profiles))}",
                                 param_hint="--profile")
    return profiles[profile_id]


@click.command()
@click.option("--tcp", metavar="HOST:PORT", help="Modbus TCP endpoint.")
@click.option("--serial", metavar="DEVICE", help="Serial port for Modbus RTU, e.g. /dev/ttyUSB0.")
@click.option("--rtu-over-tcp", is_flag=True, help="With --tcp: a serial device server passing RTU frames.")
@click_option(BUS["baudrate"], "--baud")
@click_option(BUS["parity"], "--parity")
@click_option(BUS["stopbits"], "--stopbits")
@click_option(METER["device_id"], "--unit", "unit_id", default=None, required=True, help="Modbus unit id, 1-247.")
@click.option("--profile", "profile_id", required=True, help="Profile id from config/profiles/.")
@click_option(BUS["timeout_s"], "--timeout", "timeout_s", help="Reply timeout in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--raw", is_flag=True, help="Show the raw registers in hex beside each value (spot a wrong byte order).")
@_ratio_options
def read(tcp: str | None, serial: str | None, rtu_over_tcp: bool, baud: int, parity: str, stopbits: int, unit_id: int, profile_id: str,
         timeout_s: float, as_json: bool, raw: bool, ct: float, pt: float) -> None:
    """One-shot test read of one meter: every point of its profile with value and unit.

    Values are primary: points the profile marks secondary-side are multiplied by --ct/--pt. Exits 1 when
    every energy point is invalid."""
    if bool(tcp) == bool(serial):
        raise click.UsageError("give exactly one of --tcp HOST:PORT or --serial DEVICE")
    profile = _profile(profile_id)
    if tcp:
        host, port = host_port(tcp)
        bus = BusConfig("cli", "rtu_over_tcp" if rtu_over_tcp else "tcp", host=host, port=port, timeout_s=timeout_s)
    else:
        bus = BusConfig("cli", "rtu", serial=SerialSettings(serial or "", baud, parity, stopbits),  # type: ignore[arg-type]
                        timeout_s=timeout_s)
    try:
        readings = read_meter(bus, unit_id, profile, Ratios(ct, pt))
    except DriverError as exc:
        raise click.ClickException(f"unit {unit_id}: {exc}") from exc
    ctx = click.get_current_context()
    if profile.secondary_side and all(ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT
                                      for name in ("ct", "pt")):
        click.echo(f"note: {profile.id} reports secondary-side values, shown as read; give --ct (and --pt) as on "
                   "the transformers' rating plate for primary values", err=True)
    if as_json:
        click.echo(json.dumps([{"point": r.point, "value": r.value, "unit": r.unit, "quality": r.quality,
                                "reason": r.reason, "raw": [f"{w:04x}" for w in r.raw]} for r in readings], indent=2))
    else:
        for r in readings:
            value = f"{r.value:.4f}" if r.value is not None else f"INVALID ({r.reason})"
            extra = "  [" + " ".join(f"{w:04x}" for w in r.raw) + "]" if raw else ""
            click.echo(f"{r.point:<24} {value:>16} {r.unit}{extra}")
    useless = all_energy_invalid(readings)
    if useless:
        raise click.ClickException(f"unit {unit_id}: {useless}: check the profile (`scan`) and the raw registers "
                                   "(`read --raw`)")


@click.command()
@click.option("--profile", "profile_ids", multiple=True, required=True,
              help="Profile to serve; repeat together with --unit for several meters.")
@click_option(METER["device_id"], "--unit", "unit_ids", default=None, multiple=True, required=True,
              help="Unit id of the meter with the --profile at the same position.")
@click.option("--tcp", default="127.0.0.1:5020", show_default=True, metavar="127.0.0.1:PORT",
              help="Loopback address and port to serve Modbus TCP on.")
@click.option("--serial", metavar="DEVICE", help="Serve Modbus RTU on this serial device instead of TCP.")
@click_option(BUS["baudrate"], "--baud", help="Baud rate with --serial.")
@click.option("--rtu-over-tcp", is_flag=True, help="Serve RTU frames over TCP, like a serial device server.")
@click.option("--fault", "faults", multiple=True, metavar="UNIT:FAULT",
              help="Make unit UNIT misbehave; FAULT is one of " + ", ".join(f"{k} ({v})" for k, v in FAULTS.items())
              + ". Repeat for several.")
@click.option("--slow", "slow_s", type=_Seconds(0, 60), default=0.5, show_default=True,
              help="Reply delay in seconds of the 'slow' fault.")
def simulate(profile_ids: tuple[str, ...], unit_ids: tuple[int, ...], tcp: str, serial: str | None, baud: int,
             rtu_over_tcp: bool, faults: tuple[str, ...], slow_s: float) -> None:
    """Serve simulated meters with plausible values that advance in time, until Ctrl-C."""
    if len(profile_ids) != len(unit_ids):
        raise click.UsageError("give one --unit for each --profile, in the same order")
    host, port = host_port(tcp)
    faults_of: dict[int, set[str]] = {}
    for text in faults:
        unit_text, _, fault = text.partition(":")
        if not unit_text.isdigit() or int(unit_text) not in unit_ids or fault not in FAULTS:
            raise click.BadParameter(f"'{text}': use UNIT:FAULT with one of the --unit ids and a fault among "
                                     f"{', '.join(FAULTS)}", param_hint="--fault")
        faults_of.setdefault(int(unit_text), set()).add(fault)
    devices = [SimulatedDevice(unit, _profile(pid), frozenset(faults_of.get(unit, ())), slow_s=slow_s)
               for pid, unit in zip(profile_ids, unit_ids)]
    try:
        server = SimulatorServer(devices, host=host, port=port, serial_port=serial, baudrate=baud,
                                 rtu_over_tcp=rtu_over_tcp).start()
    except DriverError as exc:
        raise click.ClickException(str(exc)) from exc
    where = serial or f"{host}:{server.port}"
    click.echo(f"serving {len(devices)} simulated meter(s) on {where}; Ctrl-C to stop", err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


@click.command()
@click.option("--tcp", metavar="HOST:PORT", help="Modbus TCP endpoint (or serial device server).")
@click.option("--rtu-over-tcp", is_flag=True,
              help="With --tcp: a serial device server passing RTU frames (the meters behind it on RS-485).")
@click.option("--serial", metavar="DEVICE", help="Serial port for Modbus RTU, e.g. /dev/ttyUSB0.")
@click.option("--bauds", default="9600", show_default=True, help="Baud rates to try on serial, e.g. 9600,19200.")
@click.option("--parity", "parities", default="N", show_default=True,
              help="Parities to try on serial, e.g. N,E (each with every baud rate).")
@click.option("--units", "units_text", default="1-247", show_default=True, help="Unit ids to probe, e.g. 1-10,20.")
@click_option(BUS["timeout_s"], "--timeout", "timeout_s", default=0.2,
              help="Seconds to wait for each unit id; the scan takes at most about units x timeout per baud rate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@_ratio_options
def scan(tcp: str | None, rtu_over_tcp: bool, serial: str | None, bauds: str, parities: str, units_text: str,
         timeout_s: float, as_json: bool, ct: float, pt: float) -> None:
    """Find the unit ids that answer on a bus and identify each one's profile.

    Each meter found is tried with one read per candidate profile (docs/profiles.md); models whose registers
    cannot be told apart are listed, not guessed."""
    from drivers.scan import ScanResult, parse_units, scan_bus

    if bool(tcp) == bool(serial):
        raise click.UsageError("give exactly one of --tcp HOST:PORT or --serial DEVICE")
    if rtu_over_tcp and not tcp:
        raise click.UsageError("--rtu-over-tcp goes with --tcp HOST:PORT (the serial device server)")
    try:
        units = parse_units(units_text)
        baud_rates = [int(b) for b in bauds.split(",")] if serial else [0]
        baud_rule, parity_rule = BUS["baudrate"], BUS["parity"]
        if any(not baud_rule.low <= b <= baud_rule.high for b in baud_rates if serial):  # type: ignore[operator]
            raise ValueError(f"'{bauds}': baud rates run {baud_rule.range_text().removesuffix(' baud')}, e.g. 9600,19200")
        parity_list = [p.strip().upper() for p in parities.split(",")] if serial else ["N"]
        if any(p not in parity_rule.values() for p in parity_list):
            *others, last = parity_rule.values()
            raise ValueError(f"'{parities}': parity is {', '.join(others)} or {last}, e.g. N,E")
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("invalid literal for int() with base 10", "not a number"),
                                 param_hint="--units/--bauds") from exc
    profiles = _profiles()
    results: list[tuple[str, int, ScanResult]] = []
    for baud, parity in [(b, p) for b in baud_rates for p in parity_list]:
        if tcp:
            host, port = host_port(tcp)
            bus = BusConfig("scan", "rtu_over_tcp" if rtu_over_tcp else "tcp", host=host, port=port,
                            timeout_s=timeout_s)
            line = f"{host}:{port}"
        else:
            bus = BusConfig("scan", "rtu", serial=SerialSettings(serial or "", baud, parity), timeout_s=timeout_s)  # type: ignore[arg-type]
            line = f"{serial} {baud} {parity}81"

        def progress(done: int, total: int, unit: int) -> None:
            if not as_json and (done % 10 == 0 or done == total):
                click.echo(f"\r{line}: {done}/{total} unit ids probed", nl=done == total, err=True)

        try:
            found = scan_bus(bus, units, profiles, progress, ratios=Ratios(ct, pt))
        except DriverError as exc:
            raise click.ClickException(str(exc)) from exc
        results.extend((line, baud, r) for r in found)
    if as_json:
        click.echo(json.dumps([{"line": line, "baudrate": baud or None, "unit": r.device_id, "profile": r.profile,
                                "score": r.score, "identified_by": r.identified_by or None,
                                "vendor_name": r.vendor_name or None, "product_code": r.product_code or None,
                                "other_candidates": [list(c) for c in r.candidates],
                                "undecided": r.undecided}
                               for line, baud, r in results], indent=2))
        return
    if not results:
        click.echo("no meter answered; check wiring (A/B swapped?), baud rate, parity and unit ids")
    for line, _, r in results:
        if r.identified_by == "device identification":
            guess = f"{r.profile} (the device identifies itself as {r.vendor_name} {r.product_code})"
        elif r.identified_by == "signature registers":
            guess = f"{r.profile} (its signature registers match)"
        elif r.profile:
            guess = f"{r.profile} (fits {r.score:.0%})"
            if r.candidates:
                guess += "; also fits: " + ", ".join(c[0] for c in r.candidates)
        elif r.undecided:
            guess = (f"cannot tell which model: {', '.join(c[0] for c in r.candidates)} fit equally "
                     f"({r.score:.0%}); confirm with `read --profile ...` against the meter's display")
        else:
            named = f" ({r.vendor_name} {r.product_code})" if r.product_code else ""
            guess = f"unknown model{named}: no shipped profile fits; see docs/profiles.md to write one"
        click.echo(f"{line}  unit {r.device_id:>3}  {guess}")


COMMANDS: list[click.Command] = [read, scan, simulate]
