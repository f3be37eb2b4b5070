"""A client cannot mark its own request as a mirror (SECURITY.md).

`X-Strangler-Shadow: 1` tells an upstream a request is strangler's mirror, which a service under
migration may answer without side effects (no charge, no write), and tells a chained strangler
not to mirror it again. It used to be taken from anyone: a client that sent it was never
mirrored (its request escaped the comparison the gate relies on) and the header reached the
primary upstream, which could take a real request for a dry run. Now it is honoured, and
forwarded, only from `trusted_proxies` (as X-Forwarded-*: a strangler in front of this one is
such a peer); from any other client it and `X-Strangler-Reconcile` are dropped, and the request
is mirrored like any other.
"""

from __future__ import annotations

import aiohttp
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
    trusted_proxies: {trusted}
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: payments
        match: {{path_prefix: /api/v1/payments}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0, max_rate: unlimited}}
"""
MARKS = {"X-Strangler-Shadow": "1", "X-Strangler-Reconcile": "1"}


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"paid": True})


async def _proxy(upstreams, inproc_proxy, trusted: str):
    mono = await upstreams("monolith", handler=ok)
    svc = await upstreams("svc", handler=ok)
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, trusted=trusted)
    return mono, svc, await inproc_proxy(text)


async def _get(url: str, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()


async def test_a_clients_mirror_mark_is_dropped_and_its_request_is_mirrored(upstreams,
                                                                           inproc_proxy):
    mono, svc, proxy = await _proxy(upstreams, inproc_proxy, "[]")
    await _get(proxy.url + "/api/v1/payments/1", MARKS)
    (seen,) = mono.seen  # the primary request: no mark reached it
    assert "x-strangler-shadow" not in seen.headers
    assert "x-strangler-reconcile" not in seen.headers
    await wait_for(lambda: svc.count(shadow=True) == 1, timeout=10)  # mirrored as any other
    (mirror,) = svc.seen
    assert "x-strangler-reconcile" not in mirror.headers


async def test_a_trusted_proxys_mirror_is_forwarded_marked_and_not_mirrored_again(
        upstreams, inproc_proxy):
    mono, svc, proxy = await _proxy(upstreams, inproc_proxy, '["127.0.0.1/32"]')
    await _get(proxy.url + "/api/v1/payments/1", {"X-Strangler-Shadow": "1"})  # a mirror
    await _get(proxy.url + "/api/v1/payments/2", {})  # an ordinary request after it
    assert [s.headers.get("x-strangler-shadow") for s in mono.seen] == ["1", None]
    await wait_for(lambda: svc.count(shadow=True) >= 1, timeout=10)
    await _get(proxy.url + "/api/v1/payments/3", {})  # one more, well after the first
    await wait_for(lambda: svc.count(shadow=True) >= 2, timeout=10)
    assert sorted(s.path for s in svc.seen) == ["/api/v1/payments/2", "/api/v1/payments/3"]
