"""Forwarding behaviour users rely on: forwarding headers, request ids, 502/504 as JSON, fallback to
legacy, and the HTTP/1 corner cases (keep-alive, pipelining, 100-continue, HEAD, 204/304,
HTTP/1.0, re-chunking, close-delimited bodies, stale pooled connections)."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from aiohttp import web

from tests.rawhttp import RawUpstream, SeenRaw, ok_json, parse_responses, raw_request
from tests.support import free_port, routes_yaml


def config(legacy: int, target: int, weight: float = 0, *, timeout: str = "2s",
           fallback: bool = True, trusted: str = "[]", methods: str = "") -> tuple[str, int, int]:
    port, admin = free_port(), free_port()
    text = routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          legacy: {{url: "http://127.0.0.1:{legacy}", timeout: {timeout}, connect_timeout: 500ms}}
          target: {{url: "http://127.0.0.1:{target}", timeout: {timeout}, connect_timeout: 500ms}}
        default_upstream: legacy
        trusted_proxies: {trusted}
        routes:
          - name: api
            match: {{path_prefix: /api{methods}}}
            legacy: legacy
            target: target
            weight: {weight}
            fallback_to_legacy: {fallback}
            shadow: false
        """, port=port, admin=admin, legacy=legacy, target=target, timeout=timeout,
                       fallback=str(fallback).lower(), trusted=trusted, weight=weight,
                       methods=methods)
    return text, port, admin


async def metrics(proxy) -> str:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# -- forwarding headers and request ids --------------------------------------------------------

async def test_forwarded_headers_set_and_client_values_replaced(upstreams, inproc_proxy):
    legacy = await upstreams("legacy")
    text, port, _ = config(legacy.port, legacy.port)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{port}/api/x",
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "evil.example", "Forwarded": "for=6.6.6.6",
                 "Host": "shop.example"},
    ) as r:
        assert r.status == 200
    seen = legacy.seen[-1].headers
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert "forwarded" not in seen
    assert seen["host"] == "shop.example"  # Host itself passes unchanged


async def test_trusted_proxy_values_are_kept_and_appended(upstreams, inproc_proxy):
    legacy = await upstreams("legacy")
    text, port, _ = config(legacy.port, legacy.port, trusted="[127.0.0.0/8]")
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{port}/api/x",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "public.example"},
    ) as r:
        assert r.status == 200
    seen = legacy.seen[-1].headers
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "public.example"


@pytest.mark.parametrize("sent,kept", [
    ("abc-123", True),
    ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
    ("has space", False),
    ("x" * 200, False),
    ("<script>", False),
    (None, False),
])
async def test_request_id_kept_or_generated_and_returned(upstreams, inproc_proxy, sent, kept):
    legacy = await upstreams("legacy")
    text, port, _ = config(legacy.port, legacy.port)
    await inproc_proxy(text)
    headers = {} if sent is None else {"X-Request-Id": sent}
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/x",
                                                   headers=headers) as r:
        rid = r.headers["X-Request-Id"]
    assert legacy.seen[-1].headers["x-request-id"] == rid
    if kept:
        assert rid == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{24}", rid)


# -- errors ------------------------------------------------------------------------------------

async def test_connect_failure_is_502_json(upstreams, inproc_proxy):
    dead = free_port()
    text, port, _ = config(dead, dead)
    proxy = await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{port}/api/x", headers={"X-Request-Id": "req-502"}
    ) as r:
        assert r.status == 502
        assert r.headers["Content-Type"] == "application/json"
        body = await r.json()
    assert body == {"error": "upstream_unavailable", "detail": body["detail"], "status": 502,
                    "request_id": "req-502"}
    text = await metrics(proxy)
    assert metric(text, "strangler_upstream_errors_total", upstream="legacy", kind="connect") >= 1


async def test_upstream_timeout_is_504_json(upstreams, inproc_proxy):
    slow = await upstreams("slow", delay=1.5)
    text, port, _ = config(slow.port, slow.port, timeout="300ms")
    proxy = await inproc_proxy(text)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{port}/api/x", headers={"X-Request-Id": "req-504"}
    ) as r:
        assert r.status == 504
        body = await r.json()
    assert loop.time() - t0 < 1.2
    assert body["error"] == "upstream_timeout" and body["request_id"] == "req-504"
    text = await metrics(proxy)
    assert metric(text, "strangler_upstream_errors_total", upstream="legacy", kind="timeout") >= 1


async def test_upstream_500_is_passed_through_not_rewritten(upstreams, inproc_proxy):
    legacy = await upstreams("legacy", status=500)
    text, port, _ = config(legacy.port, legacy.port)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/x") as r:
        assert r.status == 500
        assert (await r.json())["served_by"] == "legacy"


# -- fallback to legacy ------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["connect", "timeout", "5xx"])
async def test_fallback_to_legacy_for_idempotent_requests(upstreams, inproc_proxy, failure):
    legacy = await upstreams("legacy")
    if failure == "connect":
        target_port, code = free_port(), "502"
    elif failure == "timeout":
        target_port, code = (await upstreams("target", delay=1.5)).port, "504"
    else:
        target_port, code = (await upstreams("target", status=503)).port, "503"
    text, port, _ = config(legacy.port, target_port, weight=100, timeout="300ms")
    proxy = await inproc_proxy(text)
    async with aiohttp.ClientSession() as s:
        for method in ("GET", "HEAD", "OPTIONS"):
            async with s.request(method, f"http://127.0.0.1:{port}/api/x") as r:
                assert r.status == 200, method
                if method != "HEAD":
                    assert (await r.json())["served_by"] == "legacy"
    text = await metrics(proxy)
    assert metric(text, "strangler_requests_total", route="api", backend="target", code=code) == 3
    assert metric(text, "strangler_requests_total", route="api", backend="legacy", code="200") == 3


async def test_fallback_replays_a_small_idempotent_body(upstreams, inproc_proxy):
    legacy = await upstreams("legacy")
    text, port, _ = config(legacy.port, free_port(), weight=100)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.request(
        "GET", f"http://127.0.0.1:{port}/api/search", data=b"q=abc"
    ) as r:
        assert r.status == 200
    assert legacy.seen[-1].body == b"q=abc"


async def test_no_fallback_for_unsafe_methods_or_when_disabled(upstreams, inproc_proxy):
    legacy = await upstreams("legacy")
    target = await upstreams("target", status=503)
    text, port, _ = config(legacy.port, target.port, weight=100)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{port}/api/pay", data=b"{}") as r:
            assert r.status == 503
        async with s.post(f"http://127.0.0.1:{port}/api/pay") as r:
            assert r.status == 503
    assert legacy.count() == 0
    text, port, _ = config(legacy.port, target.port, weight=100, fallback=False)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/x") as r:
        assert r.status == 503
    assert legacy.count() == 0


async def test_fallback_failing_on_legacy_too_is_a_clean_error(inproc_proxy):
    text, port, _ = config(free_port(), free_port(), weight=100)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/x") as r:
        assert r.status == 502
        assert (await r.json())["error"] == "upstream_unavailable"


# -- HTTP/1 corner cases -----------------------------------------------------------------------

GET_TWICE = (b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"
             b"GET /api/y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
HEAD_TWICE = GET_TWICE.replace(b"GET ", b"HEAD ")


async def _raw_proxy(inproc_proxy, respond=ok_json, close_after=False):
    up = await RawUpstream(respond=respond, close_after=close_after).start()
    text, port, _ = config(up.port, up.port)
    await inproc_proxy(text)
    return port, up


async def test_keep_alive_reuses_one_upstream_connection(inproc_proxy):
    port, up = await _raw_proxy(inproc_proxy)
    reqs = [b"GET /api/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)]
    data, _ = await raw_request(port, reqs, pause=0.02, timeout=0.5)
    assert [r.status for r in parse_responses(data)] == [200] * 5
    assert up.connections == 1
    await up.stop()


async def test_pipelined_requests_answered_in_order(inproc_proxy):
    delays = {b"/api/slow": 0.2}

    def respond(seen: SeenRaw):
        if seen.target in delays:
            return [b"", ok_json(seen)]  # written 50 ms later: responses finish out of order
        return ok_json(seen)

    port, up = await _raw_proxy(inproc_proxy, respond)
    raw = b"".join(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % p
                   for p in (b"/api/slow", b"/api/1", b"/api/2"))
    data, _ = await raw_request(port, raw + b"GET /api/3 HTTP/1.1\r\nHost: a\r\n"
                                            b"Connection: close\r\n\r\n")
    paths = [json.loads(r.body)["path"] for r in parse_responses(data)]
    assert paths == ["/api/slow", "/api/1", "/api/2", "/api/3"]
    await up.stop()


async def test_expect_100_continue(inproc_proxy):
    port, up = await _raw_proxy(inproc_proxy)
    data, _ = await raw_request(port, [b"PUT /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                       b"Expect: 100-continue\r\nConnection: close\r\n\r\n",
                                       b"hello"], pause=0.1)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    (resp,) = parse_responses(data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
    assert resp.status == 200
    assert up.seen[0].body == b"hello"
    assert up.seen[0].header("expect") is None  # the proxy answered it; not forwarded
    await up.stop()


async def test_head_response_keeps_content_length_and_has_no_body(inproc_proxy):
    def respond(seen):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"

    port, up = await _raw_proxy(inproc_proxy, respond)
    data, _ = await raw_request(port, HEAD_TWICE)
    resps = parse_responses(data, head_only=True)
    assert [r.status for r in resps] == [200, 200]
    assert all(r.header("content-length") == "1234" for r in resps)
    assert data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"\r\n\r\n")
    assert up.connections == 1  # the upstream connection was reusable after HEAD
    await up.stop()


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(inproc_proxy, status):
    def respond(seen):
        return b"HTTP/1.1 %d X\r\nETag: \"v1\"\r\n\r\n" % status

    port, up = await _raw_proxy(inproc_proxy, respond)
    data, _ = await raw_request(port, GET_TWICE)
    resps = parse_responses(data)
    assert [r.status for r in resps] == [status, status]
    assert all(r.body == b"" and r.header("transfer-encoding") is None for r in resps)
    assert resps[0].header("etag") == '"v1"'
    await up.stop()


async def test_http10_client_gets_close_delimited_or_sized_response(inproc_proxy):
    def respond(seen):
        if seen.target == b"/api/chunked":
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n")
        return ok_json(seen)

    port, up = await _raw_proxy(inproc_proxy, respond)
    data, closed = await raw_request(port, b"GET /api/chunked HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in data.lower() and data.endswith(b"\r\n\r\nhello")
    assert closed
    data, closed = await raw_request(port, b"GET /api/x HTTP/1.0\r\nConnection: keep-alive"
                                           b"\r\n\r\n", timeout=0.5)
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.header("connection") == "keep-alive"
    assert up.seen[-1].version == "1.1" and up.seen[-1].header("host") is None
    await up.stop()


async def test_the_request_version_is_right_in_every_read_shape(inproc_proxy):
    """The compiled data plane reads the version off the request line when the head starts a
    read (no httptools call); pipelined heads, a request line split over two reads, leading
    CRLFs and a 1.1 head that mentions HTTP/1.0 further on must all get their own version's
    framing: an HTTP/1.0 client never gets chunked, an HTTP/1.1 one does."""
    def respond(seen):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n")

    port, up = await _raw_proxy(inproc_proxy, respond)
    http10 = b"GET /api/v HTTP/1.0\r\n\r\n"
    for send in ([http10], [b"GET /api/v HT", b"TP/1.0\r\n\r\n"], [b"\r\n" + http10],
                 [b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n" + http10]):
        data, closed = await raw_request(port, send, pause=0.05)
        last = parse_responses(data)[-1]
        assert closed and last.status == 200, send
        assert last.header("transfer-encoding") is None and data.endswith(b"\r\n\r\nhello"), send
    data, _ = await raw_request(port, b"GET /api/v HTTP/1.1\r\nHost: a\r\nX-A: b HTTP/1.0\r\n"
                                      b"Connection: close\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.header("transfer-encoding") == "chunked"
    data, _ = await raw_request(port, b"GET /api/v HTTP/2.0\r\nHost: a\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 505")
    await up.stop()


async def test_chunked_response_is_rechunked(inproc_proxy):
    def respond(seen):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: secret\r\n\r\n")

    port, up = await _raw_proxy(inproc_proxy, respond)
    data, _ = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close"
                                      b"\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.complete and resp.body == b"abcde"
    assert resp.header("transfer-encoding") == "chunked"
    assert b"ext=1" not in data and b"secret" not in data
    await up.stop()


async def test_close_delimited_upstream_response_is_complete(inproc_proxy):
    def respond(seen):
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 10000

    port, up = await _raw_proxy(inproc_proxy, respond, close_after=True)
    data, _ = await raw_request(port, GET_TWICE)
    resps = parse_responses(data)
    assert [(r.status, r.complete, len(r.body)) for r in resps] == [(200, True, 10000)] * 2
    assert up.connections == 2  # a close-delimited connection is never reused
    await up.stop()


async def test_stale_pooled_connection_is_retried_once(inproc_proxy):
    """The upstream closes a kept-alive connection just as the proxy reuses it (keep-alive
    timeout race): the idempotent request is replayed once on a fresh connection."""
    n = 0

    def respond(seen):
        nonlocal n
        n += 1
        return b"<CLOSE>" if n == 2 else ok_json(seen)

    port, up = await _raw_proxy(inproc_proxy, respond)
    async with aiohttp.ClientSession() as s:
        for i in range(3):
            async with s.get(f"http://127.0.0.1:{port}/api/{i}") as r:
                assert r.status == 200, i
    assert [x.target for x in up.seen] == [b"/api/0", b"/api/1", b"/api/1", b"/api/2"]
    assert up.connections == 2
    await up.stop()


async def test_websocket_upgrade_refused_route_answers_as_plain_request(upstreams, inproc_proxy):
    """Without `websocket: true` an Upgrade request is forwarded as a plain request, the
    Upgrade stripped; the upstream never sees it as an upgrade."""
    legacy = await upstreams("legacy")
    text, port, _ = config(legacy.port, legacy.port)
    await inproc_proxy(text)
    data, closed = await raw_request(port, b"GET /api/ws HTTP/1.1\r\nHost: a\r\n"
                                           b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                           b"Sec-WebSocket-Version: 13\r\n"
                                           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and closed
    assert "upgrade" not in legacy.seen[-1].headers


async def test_response_streams_before_upstream_finishes(upstreams, inproc_proxy):
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first")
        await release.wait()
        await resp.write(b"second")
        await resp.write_eof()
        return resp

    legacy = await upstreams("legacy", handler=handler)
    text, port, _ = config(legacy.port, legacy.port)
    await inproc_proxy(text)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/x") as r:
        assert await asyncio.wait_for(r.content.readexactly(5), 2) == b"first"
        release.set()
        assert await r.content.read() == b"second"


async def test_head_response_without_length_does_not_wait_for_close(inproc_proxy):
    def respond(seen):
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"

    port, up = await _raw_proxy(inproc_proxy, respond)
    data, _ = await raw_request(port, HEAD_TWICE,
                                timeout=2)
    assert data.count(b"HTTP/1.1 200") == 2
    assert up.connections == 1
    await up.stop()
