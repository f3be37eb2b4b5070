"""`limits.send_timeout`: a client that stops reading its answer is cut, and its upstream freed.

The gap (issue 22's probe, left open there): a client asks for a large response and never reads
it. The proxy stops reading the upstream while the client's buffer is full (back-pressure), and
nothing timed out: the client held the proxy's upstream connection, and the upstream's worker,
forever. nginx closes such a connection after `send_timeout` (60 s) without a successful write;
strangler now does the same: after `limits.send_timeout` without the client taking a byte, the
client connection is aborted, the upstream connection closed (never pooled mid-response), the
request counted as a 408 with backend `proxy`, one warning logged and the access line written.
The clock runs between bytes the client takes, so a slow reader that keeps reading is served.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httptools

from tests.probe import metric, probe_config, scrape
from tests.rawhttp import parse_responses, raw_request

BIG = 8 * 1024 * 1024
SEND_1S = "send_timeout: 1s"
UPSTREAM = "timeout: 2s, read_timeout: 1s, connect_timeout: 500ms, max_connections: 1"


class _Conn(asyncio.Protocol):
    def __init__(self, owner: BigUpstream) -> None:
        self.owner = owner
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.closed += 1
        self.owner.closed_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n")
            self.transport.write(b"w" * BIG)  # opaque tunnel bytes the client never reads

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        if self.parser.should_upgrade():
            return
        body = b"b" * BIG if url == b"/api/big" else b'{"ok":true}'
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))


class BigUpstream:
    """Answers /api/big with 8 MiB, anything else with a small JSON body, and a WebSocket
    upgrade with a 101 and 8 MiB of tunnel bytes; counts its connections opened and closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.closed_at = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> BigUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def _client(port: int, request: bytes) -> socket.socket:
    """A connected socket with a small receive buffer (no autotuning) that sent `request`."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


async def _read_all(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything until the server closes: (bytes, reset by the server)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout):
            buf += chunk
    except ConnectionResetError:
        return bytes(buf), True
    return bytes(buf), False


async def _wait_closed(up: BigUpstream, limit: float) -> None:
    deadline = time.monotonic() + limit
    while up.closed == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _access_lines(p, path: str) -> list[dict]:
    out = []
    for line in p.stdout_path.read_text().splitlines():
        if line.startswith("{") and '"event":"access"' in line:
            entry = json.loads(line)
            if entry.get("path") == path:
                out.append(entry)
    return out


async def test_a_client_that_never_reads_is_cut_and_its_upstream_connection_freed(
        proxy_process):
    up = await BigUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, upstream=UPSTREAM,
                                             limits=SEND_1S))
        t0 = time.monotonic()
        sock = await _client(p.port, b"GET /api/big HTTP/1.1\r\nHost: shop\r\n\r\n")
        try:
            await _wait_closed(up, 6.0)
            # The upstream saw its connection closed within a few seconds (send_timeout 1 s):
            # nothing holds its worker any more.
            assert up.opened == 1 and up.closed == 1, "the upstream connection is still held"
            assert 0.9 < up.closed_at - t0 < 4.0
            data, reset = await _read_all(sock)
        finally:
            sock.close()
        # The client got a truncated answer and a reset, never a clean-looking end.
        assert reset
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        (resp,) = parse_responses(data)
        assert not resp.complete and len(resp.body) < BIG
        # The only pooled slot (max_connections: 1) is free: the next request is served.
        data, _ = await raw_request(p.port, b"GET /api/next HTTP/1.1\r\nHost: shop\r\n"
                                            b"Connection: close\r\n\r\n", timeout=3)
        assert [r.status for r in parse_responses(data)] == [200]
        assert up.opened == 2
        text = await scrape(p.admin)
        # The client's doing: a 408 with backend `proxy`, never the backend's evidence.
        assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                      code="408") == 1
        assert metric(text, "strangler_requests_total", route="api", backend="legacy",
                      code="200") == 1  # /api/next only
        assert metric(text, "strangler_upstream_errors_total", upstream="legacy",
                      kind="timeout") == 0
        await asyncio.sleep(0.3)  # the access log's flush loop
        (line,) = _access_lines(p, "/api/big")
        assert line["status"] == 408 and 0 < line["bytes_out"] < BIG
        logged = (p.stdout_path.read_text() + p.stderr_path.read_text()).splitlines()
        warned = [x for x in logged if "client send timeout" in x]
        assert len(warned) == 1
    finally:
        await up.stop()


async def test_a_slow_reader_that_keeps_reading_is_not_cut(proxy_process):
    """128 KiB every 0.3 s for 4 s (four times `send_timeout`): the proxy holds most of the
    answer back meanwhile (its buffer stays above the high-water mark the whole time, so
    writing does not resume), yet the client keeps taking bytes: served whole."""
    up = await BigUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, upstream=UPSTREAM,
                                             limits=SEND_1S))
        loop = asyncio.get_running_loop()
        sock = await _client(p.port, b"GET /api/big HTTP/1.1\r\nHost: shop\r\n"
                                     b"Connection: close\r\n\r\n")
        buf = bytearray()
        try:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                want = 128 * 1024
                while want > 0:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, want), 3)
                    assert chunk, "cut while reading steadily"
                    buf += chunk
                    want -= len(chunk)
            assert len(buf) < BIG // 2  # the answer was still held back when the pace ended
            rest, reset = await _read_all(sock)
            buf += rest
        finally:
            sock.close()
        assert not reset
        (resp,) = parse_responses(bytes(buf))
        assert resp.status == 200 and resp.complete and len(resp.body) == BIG
        text = await scrape(p.admin)
        assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                      code="408") == 0
    finally:
        await up.stop()


async def test_a_websocket_client_that_never_reads_is_cut_and_its_upstream_closed(
        proxy_process):
    """A tunnel shares the pause: the upstream pushes 8 MiB, the client reads none of it."""
    up = await BigUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, upstream=UPSTREAM,
                                             limits=SEND_1S, route="websocket: true"))
        t0 = time.monotonic()
        sock = await _client(p.port, b"GET /api/ws HTTP/1.1\r\nHost: shop\r\n"
                                     b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                     b"Sec-WebSocket-Version: 13\r\n"
                                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        try:
            await _wait_closed(up, 6.0)
            assert up.closed == 1, "the tunnel's upstream connection is still held"
            assert 0.9 < up.closed_at - t0 < 4.0
            data, reset = await _read_all(sock)
        finally:
            sock.close()
        assert reset and data.startswith(b"HTTP/1.1 101 ")
        text = await scrape(p.admin)
        assert metric(text, "strangler_requests_total", route="api", backend="proxy",
                      code="408") == 1
    finally:
        await up.stop()
