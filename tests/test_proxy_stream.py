"""Bodies stream both ways with bounded memory: 1 GiB up and 1 GiB down through `strangler serve`.

Memory is the proxy process's peak RSS (VmHWM in /proc/PID/status) before and after the transfers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
from aiohttp import web

from tests.support import free_port, routes_yaml

GiB = 1024**3
CHUNK = 1024 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class BulkServer:
    """Counts and hashes uploads without buffering; serves sized downloads of any length."""

    def __init__(self) -> None:
        self.received = 0
        self.digest = ""
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def upload(self, request: web.Request) -> web.Response:
        h = hashlib.blake2b()
        n = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            h.update(chunk)
            n += len(chunk)
        self.received, self.digest = n, h.hexdigest()
        return web.json_response({"received": n, "digest": self.digest,
                                  "chunked": request.headers.get("Transfer-Encoding")})

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("chunked") != "1":
            resp.content_length = size
        await resp.prepare(request)
        left = size
        while left > 0:
            n = min(left, CHUNK)
            await resp.write(BLOCK[:n])
            left -= n
        await resp.write_eof()
        return resp

    async def start(self) -> BulkServer:
        app = web.Application(client_max_size=4 * GiB)
        app.router.add_post("/bulk/up", self.upload)
        app.router.add_get("/bulk/down", self.download)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _config(bulk: int) -> str:
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          bulk: {{url: "http://127.0.0.1:{bulk}", timeout: 30s}}
        default_upstream: bulk
        limits: {{max_body: 2GiB}}
        routes: []
        """, port=free_port(), admin=free_port(), bulk=bulk)


async def _upload(url: str, size: int) -> tuple[dict, str]:
    h = hashlib.blake2b()

    async def gen():
        left = size
        while left > 0:
            n = min(left, CHUNK)
            h.update(BLOCK[:n])
            yield BLOCK[:n]
            left -= n

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(url, data=gen()) as r:
        assert r.status == 200
        return await r.json(), h.hexdigest()


async def _download(url: str) -> tuple[int, int, str]:
    timeout = aiohttp.ClientTimeout(total=120)
    n = 0
    h = hashlib.blake2b()
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(CHUNK):
            n += len(chunk)
            h.update(chunk)
        return r.status, n, h.hexdigest()


async def test_one_gib_up_and_down_with_flat_memory(proxy_process):
    bulk = await BulkServer().start()
    try:
        proxy = await proxy_process(_config(bulk.port))
        pid = proxy.proc.pid
        # Warm up every code path first so the baseline includes imports and pools.
        await _upload(proxy.url + "/bulk/up", 8 * CHUNK)
        await _download(proxy.url + f"/bulk/down?size={8 * CHUNK}")
        base = vm_hwm_kib(pid)
        t0 = time.monotonic()
        result, digest = await _upload(proxy.url + "/bulk/up", GiB)
        assert result["received"] == GiB and result["digest"] == digest
        assert result["chunked"] == "chunked"  # streamed, not buffered into a Content-Length
        _, n, got = await _download(proxy.url + f"/bulk/down?size={GiB}")
        assert n == GiB
        expected = hashlib.blake2b()
        for _ in range(GiB // CHUNK):
            expected.update(BLOCK)
        assert got == expected.hexdigest()
        elapsed = time.monotonic() - t0
        growth_mib = (vm_hwm_kib(pid) - base) / 1024
        print(f"2 GiB through the proxy in {elapsed:.1f}s; peak RSS growth {growth_mib:.1f} MiB")
        assert growth_mib < 64
        assert await proxy.stop() == 0
    finally:
        await bulk.stop()


async def test_chunked_download_and_sized_upload_stream(proxy_process):
    bulk = await BulkServer().start()
    try:
        proxy = await proxy_process(_config(bulk.port))
        _, n, _ = await _download(proxy.url + f"/bulk/down?size={64 * CHUNK}&chunked=1")
        assert n == 64 * CHUNK
        body = BLOCK * 32
        async with aiohttp.ClientSession() as s, s.post(proxy.url + "/bulk/up", data=body) as r:
            got = await r.json()
        assert got["received"] == len(body) and got["chunked"] is None
    finally:
        await bulk.stop()


async def test_slow_reader_backpressure_bounds_memory(proxy_process):
    """A client that reads slowly makes the proxy stop reading from the upstream."""
    bulk = await BulkServer().start()
    try:
        proxy = await proxy_process(_config(bulk.port))
        pid = proxy.proc.pid
        await _download(proxy.url + f"/bulk/down?size={8 * CHUNK}")
        base = vm_hwm_kib(pid)
        async with aiohttp.ClientSession() as s, s.get(
            proxy.url + f"/bulk/down?size={512 * CHUNK}"
        ) as r:
            await asyncio.sleep(1.0)  # upstream could push 512 MiB meanwhile if unbounded
            n = 0
            async for chunk in r.content.iter_chunked(CHUNK):
                n += len(chunk)
        assert n == 512 * CHUNK
        assert (vm_hwm_kib(pid) - base) / 1024 < 64
    finally:
        await bulk.stop()


async def test_upstream_connection_paused_by_slow_client_is_reusable(proxy_process):
    """Regression: a response finishing while the client was write-paused left its pooled
    upstream connection paused; the next request on it hung until the 30 s timeout."""
    bulk = await BulkServer().start()
    try:
        proxy = await proxy_process(_config(bulk.port))
        timeout = aiohttp.ClientTimeout(total=5)
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as s:
            for _ in range(12):
                async with s.get(proxy.url + f"/bulk/down?size={32 * CHUNK}&chunked=1") as r:
                    async for _chunk in r.content.iter_chunked(256 * 1024):
                        pass
                async with s.post(proxy.url + "/bulk/up", data=BLOCK) as r:
                    assert r.status == 200
                    assert (await r.json())["received"] == CHUNK
    finally:
        await bulk.stop()
