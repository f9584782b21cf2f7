"""Changing a factor recalculates the affected periods and keeps the old rows (issue 4, item 4)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from drivers.model import Quantity, Reading
from local_store import EmissionSettings, FactorError, SourceSettings, open_store
from local_store.reports import build_report

T0 = 1_780_000_000.0 - (1_780_000_000 % 900)      # 2026-05-28, aligned to 15 minutes

SITE = """
[library]
name = "site"
version = {version}
priority = 100

[[factors]]
id = "site.grid"
activity = "electricity"
parameter = "ef"
value = {value}
unit = "tCO2/MWh"
region = "national"
year = 2025
valid_from = 2026-01-01
source = "site contract {version}"
"""


def readings() -> list[Reading]:
    # 2 MWh per 15 minutes for one hour: 2 000 kWh steps.
    return [Reading("main", "energy_import", T0 + 900 * k, 10_000.0 + 2_000.0 * k, "kWh", Quantity.ENERGY_IMPORT)
            for k in range(5)]


def test_changed_factor_recalculates_and_keeps_history(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(version=1, value=0.5))
    settings = EmissionSettings(factor_files=(str(site),))
    with open_store(tmp_path / "gateway.db", settings) as store:
        store.configure_sources([SourceSettings("main", "electricity")])
        store.insert_readings(readings())
        store.process()
        before = build_report(store, date(2026, 5, 27), date(2026, 5, 30))
        assert before["total_tco2e"] == pytest.approx(8 * 0.5)          # 4 intervals x 2 MWh x 0.5

        site.write_text(SITE.format(version=2, value=0.6))
        store.reload_factors()
        result = store.process()
        assert result.recalculated_rows == 4
        after = build_report(store, date(2026, 5, 27), date(2026, 5, 30))
        assert after["total_tco2e"] == pytest.approx(8 * 0.6)
        assert [(f["id"], f["version"], f["value"]) for f in after["factors"]] == [("site.grid", 2, 0.6)]
        old = store.db.execute("SELECT factor_id, factor_version, co2e_t FROM emissions"
                               " WHERE superseded_at IS NOT NULL ORDER BY start_ts").fetchall()
        assert old == [("site.grid", 1, pytest.approx(1.0))] * 4
        versions = store.db.execute("SELECT version, value FROM factors WHERE id = 'site.grid' ORDER BY version").fetchall()
        assert versions == [(1, 0.5), (2, 0.6)]


def test_changing_a_value_without_a_new_version_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(version=1, value=0.5))
    with open_store(tmp_path / "gateway.db", EmissionSettings(factor_files=(str(site),))) as store:
        store.configure_sources([SourceSettings("main", "electricity")])
        store.insert_readings(readings())
        store.process()
        site.write_text(SITE.format(version=1, value=0.7))
        store.reload_factors()
        with pytest.raises(FactorError) as exc:
            store.process()
        assert str(exc.value) == (
            f"{site}: factor 'site.grid' version 1 (valid from 2026-01-01) changed from 0.5 tCO2/MWh to 0.7 tCO2/MWh "
            f"without a new version: set version = 2 on the entry (or the file's [library] version) so the old "
            f"results stay traceable")
        current = store.db.execute("SELECT SUM(co2e_t) FROM emissions WHERE superseded_at IS NULL").fetchone()[0]
        assert current == pytest.approx(4.0)          # nothing was recalculated


def test_changing_the_region_recalculates(tmp_path: Path) -> None:
    with open_store(tmp_path / "gateway.db") as store:
        store.configure_sources([SourceSettings("main", "electricity")])
        store.insert_readings(readings())
        store.process()
        assert build_report(store, date(2026, 5, 27), date(2026, 5, 30))["total_tco2e"] == pytest.approx(8 * 0.5306)
        store.configure_sources([SourceSettings("main", "electricity")], EmissionSettings(region="national_ets"))
        assert store.process().recalculated_rows == 4
        assert build_report(store, date(2026, 5, 27), date(2026, 5, 30))["total_tco2e"] == pytest.approx(8 * 0.5703)
