"""The traffic inventory of a fleet that shares one real PostgreSQL 15 (issue 28b.1): three
`strangler serve` replicas, each with its own state_dir, write their rollups into the shared
store. A known request mix through A and B is read exactly from C (`inventory`, progress in
`status`, the metric and the API), `--replica` never counts the one store twice, retire-check
answers for the fleet from any replica (and fails from A for a fallback served by B), history
imported with `strangler store migrate` counts. Then an outage mid-load: requests are not held
up, the rollups wait in each replica's memory, and after the database returns the counts are
exact."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.control.state import RouteRuntime, RuntimeState, StateStore
from tests.support import ProxyProcess, free_port, routes_yaml, run_cli, wait_for
from tests.test_retire import PROMOTED, ROUTES, history

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DAY = 86400
SHARED = ROUTES.replace("    default_upstream: monolith\n",
                        "    default_upstream: monolith\n"
                        "    store: {{backend: postgres, connect_timeout: 2s}}\n")


def _state(state: Path, now: float) -> None:
    """The runtime state a replica had: cart and search at 100% for 25 days."""
    StateStore(state).save(RuntimeState(
        routes={name: RouteRuntime(weight=100.0, step=2, step_started=now - 25 * DAY)
                for name in ("cart", "search")},
        file_weights={"cart": 100.0, "search": 100.0}))


async def _replicas(tmp_path: Path, dsn: str, mono, svc, n: int, now: float
                    ) -> list[ProxyProcess]:
    out = []
    for i in range(n):
        name = f"replica-{chr(ord('a') + i)}"
        text = routes_yaml(SHARED, port=free_port(), admin=free_port(), mono=mono.port,
                           svc=svc.port)
        p = ProxyProcess(tmp_path / name, text,
                         env={"STRANGLER_DATABASE_URL": dsn, "STRANGLER_REPLICA": name})
        _state(p.dir / "state", now)
        out.append(p)
    await asyncio.gather(*(p.start(timeout=40) for p in out))
    return out


async def _send(url: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for path in paths:
            async with s.get(url + path) as r:
                assert r.status == 200
                await r.read()


async def _inventory(admin: str, *more: str) -> dict:
    code, out, err = await run_cli("inventory", "--since", "1h", "--json", *more,
                                   "--admin", admin)
    assert code == 0, err
    return json.loads(out)


async def _fleet_counts(admin: str, requests: int, timeout: float = 20) -> dict:
    """The fleet's inventory once it holds `requests` in the last hour (every replica writes
    its rollups every 2 s)."""
    async def enough() -> dict | None:
        body = await _inventory(admin)
        return body if body["requests"] >= requests else None
    return await wait_for(enough, timeout=timeout, interval=0.5)


async def test_fleet_inventory_progress_and_retirement_from_any_replica(
        pg_db, upstreams, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    now = time.time()
    # 30 days of records and the ramp to 100% 25 days ago, from one replica's state_dir
    # before the fleet moved to the shared store
    old = tmp_path / "old-state"
    history(old, now=now, audit=PROMOTED)
    replicas = await _replicas(tmp_path, pg_db, mono, svc, 3, now)
    a, b, c = replicas
    try:
        env = {"STRANGLER_DATABASE_URL": pg_db}
        code, out, err = await run_cli("store", "migrate", "--from-state-dir", str(old), "-c",
                                       str(a.config), "--json", env=env)
        assert code == 0, err
        imported = json.loads(out)["inventory"]
        assert imported["imported"] is True and imported["requests"] == 20 * 700
        code, out, _ = await run_cli("store", "migrate", "--from-state-dir", str(old), "-c",
                                     str(a.config), "--json", env=env)
        assert json.loads(out)["inventory"]["imported"] is False  # once per file

        await _send(a.url, [f"/cart/{n}" for n in range(30)] + ["/orders/1"] * 10)
        await _send(b.url, [f"/cart/{n}" for n in range(12)] + ["/orders/2"] * 7
                    + ["/about"] * 4)
        body = await _fleet_counts(c.admin, 63)
        assert body["requests"] == 63 and body["store"].startswith("postgres:")
        got = {f"{e['method']} {e['template']}": (e["requests"], e["legacy"], e["target"])
               for e in body["endpoints"]}
        assert got == {"GET /orders/{id}": (17, 17, 0), "GET /cart/{id}": (42, 0, 42),
                       "GET /about": (4, 4, 0)}
        assert body["progress"]["requests"] == {"total": 63, "legacy": 21, "target": 42,
                                                "share": 42 / 63}
        # the last 24 h hold the imported day-old 700 requests once, whoever answers
        assert body["last_24h"]["requests"]["total"] == 63 + 700
        for p in (a, b):
            assert (await _inventory(p.admin))["requests"] == 63
        # --replica: every replica answers from the one store; it is counted once
        merged = await _inventory(c.admin, "--replica", a.admin, "--replica", b.admin)
        assert merged["requests"] == 63 and merged["last_24h"]["requests"]["total"] == 763
        code, out, _ = await run_cli("inventory", "--since", "1h", "--admin", b.admin)
        assert code == 0 and "every replica (the shared store): 63 requests" in out

        # progress: the API, `status` and the metric of any replica are the fleet's
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{a.admin}/admin/progress", params={"days": "2"}) as r:
                progress = (await r.json())["last_24h"]
            assert progress["requests"]["total"] == 763
            async with s.get(f"{a.admin}/metrics") as r:
                metrics = await r.text()
        share = 742 / 763  # 700 + 42 on target
        m = re.search(r'strangler_migration_progress_ratio\{of="requests"\} (\S+)', metrics)
        assert m is not None and abs(float(m.group(1)) - share) < 1e-9
        code, out, _ = await run_cli("status", "--json", "--admin", b.admin)
        assert code == 0 and json.loads(out)["migration_24h"]["requests"]["total"] == 763

        # retirement, from any replica: the fleet's traffic and the fleet's audit chain
        for p in replicas:
            code, out, err = await run_cli("retire-check", "cart", "--json", "--admin", p.admin)
            assert code == 0, out + err
        svc.status = 503  # B's new service fails once: legacy answers (a fallback) there
        await _send(b.url, ["/cart/99"])
        svc.status = 200

        async def failing_from_a() -> dict | None:
            code, out, _ = await run_cli("retire-check", "cart", "--json", "--admin", a.admin)
            return json.loads(out) if code == 1 else None
        result = await wait_for(failing_from_a, timeout=20, interval=0.5)
        assert [c["name"] for c in result["conditions"] if not c["ok"]] == ["legacy_traffic"]
        assert result["unmet"][0].startswith("legacy served 1 live request(s) of this route")
        assert result["store"].startswith("postgres:")
        code, out, _ = await run_cli("retire-check", "cart", "--json", "--admin", c.admin,
                                     "--replica", a.admin)
        assert code == 1
        # the decision, forced, through two replicas of one store: one entry in its chain
        code, out, err = await run_cli("retire", "cart", "--reason", "legacy gone", "--force",
                                       "--admin", c.admin, "--replica", b.admin,
                                       "--actor", "alice")
        assert code == 0, out + err
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{a.admin}/admin/history", params={"limit": "1000"}) as r:
                entries = (await r.json())["entries"]
        assert [e["replica"] for e in entries if e["action"] == "retired"] == ["replica-c"]
    finally:
        for p in replicas:
            await p.stop()


async def test_an_outage_mid_load_holds_no_request_and_ends_with_exact_counts(
        pg_db, upstreams, postgres_server, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    a, b = await _replicas(tmp_path, pg_db, mono, svc, 2, time.time())
    stop = asyncio.Event()
    sent = {"cart": 0, "orders": 0}
    slowest = [0.0]
    failures: list[str] = []

    async def client(k: int) -> None:
        """Requests through both replicas until told to stop (bounded: 60 s)."""
        deadline = time.monotonic() + 60
        n = 0
        async with aiohttp.ClientSession() as s:
            while not stop.is_set() and time.monotonic() < deadline:
                p = (a, b)[n % 2]
                kind = ("cart", "orders")[(n // 2 + k) % 2]
                n += 1
                began = time.monotonic()
                try:
                    async with s.get(f"{p.url}/{kind}/{n}") as r:
                        await r.read()
                        if r.status != 200:
                            failures.append(f"{p.dir.name}: {r.status}")
                            continue
                except aiohttp.ClientError as exc:
                    failures.append(f"{p.dir.name}: {exc}")
                    continue
                sent[kind] += 1
                slowest[0] = max(slowest[0], time.monotonic() - began)
                await asyncio.sleep(0.005)

    try:
        load = [asyncio.create_task(client(k)) for k in range(4)]
        await asyncio.sleep(1.5)
        await asyncio.to_thread(postgres_server.stop)  # off the clients' loop
        try:
            await asyncio.sleep(1.0)
            async with aiohttp.ClientSession() as s:
                async def waiting() -> dict | None:
                    async with s.get(f"{a.admin}/readyz") as r:
                        body = await r.json()
                    inv = (body.get("degraded") or {}).get("store", {}).get("inventory")
                    return inv if inv and inv["rows_waiting"] and not inv["up"] else None
                inventory = await wait_for(waiting, timeout=15, interval=0.3)
                assert inventory["dropped"] == {"requests": 0, "comparisons": 0}
                async with s.get(f"{b.admin}/admin/inventory", params={"since": "1h"}) as r:
                    assert r.status == 503  # no partial numbers while the store is away
            await asyncio.sleep(2.0)  # several flush intervals fail under load
        finally:
            await asyncio.to_thread(postgres_server.start)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*load)
        assert not failures, failures[:5]
        assert sent["cart"] > 50 and sent["orders"] > 50
        assert slowest[0] < 1.0  # generous: no request waited on the database

        async with aiohttp.ClientSession() as s:
            for p in (a, b):
                async def ready(p: ProxyProcess = p) -> bool:
                    async with s.get(f"{p.admin}/readyz") as r:
                        return (await r.json())["status"] == "ready"
                await wait_for(ready, timeout=30, interval=0.3)
        total = sent["cart"] + sent["orders"]
        body = await _fleet_counts(b.admin, total)
        got = {e["template"]: (e["requests"], e["legacy"], e["target"])
               for e in body["endpoints"]}
        assert got == {"/cart/{id}": (sent["cart"], 0, sent["cart"]),
                       "/orders/{id}": (sent["orders"], sent["orders"], 0)}
        assert (await _inventory(a.admin))["requests"] == total
    finally:
        for p in (a, b):
            await p.stop()
