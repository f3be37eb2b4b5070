"""The dashboard's Migration page in a real headless Chromium against a real `strangler serve`
with weeks of history: the monolith's endpoints by traffic, each coloured by its share on new
services, progress per day, the route that is ready to retire marked, declared endpoints nobody
calls; the window buttons, and a path that tries to inject markup shown as text.

Screenshot: test-artifacts/dashboard-migration.png; with STRANGLER_UPDATE_SCREENSHOT=1 also
docs/dashboard-migration.png (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import REPO, ProxyProcess, free_port, routes_yaml, wait_for
from tests.test_dashboard_browser import ARTIFACTS, READ_TOKEN, _login, browser_page  # noqa: F401
from tests.test_retire import PROMOTED, history

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    inventory:
      openapi: {openapi}
    routes:
      - name: cart
        match: {{path_prefix: /cart}}
        legacy: monolith
        target: svc
        weight: 100
        shadow: false
      - name: search
        match: {{path_prefix: /search}}
        legacy: monolith
        target: svc
        weight: 100
        shadow: false
      - name: orders
        match: {{path_prefix: /api/orders}}
        legacy: monolith
        target: svc
        weight: 30
        shadow: false
"""

MIX = [("/api/products/{n}", 60), ("/cart/{n}", 40), ("/api/orders/{n}", 50), ("/search", 20),
       ("/health", 15), ("/api/invoices/{n}/pdf", 10),
       ("/<img src=x onerror=alert(1)>", 3)]


@pytest.mark.browser
async def test_migration_page(upstreams, browser_page, tmp_path: Path) -> None:  # noqa: F811
    page = browser_page
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    api = tmp_path / "openapi.json"
    api.write_text(json.dumps({"openapi": "3.0.0", "paths": {
        "/api/products/{productId}": {"get": {}}, "/api/reports/{year}": {"get": {}},
        "/api/legacy-export": {"post": {}}}}))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, openapi=api)
    proxy = ProxyProcess(tmp_path / "proxy", text, env={"STRANGLER_READ_TOKEN": READ_TOKEN,
                                                        "STRANGLER_ADMIN_TOKEN": "adm-x1"})
    history(proxy.dir / "state", now=time.time(), audit=PROMOTED)  # cart: 20 days at 100%
    await proxy.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        async with aiohttp.ClientSession() as s:
            for path, n in MIX:
                for i in range(n):
                    async with s.get(proxy.url + path.replace("{n}", str(100 + i))) as r:
                        await r.read()

        async def recorded() -> bool:
            async with aiohttp.ClientSession() as s:
                async with s.get(proxy.admin + "/admin/inventory?since=1h", headers={
                        "Authorization": f"Bearer {READ_TOKEN}"}) as r:
                    return (await r.json())["requests"] == 198

        await wait_for(recorded, timeout=20, interval=0.3)
        await page.goto(proxy.admin + "/#/migration")
        await _login(page, READ_TOKEN, then="#endpoints tr.ep-row")
        rows = await page.locator("#endpoints tr.ep-row").evaluate_all(
            "rows => rows.map(r => [r.dataset.endpoint, r.dataset.newShare, "
            "getComputedStyle(r.querySelector('.mig-bar')).backgroundColor])")
        # the week: the history's 6 days of cart and search traffic on new services lead
        assert [r[0] for r in rows[:2]] == ["GET /cart/{id}", "GET /search"]
        by = {r[0]: r for r in rows}
        assert by["GET /api/products/{productId}"][1] == "0"  # declared name, all on legacy
        assert by["GET /api/products/{productId}"][2] == "rgb(167, 139, 250)"  # legacy violet
        assert by["GET /cart/{id}"][1] == "1" and by["GET /cart/{id}"][2] == "rgb(52, 211, 153)"
        orders = float(by["GET /api/orders/{id}"][1])
        assert 0 < orders < 1  # 30% split: between the two colours
        assert "GET /api/invoices/{id}/pdf" in by
        assert "GET /%3Cimg%20src=x%20onerror=alert(1)%3E" in by  # as the proxy saw it: text
        assert await page.locator("#endpoints img").count() == 0
        assert not page.js_errors

        cards = await page.inner_text("#migration-cards")
        assert "ON NEW SERVICES" in cards.upper() and "READY TO RETIRE" in cards.upper()
        ready = page.locator('#retire tr.retire-row[data-route="cart"]')
        assert await ready.get_attribute("data-ready") == "1"
        assert "ready to retire" in await ready.inner_text()
        orders_row = page.locator('#retire tr.retire-row[data-route="orders"]')
        assert await orders_row.get_attribute("data-ready") == "0"
        assert "30%" in await orders_row.inner_text()
        await page.wait_for_selector("#progress-chart path.line.mig-req")
        none = await page.inner_text("#no-traffic")
        assert "GET /api/reports/{year}" in none and "POST /api/legacy-export" in none
        assert "GET /api/products" not in none
        await page.screenshot(path=str(ARTIFACTS / "dashboard-migration.png"), full_page=True)
        if os.environ.get("STRANGLER_UPDATE_SCREENSHOT"):
            shutil.copy(ARTIFACTS / "dashboard-migration.png", REPO / "docs" /
                        "dashboard-migration.png")

        # the decision recorded (strangler retire): the page marks the route retired
        async with aiohttp.ClientSession() as s:
            async with s.post(proxy.admin + "/admin/routes/cart/retire", json={
                    "reason": "legacy cart removed"},
                    headers={"Authorization": "Bearer adm-x1"}) as r:
                assert r.status == 200, await r.text()
        await page.reload()
        await page.wait_for_selector('#retire tr[data-route="cart"] .pill.retired')
        assert "retired" in await page.inner_text('#retire tr[data-route="cart"]')

        # the last 24 h: the history's day-old rows drop out of the table's window
        await page.click("#win-24h")
        await page.wait_for_function(
            "() => document.querySelector('#win-24h').classList.contains('on')")
        assert "24 h" in await page.inner_text("#endpoints-panel .panel-head")
        assert await page.locator('#nav-migration.on').count() == 1
        await page.goto(proxy.admin + "/#/")
        await page.wait_for_selector("#routes")
        assert await page.locator('#nav-migration.on').count() == 0
        assert not page.js_errors
    finally:
        await proxy.stop()
