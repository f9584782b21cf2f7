"""CLI commands for contractual instruments (green certificates, green power, PPAs): ``instruments list|add``.

Instruments from a CSV file come in through ``carbon-gateway import`` (docs/import.md).
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import click

from gateway.commands.reporting import _DATA_DIR, _Day, _store_path, audit_cli
from local_store import StoreError, open_store
from local_store.importer import INSTRUMENT_KINDS, add_instrument, list_instruments
from local_store.reports import site_tz


@click.group("instruments")
def instruments() -> None:
    """Contractual instruments for the market-based method: green certificates, green power trades, PPAs."""


@instruments.command("list")
@click.option("--from", "start", type=_Day(), default=None, help="Only instruments valid on or after this date.")
@click.option("--to", "end", type=_Day(), default=None, help="Only instruments valid before this date (exclusive).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_DATA_DIR
def list_(start: date | None, end: date | None, fmt: str, data_dir: Path | None) -> None:
    """List the stored instruments (each claimed once; the market-based report pro-rates them by period)."""
    def ts(d: date | None) -> float | None:
        return None if d is None else datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()

    try:
        with open_store(_store_path(data_dir, must_exist=True)) as store:
            tz = site_tz(store.settings)
            rows = list_instruments(store, ts(start), ts(end))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    for r in rows:
        r["start"] = datetime.fromtimestamp(r.pop("start_ts"), tz).date().isoformat()
        r["end"] = datetime.fromtimestamp(r.pop("end_ts"), tz).date().isoformat()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False, allow_nan=False))
        return
    if not rows:
        click.echo("no instruments stored: import a CSV (instrument,kind,start,end,amount,unit,emission_factor) "
                   "with `carbon-gateway import`, or use `carbon-gateway instruments add`")
    for r in rows:
        click.echo(f"{r['instrument']:24} {r['kind']:12} {r['start']}..{r['end']}  {r['mwh']:g} MWh at "
                   f"{r['emission_factor_t_per_mwh']:g} tCO2/MWh")


@instruments.command("add")
@click.option("--instrument", "reference", required=True, help="Certificate or contract number, e.g. GEC-2025-000123.")
@click.option("--kind", type=click.Choice(INSTRUMENT_KINDS), required=True)
@click.option("--start", required=True, help="First day covered, e.g. 2025-01-01.")
@click.option("--end", required=True, help="Day after the last day covered (exclusive), e.g. 2026-01-01.")
@click.option("--amount", required=True, help="Electricity covered.")
@click.option("--unit", type=click.Choice(["MWh", "kWh"]), default="MWh", show_default=True)
@click.option("--emission-factor", "factor", default="0", show_default=True,
              help="tCO2/MWh of the contracted electricity; 0 for renewables.")
@_DATA_DIR
def add(reference: str, kind: str, start: str, end: str, amount: str, unit: str, factor: str,
        data_dir: Path | None) -> None:
    """Add one instrument, checked like a row of an instruments CSV."""
    path = _store_path(data_dir, must_exist=False)
    try:
        with open_store(path) as store:
            result = add_instrument(store, [reference, kind, start, end, amount, unit, factor])
            if result.rows:
                audit_cli(store, data_dir, "instruments.add", f"instrument {reference}",
                          {"kind": kind, "start": start, "end": end, "amount": amount, "unit": unit,
                           "emission_factor": factor})
    except StoreError as exc:
        raise click.ClickException(str(exc).replace("command line: import rejected", "instrument not added")) from None
    click.echo(f"instrument {reference} added" if result.rows else result.summary())


COMMANDS: list[click.Command] = [instruments]
