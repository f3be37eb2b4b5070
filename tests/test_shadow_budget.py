"""Shadow cost: comparisons in the comparer process, the shadow budget, shedding that is counted.

Real upstreams on 127.0.0.1 whose answers differ (the case of a migration's first days), the
proxy in this event loop, and its real comparer child process (stopped and killed with signals
to show what a comparer that falls behind or dies does to clients: nothing).
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
from aiohttp import web
from structlog.testing import capture_logs

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, wait_for

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: items
        match: {{path_prefix: /items}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: {shadow}
"""
BUDGET = "    shadow_budget: {budget}\n"


def differing(side: str, pad: int = 0):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"side": side, "path": request.raw_path, "n": len(side),
                                  "pad": "x" * pad})

    return handler


async def start(upstreams, inproc_proxy, shadow: str, weight: float = 0, budget: str = "",
                pad: int = 0):
    mono = await upstreams("monolith", handler=differing("legacy", pad))
    svc = await upstreams("svc", handler=differing("target-service", pad))
    body = ROUTES.replace("    routes:", BUDGET + "    routes:") if budget else ROUTES
    text = routes_yaml(body, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, shadow=shadow, weight=weight, budget=budget)
    proxy = await inproc_proxy(text)
    return mono, svc, proxy


async def drive(url: str, n: int, clients: int = 8, path: str = "/items/7") -> list[bytes]:
    bodies: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        it = iter(range(n))

        async def loop() -> None:
            for _ in it:
                async with s.get(url + path) as r:
                    assert r.status == 200
                    bodies.append(await r.read())

        await asyncio.gather(*(loop() for _ in range(clients)))
    return bodies


def counts(proxy) -> tuple[dict, dict]:
    proxy.server.flush()
    agg = proxy.runtime.agg
    return dict(agg.shadow), dict(agg.skipped)


async def test_route_max_rate_sheds_mirrors_and_counts_them(upstreams, inproc_proxy):
    _mono, svc, proxy = await start(upstreams, inproc_proxy, "{sample: 1.0, max_rate: 5}")
    n = 200
    await drive(proxy.url, n)
    await wait_for(lambda: sum(counts(proxy)[0].values()) + counts(proxy)[1].get(
        ("items", "rate_limited"), 0) >= n)
    shadow, skipped = counts(proxy)
    mirrored = svc.count(shadow=True)
    # A burst of one second's worth (5), then 5 per second: a 200-request run is a few seconds.
    assert 5 <= mirrored <= 5 + 5 * 10
    assert skipped[("items", "rate_limited")] == n - mirrored
    assert shadow[("items", "mismatch")] == mirrored  # every mirror sent was compared


async def test_proxy_wide_budget_sheds_and_counts(upstreams, inproc_proxy):
    _mono, svc, proxy = await start(upstreams, inproc_proxy,
                                    "{sample: 1.0, max_rate: unlimited}",
                                    budget="{max_rate: 3}")
    n = 100
    await drive(proxy.url, n)
    await wait_for(lambda: counts(proxy)[1].get(("items", "budget"), 0)
                   + svc.count(shadow=True) >= n)
    _shadow, skipped = counts(proxy)
    assert skipped[("items", "budget")] == n - svc.count(shadow=True)
    assert svc.count(shadow=True) <= 3 + 3 * 10


async def test_reverse_is_off_by_default_so_legacy_load_falls_with_the_weight(upstreams,
                                                                             inproc_proxy):
    mono, svc, proxy = await start(upstreams, inproc_proxy, "{sample: 1.0}", weight=100)
    await drive(proxy.url, 20, clients=2)
    await asyncio.sleep(0.3)
    assert svc.count(shadow=False) == 20
    assert mono.count() == 0  # no reverse mirrors: the monolith is relieved

    mono2, _svc2, proxy2 = await start(upstreams, inproc_proxy, "{sample: 1.0, reverse: true}",
                                       weight=100)
    await drive(proxy2.url, 20, clients=2)
    await wait_for(lambda: mono2.count(shadow=True) == 20)


def comparer_pid(proxy) -> int:
    return proxy.server.shadow.link.proc.pid


async def test_a_stalled_comparer_sheds_pairs_and_clients_get_legacy_bytes(upstreams,
                                                                          inproc_proxy):
    mono, _svc, proxy = await start(
        upstreams, inproc_proxy, "{sample: 1.0, max_rate: unlimited}",
        budget="{max_rate: unlimited, max_pending: 64KiB}", pad=20_000)
    async with aiohttp.ClientSession() as s, s.get(mono.url + "/items/7") as r:
        expected = await r.read()
    pid = comparer_pid(proxy)
    os.kill(pid, signal.SIGSTOP)  # the comparer falls behind: as if its CPU were taken
    try:
        n = 300
        bodies = await drive(proxy.url, n)
        assert bodies == [expected] * n  # every client got legacy's bytes, unchanged
        _shadow, skipped = counts(proxy)
        # The pipe (1 MiB) and 64 KiB of pending pairs hold at most ~60 of these 40 KiB pairs.
        assert skipped[("items", "comparer_busy")] >= n - 80
    finally:
        os.kill(pid, signal.SIGCONT)
    _shadow, skipped = counts(proxy)
    held = n - skipped[("items", "comparer_busy")]
    # What was handed over before the pipe filled is compared once the comparer runs again.
    await wait_for(lambda: counts(proxy)[0].get(("items", "mismatch"), 0) == held)
    await drive(proxy.url, 10, clients=1)
    await wait_for(lambda: counts(proxy)[0].get(("items", "mismatch"), 0) == held + 10)


async def test_a_dead_comparer_is_restarted(upstreams, inproc_proxy):
    _mono, _svc, proxy = await start(upstreams, inproc_proxy,
                                     "{sample: 1.0, max_rate: unlimited}")
    await drive(proxy.url, 10, clients=1)
    await wait_for(lambda: counts(proxy)[0].get(("items", "mismatch"), 0) == 10)
    assert await proxy.server.shadow.flush()  # on disk (a kill loses at most ~0.2 s of it)
    old = comparer_pid(proxy)
    os.kill(old, signal.SIGKILL)
    link = proxy.server.shadow.link
    await wait_for(lambda: link.restarts == 1 and link.transport is not None
                   and link.proc.pid != old)
    bodies = await drive(proxy.url, 10, clients=1)
    assert len(bodies) == 10
    await wait_for(lambda: counts(proxy)[0].get(("items", "mismatch"), 0) == 20)
    assert await proxy.server.shadow.flush()
    summary = proxy.server.diff_store.summary("items")
    assert summary["compared"] == 20 and summary["mismatched"] == 20
    assert {f["path"] for f in summary["fields"]} >= {"$.side", "$.n"}


async def test_mismatch_heavy_load_keeps_client_bytes_and_counts_every_mirror(upstreams,
                                                                             inproc_proxy):
    mono, svc, proxy = await start(upstreams, inproc_proxy,
                                   "{sample: 1.0, max_rate: unlimited}",
                                   budget="{max_rate: unlimited}", pad=2_000)
    async with aiohttp.ClientSession() as s, s.get(mono.url + "/items/7") as r:
        expected = await r.read()
    n = 1500
    bodies = await drive(proxy.url, n, clients=32)
    assert bodies == [expected] * n

    def settled() -> bool:
        shadow, skipped = counts(proxy)
        return sum(shadow.values()) + sum(skipped.values()) >= n

    await wait_for(settled, timeout=30)
    shadow, skipped = counts(proxy)
    assert set(shadow) <= {("items", "mismatch")}  # answers differ: never a match or an error
    # Each request was compared or shed for a reason that is counted; nothing vanished.
    assert shadow.get(("items", "mismatch"), 0) + sum(skipped.values()) == n
    assert set(skipped) <= {("items", "queue_full"), ("items", "comparer_busy")}
    assert await proxy.server.shadow.flush()
    summary = proxy.server.diff_store.summary("items")
    assert summary["mismatched"] == shadow[("items", "mismatch")]
    # Bounded samples: the first few and the latest few per field, not one per mismatch.
    assert len(proxy.server.diff_store.summary("items", samples=500)["samples"]) <= 3 * 8
    assert svc.count(shadow=True) >= shadow[("items", "mismatch")]


async def test_a_failing_shadow_target_is_logged_once_not_per_request(upstreams, inproc_proxy):
    _mono, svc, proxy = await start(upstreams, inproc_proxy,
                                    "{sample: 1.0, max_rate: unlimited}")
    await svc.stop()  # the new service is down: every mirror fails to connect
    with capture_logs() as logs:
        bodies = await drive(proxy.url, 50, clients=4)
        assert len(bodies) == 50
        await wait_for(lambda: counts(proxy)[0].get(("items", "error"), 0) == 50)
        await svc.start()  # back on the same port
        await drive(proxy.url, 5, clients=1)
        await wait_for(lambda: counts(proxy)[0].get(("items", "mismatch"), 0) == 5)
    events = [e["event"] for e in logs if e["event"].startswith("shadow requests")]
    assert events == ["shadow requests failing", "shadow requests answering again"]
    back = next(e for e in logs if e["event"] == "shadow requests answering again")
    assert back["failed_since_last_line"] == 49 and back["route"] == "items"
