"""The technician's walk in headless Chromium (Debian's), against cheroot and a running gateway.

Set the admin password, log in, scan a simulated bus, add the meter found, test-read it, see its live
value on the dashboard, switch the language; screenshots at phone and desktop widths go to
``test-artifacts/``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.webui.conftest import PASSWORDS
from gateway.runtime import Runtime
from webui import create_app, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
TIMEOUT_MS = 20_000


@pytest.fixture
def base_url(field_gateway) -> Iterator[str]:  # type: ignore[no-untyped-def]
    app = create_app(runtime=Runtime(field_gateway))
    port = free_port()
    server = serve(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, name="test-web", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.close()
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator:  # type: ignore[type-arg]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=TIMEOUT_MS)
        yield browser
        browser.close()


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


WIDEST = """[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
             && !e.closest('.table-wrap')).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className
             + ' ' + Math.round(e.getBoundingClientRect().right))"""


def _fits(page) -> bool:  # type: ignore[no-untyped-def]
    """Nothing wider than the screen except inside scrollable tables."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_technician_commissions_a_meter_from_a_phone(browser, base_url, field_gateway) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(base_url + "/")
    assert page.url.endswith("/setup")
    page.fill("#name", "admin")
    page.fill("#password", "long-enough-1")
    page.fill("#confirm", "long-enough-2")
    page.click("#setup-form button[type=submit]")
    assert page.inner_text("#confirm-error") == "The two passwords differ."
    _shot(page, "phone-setup-error")
    page.fill("#password", PASSWORDS["admin"])
    page.fill("#confirm", PASSWORDS["admin"])
    page.click("#setup-form button[type=submit]")
    page.wait_for_url(base_url + "/")

    page.click("#logout")
    page.wait_for_url(base_url + "/login")
    page.fill("#name", "admin")
    page.fill("#password", PASSWORDS["admin"])
    page.click("#login-form button[type=submit]")
    page.wait_for_url(base_url + "/")

    page.goto(base_url + "/scan")
    page.select_option("#bus", "line-2")
    page.fill("#units", "5-8")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#scan-results tr[data-unit='7']")     # the page refreshes itself while scanning
    assert "eastron-sdm630" in page.inner_text("#scan-results tr[data-unit='7']")
    _shot(page, "phone-scan")
    page.click("#scan-results tr[data-unit='7'] a.button")
    page.wait_for_selector("#meter-form")
    assert page.input_value("#device_id") == "7" and page.input_value("#profile") == "eastron-sdm630"
    assert page.input_value("#activity") == "electricity", "the profile's activity comes pre-filled (issue 15)"
    page.fill("#id", "line2-meter")
    page.select_option("#activity", "electricity")
    page.fill("#poll_interval_s", "1")
    _shot(page, "phone-add-meter")
    page.click("#meter-form button[type=submit]")
    page.wait_for_selector("text=Meter line2-meter was saved and is being polled.")
    assert _fits(page)

    page.click("#meter-list tr[data-meter='line2-meter'] >> text=Test-read")
    page.click("#test-read")
    value = page.inner_text("#read-results tr[data-point='voltage_l1'] .value")
    assert 90 < float(value) < 480
    _shot(page, "phone-test-read")

    page.goto(base_url + "/")
    cell = "[data-meter='line2-meter'] tr[data-point='voltage_l1'] .value"
    page.wait_for_function(f"() => {{ const c = document.querySelector(\"{cell}\"); "
                           "return c && parseFloat(c.textContent) > 90; }")  # filled in by dashboard.js
    assert "s ago" in page.inner_text("[data-meter='line2-meter'] tr[data-point='voltage_l1'] .age")
    _shot(page, "phone-dashboard-en")
    assert _fits(page), page.evaluate(WIDEST)

    page.click("#lang-zh")
    page.wait_for_selector("text=今日排放")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert _fits(page)
    _shot(page, "phone-dashboard-zh")
    page.goto(base_url + "/meters/new")
    assert page.inner_text("label[for=device_id]") == "Modbus 从站地址"
    _shot(page, "phone-meter-form-zh")

    page.set_viewport_size(DESKTOP)
    page.goto(base_url + "/")
    page.wait_for_selector("text=今日排放")
    _shot(page, "desktop-dashboard-zh")
    page.click("#lang-en")
    page.wait_for_selector("text=Emissions today")
    field_gateway.flush_readings()
    field_gateway.process()
    page.goto(base_url + "/emissions")
    page.wait_for_selector("svg.chart")
    _shot(page, "desktop-emissions")
    page.set_viewport_size(PHONE)
    assert _fits(page), page.evaluate(WIDEST)
    # issue 15: chart text was 8 px on a phone. Shown size = font size in viewBox units x the chart's scale.
    smallest = page.evaluate("""Math.min(...[...document.querySelectorAll('svg.chart text')].map(t => {
        const svg = t.ownerSVGElement;
        return parseFloat(getComputedStyle(t).fontSize) * svg.getBoundingClientRect().width
               / svg.viewBox.baseVal.width; }))""")
    assert 11 <= smallest < 40, smallest       # (< 40: there is text to measure)
    _shot(page, "phone-emissions")
    page.goto(base_url + "/meters")
    _shot(page, "desktop-meters")
    assert not [e for e in errors if "Content Security Policy" in e], errors
    context.close()
