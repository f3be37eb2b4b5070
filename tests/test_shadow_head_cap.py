"""A hostile shadow target cannot make a mirror hold an answer head without bound.

The primary refuses an answer whose head passes the upstream's `max_header_bytes` (502). The
pipelined mirror connection must hold the same line: a target that streams header lines
forever, one header line that never ends, or interim responses without end loses its mirror
(an error) and its connection as soon as the head passes the cap, not when the mirror's
timeout (30 s here) runs out, and the proxy reads at most the cap and one read past it.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support import free_port, routes_yaml, wait_for
from tests.test_shadow_pipeline import ROUTES as PIPELINE_ROUTES
from tests.test_shadow_pipeline import legacy_echo

CAP = 16 * 1024
CHUNK = 2048
# test_shadow_pipeline's routes (every GET on /items mirrored to svc), with svc's head capped
SVC = 'svc: {{url: "http://127.0.0.1:{svc}"}}'
assert SVC in PIPELINE_ROUTES
ROUTES = PIPELINE_ROUTES.replace(
    SVC, 'svc: {{url: "http://127.0.0.1:{svc}", timeout: 30s, max_header_bytes: {cap}}}')


class EndlessHead(asyncio.Protocol):
    """Answers a request with head bytes every few milliseconds until the proxy closes the
    connection (or 20 s pass). `how`: "one-endless-line", a status line then a single header
    line that never ends; "many-lines", a status line then many short, complete header lines;
    "interims", bare `100 Continue` interim responses, one after another, and no final one."""

    def __init__(self, sent: list[int], closed: list[float], how: str) -> None:
        self.sent = sent
        self.closed = closed
        self.how = how
        self.task: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.task is None and b"\r\n\r\n" in data:
            self.task = asyncio.get_running_loop().create_task(self.stream())

    async def stream(self) -> None:
        loop = asyncio.get_running_loop()
        if self.how == "interims":
            piece = b"HTTP/1.1 100 Continue\r\n\r\n" * (CHUNK // 25)
        else:
            self.transport.write(b"HTTP/1.1 200 OK\r\nX-Long: ")  # type: ignore[attr-defined]
            piece = (b"a" * CHUNK if self.how == "one-endless-line"
                     else b"a" * (CHUNK - 2) + b"\r\n" + b"X-More: ")
        end = loop.time() + 20
        while not self.transport.is_closing() and loop.time() < end:
            self.transport.write(piece)  # type: ignore[attr-defined]
            self.sent[0] += len(piece)
            await asyncio.sleep(0.005)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.append(asyncio.get_running_loop().time())
        if self.task is not None:
            self.task.cancel()


class SlowHeadUnderCap(asyncio.Protocol):
    """Answers each request with a head just under the cap (many header lines, and one long
    line cut across reads), written in small pieces so that it spans many reads."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bool] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.answer())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.queue.put_nowait(True)

    async def answer(self) -> None:
        body = b'{"path": "/items/1"}'
        lines = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"f" * 200) for i in range(40))
        long_line = b"X-Long: " + b"g" * (CAP - 1024 - len(lines)) + b"\r\n"
        head = (b"HTTP/1.1 200 OK\r\n" + lines + long_line
                + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert CAP - 1024 < len(head) < CAP
        while True:
            await self.queue.get()
            for i in range(0, len(head), 700):
                self.transport.write(head[i:i + 700])  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)
            self.transport.write(body)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()


@pytest.mark.parametrize("how", ["many-lines", "one-endless-line", "interims"])
async def test_mirror_answer_head_past_the_cap_is_an_error_not_a_wait(upstreams, inproc_proxy,
                                                                      how):
    sent = [0]
    closed: list[float] = []
    port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: EndlessHead(sent, closed, how), "127.0.0.1", port)
    try:
        mono = await upstreams("monolith", handler=legacy_echo)
        proxy = await inproc_proxy(routes_yaml(ROUTES, cap=CAP, port=free_port(),
                                               admin=free_port(), mono=mono.port, svc=port))
        async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/items/1") as r:
            assert r.status == 200  # the client's answer does not wait for the mirror
        window = proxy.runtime.agg.window

        def failed() -> bool:
            proxy.server.flush()
            return window("items").shadow_errors >= 1

        await wait_for(failed, timeout=8)  # well before the target's 30 s timeout
        w = window("items")
        assert w.compared == 0
        kinds = dict(w.shadow_error_kinds)
        assert ("target", "timeout") not in kinds, kinds
        await wait_for(lambda: bool(closed), timeout=5)  # the connection went with it
        # What the target got to send before the close: the cap, one read past it (uvloop
        # reads up to 256 KiB), and what was in flight.
        assert sent[0] < CAP + 256 * 1024 + 64 * 1024, sent[0]
    finally:
        server.close()


async def test_mirror_answer_head_under_the_cap_in_many_reads_is_compared(upstreams,
                                                                         inproc_proxy):
    port = free_port()
    server = await asyncio.get_running_loop().create_server(SlowHeadUnderCap, "127.0.0.1", port)
    try:
        mono = await upstreams("monolith", handler=legacy_echo)
        proxy = await inproc_proxy(routes_yaml(ROUTES, cap=CAP, port=free_port(),
                                               admin=free_port(), mono=mono.port, svc=port))
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"{proxy.url}/items/1") as r:
                    assert r.status == 200
        window = proxy.runtime.agg.window

        def done() -> bool:
            proxy.server.flush()
            w = window("items")
            return w.compared + w.shadow_errors >= 3

        await wait_for(done, timeout=10)
        w = window("items")
        assert (w.compared, w.shadow_errors) == (3, 0), dict(w.shadow_error_kinds)
    finally:
        server.close()
