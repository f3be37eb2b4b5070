"""Route groups (`groups:`): endpoints that share data move together. Through a real `strangler
serve` and real upstreams: a group's members never split a sticky user (10,000 users at 1%, 25%
and 50%, where two ungrouped routes do), set-weight and rollback move every member at once and
are audited once, a rollback under load sends nothing to target once the command returned, the
gate judges every member's evidence (fail rolls the group back, hold waits for the slowest), a
group formed by a reload aligns its members; invalid groups are refused at file:line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config.loader import ConfigError, load_config
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for
from tests.test_rollback_e2e import Arrivals

pytestmark = pytest.mark.slow

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: cart-read
        match: {{path_prefix: /cart, methods: [GET]}}
        legacy: monolith
        target: svc
        weight: {weight}
        sticky: {{header: X-User-Id}}
        shadow: false
        promotion: {promotion}
      - name: cart-write
        match: {{path_prefix: /cart/items, methods: [POST]}}
        legacy: monolith
        target: svc
        weight: {weight}
        sticky: {{header: X-User-Id}}
        shadow: false
        promotion: {promotion}
      - name: wishlist
        match: {{path_prefix: /wishlist}}
        legacy: monolith
        target: svc
        weight: {weight}
        sticky: {{header: X-User-Id}}
        shadow: false
    groups:
      cart:
        routes: [cart-read, cart-write]
"""
NO_GATE = "{guardrail: {enabled: false}}"


def config(mono: int, svc: int, weight: float = 0, promotion: str = NO_GATE) -> str:
    return routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono, svc=svc,
                       weight=weight, promotion=promotion)


async def _sides(url: str, users: int, paths: tuple[tuple[str, str], ...]) -> dict[str, list]:
    """For every user, who served each (method, path): 16 connections in parallel."""
    out: dict[str, list] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for u in range(users):
        queue.put_nowait(u)
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as s:
        async def worker() -> None:
            while not queue.empty():
                u = queue.get_nowait()
                seen = []
                for method, path in paths:
                    async with s.request(method, url + path, json={} if method == "POST" else None,
                                         headers={"X-User-Id": f"user-{u}"}) as r:
                        seen.append((await r.json())["served_by"])
                out[f"user-{u}"] = seen
        await asyncio.gather(*(worker() for _ in range(16)))
    return out


async def test_members_never_split_a_sticky_user(upstreams, proxy_process) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port), args=("--workers", "2",
                                                                "--no-access-log"))
    for weight in (1, 25, 50):
        code, _, err = await run_cli("set-weight", "cart", str(weight), "--reason",
                                       f"cart to {weight}%", "--admin", p.admin)
        assert code == 0, err
        # the ungrouped wishlist route at the same weight: its own buckets
        code, _, err = await run_cli("set-weight", "wishlist", str(weight), "--reason", "same",
                                     "--admin", p.admin)
        assert code == 0, err
        sides = await _sides(p.url, 10_000, (("GET", "/cart"), ("POST", "/cart/items/1"),
                                             ("GET", "/wishlist")))
        split = [u for u, (read, write, _) in sides.items() if read != write]
        on_new = sum(1 for read, _, _ in sides.values() if read == "svc")
        apart = sum(1 for read, _, wish in sides.values() if read != wish)
        print(f"\n{weight}%: {on_new} of 10000 users on the new cart, {len(split)} split "
              f"between cart-read and cart-write; {apart} apart from the ungrouped wishlist")
        assert split == []
        assert abs(on_new - weight * 100) < 4 * (weight * 100) ** 0.5 + 10  # about weight%
        assert apart > weight * 100 * 0.5  # ungrouped routes do split users: the test can fail
    await p.stop()


async def test_set_weight_and_rollback_move_the_group_audited_once(upstreams,
                                                                  proxy_process) -> None:
    arrivals = Arrivals()
    mono = await upstreams("monolith")
    svc = await upstreams("svc", handler=arrivals.handler)
    p = await proxy_process(config(mono.port, svc.port, weight=5),
                            args=("--workers", "2", "--no-access-log"))
    env = {"STRANGLER_ADMIN_URL": p.admin}
    # a member's name moves its group too
    code, out, err = await run_cli("set-weight", "cart-write", "50", "--reason", "half", "--json",
                                   env=env)
    assert code == 0, err
    body = json.loads(out)
    assert (body["group"], body["routes"], body["from"], body["to"]) == (
        "cart", ["cart-read", "cart-write"], 5, 50)
    assert [m["weight"] for m in body["members"]] == [50, 50]
    assert body["audit"]["route"] == "cart" and body["audit"]["routes"] == ["cart-read",
                                                                          "cart-write"]

    # rollback under load: nothing reaches the new service once the command has returned
    stop = asyncio.Event()
    results: list[tuple[float, str, str]] = []

    async def load(i: int) -> None:
        async with aiohttp.ClientSession() as s:
            n = 0
            while not stop.is_set() and n < 20_000:
                method, path = (("GET", "/cart") if n % 2 else ("POST", "/cart/items/1"))
                sent = time.monotonic()
                async with s.request(method, p.url + path, json={} if method == "POST" else None,
                                     headers={"X-User-Id": f"u{i}-{n}"}) as r:
                    results.append((sent, path, (await r.json())["served_by"]))
                n += 1

    tasks = [asyncio.create_task(load(i)) for i in range(8)]
    try:
        await wait_for(lambda: len(arrivals.times) >= 200, timeout=20)
        code, out, err = await run_cli("rollback", "cart", "--reason", "cart totals wrong",
                                       env=env)
        returned = time.monotonic()
        assert code == 0, err
        at_return = len(results)
        await wait_for(lambda: len(results) >= at_return + 600, timeout=20)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    after = [(path, who) for sent, path, who in results if sent > returned]
    assert arrivals.after(returned) == 0
    assert len(after) >= 600 and {who for _, who in after} == {"monolith"}
    assert {path for path, _ in after} == {"/cart", "/cart/items/1"}
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert [routes[n]["state"] for n in ("cart-read", "cart-write", "wishlist")] == [
        "rolled_back", "rolled_back", "active"]

    code, out, _ = await run_cli("history", "cart-write", "--json", env=env)
    entries = json.loads(out)["entries"]
    rollbacks = [e for e in entries if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["route"] == "cart"
    assert rollbacks[0]["routes"] == ["cart-read", "cart-write"]
    # one setting stays one: a member cannot be moved alone, nor resumed alone
    code, _, err = await run_cli("set-weight", "cart-read", "10", "--reason", "x", env=env)
    assert code == 1 and "rolled back" in err
    code, out, err = await run_cli("resume", "cart-read", "--reason", "fixed", "--json", env=env)
    assert code == 0, err
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert [routes[n]["state"] for n in ("cart-read", "cart-write")] == ["active", "active"]
    assert await p.stop() == 0


async def _routes(admin: str) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(admin + "/admin/routes") as r:
            return (await r.json())["routes"]


GATE = ("{steps: [50, 100], min_requests: 100, min_latency_samples: 100, max_p99_ratio: null, "
        "max_error_rate_increase: 0.05, guardrail: {enabled: false}}")


async def _traffic(url: str, n: int, write: bool = True) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(url + "/cart", headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()
            if write:
                async with s.post(url + "/cart/items/1", json={},
                                  headers={"X-User-Id": f"u{i}"}) as r:
                    await r.read()


async def test_the_gate_judges_every_member(upstreams, proxy_process) -> None:
    mono = await upstreams("monolith")
    broken = {"on": False}

    async def svc_handler(request: web.Request) -> web.Response:
        if broken["on"] and request.method == "POST":
            return web.json_response({"error": "no such cart"}, status=500)
        return web.json_response({"served_by": "svc"})

    svc = await upstreams("svc", handler=svc_handler)
    p = await proxy_process(config(mono.port, svc.port, weight=50, promotion=GATE))
    env = {"STRANGLER_ADMIN_URL": p.admin}
    # only cart-read has traffic: the group holds, naming the member that needs more
    await _traffic(p.url, 400, write=False)
    code, out, _ = await run_cli("gate", "cart", "--json", env=env)
    gate = json.loads(out)
    assert gate["decision"] == "hold", gate
    assert gate["reasons"] and all(r.startswith("cart-write: ") for r in gate["reasons"])
    # both have enough, both healthy: promoted together
    await _traffic(p.url, 400)
    code, out, err = await run_cli("promote", "cart", "--json", env=env)
    assert code == 0, out + err
    assert json.loads(out)["decision"] == "promote"
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert (routes["cart-read"]["weight"], routes["cart-write"]["weight"]) == (100, 100)
    # back to 50 (one change for the group), then cart-write's new service fails: the group
    # fails and rolls back whole
    code, _, err = await run_cli("set-weight", "cart", "50", "--reason", "again", env=env)
    assert code == 0, err
    broken["on"] = True
    await _traffic(p.url, 400)
    code, out, _ = await run_cli("promote", "cart", "--json", env=env)
    gate = json.loads(out)
    assert gate["decision"] == "fail" and code == 1, gate
    assert any(r.startswith("cart-write: ") for r in gate["reasons"])
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert (routes["cart-read"]["state"], routes["cart-write"]["state"]) == (
        "rolled_back", "rolled_back")
    code, out, _ = await run_cli("history", "cart", "--json", env=env)
    rollback = next(e for e in json.loads(out)["entries"] if e["action"] == "rollback")
    assert (rollback["route"], rollback["trigger"]) == ("cart", "gate")
    await p.stop()


async def test_the_guardrail_rolls_the_group_back_once(upstreams, proxy_process) -> None:
    mono = await upstreams("monolith")

    async def svc_handler(request: web.Request) -> web.Response:
        status = 500 if request.method == "POST" else 200  # only cart-write's service fails
        return web.json_response({"served_by": "svc"}, status=status)

    svc = await upstreams("svc", handler=svc_handler)
    guard = "{guardrail: {enabled: true, window: 5s, min_requests: 20}}"
    p = await proxy_process(config(mono.port, svc.port, weight=100, promotion=guard),
                            args=("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        for i in range(60):
            async with s.post(p.url + "/cart/items/1", json={},
                              headers={"X-User-Id": f"u{i}"}) as r:
                await r.read()

    async def rolled() -> bool:
        routes = {r["name"]: r["state"] for r in await _routes(p.admin)}
        return routes["cart-read"] == routes["cart-write"] == "rolled_back"

    await wait_for(rolled, timeout=15)
    _, out, _ = await run_cli("history", "cart-read", "--json", "--admin", p.admin)
    rollbacks = [e for e in json.loads(out)["entries"] if e["action"] == "rollback"]
    assert len(rollbacks) == 1
    assert (rollbacks[0]["route"], rollbacks[0]["trigger"], rollbacks[0]["routes"]) == (
        "cart", "guardrail", ["cart-read", "cart-write"])
    async with aiohttp.ClientSession() as s:
        async with s.get(p.url + "/cart", headers={"X-User-Id": "u1"}) as r:
            assert (await r.json())["served_by"] == "monolith"
    await p.stop()


async def test_a_reload_that_forms_a_group_aligns_it(upstreams, proxy_process) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    text = config(mono.port, svc.port, weight=20)
    ungrouped = text.split("groups:")[0]
    p = await proxy_process(ungrouped)
    env = {"STRANGLER_ADMIN_URL": p.admin}
    code, _, err = await run_cli("set-weight", "cart-read", "30", "--reason", "ahead", env=env)
    assert code == 0, err
    p.config.write_text(text)
    async with aiohttp.ClientSession() as s:
        async with s.post(p.admin + "/admin/reload", json={"reason": "group cart"}) as r:
            assert r.status == 200, await r.text()
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert (routes["cart-read"]["weight"], routes["cart-write"]["weight"]) == (20, 20)
    assert routes["cart-read"]["group"] == "cart"
    code, out, _ = await run_cli("history", "cart", "--json", env=env)
    aligned = next(e for e in json.loads(out)["entries"] if e["action"] == "group_aligned")
    assert aligned["from"] == {"cart-read": 30, "cart-write": 20} and aligned["to"] == 20
    # fresh evidence for the group: every member starts a new step, one entry
    steps = {n: routes[n]["step"]["id"] for n in ("cart-read", "cart-write")}
    code, out, err = await run_cli("reset-evidence", "cart", "--reason", "fixed", "--json",
                                   env=env)
    assert code == 0, err
    assert json.loads(out)["audit"]["routes"] == ["cart-read", "cart-write"]
    routes = {r["name"]: r for r in await _routes(p.admin)}
    assert all(routes[n]["step"]["id"] != steps[n] for n in steps)
    await p.stop()


def test_invalid_groups_are_refused_at_file_line(tmp_path: Path) -> None:
    text = routes_yaml(TWO_UPSTREAMS + """
    routes:
      - name: cart-read
        match: {{path_prefix: /cart}}
        legacy: monolith
        target: svc
        sticky: {{header: X-User-Id}}
      - name: cart-write
        match: {{path_prefix: /basket}}
        legacy: svc
        target: monolith
        sticky: {{cookie: session}}
      - name: orders
        match: {{path_prefix: /orders}}
        legacy: monolith
        target: svc
    groups:
      cart:
        routes:
          - cart-read
          - cart-write
      more:
        routes: [orders, cart-read]
      alone:
        routes: [orders]
""", port=1, admin=2, mono=3, svc=4)
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    got = [str(x).removeprefix(f"{path}:") for x in exc.value.problems]
    assert got == [
        "30: groups.cart.routes[1]: 'cart-write' splits on cookie session but 'cart-read' on "
        "header x-user-id: members share one sticky key, or one user could be on the new "
        "service for one and on legacy for the other",
        "30: groups.cart.routes[1]: 'cart-write' has legacy 'svc' but 'cart-read' has "
        "'monolith': members share their legacy upstream",
        "32: groups.more.routes[1]: route 'cart-read' is already in group 'cart' (line 29); a "
        "route moves with one group at most",
        "34: groups.alone.routes: a group of one: 'orders' moves on its own; a group needs two "
        "routes or more",
        "34: groups.alone.routes[0]: route 'orders' is already in group 'more' (line 32); a "
        "route moves with one group at most",
    ]
