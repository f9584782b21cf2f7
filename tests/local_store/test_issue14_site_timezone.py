"""Issue 14 part 6: a [site] timezone defines days and months for reports and imports (not the host's TZ)."""

from __future__ import annotations

from datetime import date, timezone
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from local_store import EmissionSettings, open_store
from local_store.importer import import_csv
from local_store.reports import build_report


def test_the_site_time_zone_defines_the_days_of_imports_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "bill.csv"
    path.write_text("source,activity,start,end,amount,unit\noffice,electricity,2023-05-01,2023-05-02,24,MWh\n",
                    encoding="utf-8")
    with open_store(tmp_path / "gateway.db", EmissionSettings(timezone="Asia/Shanghai")) as store:
        import_csv(store, path)            # no tz given: the dates are Shanghai days
        site_day = build_report(store, date(2023, 5, 1), date(2023, 5, 2))
        # The whole 24 MWh x 0.5306 = 12.7344 t falls on the site's 1 May ...
        assert site_day["total_tco2e"] == pytest.approx(12.7344, abs=1e-6)
        assert site_day["period"]["utc_offset"] == "+08:00"
        # ... which runs 2023-04-30 16:00 to 2023-05-01 16:00 UTC: a UTC day holds 16 of its 24 hours,
        # 16 MWh x 0.5306 = 8.4896 t.
        utc_day = build_report(store, date(2023, 5, 1), date(2023, 5, 2), tz=timezone.utc)
        assert utc_day["total_tco2e"] == pytest.approx(8.4896, abs=1e-6)


def test_site_timezone_in_the_config(tmp_path: Path) -> None:
    base = {"gateway": {"id": "gw-1", "data_dir": str(tmp_path)}, "sync": {"enabled": False}}
    config = parse_config({**base, "site": {"timezone": "Asia/Shanghai"}}, "gateway.toml", {})
    assert config.emissions.timezone == "Asia/Shanghai"
    with pytest.raises(ConfigError) as exc:
        parse_config({**base, "site": {"timezone": "China/Beijing"}}, "gateway.toml", {})
    assert str(exc.value) == 'gateway.toml: site.timezone = "China/Beijing": use an IANA time zone name, e.g. "Asia/Shanghai"'
