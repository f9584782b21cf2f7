"""Issue 14 part 4: GB/T 32150 net and GHG Protocol / ISO 14064-1 gross, side by side in JSON, CSV and HTML."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta, timezone
from pathlib import Path

import pytest

from local_store import EmissionSettings, open_store
from local_store.importer import import_csv
from local_store.reports import build_report, render_csv, render_html

CST = timezone(timedelta(hours=8))


def test_scope_2_is_gross_and_the_gbt_32150_figure_net_both_labelled(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("source,activity,start,end,amount,unit\n"
                    "grid,electricity,2023-05-01,2023-06-01,100,MWh\n"
                    "pv,electricity_export,2023-05-01,2023-06-01,20,MWh\n", encoding="utf-8")
    with open_store(tmp_path / "gateway.db", EmissionSettings(method="market")) as store:
        import_csv(store, path, tz=CST)
        r = build_report(store, date(2023, 5, 1), date(2023, 6, 1), by="month", tz=CST)
    # Gross imports 100 MWh x 0.5306 = 53.06 t; exports 20 MWh x 0.5306 = 10.612 t; net 80 x 0.5306 = 42.448 t.
    # Market-based Scope 2 (no instruments): 100 MWh x residual mix 0.6096 = 60.96 t.
    ghg = r["conventions"]["ghg_protocol_iso_14064_1"]
    gbt = r["conventions"]["gb_t_32150"]
    assert ghg["scope_2_location_based_tco2e"] == pytest.approx(53.06)
    assert ghg["scope_2_market_based_tco2e"] == pytest.approx(60.96)
    assert ghg["exported_electricity_tco2e"] == pytest.approx(10.612)
    assert gbt["net_purchased_electricity_tco2e"] == pytest.approx(42.448)
    assert r["by_scope"]["scope_2"] == pytest.approx(53.06)
    assert r["breakdown"] == [{"key": "2023-05", "tco2e": pytest.approx(42.448), "scope_1": 0.0,
                               "scope_2": pytest.approx(53.06), "exported_tco2e": pytest.approx(10.612)}]
    lines = {row["key"]: row["tco2e"] for row in csv.DictReader(io.StringIO(render_csv(r)))}
    assert float(lines["GB/T 32150: net purchased electricity (purchased - exported)"]) == pytest.approx(42.448)
    assert float(lines["GHG Protocol: Scope 2 location-based (gross imports)"]) == pytest.approx(53.06)
    assert float(lines["GHG Protocol: Scope 2 market-based (gross imports)"]) == pytest.approx(60.96)
    assert float(lines["GHG Protocol / ISO 14064-1: exported electricity (not deducted)"]) == pytest.approx(10.612)
    html = render_html(r)
    assert "<td>GB/T 32150: total (net)</td><td>42.448</td>" in html
    assert "<td>ISO 14064-1: Category 2 imported energy (gross)</td><td>53.06</td>" in html
