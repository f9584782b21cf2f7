"""Regional grid factors (MEE/NBS Announcement 2024 No. 33) are selectable by region, with their source."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from drivers import Quantity, Reading
from local_store import EmissionSettings, SourceSettings, open_store
from local_store.reports import build_report

START = 1_672_531_200.0  # 2023-01-01T00:00:00Z


# 2023 vintage (MEE & NBS, January 2026): east_china 0.5500, southwest 0.2472, national 0.5306; Yunnan has
# only its 2022 value (0.1073), used provisionally under the latest_published vintage rule.
@pytest.mark.parametrize("region,factor", [("east_china", 0.5500), ("southwest", 0.2472), ("yunnan", 0.1073),
                                           ("national", 0.5306)])
def test_one_mwh_in_a_region_costs_its_published_factor(tmp_path: Path, region: str, factor: float) -> None:
    settings = EmissionSettings(region=region)
    store = open_store(tmp_path / "gateway.db", settings)
    store.configure_sources([SourceSettings("main", "electricity")], settings)
    # 1000 kWh over two hours, read every 15 minutes: 1 MWh x factor tCO2/MWh.
    store.insert_readings([Reading("main", "energy_import", START + i * 900, 5000.0 + i * 125.0, "kWh",
                                   Quantity.ENERGY_IMPORT) for i in range(9)])
    store.process()
    report = build_report(store, date(2023, 1, 1), date(2023, 1, 2))
    store.close()
    assert report["total_tco2e"] == pytest.approx(1.0 * factor, rel=1e-6)
    used = {f["id"]: f for f in report["factors"]}
    assert any(f["value"] == factor and "MEE & NBS" in f["source"] for f in used.values()), used
    # Only Yunnan's figure is computed with a vintage (2022) that does not cover the activity (2023).
    assert [f["vintage"] for f in report["vintage_flags"]] == ([2022] if region == "yunnan" else [])
