"""Exceptions of ``local_store``: one root, :class:`StoreError`, so shells can catch the package."""

from __future__ import annotations

from datetime import date


class StoreError(Exception):
    """Root of every error raised by ``local_store``."""


class SchemaError(StoreError):
    """The database file has a schema this code cannot use (newer, or damaged)."""


class UnitError(StoreError):
    """A unit is unknown or cannot be converted to the unit an activity needs."""


class FactorError(StoreError):
    """A factor file is malformed, or no factor covers an activity for a period."""


class ProcessingError(StoreError):
    """Readings cannot be turned into interval consumption (e.g. an ambiguous source)."""


class DataImportError(StoreError):
    """A CSV import was rejected; nothing was written. ``errors`` lists every bad row."""

    def __init__(self, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        shown = "\n".join(errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: import rejected, nothing was written:\n{shown}{more}")


class ReportError(StoreError):
    """A report cannot be built (bad period, or no data in the period)."""


class NoReportDataError(ReportError):
    """The period holds no emissions. ``held`` is the first and last day the store holds, if any, so a
    shell can word the fix for its own user (the CLI says --from/--to, the web UI says the form's dates)."""

    def __init__(self, message: str, held: tuple[date, date] | None) -> None:
        super().__init__(message)
        self.held = held
