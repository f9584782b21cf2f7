"""Issue 14 part 3: the factor page shows each factor's vintage and adds and lists contractual instruments."""

from __future__ import annotations

import html

from local_store import audit
from tests.webui.conftest import post


def text(response) -> str:  # type: ignore[no-untyped-def]
    return html.unescape(response.get_data(as_text=True))


def test_the_factor_page_adds_and_lists_a_certificate(admin, gateway) -> None:
    page = text(admin.get("/factors"))
    # Each factor row names its vintage and the activity years it applies to.
    assert "cn.grid.national/2023@1" in page and "cn.grid.national/2022@1" in page
    assert "No contractual instruments yet" in page
    cert = {"instrument": "GEC-2025-77", "kind": "certificate", "start": "2025-01-01", "end": "2026-01-01",
            "amount": "120", "unit": "MWh", "emission_factor": "0"}
    response = post(admin, "/factors/instruments", cert, form_url="/factors")
    assert response.status_code == 302, text(response)
    page = text(admin.get("/factors"))
    assert "Instrument GEC-2025-77 was added; market-based reports count it." in page
    assert "GEC-2025-77" in page.split('id="instrument-list"')[1] and "2025-01-01 – 2026-01-01" in page
    assert [e.target for e in audit.entries(gateway.store.db) if e.action == "instruments.add"] == [
        "instrument GEC-2025-77"]
    again = post(admin, "/factors/instruments", {**cert, "amount": "130"}, form_url="/factors")
    assert again.status_code == 400
    assert ("Not added: instrument GEC-2025-77 is already stored with other data (certificate, 120 MWh)"
            in text(again))
    bad = post(admin, "/factors/instruments", {**cert, "instrument": "X", "emission_factor": "7"}, form_url="/factors")
    assert bad.status_code == 400 and "Use 0 to 2." in text(bad)


def test_a_report_figure_drills_down_to_its_readings(admin, gateway) -> None:
    from tests.conftest import wait_until

    def emitted() -> bool:
        gateway.flush_readings()
        gateway.process()
        return gateway.store.db.execute("SELECT COUNT(*) FROM emissions").fetchone()[0] > 0

    wait_until(emitted, timeout_s=20, message="first emissions")
    page = text(admin.get("/emissions"))
    assert '/trace?source=main-incomer' in page
    chain = text(admin.get("/trace?source=main-incomer"))
    assert "raw readings:" in chain and "interval " in chain and "factor cn.grid.national/" in chain
    assert "tCO2e (" in chain
    missing = admin.get("/trace?source=nowhere")
    assert missing.status_code == 400 and "no source 'nowhere'" in text(missing)
    garbage = admin.get("/trace?source=main-incomer&at=yesterday")
    assert garbage.status_code == 400 and "'yesterday' is not a time: use 2026-03-10T08:07" in text(garbage)
