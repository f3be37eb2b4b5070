"""Issue 22.3: what a client does on its own side never counts against a backend.

The probe: the upstream `timeout` started when the request head was written upstream, while the
client's body was still arriving, so a steady slow upload got `504 upstream_timeout` and a
stalled body a 504 instead of the promised 408, both counted as target errors; 25 POSTs with
`Content-Length: 100` and 1 byte of body from sticky keys on the target rolled a healthy route
back. Now the response timeout starts once the whole request was written upstream; a stalled
body is a 408 counted with backend `proxy`; a client that goes away is a 499 counted with
backend `proxy`; and a backend's latency excludes the time spent waiting for the client (its
upload, and a slow reader's back-pressure). The line drawn is in SECURITY.md ("What a client
can make a backend look like").

Everything runs against `strangler serve` with real upstreams.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.dataplane.split import StickyHasher, weight_to_bp
from tests.probe import metric, probe_config, rss_kib, scrape
from tests.rawhttp import parse_responses, raw_request
from tests.support import wait_for

SLOW_LIMITS = "body_idle_timeout: 1500ms, header_timeout: 2s"
UPSTREAM_1S = "timeout: 1s, connect_timeout: 500ms"


def _requests(text: str, backend: str) -> float:
    """Every strangler_requests_total count of route api for one backend, all codes."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (s.name == "strangler_requests_total" and s.labels.get("route") == "api"
                    and s.labels.get("backend") == backend):
                total += s.value
    return total


async def test_steady_slow_upload_outlasting_the_upstream_timeout_is_served(upstreams,
                                                                            proxy_process):
    """60 KB at 20 KB/s (3 s) through an upstream with `timeout: 1s`: the timeout waits for
    the last byte to be written upstream, as nginx's proxy_read_timeout does."""
    legacy = await upstreams("legacy")
    target = await upstreams("target")
    p = await proxy_process(probe_config(legacy.port, target.port, weight=100,
                                         upstream=UPSTREAM_1S, limits=SLOW_LIMITS))
    head = (b"POST /api/upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 60000\r\n"
            b"Connection: close\r\n\r\n")
    pieces = [head] + [b"x" * 2000] * 30
    t0 = time.monotonic()
    data, _ = await raw_request(p.port, pieces, pause=0.1, timeout=10)
    took = time.monotonic() - t0
    (resp,) = parse_responses(data)
    assert resp.status == 200, resp.body
    assert took >= 2.9
    assert target.seen[-1].body == b"x" * 60000
    text = await scrape(p.admin)
    assert metric(text, "strangler_upstream_errors_total", upstream="target", kind="timeout") == 0
    # The backend's latency is its own: from the request's last byte to the end of the answer.
    assert metric(text, "strangler_request_duration_seconds_sum", route="api",
                  backend="target") < 0.5


async def test_stalled_body_is_408_counted_against_the_client(upstreams, proxy_process):
    legacy = await upstreams("legacy")
    target = await upstreams("target")
    p = await proxy_process(probe_config(legacy.port, target.port, weight=100,
                                         upstream=UPSTREAM_1S, limits=SLOW_LIMITS))
    data, closed = await raw_request(p.port, b"POST /api/charge HTTP/1.1\r\nHost: shop\r\n"
                                             b"Content-Length: 100\r\n\r\nx", timeout=5)
    (resp,) = parse_responses(data)
    assert resp.status == 408 and closed
    text = await scrape(p.admin)
    assert _requests(text, "target") == 0
    assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                  code="408") == 1
    assert metric(text, "strangler_upstream_errors_total", upstream="target", kind="timeout") == 0


async def _send_and_reset(port: int, raw: bytes, after: float) -> None:
    """Send a request, wait, then close with a reset (SO_LINGER 0): the client is gone."""
    import struct

    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, raw)
    await asyncio.sleep(after)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_client_that_goes_away_is_not_backend_evidence(upstreams, proxy_process):
    """Three clients reset their connections while the target works on their requests: each
    is a 499 with backend `proxy`; nothing is recorded for the target, not even latency (a
    client chooses when to leave). A client that only half-closes still gets its answer, and
    the target's own latency is recorded."""
    legacy = await upstreams("legacy")
    target = await upstreams("target", delay=1.0)
    p = await proxy_process(probe_config(legacy.port, target.port, weight=100))
    get = b"GET /api/slow HTTP/1.1\r\nHost: shop\r\n\r\n"
    await asyncio.gather(*(_send_and_reset(p.port, get, 0.3) for _ in range(3)))
    await wait_for(lambda: target.count() == 3)
    await asyncio.sleep(1.2)  # the target has answered by now
    text = await scrape(p.admin)
    assert _requests(text, "target") == 0
    assert metric(text, "strangler_request_duration_seconds_count", route="api",
                  backend="target") == 0
    assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                  code="499") == 3
    data, _ = await raw_request(p.port, get, shut_write=True, timeout=3)
    assert [r.status for r in parse_responses(data)] == [200]
    text = await scrape(p.admin)
    assert metric(text, "strangler_requests_total", route="api", backend="target",
                  code="200") == 1
    assert 1.0 <= metric(text, "strangler_request_duration_seconds_sum", route="api",
                         backend="target") < 1.5


async def test_a_slow_reader_does_not_make_the_backend_slow(upstreams, proxy_process):
    """8 MiB read at most 3 MiB/s: the client takes 2 s, the target answered at once."""
    big = b"y" * (8 * 1024 * 1024)

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=big)

    legacy = await upstreams("legacy")
    target = await upstreams("target", handler=blob)
    p = await proxy_process(probe_config(legacy.port, target.port, weight=100))
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", p.port))
    await loop.sock_sendall(sock, b"GET /api/blob HTTP/1.1\r\nHost: shop\r\nConnection: close"
                                  b"\r\n\r\n")
    got = 0
    t0 = time.monotonic()
    try:
        while True:
            chunk = await loop.sock_recv(sock, 32 * 1024)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(0.01)
    finally:
        sock.close()
    assert got > len(big)
    assert time.monotonic() - t0 >= 1.5
    await asyncio.sleep(0.5)
    text = await scrape(p.admin)
    assert metric(text, "strangler_requests_total", route="api", backend="target",
                  code="200") == 1
    assert metric(text, "strangler_request_duration_seconds_sum", route="api",
                  backend="target") < 0.75


def _keys_on(route: str, weight: float, target: bool, n: int) -> list[str]:
    hasher, bp = StickyHasher(route), weight_to_bp(weight)
    keys = (f"user-{i}" for i in range(100_000))
    return [k for k in keys if (hasher.bucket(k.encode()) < bp) == target][:n]


GUARDED = """\
sticky: {header: X-User-Id}
fallback_to_legacy: true
promotion:
  guardrail: {enabled: true, window: 5s, min_requests: 20, max_error_rate: 0.2,
              min_error_rate_increase: 0.1}
"""


@pytest.mark.timeout(90)
async def test_stalled_posts_on_target_keys_do_not_roll_the_route_back(upstreams,
                                                                       proxy_process):
    """The probe's attack: 25 POSTs with `Content-Length: 100` and 1 byte of body, from sticky
    keys that land on the target, while legitimate users are served. The route stays active."""
    legacy = await upstreams("legacy")
    target = await upstreams("target")
    p = await proxy_process(probe_config(legacy.port, target.port, weight=50, route=GUARDED,
                                         upstream=UPSTREAM_1S, limits=SLOW_LIMITS))
    attack_keys = _keys_on("api", 50, True, 25)
    outcomes: list[int] = []
    stop = asyncio.Event()

    async def legit() -> None:
        async with aiohttp.ClientSession() as s:
            i = 0
            while not stop.is_set() and i < 2000:
                async with s.get(f"{p.url}/api/balance/{i}",
                                 headers={"X-User-Id": f"legit-{i % 40}"}) as r:
                    await r.read()
                    outcomes.append(r.status)
                i += 1
                await asyncio.sleep(0.02)

    async def attack(key: str) -> int:
        data, _ = await raw_request(p.port, b"POST /api/charge HTTP/1.1\r\nHost: shop\r\n"
                                            b"X-User-Id: %s\r\nContent-Length: 100\r\n\r\nx"
                                    % key.encode(), timeout=6)
        (resp,) = parse_responses(data)
        return resp.status

    load = asyncio.create_task(legit())
    try:
        statuses = await asyncio.gather(*(attack(k) for k in attack_keys))
        await asyncio.sleep(1.5)  # several stats merges and guardrail evaluations
    finally:
        stop.set()
        await load
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/admin/routes/api") as r:
        route = await r.json()
    assert route["state"] == "active", route.get("last_decision")
    assert route["weight"] == 50
    assert statuses == [408] * 25
    assert outcomes and set(outcomes) == {200}
    text = await scrape(p.admin)
    assert metric(text, "strangler_rollbacks_total", route="api", trigger="auto") == 0
    assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                  code="408") == 25
    assert metric(text, "strangler_requests_total", route="api", backend="target",
                  code="504") == 0


async def test_an_upstream_that_takes_no_body_has_timed_out_not_the_client(upstreams,
                                                                           proxy_process):
    """The flip side of the 408: the proxy stops reading the client because the upstream takes
    nothing; after the upstream's `timeout` that is a 504 against the upstream."""
    accepted: list[socket.socket] = []

    def hold(reader, writer) -> None:  # accept, never read
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        stuck = server.sockets[0].getsockname()[1]
        legacy = await upstreams("legacy")
        p = await proxy_process(probe_config(legacy.port, stuck, weight=100,
                                             upstream=UPSTREAM_1S, limits=SLOW_LIMITS,
                                             route="fallback_to_legacy: false"))
        size = 48 * 1024 * 1024
        head = (b"PUT /api/blob HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n" % size)
        before = rss_kib(p.proc.pid)
        t0 = time.monotonic()
        data, _ = await raw_request(p.port, [head] + [b"z" * (1024 * 1024)] * 48, timeout=8)
        (resp,) = parse_responses(data)
        assert resp.status == 504 and b"took no request body for 1s" in resp.body
        assert time.monotonic() - t0 < 3
        # The body waits in the client's socket, not in the proxy (it stopped reading).
        assert rss_kib(p.proc.pid) - before < 16 * 1024
        text = await scrape(p.admin)
        assert metric(text, "strangler_requests_total", route="api", backend="target",
                      code="504") == 1
        assert metric(text, "strangler_upstream_errors_total", upstream="target",
                      kind="timeout") == 1
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_a_full_connection_pool_is_the_proxys_limit_not_the_backends_error(
        upstreams, proxy_process):
    """A slow upload holds the only connection (`max_connections: 1`) longer than `timeout`:
    nothing of the next request was sent, so a GET falls back to legacy and, without a
    fallback, the answer is 503 `upstream_busy`, counted with backend `proxy`, never a target
    error (uploads could fill the pool on purpose)."""
    legacy = await upstreams("legacy")
    target = await upstreams("target")
    for fallback, expect in ((True, 200), (False, 503)):
        p = await proxy_process(probe_config(
            legacy.port, target.port, weight=100, limits=SLOW_LIMITS,
            route=f"fallback_to_legacy: {str(fallback).lower()}",
            upstream="timeout: 1s, connect_timeout: 500ms, max_connections: 1"))
        upload = asyncio.create_task(raw_request(
            p.port, b"POST /api/upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\nx",
            timeout=4))
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as s, s.get(p.url + "/api/second") as r:
            body = await r.json()
            assert r.status == expect, body
            if fallback:
                assert body["served_by"] == "legacy"
            else:
                assert body["error"] == "upstream_busy"
        (resp,) = parse_responses((await upload)[0])
        assert resp.status == 408
        text = await scrape(p.admin)
        assert _requests(text, "target") == 0
        assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                      code="503") == (0 if fallback else 1)
