"""Reloads under load lose nothing; an invalid file changes nothing; SIGTERM drains in-flight work.

All against `strangler serve` subprocesses, the way an operator runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp

from tests.support import free_port, routes_yaml, wait_for


def _config(port: int, admin: int, mono: int, svc: int, weight: float, drain: str = "30s",
            prefix: str = "/api") -> str:
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          svc: {{url: "http://127.0.0.1:{svc}"}}
        default_upstream: monolith
        limits: {{drain_timeout: {drain}}}
        routes:
          - name: api
            match: {{path_prefix: {prefix}}}
            legacy: monolith
            target: svc
            weight: {weight}
            shadow: false
        """, port=port, admin=admin, mono=mono, svc=svc, weight=weight, drain=drain,
                       prefix=prefix)


async def _load(url: str, stop: asyncio.Event, workers: int = 8,
                limit: int = 20000) -> tuple[int, list[str], dict]:
    """Bounded closed-loop load: returns (ok count, failures, served_by counts)."""
    ok = 0
    failures: list[str] = []
    served: dict[str, int] = {}
    sent = 0

    async def worker(s: aiohttp.ClientSession) -> None:
        nonlocal ok, sent
        while not stop.is_set() and sent < limit:
            sent += 1
            try:
                async with s.get(url) as r:
                    body = await r.json()
                    if r.status == 200:
                        ok += 1
                        served[body["served_by"]] = served.get(body["served_by"], 0) + 1
                    else:
                        failures.append(f"{r.status} {body}")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                failures.append(repr(exc))

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(workers)))
    return ok, failures, served


async def test_reload_under_load_loses_no_request(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    port, admin = free_port(), free_port()
    proxy = await proxy_process(_config(port, admin, mono.port, svc.port, 0))
    stop = asyncio.Event()
    load = asyncio.create_task(_load(proxy.url + "/api/x", stop))
    generations = []
    async with aiohttp.ClientSession() as s:
        for i in range(12):
            await asyncio.sleep(0.15)
            weight = [0, 25, 50, 100][i % 4]
            proxy.config.write_text(_config(port, admin, mono.port, svc.port, weight))
            if i % 3 == 2:
                async with s.post(proxy.admin + "/admin/reload") as r:
                    assert r.status == 200
                    generations.append((await r.json())["generation"])
            else:
                proxy.signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        # End on 100%: after the last reload every new request goes to target.
        proxy.config.write_text(_config(port, admin, mono.port, svc.port, 100))
        async with s.post(proxy.admin + "/admin/reload") as r:
            assert r.status == 200
        stop.set()
        ok, failures, served = await load
        async with s.get(proxy.url + "/api/last") as r:
            assert (await r.json())["served_by"] == "svc"
    assert failures == []
    assert ok > 200 and served.get("monolith") and served.get("svc")
    assert generations == sorted(generations)
    assert await proxy.stop() == 0


async def test_file_change_on_disk_reloads(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    port, admin = free_port(), free_port()
    proxy = await proxy_process(_config(port, admin, mono.port, svc.port, 0))
    proxy.config.write_text(_config(port, admin, mono.port, svc.port, 100))

    async def on_target() -> bool:
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/api/x") as r:
            return (await r.json())["served_by"] == "svc"

    await wait_for(on_target, timeout=8)


async def test_invalid_reload_keeps_the_running_config(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    port, admin = free_port(), free_port()
    proxy = await proxy_process(_config(port, admin, mono.port, svc.port, 100))
    stop = asyncio.Event()
    load = asyncio.create_task(_load(proxy.url + "/api/x", stop, workers=4))
    await asyncio.sleep(0.2)
    bad = _config(port, admin, mono.port, svc.port, 250).replace("shadow: false",
                                                                   "shadow: false\n    bogus: 1")
    proxy.config.write_text(bad)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.admin + "/admin/reload") as r:
            assert r.status == 400
            body = await r.json()
        joined = " ".join(body["errors"])
        assert "weight" in joined and "bogus" in joined
        assert all(":" in e and "routes.yaml:" in e for e in body["errors"])  # FILE:LINE: ...
        proxy.signal(signal.SIGHUP)  # the same file by signal: rejected, logged
        await asyncio.sleep(1.5)  # and by the file watcher
        stop.set()
        ok, failures, served = await load
        assert failures == [] and ok > 50
        assert set(served) == {"svc"}  # weight 100 still in force
        async with s.get(proxy.admin + "/readyz") as r:
            assert r.status == 200
    assert "reload rejected" in proxy.stderr_path.read_text() + proxy.stdout_path.read_text()
    assert await proxy.stop() == 0


async def test_sigterm_drains_slow_requests_in_flight(upstreams, proxy_process):
    slow = await upstreams("slow", delay=1.5)
    port, admin = free_port(), free_port()
    proxy = await proxy_process(_config(port, admin, slow.port, slow.port, 0))
    results: list[int | str] = []

    async def one(s: aiohttp.ClientSession, i: int) -> None:
        try:
            async with s.get(proxy.url + f"/api/slow/{i}") as r:
                body = await r.json()
                results.append(r.status if body["served_by"] == "slow" else "wrong")
        except (aiohttp.ClientError, OSError) as exc:
            results.append(repr(exc))

    conn = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=conn) as s:
        tasks = [asyncio.create_task(one(s, i)) for i in range(20)]
        await wait_for(lambda: len(slow.seen) == 20, timeout=5)
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # No new connections are accepted while draining.
        refused = False
        try:
            async with aiohttp.ClientSession() as s2, s2.get(proxy.url + "/api/new",
                                                             timeout=aiohttp.ClientTimeout(2)):
                pass
        except (aiohttp.ClientError, OSError, TimeoutError):
            refused = True
        await asyncio.gather(*tasks)
        code = await asyncio.wait_for(proxy.proc.wait(), 15)
    assert results == [200] * 20
    assert refused
    assert code == 0
    assert time.monotonic() - t0 < 10


async def test_drain_timeout_cuts_what_is_left_and_still_exits_zero(upstreams, proxy_process):
    slow = await upstreams("slow", delay=5)
    port, admin = free_port(), free_port()
    proxy = await proxy_process(_config(port, admin, slow.port, slow.port, 0, drain="500ms"))
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.get(proxy.url + "/api/forever"))
        await wait_for(lambda: len(slow.seen) == 1, timeout=5)
        t0 = time.monotonic()
        proxy.signal(signal.SIGTERM)
        code = await asyncio.wait_for(proxy.proc.wait(), 10)
        with contextlib.suppress(aiohttp.ClientError, OSError):
            (await task).release()
    assert code == 0
    assert time.monotonic() - t0 < 4
