"""Hypothesis fuzz of request heads against the in-process proxy.

Property: whatever bytes arrive, the proxy answers with a well-formed HTTP/1.1 response that is
never a 500 (and never a traceback), or closes the connection; and it keeps serving afterwards.
Anything that reaches the upstream parses cleanly there (the proxy re-serialises, never relays).
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawhttp import RawUpstream, one_route_config, parse_responses, raw_request
from tests.support import free_port

TOKENS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b"get", b"G ET"]
TARGETS = [b"/api", b"/api/x?y=1", b"/", b"*", b"http://a/api", b"//api", b"/api/%2e%2e/x",
           b"/api/..", b"/%00", b"/api\\x", b"/a b", b"", b"/api#f", b"/" + b"a" * 300]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 ", b"http/1.1", b""]
NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade",
         b"X-Forwarded-For", b"X-Request-Id", b"Expect", b"TE", b"Cookie", b"X_Under",
         b"X-A", b"Host ", b" Host", b"Content-Length ", b"Keep-Alive", b"Trailer"]
VALUES = [b"a", b"0", b"5", b"-1", b"5, 5", b"chunked", b"chunked, chunked", b"identity",
          b"close", b"keep-alive, Host", b"Content-Length", b"upgrade", b"websocket", b"h2c",
          b"100-continue", b"a\x00b", b"a\rb", b"\tchunked", b"1.2.3.4", b"x" * 200]
SEPS = [b"\r\n", b"\n", b"\r\n ", b"\r"]


def mostly(common: bytes, others: list[bytes]) -> st.SearchStrategy[bytes]:
    """Half the time the well-formed choice, so that many examples get past the parser."""
    return st.just(common) | st.sampled_from(others)


line = st.builds(lambda m, t, v: m + b" " + t + (b" " + v if v else b""),
                 mostly(b"GET", TOKENS), mostly(b"/api/x", TARGETS),
                 mostly(b"HTTP/1.1", VERSIONS))
header = st.builds(lambda n, v, sep: n + b": " + v + sep, st.sampled_from(NAMES),
                   st.sampled_from(VALUES) | st.binary(max_size=12), mostly(b"\r\n", SEPS))
head = st.builds(lambda ln, host, hs, tail, body: (ln + b"\r\n" + host + b"".join(hs) + b"\r\n"
                                                  + tail + body),
                 line, mostly(b"Host: a\r\n", [b""]), st.lists(header, max_size=6),
                 st.sampled_from([b"", b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"GET / HTTP/1.1"
                                  b"\r\nHost: a\r\n\r\n"]),
                 st.binary(max_size=16))


async def _check(port: int, up: RawUpstream, data: bytes) -> None:
    got, _ = await raw_request(port, data, timeout=1.5, shut_write=True)
    if got:
        assert got.startswith(b"HTTP/1.1 "), got[:80]
        for resp in parse_responses(got):
            assert resp.status != 500 and 100 <= resp.status < 600, (data, resp)
            assert b"Traceback" not in resp.body
    assert up.errors == [], (data, up.errors)


async def test_fuzzed_request_heads(inproc_proxy):
    up = await RawUpstream().start()
    proxy = await inproc_proxy(one_route_config(
        free_port(), free_port(), up.port, up.port,
        limits="limits: {header_timeout: 1s, body_idle_timeout: 1s}\n"))
    port = proxy.runtime.config.listen.port
    loop = asyncio.get_running_loop()
    cases: list[bytes] = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(head)
    def collect(data: bytes) -> None:
        cases.append(data)

    collect()
    assert len(cases) >= 200
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        sem = asyncio.Semaphore(16)

        async def one(data: bytes) -> None:
            async with sem:
                await _check(port, up, data)

        await asyncio.gather(*(one(d) for d in cases))
        assert errors == []  # no exception escaped a protocol callback (no traceback logged)
        assert up.seen  # some well-formed heads did reach the upstream, re-serialised
        # Still healthy afterwards.
        data, _ = await raw_request(port, b"GET /api/ok HTTP/1.1\r\nHost: a\r\n"
                                          b"Connection: close\r\n\r\n")
        assert parse_responses(data)[0].status == 200
        assert not [c for c in proxy.server.plane.connections if c.transport
                    and not c.transport.is_closing()]
    finally:
        loop.set_exception_handler(None)
        await up.stop()


async def test_random_bytes_never_crash_the_proxy(inproc_proxy):
    up = await RawUpstream().start()
    proxy = await inproc_proxy(one_route_config(free_port(), free_port(), up.port, up.port))
    port = proxy.runtime.config.listen.port
    cases: list[bytes] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(min_size=1, max_size=200))
    def collect(data: bytes) -> None:
        cases.append(data)

    collect()
    try:
        sem = asyncio.Semaphore(16)

        async def one(data: bytes) -> None:
            async with sem:
                await _check(port, up, data)

        await asyncio.gather(*(one(d) for d in cases))
        data, _ = await raw_request(port, b"GET /api/ok HTTP/1.1\r\nHost: a\r\n"
                                          b"Connection: close\r\n\r\n")
        assert parse_responses(data)[0].status == 200
    finally:
        await up.stop()
