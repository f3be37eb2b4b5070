"""Issue 22.6: a request head is bounded as its bytes arrive; an upstream's response head too.

The probe: `X-Big: ` followed by 128 MiB without CRLF grew the proxy from 96 to 298 MB (198 MB
kept), stalled other clients up to 4.7 s and was answered 408 after 10 s, never 431: httptools
keeps a header line it has not seen the end of, and the limit was checked only on whole lines.
The same for an endless header name; and an upstream's 64 MiB response header was relayed as
a 200. Now the bytes of a head in progress are counted as they arrive and the connection is
answered 431 as soon as they pass `limits.max_request_line + limits.max_header_bytes` (an
endless request target is 414 as before); an upstream's response head beyond its
`max_header_bytes` (default 64 KiB) is a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import aiohttp
import pytest

from tests.probe import metric, probe_config, rss_kib, scrape
from tests.rawhttp import RawUpstream, SeenRaw, ok_json, parse_responses, raw_request

MiB = 1024 * 1024
STREAM = 128 * MiB


async def _stream_head(port: int, start: bytes, filler: bytes) -> tuple[bytes, int, float]:
    """Send `start`, then `filler` in 1 MiB writes up to 128 MiB, while reading the answer.
    Returns (what came back, bytes sent, seconds until the answer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    piece = filler * (MiB // len(filler))
    got = bytearray()
    answered = asyncio.Event()
    t0 = time.monotonic()
    took = 0.0

    async def read() -> None:
        nonlocal took
        with contextlib.suppress(OSError):
            while chunk := await loop.sock_recv(sock, 65536):
                if not got:
                    took = time.monotonic() - t0
                got.extend(chunk)
        answered.set()

    reader = asyncio.create_task(read())
    sent = 0
    try:
        await loop.sock_sendall(sock, start)
        while sent < STREAM and not answered.is_set():
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, piece), 5)
            except (OSError, TimeoutError):
                break
            sent += len(piece)
        await asyncio.wait_for(answered.wait(), 15)
    finally:
        reader.cancel()
        sock.close()
    return bytes(got), sent, took


async def _others(url: str, stop: asyncio.Event) -> list[float]:
    """Other clients' request latencies (seconds) until `stop`."""
    out: list[float] = []
    async with aiohttp.ClientSession() as s:
        while not stop.is_set() and len(out) < 5000:
            t0 = time.monotonic()
            async with s.get(url + "/api/other") as r:
                await r.read()
                assert r.status == 200
            out.append(time.monotonic() - t0)
            await asyncio.sleep(0.01)
    return out


@pytest.mark.parametrize("start,filler,status", [
    (b"GET /api HTTP/1.1\r\nHost: shop\r\nX-Big: ", b"a", 431),
    (b"GET /api HTTP/1.1\r\nHost: shop\r\nX-", b"B", 431),
    (b"GET /api/", b"c", 414),
], ids=["endless_value", "endless_name", "endless_target"])
async def test_an_endless_head_is_refused_at_the_limit_with_flat_memory(proxy_process, start,
                                                                        filler, status):
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port))
        pid = p.proc.pid
        await raw_request(p.port, b"GET /api/warm HTTP/1.1\r\nHost: shop\r\nConnection: close"
                                  b"\r\n\r\n")
        before = rss_kib(pid)
        stop = asyncio.Event()
        others = asyncio.create_task(_others(p.url, stop))
        await asyncio.sleep(0.3)
        data, sent, took = await _stream_head(p.port, start, filler)
        await asyncio.sleep(0.3)
        stop.set()
        latencies = await others
        after = rss_kib(pid)
        (resp,) = parse_responses(data)
        assert resp.status == status, data[:300]
        assert json.loads(resp.body)["status"] == status
        assert took < 2.0, took  # at the limit, not after a timeout
        assert sent < 16 * MiB  # the proxy closed long before the 128 MiB were sent
        assert after - before < 8 * 1024, (before, after)
        assert latencies and max(latencies) < 0.5, max(latencies)
        # Only the warm-up and the other clients' requests reached the upstream.
        assert {s.target for s in up.seen} == {b"/api/warm", b"/api/other"}
        print(f"\n{start[-8:]!r}: {status} after {took * 1000:.0f} ms, {sent / MiB:.0f} MiB sent, "
              f"RSS {before} -> {after} KiB, other clients' worst {max(latencies) * 1000:.0f} ms "
              f"over {len(latencies)} requests")
    finally:
        await up.stop()


async def test_a_head_just_inside_the_limits_is_served(proxy_process):
    """Right below the limits: a 8,000-byte target and 30 KiB of headers, sent one byte short
    of the old and new checks, in 1-byte pieces at the seams."""
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port))
        target = b"/api/" + b"t" * 7990
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(30))
        raw = b"GET %s HTTP/1.1\r\nHost: shop\r\n%sConnection: close\r\n\r\n" % (target, headers)
        data, _ = await raw_request(p.port, [raw[:20000], raw[20000:]], pause=0.05)
        assert [r.status for r in parse_responses(data)] == [200]
        assert up.seen[0].header("x-h29") == b"v" * 1000
    finally:
        await up.stop()


@pytest.mark.parametrize("end", [b"", b"\r\n"], ids=["open_line", "whole_line"])
@pytest.mark.parametrize("size", [50_000, 140_000])
async def test_a_head_past_the_limit_in_its_first_read_is_431_at_once(proxy_process, size, end):
    """The whole head so far in one write, past 8 KiB + 32 KiB, nothing more sent: the read in
    which a head began was not counted (it may end a previous request), nor a line ending the
    read (llhttp reports it when the next one starts), so this waited for header_timeout and
    was a 408. A head that begins the read is counted from its first byte, to its last."""
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, limits="header_timeout: 5s"))
        t0 = time.monotonic()
        data, closed = await raw_request(
            p.port, b"GET /api HTTP/1.1\r\nHost: shop\r\nX-Big: " + b"a" * size + end,
            timeout=4)
        took = time.monotonic() - t0
        assert [r.status for r in parse_responses(data)] == [431], data[:300]
        assert closed and took < 2.0, took
        assert up.seen == []
    finally:
        await up.stop()


async def test_a_pipelined_head_inside_the_limits_after_a_long_body_is_served(proxy_process):
    """Counting a read from its first byte applies only to a head that begins the read: a
    40 KiB body without a newline, then a small head in the same write, is two requests."""
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, limits="max_body: 1MiB"))
        body = b"b" * 40_000
        raw = (b"POST /api/one HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n%s"
               b"GET /api/two HTTP/1.1\r\nHost: shop\r\nX-H: " % (len(body), body))
        data, _ = await raw_request(p.port, [raw, b"v\r\nConnection: close\r\n\r\n"],
                                    pause=0.1)
        assert [r.status for r in parse_responses(data)] == [200, 200], data[-300:]
        assert [s.target for s in up.seen] == [b"/api/one", b"/api/two"]
    finally:
        await up.stop()


def _huge_header(seen: SeenRaw) -> list[bytes] | bytes:
    if seen.target != b"/api/huge":
        return ok_json(seen)
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Huge: "] + [b"h" * MiB] * 64 + [
        b"\r\n\r\nok"]


async def test_an_upstream_response_head_beyond_its_cap_is_502(proxy_process):
    up = await RawUpstream(respond=_huge_header).start()
    try:
        p = await proxy_process(probe_config(up.port, up.port))
        pid = p.proc.pid
        before = rss_kib(pid)
        t0 = time.monotonic()
        data, _ = await raw_request(p.port, b"GET /api/huge HTTP/1.1\r\nHost: shop\r\n"
                                            b"Connection: close\r\n\r\n", timeout=10)
        (resp,) = parse_responses(data)
        assert resp.status == 502 and json.loads(resp.body)["error"] == "upstream_unavailable"
        assert time.monotonic() - t0 < 2
        assert b"hhhh" not in data
        assert rss_kib(pid) - before < 8 * 1024
        text = await scrape(p.admin)
        assert metric(text, "strangler_upstream_errors_total", upstream="legacy",
                      kind="reset") == 1
    finally:
        await up.stop()


async def test_the_response_head_cap_is_per_upstream(proxy_process):
    def big_but_allowed(seen: SeenRaw) -> bytes:
        return b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok" % (b"b" * 100_000)

    up = await RawUpstream(respond=big_but_allowed).start()
    try:
        p = await proxy_process(probe_config(
            up.port, up.port, upstream="timeout: 2s, max_header_bytes: 128KiB"))
        data, _ = await raw_request(p.port, b"GET /api/x HTTP/1.1\r\nHost: shop\r\n"
                                            b"Connection: close\r\n\r\n")
        (resp,) = parse_responses(data)
        assert resp.status == 200 and len(resp.header("x-big")) == 100_000
    finally:
        await up.stop()
