"""Local SQLite store: raw readings, preprocessing, emission factors, emissions, reports, import.

See docs/architecture.md (contracts) and docs/models.md (the models and their formulas).
"""

from local_store.db import ProcessResult, SourceSettings, Store, StoredReading, open_store
from local_store.emissions import EmissionSettings
from local_store.errors import (
    DataImportError, FactorError, NoReportDataError, ProcessingError, ReportError, SchemaError, StoreError, UnitError,
)

__all__ = [
    "open_store", "Store", "SourceSettings", "EmissionSettings", "StoredReading", "ProcessResult",
    "StoreError", "SchemaError", "UnitError", "FactorError", "ProcessingError", "DataImportError", "ReportError", "NoReportDataError",
]
