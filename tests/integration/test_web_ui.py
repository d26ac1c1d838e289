"""The web pages in a real headless Chromium (Debian's package, driven by Playwright) against a real gateway process.

One gateway (simulated meters, one of them in its own process so it can be cut off) and one browser for the module;
each test has its own browser context (its own cookies), so the roles never mix.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from webgw import WebGateway, chromium_path, login

pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = WebGateway(tmp_path_factory.mktemp("web"))
    try:
        g.wait_ready()
        yield g
    finally:
        rc = g.stop()
    text = g.log_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def browser():
    exe, why = chromium_path()
    if exe is None:
        pytest.skip(f"no Chromium: {why}")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1024, "height": 768}, accept_downloads=True)
    ctx.set_default_timeout(15000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def test_refused_without_login(gw, page):
    page.goto(gw.base + "/ui/index.html#/meter/r1")
    page.wait_for_url("**/login**")
    assert page.is_visible("#username")
    for path in ("/api/overview", "/api/meters/r1", "/export?from=2026-11-01&to=2026-12-01"):
        r = page.request.get(gw.base + path, max_redirects=0)
        assert r.status in (401, 403), (path, r.status)
    # a wrong password is refused on the page
    page.fill("#username", "viewer")
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "login" in page.url


def test_login_and_live_value(gw, page):
    login(page, gw.base, "viewer", gw.passwords["viewer"])
    assert page.text_content("#who").startswith("viewer")
    row = page.locator('#meters tr[data-meter="r1"]')
    assert row.locator(".comm .badge").get_attribute("data-value") == "ok"
    page.click('#meters a[href="#/meter/r1"]')
    cell = page.locator('#points tr[data-point="Active_Power_Total"] .value')
    cell.wait_for()
    page.wait_for_function(
        "document.querySelector('#points tr[data-point=Active_Power_Total] .value').textContent.trim() !== '—'"
    )
    first = cell.text_content()
    page.evaluate("window.__sameDocument = true")
    # the value changes in place: SSE, no reload (the marker set above survives)
    page.wait_for_function(
        "(v) => document.querySelector('#points tr[data-point=Active_Power_Total] .value').textContent !== v",
        arg=first,
    )
    assert page.evaluate("window.__sameDocument") is True
    quality = page.locator('#points tr[data-point="Active_Power_Total"] .quality .badge')
    assert quality.text_content() == "good" and "q-good" in quality.get_attribute("class")
    assert page.locator('#points tr[data-point="Active_Power_Total"] .unit').text_content() == "kW"
    # a viewer has no write controls
    assert page.locator("#points input").count() == 0


def test_operator_write_accepted_and_audited_viewer_refused(gw, page, browser):
    login(page, gw.base, "operator", gw.passwords["operator"])
    page.goto(gw.base + "/ui/index.html#/meter/r1")
    row = page.locator('#points tr[data-point="Reset_Demand_Peak"]')
    row.locator("input").fill("1")
    row.locator("button").click()
    page.wait_for_selector("#write-msg .msg")
    msg = page.text_content("#write-msg")
    assert "accepted" in msg, msg
    page.goto(gw.base + "/ui/index.html#/audit?meter=r1&protocol=http")
    page.wait_for_selector("#audit tbody tr")
    rec = page.locator("#audit tbody tr").first
    cells = [c.strip() for c in rec.locator("td").all_text_contents()]
    assert cells[1] == "http" and "operator" in cells[2] and cells[4] == "Reset_Demand_Peak", cells
    assert cells[6] == "accepted", cells

    # the viewer: no write control in the page, and a write made by hand from its session is refused
    ctx = browser.new_context()
    vp = ctx.new_page()
    try:
        login(vp, gw.base, "viewer", gw.passwords["viewer"])
        status = vp.evaluate(
            """async () => {
                const s = await (await fetch('/api/session')).json();
                const r = await fetch('/api/meters/r1/points/Reset_Demand_Peak', {method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},
                    body: JSON.stringify({value: 1})});
                return r.status;
            }"""
        )
        assert status == 403
    finally:
        ctx.close()
    audit = gw.tmp / "state" / "audit.jsonl"
    records = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
    by_http = [r for r in records if r.get("protocol") == "http" and r.get("decision") != "intent"]
    assert any(r["decision"] == "accepted" and r.get("user") == "operator" for r in by_http), by_http
    assert any(r["decision"] != "accepted" and r.get("user") == "viewer" for r in by_http), by_http


def test_scan_shows_proposed_meters_lines(gw, page):
    login(page, gw.base, "admin", gw.passwords["admin"])
    page.goto(gw.base + "/ui/index.html#/scan")
    page.select_option("#scan-bus", "rtu")
    page.fill("#scan-first", "1")
    page.fill("#scan-last", "3")
    page.click("#scan-run")
    page.wait_for_selector("#scan-yaml", timeout=60000)
    yaml_text = page.text_content("#scan-yaml")
    # the simulated line has meters at addresses 1 and 2 (both configured already: the proposal says so)
    assert "address 1" in yaml_text and "address 2" in yaml_text and "address 3" not in yaml_text, yaml_text
    assert page.locator("#scan-found tbody tr").count() == 2


def test_traffic_monitor_shows_frames(gw, page):
    login(page, gw.base, "admin", gw.passwords["admin"])
    page.goto(gw.base + "/ui/index.html#/bus/rtu")
    page.wait_for_selector("#frames tbody tr")
    first = page.locator("#frames tbody tr").first.locator("td").all_text_contents()
    assert len(first) == 4 and all(len(x) == 2 for x in first[2].split()), first


def test_export_download(gw, page, tmp_path):
    login(page, gw.base, "viewer", gw.passwords["viewer"])
    page.goto(gw.base + "/ui/index.html#/exports")
    page.fill("#exp-tenant", "T1")
    page.select_option("#exp-format", "csv")
    with page.expect_download() as dl:
        page.click("#export-link")
    path = Path(tmp_path / "export.csv")
    dl.value.save_as(path)
    assert dl.value.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert sorted(r["meter"] for r in rows) == ["r1", "r2"], rows
    assert {r["tenant"] for r in rows} == {"T1"}


def test_metrics_with_and_without_token(gw):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(gw.base + "/metrics", timeout=10)
    assert exc.value.code == 401
    req = urllib.request.Request(gw.base + "/metrics", headers={"Authorization": f"Bearer {gw.metrics_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    assert r.status == 200
    assert any(x.startswith("meter_gateway_meter_up{") and 'meter="r1"' in x for x in text.splitlines()), text[:2000]


def test_configuration_page_hides_secrets_and_downloads_the_register_map(gw, page, tmp_path):
    login(page, gw.base, "admin", gw.passwords["admin"])
    page.goto(gw.base + "/ui/index.html#/config")
    text = page.locator("#config-text").text_content()
    assert "users:" in text and "name: viewer" in text
    assert "$argon2" not in text and gw.metrics_token not in text, text
    assert "check: no problems found" in page.locator("#check").text_content()
    with page.expect_download() as dl:
        page.click('a[href="/api/downloads/registers.csv"]')
    path = tmp_path / "registers.csv"
    dl.value.save_as(path)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert len(rows) > 50 and any("Active_Energy_Import" in ",".join(r) for r in rows)


def test_meter_turns_to_comm_failure_when_its_simulator_stops(gw, page):
    """Last: it cuts meter t1 off for good."""
    login(page, gw.base, "viewer", gw.passwords["viewer"])
    badge = page.locator('#meters tr[data-meter="t1"] .comm .badge')
    assert badge.get_attribute("data-value") == "ok"
    page.evaluate("window.__sameDocument = true")
    gw.kill_sim()
    page.wait_for_selector('#meters tr[data-meter="t1"] .comm .badge[data-value="failed"]', timeout=30000)
    assert badge.text_content() == "comm failure" and "q-comm-failure" in badge.get_attribute("class")
    assert page.evaluate("window.__sameDocument") is True
    # the other meters keep good communication
    assert page.locator('#meters tr[data-meter="r1"] .comm .badge').get_attribute("data-value") == "ok"
