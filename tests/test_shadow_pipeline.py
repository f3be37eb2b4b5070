"""Pipelined shadow mirrors: answers matched to the right request, broken pipelines retried.

The shadow target here is a raw asyncio HTTP/1.1 server (a real server on 127.0.0.1) that
records how many requests arrived in each read, so a test can tell that mirrors really were
pipelined.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from proxy.config.spec import UpstreamSpec
from proxy.dataplane.mirror import CONNECTIONS
from proxy.dataplane.pipeline import DEPTH, START_SERVICE, PipelinePool
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, wait_for

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: items
        match: {{path_prefix: /items}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0, max_rate: unlimited}}
    shadow_budget: {{max_rate: unlimited}}
"""
SVC_CONNECTIONS = 4  # the target's max_connections (below mirror.CONNECTIONS, which caps it)
assert SVC_CONNECTIONS < CONNECTIONS


def answer(path: str, close: bool) -> bytes:
    body = json.dumps({"path": path}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"Connection: close\r\n" if close else b"", body))


class RawServer(asyncio.Protocol):
    """Answers each request in a read in order. When a read holds several requests, `cut`
    answers only the first, with `Connection: close`, and drops the connection; `hang` answers
    only the first and keeps the connection open (a server that cannot pipeline)."""

    def __init__(self, reads: list[int], cut: bool, hang: bool) -> None:
        self.reads = reads
        self.cut = cut
        self.hang = hang
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        heads = []
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            heads.append(head)  # mirrors of GET carry no body
        if not heads:
            return
        self.reads.append(len(heads))
        assert self.transport is not None
        cut = self.cut and len(heads) > 1
        if self.hang and len(heads) > 1:
            heads = heads[:1]
        for head in heads:
            path = head.split(b" ", 2)[1].decode()
            self.transport.write(answer(path, cut))
            if cut:
                self.transport.close()
                return


async def start_raw(cut: bool = False,
                    hang: bool = False) -> tuple[asyncio.AbstractServer, int, list[int]]:
    reads: list[int] = []
    port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: RawServer(reads, cut, hang), "127.0.0.1", port)
    return server, port, reads


async def legacy_echo(request: web.Request) -> web.Response:
    return web.Response(body=json.dumps({"path": request.raw_path}).encode(),
                        content_type="application/json")


async def drive(proxy_url: str, n: int, clients: int) -> None:
    async with aiohttp.ClientSession() as s:
        it = iter(range(n))

        async def client() -> None:
            for i in it:
                async with s.get(f"{proxy_url}/items/{i}") as r:
                    assert r.status == 200
                    assert (await r.json())["path"] == f"/items/{i}"

        await asyncio.gather(*(client() for _ in range(clients)))


async def mirror_through(upstreams, inproc_proxy, svc_port: int, n: int,
                         svc_timeout: str = "5s", pipeline: bool = True):
    """`n` GETs with distinct paths through a proxy that mirrors them all to `svc_port`; waits
    until all are accounted for and returns the route's window (and the proxy)."""
    mono = await upstreams("monolith", handler=legacy_echo)
    # Few connections to the target, so that mirrors queue for them and are pipelined on any
    # machine: with one connection per concurrent client a fast machine never needs to.
    text = ROUTES.replace('svc: {{url: "http://127.0.0.1:{svc}"}}',
                          f'svc: {{{{url: "http://127.0.0.1:{{svc}}", timeout: {svc_timeout}, '
                          f'max_connections: {SVC_CONNECTIONS}}}}}')
    assert text != ROUTES
    if not pipeline:
        text = text.replace("sample: 1.0,", "sample: 1.0, pipeline: false,")
    proxy = await inproc_proxy(routes_yaml(text, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc_port))
    await drive(proxy.url, n, clients=48)
    window = proxy.runtime.agg.window

    def accounted() -> bool:
        proxy.server.flush()
        w = window("items")
        return w.compared + w.shadow_errors >= n

    await wait_for(accounted, timeout=20)
    return window("items"), proxy


async def test_pipelined_mirrors_are_matched_to_their_own_requests(upstreams, inproc_proxy):
    server, port, reads = await start_raw()
    try:
        n = 600
        w, _ = await mirror_through(upstreams, inproc_proxy, port, n)
        # Every path differs, so an answer given to the wrong mirror would be a mismatch.
        assert (w.compared, w.mismatched, w.shadow_errors) == (n, 0, 0)
        assert sum(reads) == n
        assert max(reads) > 1, "no two mirrors were ever written together"
        assert max(reads) <= DEPTH
    finally:
        server.close()


async def test_pipeline_false_sends_one_mirror_per_connection_at_a_time(upstreams,
                                                                       inproc_proxy):
    server, port, reads = await start_raw()
    try:
        n = 600
        w, _ = await mirror_through(upstreams, inproc_proxy, port, n, pipeline=False)
        assert (w.compared, w.mismatched, w.shadow_errors) == (n, 0, 0)
        assert sum(reads) == n and max(reads) == 1
    finally:
        server.close()


async def test_pipeline_cut_by_the_target_is_retried_not_counted_as_errors(upstreams,
                                                                          inproc_proxy):
    server, port, reads = await start_raw(cut=True)
    try:
        n = 600
        w, _ = await mirror_through(upstreams, inproc_proxy, port, n)
        assert (w.compared, w.mismatched, w.shadow_errors) == (n, 0, 0)
        assert max(reads) > 1, "no pipeline was cut: the retry path went untested"
    finally:
        server.close()


async def test_server_that_cannot_pipeline_costs_timeouts_then_pipelining_stops(upstreams,
                                                                              inproc_proxy):
    server, port, reads = await start_raw(hang=True)
    try:
        n = 600
        w, proxy = await mirror_through(upstreams, inproc_proxy, port, n, svc_timeout="1s")
        assert max(reads) > 1
        # The request each hung pipeline was stuck on timed out (an error, not a difference);
        # the ones queued behind it were retried on their own connections and compared;
        # nothing was lost.
        assert w.compared + w.shadow_errors == n and w.mismatched == 0
        assert 1 <= w.shadow_errors <= SVC_CONNECTIONS  # at most one per hung connection
        assert set(w.shadow_error_kinds) == {("target", "timeout")}
        assert proxy.server.plane.shadow.pipes["svc"].depth() == 1  # cooling off
        before = len(reads)
        await drive(proxy.url, 100, clients=48)
        window = proxy.runtime.agg.window
        await wait_for(lambda: (proxy.server.flush(),
                                window("items").compared + window("items").shadow_errors
                                >= n + 100)[1], timeout=20)
        assert all(r == 1 for r in reads[before:])  # one request per connection from now on
    finally:
        server.close()


async def test_pipelining_only_while_the_upstream_is_fast():
    spec = UpstreamSpec(name="svc", url="http://127.0.0.1:9", host="127.0.0.1", port=9)
    pool = PipelinePool(spec, max_connections=4)
    assert pool.service == START_SERVICE and pool.depth() == 1  # no evidence yet
    for _ in range(40):
        pool.served(0.0005)
    assert pool.depth() == DEPTH
    for _ in range(10):
        pool.served(0.2)  # the target slowed down: one request per connection again
    assert pool.depth() == 1
    for _ in range(40):
        pool.served(0.0005)
    assert pool.depth() == DEPTH

    class Conn:
        aborted = False
        waiting = ["timed out", "behind it"]

        def abort(self) -> None:
            self.aborted = True

    conn = Conn()
    pool.broken(conn)  # type: ignore[arg-type]
    assert conn.aborted and pool.depth() == 1  # cooling off after a broken pipeline
    pool.close()
