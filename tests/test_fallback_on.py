"""Issue 25.3: `fallback_to_legacy: {on: [...]}` says which target failures fall back.

The reproduction: with `fallback_to_legacy: true` a deliberate 503 from the target reached the
client as legacy's answer; with `on:` listing only connection failures and 502/504, the
target's own 503 reaches the client, a connect failure still falls back, and a POST that
reached the target is never sent twice whatever the list says.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.support import free_port, routes_yaml

CONFIG = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}", timeout: 0.3s}}
    default_upstream: monolith
    routes:
      - name: r
        match: {{path_prefix: /r}}
        legacy: monolith
        target: svc
        weight: 100
        fallback_to_legacy: {fallback}
"""


async def proxy_with(inproc_proxy, upstreams, fallback: str, svc_status: int = 200,
                     svc_port: int | None = None, svc_delay: float = 0.0):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"served_by": "svc"}, status=svc_status)

    mono = await upstreams("monolith")
    svc = None
    if svc_port is None:
        svc = await upstreams("svc", handler=answer, delay=svc_delay)
        svc_port = svc.port
    proxy = await inproc_proxy(routes_yaml(CONFIG, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc_port, fallback=fallback))
    return proxy, mono, svc


async def call(proxy, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, proxy.url + "/r/1",
                                                       data=data) as r:
        body = await r.json(content_type=None)
        return r.status, body.get("served_by") or body.get("error")


LIST = "{on: [connect, timeout, reset, 502, 504]}"


async def test_target_503_reaches_the_client_when_503_is_not_listed(inproc_proxy, upstreams):
    proxy, mono, _svc = await proxy_with(inproc_proxy, upstreams, LIST, svc_status=503)
    assert await call(proxy) == (503, "svc")
    assert mono.count() == 0


async def test_listed_status_falls_back(inproc_proxy, upstreams):
    proxy, _mono, _ = await proxy_with(inproc_proxy, upstreams, "{on: [503]}", svc_status=503)
    assert await call(proxy) == (200, "monolith")


async def test_true_keeps_falling_back_on_every_5xx(inproc_proxy, upstreams):
    proxy, _mono, _ = await proxy_with(inproc_proxy, upstreams, "true", svc_status=500)
    assert await call(proxy) == (200, "monolith")


async def test_5xx_shorthand_and_timeout_not_listed(inproc_proxy, upstreams):
    proxy, mono, _ = await proxy_with(inproc_proxy, upstreams, "{on: [5xx]}", svc_delay=1.0)
    assert await call(proxy) == (504, "upstream_timeout")  # a timeout is not a status
    assert mono.count() == 0


async def test_connect_failure_falls_back_when_listed(inproc_proxy, upstreams):
    proxy, _mono, _ = await proxy_with(inproc_proxy, upstreams, "{on: [connect]}",
                                      svc_port=free_port())
    assert await call(proxy) == (200, "monolith")
    proxy2, mono2, _ = await proxy_with(inproc_proxy, upstreams, "{on: [503]}",
                                        svc_port=free_port())
    assert await call(proxy2) == (502, "upstream_unavailable")
    assert mono2.count() == 0


async def test_post_that_reached_the_target_is_never_sent_again(inproc_proxy, upstreams):
    proxy, mono, svc = await proxy_with(inproc_proxy, upstreams, "{on: [5xx, reset]}",
                                        svc_status=503)
    assert await call(proxy, "POST", b'{"amount": 10}') == (503, "svc")
    assert svc.count() == 1 and mono.count() == 0
