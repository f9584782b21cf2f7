"""CLI commands of the reporting area: ``report`` and ``import``.

They parse arguments, call ``local_store`` and turn its errors into ``click.ClickException``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import click

from gateway.paths import DEFAULT_DATA_DIR
from local_store import ProcessingError, StoreError, audit, open_store
from local_store.db import Store
from local_store.reports import BY_CHOICES, build_report

_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"State directory holding gateway.db (default: {DEFAULT_DATA_DIR}, or $CARBON_GATEWAY_DATA_DIR).")


@contextlib.contextmanager
def sealed(store: Store, data_dir: Path | None, create: bool = True) -> Iterator[Store]:
    """Seal the audit entries written meanwhile (a CLI import, a recalculation during ``report``) with the
    gateway's audit key, as the daemon seals its own, so ``audit verify`` stays intact.

    :param create: make the key when there is none yet (False: then entries stay unsealed, as before a key).
    """
    key = (data_dir or DEFAULT_DATA_DIR) / "keys" / "audit.key"
    if not create and not key.exists():
        yield store
        return
    try:
        audit.use_key(store.path, audit.ensure_key(key, store.db))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield store
    finally:
        audit.use_key(store.path, None)


def audit_cli(store: Store, data_dir: Path | None, action: str, target: str, detail: dict) -> None:
    """Record what a CLI command changed in the store's audit log, sealed with the gateway's audit key."""
    with sealed(store, data_dir):
        audit.record(store.db, "cli", action, target, detail)


def _store_path(data_dir: Path | None, must_exist: bool) -> Path:
    path = (data_dir or DEFAULT_DATA_DIR) / "gateway.db"
    if must_exist and not path.exists():
        raise click.ClickException(
            f"{path}: no gateway database here: run `carbon-gateway run` first, or pass --data-dir DIR "
            f"pointing at the gateway's state directory")
    return path


class _Day(click.ParamType):
    """A local date: YYYY-MM-DD, or yesterday, today, tomorrow."""

    name = "date"
    _WORDS = {"yesterday": -1, "today": 0, "tomorrow": 1}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        text = str(value).strip().lower()
        if text in self._WORDS:
            return date.today() + timedelta(days=self._WORDS[text])
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r}: use a date like 2026-01-01, or yesterday, today, tomorrow", param, ctx)


@click.command("report")
@click.option("--from", "start", required=True, type=_Day(),
              help="First day of the period (YYYY-MM-DD, or yesterday, today, tomorrow; local time).")
@click.option("--to", "end", required=True, type=_Day(),
              help="Day after the period (exclusive): --from 2026-01-01 --to 2027-01-01 is the year 2026, "
                   "--from today --to tomorrow is today.")
@click.option("--by", type=click.Choice(BY_CHOICES), default="source", show_default=True,
              help="How to break the total down.")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "html", "filing"]), default="json",
              show_default=True, help="filing: the print-ready A4 report to file (organisation, sources with factor "
                                      "and vintage, instruments, completeness, uncertainty; see --profile, --lang).")
@click.option("--method", type=click.Choice(["location", "market"]), default=None,
              help="Electricity method for total_tco2e (default: the gateway's setting).")
@click.option("--profile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML with organisation, site, gateway, boundary, base_year, method_statement, exclusions and "
                   "uncertainty assumptions, for --format filing.")
@click.option("--lang", type=click.Choice(["zh-CN", "en"]), default="zh-CN", show_default=True,
              help="Language of --format filing.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@_DATA_DIR
def report(start, end, by: str, fmt: str, method: str | None, profile: Path | None, lang: str, output: Path | None,
           data_dir: Path | None) -> None:
    """Emissions for a period: total tCO2e, by scope, by source, factors used, data quality."""
    from local_store import reports as r

    path = _store_path(data_dir, must_exist=True)
    try:
        with open_store(path) as store, sealed(store, data_dir, create=False):
            try:
                store.process()     # include readings stored since the daemon's last run
            except ProcessingError as exc:
                # The other sources were processed; report with what is there and say what is missing.
                click.echo(f"warning: some readings could not be processed: {exc}", err=True)
            data = build_report(store, start, end, by=by, method=method)  # type: ignore[arg-type]
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(f"{path}: database error: {exc}: check the disk and the file's permissions") from None
    if fmt == "json":
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    elif fmt == "csv":
        text = r.render_csv(data)
    elif fmt == "filing":
        from local_store.filing import FilingProfile, load_profile, render_filing_html

        try:
            text = render_filing_html(data, load_profile(profile) if profile else FilingProfile(), lang)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        text = r.render_html(data)
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write the report ({exc.strerror}): check that the "
                                       f"directory exists and has space, or leave out --output") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_DATA_DIR
def import_(file: Path, data_dir: Path | None) -> None:
    """Import activity data or meter readings from a CSV file, all or nothing (see docs/import.md)."""
    from local_store.importer import import_csv

    path = _store_path(data_dir, must_exist=False)
    try:
        with open_store(path) as store, sealed(store, data_dir):
            result = import_csv(store, file)
            if result.rows:
                audit_cli(store, data_dir, "import", str(file.resolve()),
                          {"kind": result.kind, "rows": result.rows, "sources": list(result.sources),
                           "repeated": result.repeated, "already_stored": result.already_stored,
                           "emission_rows": result.emission_rows, "tco2e": result.tco2e})
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(f"{path}: database error: {exc}: nothing was imported; check the disk and the "
                                   f"file's permissions") from None
    click.echo(result.summary())


@click.command("trace")
@click.argument("source")
@click.option("--at", "at", required=True,
              help="A time inside the figure's period: ISO 8601, e.g. 2026-03-10T08:07:00+08:00 (no offset: local time).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_DATA_DIR
def trace(source: str, at: str, fmt: str, data_dir: Path | None) -> None:
    """Walk one emission figure back: raw readings -> flags -> interval -> factor with vintage -> tCO2e."""
    from datetime import datetime

    from local_store.trace import render_text
    from local_store.trace import trace as walk

    try:
        when = datetime.fromisoformat(at.strip())
    except ValueError:
        raise click.ClickException(f"--at {at!r}: not a time; write it like 2026-03-10T08:07:00+08:00") from None
    ts = (when if when.tzinfo else when.astimezone()).timestamp()
    path = _store_path(data_dir, must_exist=True)
    try:
        with open_store(path) as store:
            chain = walk(store, source, ts)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(chain, indent=2, ensure_ascii=False, allow_nan=False) if fmt == "json"
               else render_text(chain), nl=fmt == "json")


COMMANDS: list[click.Command] = [report, import_, trace]
