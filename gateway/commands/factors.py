"""CLI commands of the factor library: ``factors list|show|add`` (issue 14, "Factor vintages").

They parse arguments, call ``local_store.factors`` and turn its errors into ``click.ClickException``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from gateway.paths import DEFAULT_DATA_DIR
from gateway.commands.reporting import audit_cli
from local_store import StoreError, open_store
from local_store.emissions import EmissionSettings
from local_store.errors import FactorError
from local_store.factors import (VINTAGE_RULES, Factor, FactorLibrary, add_factor, applies_to, default_factor_files,
                                 describe, for_year, load_library)

_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"State directory holding gateway.db (default: {DEFAULT_DATA_DIR}, or $CARBON_GATEWAY_DATA_DIR).")
_FILES = click.option("--factor-file", "factor_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                      help="An extra factor file to read (repeatable); the gateway's own are read from its store.")


def custom_file(data_dir: Path | None) -> Path:
    """Where ``factors add`` and the web UI keep a site's own factors."""
    return (data_dir or DEFAULT_DATA_DIR) / "factors" / "custom.toml"


def _settings_and_files(data_dir: Path | None, extra: tuple[Path, ...]) -> tuple[EmissionSettings, list[Path]]:
    path = (data_dir or DEFAULT_DATA_DIR) / "gateway.db"
    settings = EmissionSettings()
    if path.exists():
        try:
            with open_store(path) as store:
                settings = store.settings
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    files = [Path(p) for p in settings.factor_files]
    custom = custom_file(data_dir)
    if custom.is_file() and custom not in files:
        files.append(custom)
    return settings, files + [p for p in extra if p not in files]


def _library(files: list[Path]) -> FactorLibrary:
    try:
        return load_library(default_factor_files() + files)
    except FactorError as exc:
        raise click.ClickException(str(exc)) from None


def _line(f: Factor, note: str | None = None) -> str:
    text = (f"{f.ref:44} {f.activity:18} {f.parameter:14} {f.region:14} {f.value:g} {f.unit:10} "
            f"valid {applies_to(f)}")
    return text + (f"\n    ! {note}" if note else "")


@click.group("factors")
def factors() -> None:
    """Emission factors: which vintage applies to which year, their sources, and a site's own values."""


@factors.command("list")
@click.option("--year", type=click.IntRange(1990, 2100), default=None,
              help="Show the factor that applies to this activity year (under the store's vintage rule).")
@click.option("--region", default=None, help="Only this region (national, east_china, national_ets, ...).")
@click.option("--activity", default=None, help="Only this activity (electricity, natural_gas, ...).")
@click.option("--rule", type=click.Choice(VINTAGE_RULES), default=None,
              help="Vintage rule for --year (default: the store's [emissions] vintage_rule).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_FILES
@_DATA_DIR
def list_(year: int | None, region: str | None, activity: str | None, rule: str | None, fmt: str,
          factor_files: tuple[Path, ...], data_dir: Path | None) -> None:
    """List the factor library, or with --year what applies to that activity year and whether it is provisional."""
    settings, files = _settings_and_files(data_dir, factor_files)
    library = _library(files)
    if year is not None:
        chosen = for_year(library, year, region, activity, rule or settings.vintage_rule)  # type: ignore[arg-type]
        if fmt == "json":
            click.echo(json.dumps([{**describe([f])[0], "applies_to_year": year, "note": note} for f, note in chosen],
                                  indent=2, ensure_ascii=False))
            return
        for f, note in chosen:
            click.echo(_line(f, note))
        return
    rows = sorted((f for f in library.factors if (region is None or f.region == region)
                   and (activity is None or f.activity == activity)),
                  key=lambda f: (f.activity, f.parameter, f.region, f.valid_from))
    if fmt == "json":
        click.echo(json.dumps(describe(rows), indent=2, ensure_ascii=False))
        return
    for f in rows:
        click.echo(_line(f))


@factors.command("show")
@click.argument("factor")
@_FILES
@_DATA_DIR
def show(factor: str, factor_files: tuple[Path, ...], data_dir: Path | None) -> None:
    """Every vintage of FACTOR (an id like cn.grid.national, or a reference like cn.grid.national/2023@1)."""
    _, files = _settings_and_files(data_dir, factor_files)
    library = _library(files)
    found = [f for f in library.factors if factor in (f.id, f.ref)]
    if not found:
        ids = sorted({f.id for f in library.factors})
        raise click.ClickException(f"no factor {factor!r}: use an id such as {', '.join(ids[:3])} "
                                   f"(see `carbon-gateway factors list`)")
    for f in sorted(found, key=lambda f: (f.valid_from, f.version)):
        click.echo(f"{f.ref}\n  {f.activity} {f.parameter}, region {f.region}: {f.value:g} {f.unit}\n"
                   f"  vintage (data year) {f.year}, valid for activity {f.valid_from}..{f.valid_to or 'open'}"
                   f" ({applies_to(f)})\n  source: {f.source}\n  file: {f.file}")


@factors.command("add")
@click.option("--id", "id_", required=True, help="Factor id, e.g. site.grid.guangdong.")
@click.option("--activity", required=True, help="Activity, e.g. electricity.")
@click.option("--parameter", default="ef", show_default=True,
              help="ef, residual_mix, ncv, carbon_content, oxidation, ch4 or n2o.")
@click.option("--value", type=float, required=True, help="The published value.")
@click.option("--unit", required=True, help="Its unit, e.g. tCO2/MWh.")
@click.option("--region", default="national", show_default=True)
@click.option("--year", type=click.IntRange(1990, 2100), required=True, help="The vintage: the data year.")
@click.option("--valid-from", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First activity day, e.g. 2024-01-01.")
@click.option("--valid-to", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Day after the last activity day (exclusive), e.g. 2025-01-01.")
@click.option("--source", required=True, help="The publication: document, table, page.")
@click.option("--version", type=int, default=None, help="A new version of a value already in the library.")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Custom factor file (default: <data dir>/factors/custom.toml).")
@_DATA_DIR
def add(id_: str, activity: str, parameter: str, value: float, unit: str, region: str, year: int, valid_from,
        valid_to, source: str, version: int | None, path: Path | None, data_dir: Path | None) -> None:
    """Add a site's own factor (priority 100: it wins over a shipped value for the same activity and region)."""
    _, files = _settings_and_files(data_dir, ())
    target = path or custom_file(data_dir)
    entry = {"id": id_, "activity": activity, "parameter": parameter, "value": value, "unit": unit,
             "region": region, "year": year, "valid_from": valid_from.date(),
             "valid_to": valid_to.date() if valid_to else None, "source": source, "version": version}
    try:
        f = add_factor(target, entry, files)
    except FactorError as exc:
        raise click.ClickException(str(exc)) from None
    db_path = (data_dir or DEFAULT_DATA_DIR) / "gateway.db"
    if db_path.exists():
        with open_store(db_path) as store:
            audit_cli(store, data_dir, "factors.add", f"factor {f.ref}",
                      {"entry": {k: (v.isoformat() if isinstance(v, date) else v) for k, v in entry.items()},
                       "file": str(target)})
    click.echo(f"added {f.ref} ({f.value:g} {f.unit}, valid {applies_to(f)}) to {target}; the gateway reads it when "
               f"the file is listed in [emissions] factor_files (the web UI's factor page adds it there), and "
               f"recalculates the figures it changes, keeping the old rows")


COMMANDS: list[click.Command] = [factors]
