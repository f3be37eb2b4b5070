"""Shadow mirroring end to end: real upstreams, planted differences, the client unaffected."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from proxy.dataplane.mirror import CONCURRENCY, QUEUE_MAX
from tests.support import free_port, routes_yaml, wait_for

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}", timeout: 10s}}
    default_upstream: monolith
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow:
          sample: 1.0
          max_rate: unlimited
          compare:
            ignore: ["$.server_time"]
            redact: ["$.card_number"]
"""


def json_handler(payload_for):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(payload_for(request))

    return handler


async def make(upstreams, inproc_proxy, svc_payload, svc_delay=0.0, svc_handler=None,
               svc_timeout="10s"):
    mono = await upstreams("monolith", handler=json_handler(lambda r: {
        "balance": 100, "currency": "EUR", "server_time": time.time(),
        "card_number": "4111111111111111"}))
    svc = await upstreams("svc", delay=svc_delay,
                          handler=svc_handler or json_handler(svc_payload))
    proxy = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc.port)
                               .replace("timeout: 10s", f"timeout: {svc_timeout}"))
    return mono, svc, proxy


async def test_planted_difference_reported_on_its_path_only(upstreams, inproc_proxy):
    _mono, svc, proxy = await make(upstreams, inproc_proxy, lambda r: {
        "balance": 100, "currency": "USD", "server_time": 1.0,
        "card_number": "4111111111111111"})
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            async with s.get(proxy.url + "/api/v1/balance/7") as r:
                assert (await r.json())["currency"] == "EUR"  # client always gets legacy
    rt = proxy.runtime

    def compared():
        proxy.server.flush()
        return rt.agg.window("balance").compared >= 30

    await wait_for(compared)
    assert rt.agg.window("balance").mismatched == 30
    assert svc.count(shadow=True) == 30
    assert await proxy.server.shadow.flush()  # the comparer process has stored all it got
    summary = proxy.server.diff_store.summary("balance")
    assert [(f["path"], f["kind"]) for f in summary["fields"]] == [("$.currency", "value")]
    assert "4111111111111111" not in str(summary)


async def test_post_not_mirrored_and_slow_shadow_does_not_delay_client(upstreams, inproc_proxy):
    _mono, svc, proxy = await make(upstreams, inproc_proxy, lambda r: {"balance": 100},
                                  svc_delay=2.0)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/api/v1/balance/7", json={"x": 1}) as r:
            assert r.status == 200
        t0 = time.monotonic()
        for _ in range(5):
            async with s.get(proxy.url + "/api/v1/balance/7") as r:
                assert r.status == 200
        elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed  # the shadow target takes 2 s per request
    await asyncio.sleep(0.2)
    assert all(seen.method == "GET" for seen in svc.seen)


async def test_unsafe_method_skip_is_counted(upstreams, inproc_proxy):
    _mono, svc, proxy = await make(upstreams, inproc_proxy, lambda r: {"balance": 100})
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.delete(proxy.url + "/api/v1/balance/7") as r:
                assert r.status == 200
    proxy.server.flush()
    assert proxy.runtime.agg.skipped[("balance", "unsafe_method")] == 3
    assert svc.count() == 0


async def _direct(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


async def test_shadow_target_down_or_failing_leaves_client_bytes_identical(upstreams,
                                                                          inproc_proxy):
    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=b'{"balance": 100, "currency": "EUR"}',
                            content_type="application/json")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"oops")

    mono = await upstreams("monolith", handler=fixed)
    svc = await upstreams("svc", handler=broken)
    proxy = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc.port))
    expected = await _direct(mono.url + "/api/v1/balance/7")
    for _ in range(10):
        assert await _direct(proxy.url + "/api/v1/balance/7") == expected
    await svc.stop()  # now the shadow target is down
    for _ in range(10):
        assert await _direct(proxy.url + "/api/v1/balance/7") == expected
    shadow = proxy.runtime.agg.shadow

    def counted() -> int:
        proxy.server.flush()
        return shadow.get(("balance", "mismatch"), 0) + shadow.get(("balance", "error"), 0)

    await wait_for(lambda: counted() >= 20)  # the comparer process reports within ~50 ms
    await asyncio.sleep(0.3)
    proxy.server.flush()
    assert shadow[("balance", "mismatch")] == 10  # 500 from the target is a difference
    assert shadow[("balance", "error")] == 10  # connection refused is an error, not a match


async def test_queue_overflow_is_dropped_and_counted(upstreams, inproc_proxy):
    released = asyncio.Event()  # no mirror ends while the clients send, however long they take

    async def held(request: web.Request) -> web.Response:
        await released.wait()
        return web.json_response({"balance": 100})

    _mono, _svc, proxy = await make(upstreams, inproc_proxy, None, svc_handler=held,
                                    svc_timeout="120s")
    n = QUEUE_MAX + CONCURRENCY + 200  # more than the backlog plus the mirrors in flight
    try:
        async with aiohttp.ClientSession() as s:

            async def loop(ids):
                for _ in ids:
                    async with s.get(proxy.url + "/api/v1/balance/7") as r:
                        assert r.status == 200

            it = iter(range(n))
            await asyncio.gather(*(loop(it) for _ in range(16)))
        proxy.server.flush()
        assert proxy.runtime.agg.skipped[("balance", "queue_full")] >= \
            n - QUEUE_MAX - CONCURRENCY
    finally:
        released.set()


async def test_redacted_value_never_on_disk_or_in_logs(upstreams, proxy_process):
    secret = "DE44500105175407324931"

    async def legacy(request: web.Request) -> web.Response:
        return web.json_response({"balance": 100, "iban": secret, "currency": "EUR"})

    async def target(request: web.Request) -> web.Response:
        return web.json_response({"balance": 101, "iban": secret, "currency": "EUR"})

    mono = await upstreams("monolith", handler=legacy)
    svc = await upstreams("svc", handler=target)
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port).replace('["$.card_number"]', '["$..iban"]')
    proxy = await proxy_process(text)
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.get(f"{proxy.url}/api/v1/balance/{i}",
                             headers={"Authorization": f"Bearer {secret}"}) as r:
                assert (await r.json())["iban"] == secret  # the client gets it untouched
        await asyncio.sleep(0.5)
        async with s.get(proxy.admin + "/admin/routes/balance/diffs") as r:
            diffs = await r.text()
    assert "$.balance" in diffs and secret not in diffs
    assert await proxy.stop() == 0
    state = proxy.dir / "state"
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name.startswith("diffs.sqlite3") for p in files)
    for p in [*files, proxy.stdout_path, proxy.stderr_path]:
        assert secret.encode() not in p.read_bytes(), p


async def test_large_bodies_compared_off_the_loop_and_counted(upstreams, inproc_proxy):
    pad = "x" * 40_000  # the two bodies together exceed mirror.LARGE_BODY: a thread compares
    _mono, _svc, proxy = await make(upstreams, inproc_proxy, lambda r: {
        "balance": 100, "currency": "USD", "pad": pad})
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(proxy.url + "/api/v1/balance/7") as r:
                assert r.status == 200
    rt = proxy.runtime

    def compared():
        proxy.server.flush()
        return rt.agg.window("balance").compared >= 20

    await wait_for(compared)
    w = rt.agg.window("balance")
    assert (w.mismatched, w.shadow_errors) == (20, 0)  # currency differs, pad is extra
    mirror = proxy.server.plane.shadow
    await wait_for(lambda: mirror.running == 0 and not mirror.backlog)
