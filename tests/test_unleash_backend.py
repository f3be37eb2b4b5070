"""`flags.backend: unleash` end to end: `strangler serve` against a real Unleash 8 server.

What users rely on: a route's weight is its toggle's rollout, set anywhere (strangler or
Unleash's own UI/API); strangler's writes land in Unleash and take effect here at once; an
Unleash outage never changes routing; a proxy that has never seen flag state sends everything
to legacy and says it is degraded; a missing toggle stops `serve` with its name.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.support import ProxyProcess, Upstream, free_port, routes_yaml, run_cli
from tests.unleash_server import UnleashServer, feature_path

pytestmark = pytest.mark.unleash

ROUTE = "balance"
PATH = "/api/v1/balance/7"
FOLLOW = 10.0  # it arrives (tick 1 s + refresh 1 s: typically 1-2 s; loaded CI hosts stall >4 s)


def config_text(unleash_url: str, flag: str, mono: Upstream, svc: Upstream, *,
                weight: float = 0, sticky: bool = True, refresh: str = "1s") -> str:
    """routes.yaml for one route whose weight comes from `flag`."""
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          balance-svc: {{url: "http://127.0.0.1:{svc}"}}
        default_upstream: monolith
        flags:
          backend: unleash
          unleash: {{url: "{url}", refresh_interval: {refresh}}}
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: balance-svc
            weight: {weight}
            flag: {flag}
            {sticky}
            shadow: false
        """, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port,
        url=unleash_url, refresh=refresh, weight=weight, flag=flag,
        sticky="sticky: {header: X-User-Id}" if sticky else "fallback_to_legacy: true")


async def create_toggle(admin: aiohttp.ClientSession, flag: str, rollout: int,
                        enabled: bool = True) -> None:
    """A toggle made the way a user makes one in Unleash: a plain integer gradual rollout."""
    async with admin.post("api/admin/projects/default/features",
                          json={"name": flag, "type": "release"}):
        pass
    env = f"{feature_path(flag)}/environments/development"
    strategy = {"name": "flexibleRollout", "constraints": [],
                "parameters": {"rollout": str(rollout), "stickiness": "userId", "groupId": flag}}
    async with admin.post(f"{env}/strategies", json=strategy):
        pass
    if enabled:
        async with admin.post(f"{env}/on"):
            pass


async def toggle(admin: aiohttp.ClientSession, flag: str) -> tuple[bool, dict[str, str]]:
    """(enabled, the flexibleRollout parameters) of a toggle in the development environment."""
    async with admin.get(feature_path(flag)) as resp:
        feature = await resp.json()
    (env,) = [e for e in feature["environments"] if e["name"] == "development"]
    return env["enabled"], env["strategies"][0]["parameters"]


async def set_rollout_in_unleash(admin: aiohttp.ClientSession, flag: str, rollout: int) -> None:
    """Move the rollout slider in Unleash (strangler's exact-weight parameter left behind)."""
    env = f"{feature_path(flag)}/environments/development"
    async with admin.get(feature_path(flag)) as resp:
        feature = await resp.json()
    (envs,) = [e for e in feature["environments"] if e["name"] == "development"]
    strategy = envs["strategies"][0]
    body = {"name": "flexibleRollout", "constraints": [],
            "parameters": {**strategy["parameters"], "rollout": str(rollout)}}
    async with admin.put(f"{env}/strategies/{strategy['id']}", json=body):
        pass


async def served_by(session: aiohttp.ClientSession, proxy: ProxyProcess,
                    user: str | None = None) -> str:
    headers = {"X-User-Id": user} if user is not None else {}
    async with session.get(proxy.url + PATH, headers=headers) as resp:
        assert resp.status == 200
        return (await resp.json())["served_by"]


async def sides(session: aiohttp.ClientSession, proxy: ProxyProcess,
                users: list[str]) -> dict[str, str]:
    return {u: await served_by(session, proxy, u) for u in users}


async def route_view(session: aiohttp.ClientSession, proxy: ProxyProcess) -> dict[str, Any]:
    async with session.get(f"{proxy.admin}/admin/routes/{ROUTE}") as resp:
        assert resp.status == 200
        return await resp.json()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = FOLLOW) -> float:
    """Seconds until `await check()` held; fails the test after `within` seconds."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def log_events(proxy: ProxyProcess, event: str) -> list[dict]:
    out = []
    for stream in (proxy.stdout_path, proxy.stderr_path):
        for line in stream.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
    return out


# -- tests -------------------------------------------------------------------------------------


async def test_split_follows_the_toggle_rollout_within_a_binomial_interval(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("split")
    await create_toggle(unleash_admin, flag, 30)
    proxy = await proxy_process(config_text(unleash_server.url, flag, mono, svc, weight=80),
                                env=unleash_server.env())
    n = 1500
    async with aiohttp.ClientSession() as s:
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"], view["file_weight"]) == (30.0, "active", 80.0)
        seen = await sides(s, proxy, [f"user-{i}" for i in range(n)])
    share = sum(side == "balance-svc" for side in seen.values()) / n
    # p = 0.30, n = 1500: sd 0.0118; +-4 sd fails a correct split once in ~16,000 runs.
    assert 0.30 - 4 * 0.0118 < share < 0.30 + 4 * 0.0118, share


async def test_writes_go_to_unleash_and_take_effect_here_at_once(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("writes")
    await create_toggle(unleash_admin, flag, 0)
    proxy = await proxy_process(config_text(unleash_server.url, flag, mono, svc),
                                env=unleash_server.env())
    admin = ("--admin", proxy.admin)
    users = [f"u{i}" for i in range(40)]
    async with aiohttp.ClientSession() as s:
        code, _, err = await run_cli("set-weight", ROUTE, "100", "--reason", "go", *admin)
        assert code == 0, err
        assert set((await sides(s, proxy, users)).values()) == {"balance-svc"}  # at once
        assert await toggle(unleash_admin, flag) == (True, {
            "rollout": "100", "stranglerWeight": "100.00", "stickiness": "userId",
            "groupId": flag})

        code, _, err = await run_cli("set-weight", ROUTE, "12.34", "--reason", "two decimals",
                                     *admin)
        assert code == 0, err
        enabled, params = await toggle(unleash_admin, flag)
        assert (enabled, params["rollout"], params["stranglerWeight"]) == (True, "12", "12.34")
        assert (await route_view(s, proxy))["weight"] == 12.34

        code, _, err = await run_cli("rollback", ROUTE, "--reason", "3am", *admin)
        assert code == 0, err
        assert set((await sides(s, proxy, users)).values()) == {"monolith"}  # at once
        assert (await toggle(unleash_admin, flag))[0] is False
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"]) == (0.0, "rolled_back")
        code, _, err = await run_cli("set-weight", ROUTE, "50", "--reason", "no", *admin)
        assert code != 0 and "rolled back" in err

        code, _, err = await run_cli("resume", ROUTE, "--reason", "fixed", *admin)
        assert code == 0, err
        enabled, params = await toggle(unleash_admin, flag)
        assert (enabled, params["rollout"]) == (True, "0")  # resumed at 0 until set
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"]) == (0.0, "active")
        # Still after several polls: nothing flips back.
        await asyncio.sleep(2.5)
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"]) == (0.0, "active")

        async with s.get(f"{proxy.admin}/admin/history?route={ROUTE}") as resp:
            actions = [e["action"] for e in (await resp.json())["entries"]]
    assert actions[:4] == ["resume", "rollback", "set_weight", "set_weight"]
    assert await proxy.stop() == 0


async def test_rollback_right_after_a_weight_change_never_flips_back(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    """Polls that still show the earlier write (Unleash publishes on a 1 s tick) must not undo
    the rollback on the replica that took it, not even for one request."""
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("flap")
    await create_toggle(unleash_admin, flag, 0)
    proxy = await proxy_process(config_text(unleash_server.url, flag, mono, svc),
                                env=unleash_server.env())
    route = f"{proxy.admin}/admin/routes/{ROUTE}"
    async with aiohttp.ClientSession() as s:
        for gap in (0.2, 0.6):
            # A burst of writes straddling Unleash's revision ticks, ending rolled back.
            for method, path, body in (("PUT", "/weight", {"weight": 100}),
                                       ("POST", "/rollback", {}), ("POST", "/resume", {}),
                                       ("PUT", "/weight", {"weight": 50}),
                                       ("POST", "/rollback", {})):
                async with s.request(method, route + path, json={**body, "reason": "x"}) as r:
                    assert r.status == 200, await r.text()
                await asyncio.sleep(gap)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                assert await served_by(s, proxy, "u1") == "monolith"
                assert (await route_view(s, proxy))["state"] == "rolled_back"
            async with s.post(route + "/resume", json={"reason": "again"}) as resp:
                assert resp.status == 200
    assert await proxy.stop() == 0


async def test_weight_set_in_unleash_itself_is_followed(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("ui")
    await create_toggle(unleash_admin, flag, 0)
    proxy = await proxy_process(config_text(unleash_server.url, flag, mono, svc),
                                env=unleash_server.env())
    users = [f"u{i}" for i in range(40)]
    async with aiohttp.ClientSession() as s:
        assert set((await sides(s, proxy, users)).values()) == {"monolith"}
        step = (await route_view(s, proxy))["step"]["id"]

        await set_rollout_in_unleash(unleash_admin, flag, 100)

        async def all_target() -> bool:
            return set((await sides(s, proxy, users)).values()) == {"balance-svc"}

        took = await eventually(all_target)
        print(f"rollout set in Unleash reached the proxy's traffic in {took:.2f}s")
        view = await route_view(s, proxy)
        assert view["weight"] == 100.0 and view["step"]["id"] > step  # a new gate step

        # Switching the toggle off in Unleash is a rollback.
        async with unleash_admin.post(f"{feature_path(flag)}/environments/development/off"):
            pass

        async def all_legacy() -> bool:
            return set((await sides(s, proxy, users)).values()) == {"monolith"}

        await eventually(all_legacy)
        assert (await route_view(s, proxy))["state"] == "rolled_back"
        async with s.get(f"{proxy.admin}/admin/history?route={ROUTE}") as resp:
            entries = (await resp.json())["entries"]
    changes = [(e["actor"], e["action"], e["to"]) for e in entries]
    assert changes[:2] == [("unleash", "flag_change", 0.0), ("unleash", "flag_change", 100.0)]


async def test_unleash_killed_mid_run_routing_continues_on_last_known_state(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process, outage,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("outage")
    await create_toggle(unleash_admin, flag, 50)
    proxy = await proxy_process(config_text(unleash_server.url, flag, mono, svc),
                                env=unleash_server.env())
    users = [f"u{i}" for i in range(100)]
    async with aiohttp.ClientSession() as s:
        before = await sides(s, proxy, users)
        assert set(before.values()) == {"monolith", "balance-svc"}

        outage()
        await asyncio.sleep(3.5)  # three polls fail
        assert await sides(s, proxy, users) == before  # same users, same sides
        async with s.get(proxy.admin + "/readyz") as resp:
            assert resp.status == 200
        assert len(log_events(proxy, "unleash.unreachable")) == 1  # one warning per outage

        # A weight change cannot reach Unleash: refused, nothing changes.
        async with s.put(f"{proxy.admin}/admin/routes/{ROUTE}/weight",
                         json={"weight": 100, "reason": "during outage"}) as resp:
            assert resp.status == 503
            assert "Unleash unreachable" in (await resp.json())["error"]
        assert await sides(s, proxy, users) == before

        # A rollback during the outage holds here at once and reaches Unleash once it is back.
        async with s.post(f"{proxy.admin}/admin/routes/{ROUTE}/rollback",
                          json={"reason": "outage drill"}) as resp:
            assert resp.status == 200
        assert set((await sides(s, proxy, users)).values()) == {"monolith"}
        assert "Traceback" not in proxy.stderr_path.read_text()

        unleash_server.restart_unleash()

        async def disabled_in_unleash() -> bool:
            return (await toggle(unleash_admin, flag))[0] is False

        await eventually(disabled_in_unleash, within=10)
        await asyncio.sleep(2.5)  # polls after the reconnect do not undo the rollback
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"]) == (0.0, "rolled_back")
        assert set((await sides(s, proxy, users)).values()) == {"monolith"}
    assert await proxy.stop() == 0


async def test_start_with_unleash_down_uses_the_cache_or_sends_all_to_legacy(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process, outage, tmp_path,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("down")
    await create_toggle(unleash_admin, flag, 100)
    text = config_text(unleash_server.url, flag, mono, svc, weight=100)
    cached = await proxy_process(text, env=unleash_server.env(), name="cached")
    async with aiohttp.ClientSession() as s:
        assert await served_by(s, cached, "u1") == "balance-svc"
        await cached.stop()
        outage()

        # Restarted during the outage: the SDK cache in state_dir carries the last state.
        restarted = ProxyProcess(cached.dir, text, env=unleash_server.env())
        try:
            await restarted.start()
            assert await served_by(s, restarted, "u1") == "balance-svc"
            async with s.get(restarted.admin + "/readyz") as resp:
                assert resp.status == 200 and not (await resp.json()).get("degraded")
        finally:
            assert await restarted.stop() == 0

        # A fresh replica with no cache: everything to legacy, ready but degraded.
        fresh = await proxy_process(text, env=unleash_server.env(), name="fresh")
        assert {await served_by(s, fresh, f"u{i}") for i in range(20)} == {"monolith"}
        async with s.get(fresh.admin + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert "no cached flag state" in body["degraded"]["flags"]
        view = await route_view(s, fresh)
        assert view["weight"] == 0.0

        unleash_server.restart_unleash()

        async def recovered() -> bool:
            async with s.get(fresh.admin + "/readyz") as resp:
                return not (await resp.json()).get("degraded")

        await eventually(recovered, within=10)
        assert await served_by(s, fresh, "u1") == "balance-svc"
    assert await fresh.stop() == 0


async def test_missing_toggle_stops_serve_naming_it_unless_create_flags(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process, tmp_path,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("missing")
    text = config_text(unleash_server.url, flag, mono, svc, weight=25.5)

    refused = ProxyProcess(tmp_path / "refused", text, env=unleash_server.env())
    with pytest.raises(RuntimeError, match="exited 2"):
        await refused.start()
    message = refused.stderr_path.read_text()
    assert f"'{flag}' (route 'balance')" in message and "--create-flags" in message

    proxy = await proxy_process(text, args=("--create-flags",), env=unleash_server.env())
    assert await toggle(unleash_admin, flag) == (True, {
        "rollout": "26", "stranglerWeight": "25.50", "stickiness": "userId", "groupId": flag})
    async with aiohttp.ClientSession() as s:
        view = await route_view(s, proxy)
        assert (view["weight"], view["state"]) == (25.5, "active")
    assert await proxy.stop() == 0


async def test_reload_adds_a_route_its_toggle_missing_until_created_in_unleash(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag, new_flag = unleash_server.flag_name("reload"), unleash_server.flag_name("added")
    await create_toggle(unleash_admin, flag, 0)
    text = config_text(unleash_server.url, flag, mono, svc)
    proxy = await proxy_process(text, args=("--no-watch",), env=unleash_server.env())
    added = (
        "  - name: orders\n"
        "    match: {path_prefix: /api/v1/orders}\n"
        "    legacy: monolith\n"
        "    target: balance-svc\n"
        f"    flag: {new_flag}\n"
        "    shadow: false\n"
    )
    proxy.config.write_text(text.rstrip() + "\n" + added)
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.admin + "/admin/reload") as resp:
            assert resp.status == 200, await resp.text()

        async def orders_served_by() -> str:
            async with s.get(proxy.url + "/api/v1/orders/1") as resp:
                return (await resp.json())["served_by"]

        async def readyz() -> dict:
            async with s.get(proxy.admin + "/readyz") as resp:
                assert resp.status == 200
                return await resp.json()

        assert await orders_served_by() == "monolith"

        async def reported_missing() -> bool:
            body = await readyz()
            return any(new_flag in t for t in body.get("degraded", {}).get("missing_toggles", []))

        await eventually(reported_missing)
        await create_toggle(unleash_admin, new_flag, 100)

        async def followed() -> bool:
            return await orders_served_by() == "balance-svc"

        await eventually(followed)
        assert "degraded" not in await readyz()
    assert await proxy.stop() == 0


async def test_backend_token_missing_is_a_usage_error(
    unleash_server: UnleashServer, upstreams, tmp_path,
) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    text = config_text(unleash_server.url, "t.none", mono, svc)
    proxy = ProxyProcess(tmp_path / "p", text, env={"UNLEASH_API_TOKEN": ""})
    with pytest.raises(RuntimeError, match="exited 2"):
        await proxy.start()
    assert "UNLEASH_API_TOKEN" in proxy.stderr_path.read_text()
