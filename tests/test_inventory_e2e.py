"""The traffic inventory through a real `strangler serve --workers 2` and real upstreams: a known
request mix (routed, unrouted, ids, an OpenAPI document, errors) reads back as exact templates and
counts from `strangler inventory`, `--unrouted` orders the candidates by traffic, progress is the
mix's, the counts survive a restart, and the progress metric follows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for
from tests.test_metrics import scrape, total

pytestmark = pytest.mark.slow

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "monolith", "version": "1"},
    "paths": {
        "/api/carts/{cartId}": {"get": {}, "delete": {}},
        "/api/reports/{year}": {"get": {}},
        "/health": {"get": {}},
    },
}

ROUTES = TWO_UPSTREAMS + """
    inventory:
      openapi: {openapi}
    routes:
      - name: users
        match: {{path_prefix: /api/users}}
        legacy: monolith
        target: svc
        weight: 100
      - name: orders
        match: {{path_prefix: /api/orders}}
        legacy: monolith
        target: svc
        weight: 0
"""

# (method, path, count): the mix every test here sends
MIX = [("GET", "/api/users/{n}", 40), ("GET", "/api/orders/{n}", 30),
       ("GET", "/api/orders/999", 5), ("GET", "/api/carts/{uuid}", 20), ("GET", "/health", 10),
       ("GET", "/static/app.js", 5), ("POST", "/api/orders", 3)]


async def _monolith(request: web.Request) -> web.Response:
    if request.path == "/api/orders/999":
        return web.json_response({"error": "down"}, status=503)
    return web.json_response({"served_by": "monolith"})


async def _send_mix(url: str) -> int:
    sent = 0
    async with aiohttp.ClientSession() as s:
        for method, path, count in MIX:
            for n in range(count):
                p = path.replace("{n}", str(1000 + n)).replace("{uuid}", str(uuid.uuid4()))
                async with s.request(method, url + p, json={} if method == "POST" else None) \
                        as r:
                    await r.read()
                sent += 1
    return sent


async def _inventory(admin: str, *args: str) -> dict:
    code, out, err = await run_cli("inventory", "--since", "1h", "--json", *args,
                                   "--admin", admin)
    assert code == 0, err
    return json.loads(out)


def _ep(view: dict) -> dict[str, dict]:
    return {f"{e['method']} {e['template']}": e for e in view["endpoints"]}


async def test_known_mix_reads_back_exactly(upstreams, proxy_process, tmp_path: Path) -> None:
    mono = await upstreams("monolith", handler=_monolith)
    svc = await upstreams("svc")
    api = tmp_path / "monolith-openapi.json"
    api.write_text(json.dumps(OPENAPI))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, openapi=api)
    p = await proxy_process(text, args=("--workers", "2"))
    sent = await _send_mix(p.url)
    assert sent == 113

    async def complete() -> dict | None:
        view = await _inventory(p.admin)
        return view if view["requests"] == sent else None

    view = await wait_for(complete, timeout=20, interval=0.3)
    eps = _ep(view)
    got = {k: (e["requests"], e["legacy"], e["target"], e["errors"], e["unrouted"], e["route"])
           for k, e in eps.items()}
    assert got == {
        "GET /api/users/{id}": (40, 0, 40, 0, 0, "users"),
        "GET /api/orders/{id}": (35, 35, 0, 5, 0, "orders"),
        "GET /api/carts/{cartId}": (20, 20, 0, 0, 20, None),
        "GET /health": (10, 10, 0, 0, 10, None),
        "GET /static/app.js": (5, 5, 0, 0, 5, None),
        "POST /api/orders": (3, 3, 0, 0, 0, "orders"),
    }
    assert [k for k in eps] == ["GET /api/users/{id}", "GET /api/orders/{id}",
                                "GET /api/carts/{cartId}", "GET /health", "GET /static/app.js",
                                "POST /api/orders"]
    users = eps["GET /api/users/{id}"]
    assert (users["weight"], users["state"], users["new_share"]) == (100.0, "active", 1.0)
    assert users["share"] == pytest.approx(40 / 113)
    assert eps["GET /api/orders/{id}"]["error_rate"] == pytest.approx(5 / 35)
    assert eps["GET /api/orders/{id}"]["legacy_p99_ms"] is not None
    assert [(d["method"], d["template"]) for d in view["no_traffic"]] == [
        ("DELETE", "/api/carts/{cartId}"), ("GET", "/api/reports/{year}")]
    assert view["progress"] == {
        "requests": {"total": 113, "legacy": 73, "target": 40, "share": 40 / 113},
        "endpoints": {"total": 6, "migrated": 1, "partly": 0, "share": 1 / 6}}
    assert view["last_24h"] == view["progress"]

    unrouted = await _inventory(p.admin, "--unrouted")
    assert [f"{e['method']} {e['template']}" for e in unrouted["endpoints"]] == [
        "GET /api/carts/{cartId}", "GET /health", "GET /static/app.js"]

    code, out, _ = await run_cli("inventory", "--since", "1h", "--unrouted", "--admin", p.admin)
    assert code == 0
    assert "candidates for the next route" in out and "GET /api/carts/{cartId}" in out
    assert "DELETE /api/carts/{cartId}  (monolith-openapi.json:" in out
    assert "35.4% of requests (40 of 113) and 1 of 6 endpoints on new services" in out

    code, out, _ = await run_cli("status", "--admin", p.admin)
    assert code == 0
    assert out.splitlines()[-1] == ("Migration, last 24 h: 35.4% of requests (40 of 113) and 1 "
                                    "of 6 endpoints on new services")
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/admin/progress?days=2") as r:
            progress = await r.json()
    assert progress["last_24h"] == view["progress"]
    assert progress["daily"][-1]["requests"]["target"] == 40
    metrics = await scrape(p)
    assert total(metrics, "strangler_migration_progress_ratio", of="requests") == \
        pytest.approx(40 / 113)
    assert total(metrics, "strangler_migration_endpoints", state="migrated") == 1

    # a restart keeps every count (SIGTERM flushes what waits)
    assert await p.stop() == 0
    await p.start()
    again = await _inventory(p.admin)
    assert {k: e["requests"] for k, e in _ep(again).items()} == \
        {k: v[0] for k, v in got.items()}


async def test_requests_just_before_sigterm_are_kept(upstreams, proxy_process,
                                                     tmp_path: Path) -> None:
    """Through two workers, SIGTERM right after the last answer: the rows waiting in the control
    process (written every 10 s otherwise) are written before it exits."""
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    api = tmp_path / "openapi.json"
    api.write_text(json.dumps(OPENAPI))
    p = await proxy_process(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                        mono=mono.port, svc=svc.port, openapi=api),
                            args=("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        for i in range(50):
            async with s.get(f"{p.url}/api/users/{i}") as r:
                await r.read()
    assert await p.stop() == 0  # within a few ms of the last answer
    await p.start()
    view = await _inventory(p.admin)
    assert _ep(view)["GET /api/users/{id}"]["requests"] == 50
