"""The dashboard in a real headless Chromium (Debian `chromium`, driven by Playwright's Python
package; no browser download): sign in, watch live numbers, find a planted diff on its field
path, and roll a route back from the page — then check the proxy really sends it to legacy.

Screenshots go to test-artifacts/; with STRANGLER_UPDATE_SCREENSHOT=1 the route page is also
copied to docs/dashboard.png (the README's picture).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.api.dashboard import CSP, TrafficSeries
from proxy.control.aggregate import Aggregator
from proxy.dataplane.recorder import Recorder
from tests.support import REPO, free_port, routes_yaml, run_cli, wait_for

CHROMIUM = os.environ.get("STRANGLER_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
ADMIN_TOKEN = "adm-3f9c2e7d41b8"
READ_TOKEN = "read-8a61d0c5e2f4"
CARD = "4111111111111111"

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      balance-svc: {{url: "http://127.0.0.1:{svc}"}}
      orders-svc: {{url: "http://127.0.0.1:{orders}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance, methods: [GET]}}
        legacy: monolith
        target: balance-svc
        weight: 1
        shadow:
          sample: 1.0
          compare:
            ignore: ["$.server_time", "$.served_by"]
            redact: ["$.card_number"]
      - name: orders
        match: {{path_prefix: /api/v1/orders}}
        legacy: monolith
        target: orders-svc
        weight: 25
"""


def _balance(currency: str, who: str):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"served_by": who, "balance": 100, "currency": currency,
                                  "server_time": time.time(), "card_number": CARD})

    return handler


async def _traffic(url: str, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as s:
        i = 0
        while not stop.is_set():
            path = "/api/v1/balance/7" if i % 3 else "/api/v1/orders/3"
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url + path, headers={"X-User-Id": str(i)}) as r:
                    await r.read()
            i += 1
            await asyncio.sleep(0.01)


async def _gate_counts(proxy, family: str) -> float:
    """The sum of a gate counter family over every route and decision, from /metrics."""
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(family + "{"))


async def _admin(proxy, method: str, path: str, body: dict | None = None) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, proxy.admin + path, json=body,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture
async def browser_page(tmp_path: Path):
    async_api = pytest.importorskip("playwright.async_api")
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install-test-deps installs it)")
    async with async_api.async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 1000},
        )
        page = ctx.pages[0] if ctx.pages else await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors
        try:
            yield page
        finally:
            await ctx.close()


async def _login(page, token: str, actor: str = "", then: str = "#routes") -> None:
    await page.fill("#token", token)
    await page.fill("#actor", actor)
    await page.click("#login-submit")
    await page.wait_for_selector(then)


@pytest.mark.browser
async def test_dashboard_live_diff_and_rollback(upstreams, proxy_process, browser_page):
    page = browser_page
    mono = await upstreams("monolith", handler=_balance("EUR", "monolith"))
    svc = await upstreams("balance-svc", handler=_balance("USD", "balance-svc"))
    orders = await upstreams("orders-svc")
    proxy = await proxy_process(
        routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port,
                    orders=orders.port),
        env={"STRANGLER_ADMIN_TOKEN": ADMIN_TOKEN, "STRANGLER_READ_TOKEN": READ_TOKEN},
    )
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(proxy.url, stop))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        # A short weight history for the chart: 1% -> 5% -> 10%.
        for w in (5, 10):
            await asyncio.sleep(1.0)
            await _admin(proxy, "PUT", "/admin/routes/balance/weight",
                         {"weight": w, "reason": f"canary step to {w}%"})

        # Sign-in: a wrong token is refused with the API's message.
        await page.goto(proxy.admin + "/")
        await page.fill("#token", "not-a-token")
        await page.click("#login-submit")
        await page.wait_for_selector("#login-error:not([hidden])")
        assert "invalid token" in await page.inner_text("#login-error")

        # The read token shows everything, with live numbers.
        await _login(page, READ_TOKEN, "ci-reader")
        row = page.locator('tr.route-row[data-route="balance"]')
        await row.wait_for()
        await page.wait_for_function(
            """() => { const c = document.querySelector('tr[data-route="balance"] td.rps .t');
                       return c && parseFloat(c.textContent) > 0; }""", timeout=15000)
        assert "10%" in await row.locator(".wbar .val").inner_text()
        assert "active" in await row.locator(".pill").first.inner_text()
        assert await page.locator('tr.route-row[data-route="orders"]').count() == 1

        # Enough comparisons at this step for the gate to judge (it fails early on 50).
        async def compared() -> bool:
            view = await _admin(proxy, "GET", "/admin/routes/balance")
            return view["stats"]["step"]["shadow"]["compared"] >= 60

        await wait_for(compared, timeout=20, interval=0.2)
        await page.wait_for_function(
            """() => (document.querySelector('tr[data-route="balance"] td.shadow') || {})
                     .textContent?.includes('100.00%')""", timeout=10000)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"))

        # The route page: the planted difference on its field path, redacted samples.
        decisions_before = await _gate_counts(proxy, "strangler_gate_decisions_total")
        evaluations_before = await _gate_counts(proxy, "strangler_gate_evaluations_total")
        await row.locator("a.rname").click()
        diff_row = page.locator('#diff-table tr[data-path="$.currency"]')
        await diff_row.wait_for(timeout=15000)
        assert "value" in await diff_row.inner_text()
        paths = await page.locator("#diff-table tr.diff-row").evaluate_all(
            "rows => rows.map(r => r.dataset.path)")
        assert paths == ["$.currency"], paths  # server_time is ignored, card_number redacted
        await diff_row.click()
        sample = await page.inner_text("#sample")
        assert '"EUR"' in sample and '"USD"' in sample
        assert "[REDACTED]" in sample
        assert CARD not in await page.content()
        await page.wait_for_selector("#gate-decision")
        assert "fail" in await page.inner_text("#gate-decision")
        # Looking is not deciding: the page's evaluation counts as one, never as a decision
        # (an alert on gate failures must not fire because someone opened the dashboard).
        assert await _gate_counts(proxy, "strangler_gate_decisions_total") == decisions_before
        assert await _gate_counts(proxy, "strangler_gate_evaluations_total") > evaluations_before
        reasons = await page.inner_text("#gate-reasons")
        assert "would roll back" in reasons and "rolling back" not in reasons
        assert "Evidence since" in await page.inner_text("#evidence-since")

        # A nightly reconcile run (its own process, the same SQLite file as the running proxy)
        # shows beside the shadow numbers: its drift on the field path.
        assert "No reconcile run yet" in await page.inner_text("#reconcile")
        reads = proxy.dir / "reads.txt"
        reads.write_text("/api/v1/balance/1\n/api/v1/balance/2\n")
        code, out, err = await run_cli("reconcile", "balance", "-c", str(proxy.config),
                                       "--requests", str(reads))
        assert code == 1, (out, err)
        rec_row = page.locator('#reconcile-table tr[data-path="$.currency"]')
        await rec_row.wait_for(timeout=15000)  # the route page refreshes it within ~5 s
        assert "2 of 2 differ" in await page.inner_text("#reconcile-summary")
        assert "run #1" in await page.inner_text("#reconcile")
        await page.locator("#reconcile").screenshot(path=str(ARTIFACTS / "dashboard-reconcile.png"))
        await page.wait_for_selector("#chart-weight svg .marker.set_weight")
        await page.wait_for_selector("#chart-rps svg path.line.legacy")
        await asyncio.sleep(2.5)  # a few more points on the traffic charts
        await page.screenshot(path=str(ARTIFACTS / "dashboard-route.png"))
        await page.screenshot(path=str(ARTIFACTS / "dashboard-route-full.png"), full_page=True)

        # With the read token every change is greyed out, saying why (the API refuses it too).
        for button in ("#btn-rollback", "#btn-weight", "#btn-promote"):
            assert await page.is_disabled(button), button
            assert "read-only token" in await page.get_attribute(button, "title")
        assert (await _admin(proxy, "GET", "/admin/routes/balance"))["state"] == "active"

        # Sign in again with the admin token and roll back: reason, confirmation, new state.
        await page.click("#logout")
        await page.wait_for_selector("#login")
        await _login(page, ADMIN_TOKEN, "alice", then="#btn-rollback")  # back where we were
        await page.click("#btn-rollback")
        await page.click("#modal-confirm")  # no reason: refused in the page
        assert "required" in await page.inner_text("#modal-error")
        await page.fill("#f-reason", "currency differs on target (dashboard test)")
        await page.click("#modal-confirm")
        await page.wait_for_function(
            "() => (document.querySelector('#route-state') || {}).textContent === 'rolled back'",
            timeout=10000)
        await page.wait_for_selector("#btn-resume")
        await page.wait_for_selector("#rolled-banner")
        await page.wait_for_selector("#history >> text=currency differs on target")
        assert "alice" in await page.inner_text("#history")
        await page.screenshot(path=str(ARTIFACTS / "dashboard-rolled-back.png"))

        view = await _admin(proxy, "GET", "/admin/routes/balance")
        assert view["state"] == "rolled_back" and view["weight"] == 0
        stop.set()
        await traffic
        before = svc.count(shadow=False)
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                async with s.get(proxy.url + "/api/v1/balance/7",
                                 headers={"X-User-Id": str(i)}) as r:
                    assert (await r.json())["served_by"] == "monolith"
        assert svc.count(shadow=False) == before  # not one client request reached target

        # The overview shows the new state too.
        await page.click(".crumbs a")
        await wait_for(lambda: page.locator(
            'tr[data-route="balance"] .pill.rolled_back').count(), timeout=10)
        rec = page.locator('tr[data-route="balance"] td.shadow .rec')
        await rec.wait_for(timeout=10000)
        assert "reconcile: 2 of 2 differ" in await rec.inner_text()
        assert page.js_errors == []
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await traffic
    if os.environ.get("STRANGLER_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(ARTIFACTS / "dashboard-route.png", REPO / "docs" / "dashboard.png")


@pytest.mark.browser
async def test_no_token_configured_means_no_sign_in_form(upstreams, inproc_proxy, browser_page,
                                                        monkeypatch):
    """A proxy with no token (loopback only) opens straight on the routes, every action live;
    the same page with a token configured asks for it and greys out what a read token cannot
    do, on the overview too."""
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    page = browser_page
    mono = await upstreams("monolith")
    svc = await upstreams("balance-svc")
    orders = await upstreams("orders-svc")
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, orders=orders.port)
    proxy = await inproc_proxy(text)
    await page.goto(proxy.admin + "/")
    await page.wait_for_selector("#routes")
    assert await page.locator("#login").count() == 0
    assert await page.is_hidden("#logout")  # nothing to sign out of
    assert await page.is_enabled("#rollback-all")
    await page.locator('tr.route-row[data-route="balance"] a.rname').click()
    await page.wait_for_selector("#btn-rollback")
    for button in ("#btn-rollback", "#btn-weight", "#btn-promote"):
        assert await page.is_enabled(button), button

    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("STRANGLER_READ_TOKEN", READ_TOKEN)
    guarded = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                             mono=mono.port, svc=svc.port, orders=orders.port))
    await page.goto(guarded.admin + "/")
    await page.wait_for_selector("#login")
    await _login(page, READ_TOKEN)
    assert await page.is_disabled("#rollback-all")
    assert "read-only token" in await page.get_attribute("#rollback-all", "title")
    assert page.js_errors == []


# -- without a browser: what the page is served with, and the series behind its charts ------
async def test_page_and_assets_are_open_data_needs_a_token(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith", handler=_balance("EUR", "monolith"))
    svc = await upstreams("balance-svc", handler=_balance("EUR", "balance-svc"))
    orders = await upstreams("orders-svc")
    proxy = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc.port, orders=orders.port))
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.admin + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert r.headers["Content-Security-Policy"] == CSP
            page = await r.text()
            etag = r.headers["ETag"]
        for asset in ("app.js", "app.css", "favicon.svg"):
            assert f"/static/{asset}" in page
            async with s.get(proxy.admin + f"/static/{asset}") as r:
                assert r.status == 200, asset
                assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.get(proxy.admin + "/", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        for missing in ("/static/nope.js", "/static/..%2fdashboard.py"):
            async with s.get(proxy.admin + missing) as r:
                assert r.status == 404
                assert "from __future__" not in await r.text()
        for _ in range(5):
            async with s.get(proxy.url + "/api/v1/balance/1") as r:
                assert r.status == 200
        proxy.server.flush()
        series = proxy.admin + "/admin/routes/balance/series"
        async with s.get(series) as r:
            assert r.status == 401  # the numbers need the token
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with s.get(series, headers=auth) as r:
            body = await r.json()
        assert sum(p["legacy"]["requests"] + p["target"]["requests"]
                   for p in body["points"]) == 5
        async with s.get(series + "?since=" + str(body["now"]), headers=auth) as r:
            assert (await r.json())["points"] == []
        async with s.get(proxy.admin + "/admin/routes/nope/series", headers=auth) as r:
            assert r.status == 404


def test_series_points_are_per_interval_not_cumulative():
    now = [1000.0]
    agg = Aggregator()
    series = TrafficSeries(agg, interval=1.0, clock=lambda: now[0])
    agg.listeners.append(series.on_merge)

    def traffic(n_legacy: int, seconds: float, errors: int = 0) -> None:
        rec = Recorder()
        for i in range(n_legacy):
            rec.request("r", 0, "legacy", 500 if i < errors else 200, seconds)
        rec.request("r", 0, "target", 200, 0.0002)
        agg.merge(rec.take())

    traffic(100, 0.050)          # first second: slow legacy
    now[0] += 0.5
    traffic(10, 0.050)           # same interval: no new point yet
    now[0] += 0.6
    traffic(100, 0.0005, 7)      # next second: fast, with errors
    points = series.view("r")["points"]
    assert len(points) == 2
    first, second = points
    assert first["legacy"]["requests"] == 100 and first["legacy"]["p99_ms"] >= 45
    assert second["legacy"]["requests"] == 110 and second["legacy"]["errors"] == 7
    assert second["target"]["requests"] == 2 and second["target"]["p99_ms"] < 0.3
    assert second["dt"] == 1.1
    assert series.view("r", since=first["t"])["points"] == [second]
