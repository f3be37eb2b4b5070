"""Issue 22.7: a response that stops half-way is cut after the upstream's `read_timeout`.

The probe: an upstream sent its head and 10 bytes, then nothing; the client still hung after
75 s, no log line, and a pool slot stayed pinned (nginx: `proxy_read_timeout`, 60 s). Now
`read_timeout` (per upstream, default 60 s) runs between reads of a response; on expiry the
client connection is aborted (a short body or no last chunk, never a clean-looking response),
the error counted as `strangler_upstream_errors_total{kind="timeout"}` and the request as a 504
of that backend, the pool slot freed, and one warning logged. While the proxy itself holds the
upstream back for a slow reader, the clock stands still.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from tests.probe import metric, probe_config, scrape
from tests.rawhttp import RawUpstream, SeenRaw, ok_json, parse_responses, raw_request

READ_1S = "timeout: 1s, read_timeout: 1s, connect_timeout: 500ms, max_connections: 1"

STALLS = {
    "sized": [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789"],
    "chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\n0123456789\r\n"],
}


@pytest.mark.parametrize("answer", list(STALLS), ids=list(STALLS))
async def test_a_response_that_stalls_is_cut_counted_logged_and_frees_its_slot(proxy_process,
                                                                              answer):
    def respond(seen: SeenRaw):
        return STALLS[answer] if seen.target == b"/api/stall" else ok_json(seen)

    legacy = await RawUpstream(respond=respond).start()
    try:
        p = await proxy_process(probe_config(legacy.port, legacy.port, upstream=READ_1S))
        t0 = time.monotonic()
        data, closed = await raw_request(p.port, b"GET /api/stall HTTP/1.1\r\nHost: shop\r\n\r\n",
                                         timeout=5)
        took = time.monotonic() - t0
        assert closed and 0.9 < took < 2.5
        (resp,) = parse_responses(data)
        assert resp.status == 200 and not resp.complete and resp.body == b"0123456789"
        assert not data.endswith(b"0\r\n\r\n")
        # The only pooled slot (max_connections: 1) is free again.
        data, _ = await raw_request(p.port, b"GET /api/next HTTP/1.1\r\nHost: shop\r\n"
                                            b"Connection: close\r\n\r\n", timeout=3)
        assert [r.status for r in parse_responses(data)] == [200]
        text = await scrape(p.admin)
        assert metric(text, "strangler_upstream_errors_total", upstream="legacy",
                      kind="timeout") == 1
        assert metric(text, "strangler_requests_total", route="api", backend="legacy",
                      code="504") == 1
        logged = (p.stdout_path.read_text() + p.stderr_path.read_text()).splitlines()
        lines = [line for line in logged if "upstream read timeout" in line]
        assert len(lines) == 1 and "legacy" in lines[0]
    finally:
        await legacy.stop()


async def test_a_slow_but_steady_response_is_not_cut(proxy_process):
    """Ten bytes every 400 ms for 3 s with `read_timeout: 1s`: the timer is between reads."""
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 80
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(b"0123456789")
            await asyncio.sleep(0.4)
        return resp

    app = web.Application()
    app.router.add_get("/api/drip", drip)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        p = await proxy_process(probe_config(port, port, upstream=READ_1S))
        data, _ = await raw_request(p.port, b"GET /api/drip HTTP/1.1\r\nHost: shop\r\n"
                                            b"Connection: close\r\n\r\n", timeout=6)
        (resp,) = parse_responses(data)
        assert resp.status == 200 and resp.complete and len(resp.body) == 80
    finally:
        await runner.cleanup()


async def test_the_clock_stands_still_while_a_slow_client_holds_the_response(proxy_process):
    """A client that reads nothing for 2.5 s, then everything: the proxy stopped reading the
    upstream for it, which is no stall of the upstream's (`read_timeout: 1s`)."""
    big = b"q" * (16 * 1024 * 1024)

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=big)

    app = web.Application()
    app.router.add_get("/api/blob", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        p = await proxy_process(probe_config(port, port, upstream=READ_1S))
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", p.port))
        await loop.sock_sendall(sock, b"GET /api/blob HTTP/1.1\r\nHost: shop\r\n"
                                      b"Connection: close\r\n\r\n")
        await asyncio.sleep(2.5)
        buf = bytearray()
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                buf += chunk
        finally:
            sock.close()
        (resp,) = parse_responses(bytes(buf))
        assert resp.status == 200 and resp.complete and len(resp.body) == len(big)
        text = await scrape(p.admin)
        assert metric(text, "strangler_upstream_errors_total", upstream="legacy",
                      kind="timeout") == 0
    finally:
        await runner.cleanup()
