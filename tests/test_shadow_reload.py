"""Shadowing turned on by a reload, in a proxy that started with no route shadowing.

Found by a contract audit: the mirror (and its comparer) and the control process's diff store
were made only at start, when a route shadowed. A reload that set `shadow.sample: 1.0` was
accepted, a new generation and a new step, and then nothing was ever mirrored, counted or
stored: the gate held forever on `min_comparisons` with no sign of why, until a restart. Now the
data planes start their mirror as they install the new table, in one process and in workers.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from tests.support import free_port, routes_yaml, wait_for

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
"""
SHADOW_ON = "shadow: {sample: 1.0, max_rate: unlimited}"


def answer(currency: str):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"balance": 100, "currency": currency})

    return handler


async def _traffic(url: str, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"{url}/api/v1/balance/{i}") as r:
                assert (await r.json())["currency"] == "EUR"  # the client always gets legacy


async def _reload(admin: str) -> dict:
    async with aiohttp.ClientSession() as s, \
            s.post(admin + "/admin/reload", json={"reason": "shadow on"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _diffs(admin: str) -> dict:
    async with aiohttp.ClientSession() as s, \
            s.get(admin + "/admin/routes/balance/diffs") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_a_reload_that_turns_shadowing_on_mirrors_in_one_process(upstreams, inproc_proxy):
    mono = await upstreams("monolith", handler=answer("EUR"))
    svc = await upstreams("svc", handler=answer("USD"))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port)
    proxy = await inproc_proxy(text)
    assert proxy.server.shadow is None and proxy.server.diff_store is None
    await _traffic(proxy.url, 5)
    assert svc.count(shadow=True) == 0
    proxy.path.write_text(text.replace("shadow: false", SHADOW_ON))
    assert (await _reload(proxy.admin))["generation"] == 2
    await _traffic(proxy.url, 20)
    rt = proxy.runtime

    def compared() -> bool:
        proxy.server.flush()
        return rt.agg.window("balance").compared >= 20

    await wait_for(compared, timeout=15)
    assert svc.count(shadow=True) == 20
    assert rt.agg.window("balance").mismatched == 20
    assert await proxy.server.shadow.flush()
    diffs = await _diffs(proxy.admin)
    assert [(f["path"], f["kind"]) for f in diffs["fields"]] == [("$.currency", "value")]


@pytest.mark.parametrize("workers", [2])
async def test_a_reload_that_turns_shadowing_on_mirrors_in_every_worker(upstreams,
                                                                       proxy_process, workers):
    mono = await upstreams("monolith", handler=answer("EUR"))
    svc = await upstreams("svc", handler=answer("USD"))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port)
    p = await proxy_process(text, args=("--workers", str(workers), "--no-watch"))
    await _traffic(p.url, 5)
    p.config.write_text(text.replace("shadow: false", SHADOW_ON))
    answered = await _reload(p.admin)
    assert answered["generation"] == 2 and answered["warning"] is None, answered
    await _traffic(p.url, 40)  # new connections: both workers serve some

    async def stored() -> bool:
        return sum(f["count"] for f in (await _diffs(p.admin))["fields"]) >= 40

    await wait_for(stored, timeout=20)
    assert svc.count(shadow=True) == 40
    diffs = await _diffs(p.admin)
    assert diffs["compared"] == 40 and diffs["mismatched"] == 40
    assert await p.stop() == 0


async def test_a_reload_that_moves_the_target_sends_the_mirrors_to_its_new_address(
        upstreams, inproc_proxy):
    """The mirror keeps its pools per upstream between requests: a reload that changes the
    target's url must close them, so that the next mirrors go to the new address."""
    mono = await upstreams("monolith", handler=answer("EUR"))
    old = await upstreams("svc-old", handler=answer("USD"))
    new = await upstreams("svc-new", handler=answer("GBP"))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=old.port).replace("shadow: false", SHADOW_ON)
    proxy = await inproc_proxy(text)
    await _traffic(proxy.url, 10)
    await wait_for(lambda: old.count(shadow=True) == 10, timeout=15)
    proxy.path.write_text(text.replace(f"127.0.0.1:{old.port}", f"127.0.0.1:{new.port}"))
    assert (await _reload(proxy.admin))["generation"] == 2
    await _traffic(proxy.url, 10)
    await wait_for(lambda: new.count(shadow=True) == 10, timeout=15)
    assert old.count(shadow=True) == 10
