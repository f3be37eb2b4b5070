"""Issue 24.5: every common Content-Encoding is decoded in the comparer, off the request path;
a decompression bomb is counted and skipped, never expanded."""

from __future__ import annotations

import functools
import gzip
import json
import zlib

import aiohttp
import brotli
import pytest
import zstandard
from aiohttp import web

from tests.support import free_port, routes_yaml, wait_for
from tests.test_store_bounds import _comparer_pid, _peak_rss_mb

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: enc
        match: {{path_prefix: /enc}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0, max_rate: unlimited, max_body: 4MiB}}
"""
ENCODE = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@functools.cache
def _bomb(enc: str) -> bytes:
    """64 MiB of zeros: 64 KB as gzip, a few hundred bytes as br (the limit is 16 MiB)."""
    return ENCODE[enc](b"\0" * (64 * 1024 * 1024))


BOMBS = ("gzip", "br")


def _handler(side: str):
    async def handler(request: web.Request) -> web.Response:
        enc = request.path.rsplit("/", 1)[-1]
        if request.path.startswith("/enc/bomb/"):
            body = _bomb(enc) if side == "legacy" else ENCODE[enc](b"[1]")
        else:
            # the same document, encoded by each side with other settings: bytes differ
            doc = {"id": 7, "owner": "Ada", "amount": 10 if side == "legacy" else 11,
                   "pad": "x" * 2000}
            raw = json.dumps(doc, indent=1 if side == "legacy" else None).encode()
            body = ENCODE[enc](raw)
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Content-Encoding": enc})

    return handler


async def _app(upstreams, name: str, side: str):
    return await upstreams(name, handler=_handler(side))


@pytest.mark.slow
async def test_every_encoding_compared_as_json_and_bombs_skipped(upstreams, proxy_process) -> None:
    mono = await _app(upstreams, "monolith", "legacy")
    svc = await _app(upstreams, "svc", "target")
    proxy = await proxy_process(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                            mono=mono.port, svc=svc.port))
    assert proxy.proc is not None
    comparer = _comparer_pid(proxy.proc.pid)
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for enc in ENCODE:
            for _ in range(3):
                async with s.get(f"{proxy.url}/enc/doc/{enc}") as r:
                    assert r.status == 200
        for enc in BOMBS:
            for _ in range(2):
                async with s.get(f"{proxy.url}/enc/bomb/{enc}") as r:
                    assert r.status == 200
                    assert await r.read() == _bomb(enc)  # the client gets the bytes untouched

        async def skipped() -> float:
            async with s.get(proxy.admin + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith("strangler_shadow_skipped_total{") and \
                        'reason="decoded_too_large"' in line and 'route="enc"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        async def all_skipped() -> bool:
            return await skipped() >= 4

        await wait_for(all_skipped, timeout=20, interval=0.2)
        async with s.get(proxy.admin + "/admin/routes/enc/diffs") as r:
            view = await r.json()
    peak = _peak_rss_mb(comparer)
    # 12 pairs of the document: only the planted value differs, whatever the coding
    assert (view["compared"], view["mismatched"]) == (12, 12)
    assert [(f["path"], f["kind"], f["count"]) for f in view["fields"]] == [
        ("$.amount", "value", 12)]
    assert peak < 120, peak  # the bombs were never expanded past the 16 MiB limit

