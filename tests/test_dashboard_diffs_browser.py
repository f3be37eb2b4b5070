"""Issue 24.4 in a real headless Chromium: the dashboard points at the difference.

A list of accounts where only element 4's `owner` differs (element 0 has an `owner` too, equal
on both sides): both panes highlight element 4's line, never element 0's; "next difference"
moves between highlighted blocks; a collapsed row opens to its examples and a routes.yaml
snippet; the window toggle switches to all time.
"""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from aiohttp import web

from tests.support import free_port, routes_yaml
from tests.test_dashboard_browser import ADMIN_TOKEN, ARTIFACTS, _login, browser_page  # noqa: F401

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: accounts
        match: {{path_prefix: /accounts}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0, compare: {{array_keys: {{"$": id}}}}}}
"""


def _accounts(side: str):
    async def handler(request: web.Request) -> web.Response:
        doc = [{"id": i, "owner": f"Owner {i}", "amount": i} for i in range(8)]
        if side == "target":
            doc[4]["owner"] = "Somebody else"
            doc[6]["amount"] = 600
        return web.json_response(doc)

    return handler


@pytest.mark.browser
async def test_highlight_by_path_jump_expand_and_window(upstreams, proxy_process,
                                                        browser_page) -> None:  # noqa: F811
    page = browser_page
    mono = await upstreams("monolith", handler=_accounts("legacy"))
    svc = await upstreams("svc", handler=_accounts("target"))
    proxy = await proxy_process(
        routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port),
        env={"STRANGLER_ADMIN_TOKEN": ADMIN_TOKEN})
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.get(proxy.url + "/accounts") as r:
                assert r.status == 200
    await page.goto(proxy.admin + "/#/routes/accounts")
    await _login(page, ADMIN_TOKEN, "dev", then="#diff-table")
    row = page.locator('#diff-table tr.diff-row[data-path="$[*].owner"]')
    await row.wait_for(timeout=15000)
    assert "12.5% of 8" in await row.inner_text()  # 1 of 8 elements
    await row.click()

    # both panes highlight element 4's owner line (found by its key), never element 0's
    for side in ("legacy", "target"):
        hl = page.locator(f'#sample pre.body[data-side="{side}"] .hl')
        assert await hl.count() == 1
        text = await hl.inner_text()
        want = '"Owner 4"' if side == "legacy" else '"Somebody else"'
        assert '"owner"' in text and want in text, text
    assert "$[id=4].owner" in await page.inner_text("#sample")

    # the row opens to its examples and a copyable ignore snippet
    detail = page.locator("#diff-table tr.expand")
    assert "$[id=4].owner" in await detail.inner_text()
    snippet = await page.inner_text("#ignore-snippet")
    assert 'ignore: ["$[*].owner"]' in snippet and "name: accounts" in snippet
    await page.click("#copy-snippet")

    # with no row selected every difference is highlighted; "next difference" walks them
    await row.click()
    await page.wait_for_selector("#diff-table tr.expand", state="detached")
    starts = page.locator('#sample pre.body[data-side="legacy"] .hl-start')
    assert await starts.count() == 2  # owner of element 4, amount of element 6
    await page.click("#next-diff")
    first = await page.inner_text("#sample .hl-start.current")
    await page.click("#next-diff")
    second = await page.inner_text("#sample .hl-start.current")
    assert first != second and ('"Owner 4"' in first or '"Owner 4"' in second)
    assert any('"amount": 6' in t or '"amount": 600' in t for t in (first, second)), (first, second)

    # the evidence window: current by default, all time on request
    assert re.search(r"current evidence: step \d+", await page.inner_text("#diff-window-text"))
    await page.click("#diff-all")
    await page.wait_for_function(
        "() => document.querySelector('#diff-window-text').textContent.includes('all evidence')")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("#diffs").screenshot(path=str(ARTIFACTS / "dashboard-diffs.png"))
    assert page.js_errors == []
    body = json.dumps(await (await page.request.get(
        proxy.admin + "/admin/routes/accounts/diffs?all=1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json())
    assert "$[*].owner" in body
