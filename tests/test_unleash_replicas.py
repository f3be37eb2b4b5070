"""Three `strangler serve` replicas on one Unleash: they agree, and a rollback reaches them all.

What users rely on (contract §7): with several replicas, a user lands on the same side whichever
replica serves them; `strangler rollback` through any one replica sends 100% to legacy on every
replica within about a refresh interval; a weight set in Unleash's own UI/API is followed by all.
The convergence times measured here are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from tests.support import ProxyProcess, run_cli
from tests.test_unleash_backend import (
    ROUTE,
    config_text,
    create_toggle,
    route_view,
    served_by,
    set_rollout_in_unleash,
    sides,
)
from tests.unleash_server import UnleashServer

pytestmark = pytest.mark.unleash

REPLICAS = 3
ROUNDS = 3


@pytest.fixture
async def unleash_admin(unleash_server: UnleashServer):
    async with aiohttp.ClientSession(
        base_url=unleash_server.base + "/",
        headers={"Authorization": unleash_server.admin_token},
        raise_for_status=True,
    ) as session:
        yield session


async def start_replicas(proxy_process, unleash_server: UnleashServer,
                         flag: str, upstreams, refresh: str = "1s") -> list[ProxyProcess]:
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    # The last replica runs two data-plane workers: weights reach them over the worker link.
    return list(await asyncio.gather(*(
        proxy_process(config_text(unleash_server.url, flag, mono, svc, refresh=refresh),
                      args=("--workers", "2") if i == REPLICAS - 1 else (),
                      env=unleash_server.env(), name=f"replica{i}")
        for i in range(REPLICAS)
    )))


async def converged_after(session: aiohttp.ClientSession, proxy: ProxyProcess, side: str,
                          start: float, within: float = 10.0) -> float:
    """Seconds from `start` until a sticky user's request is served by `side`."""
    while time.monotonic() - start < within:
        if await served_by(session, proxy, "probe-user") == side:
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    pytest.fail(f"{proxy.admin} did not send traffic to {side} within {within}s")


async def test_same_user_same_side_on_every_replica_and_unleash_changes_reach_all(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    flag = unleash_server.flag_name("replicas")
    await create_toggle(unleash_admin, flag, 50)
    replicas = await start_replicas(proxy_process, unleash_server, flag, upstreams)
    users = [f"user-{i}" for i in range(300)]
    async with aiohttp.ClientSession() as s:
        seen = [await sides(s, p, users) for p in replicas]
        assert seen[0] == seen[1] == seen[2]
        on_target = sum(side == "balance-svc" for side in seen[0].values())
        assert 300 * 0.5 - 4 * 8.66 < on_target < 300 * 0.5 + 4 * 8.66  # binomial, +-4 sd

        # Ramping up in Unleash's own API: every replica follows, nobody moves back to legacy.
        await set_rollout_in_unleash(unleash_admin, flag, 80)
        start = time.monotonic()

        async def at_80(p: ProxyProcess) -> float:
            while (await route_view(s, p))["weight"] != 80.0:
                assert time.monotonic() - start < 10, "replica did not follow Unleash"
                await asyncio.sleep(0.02)
            return time.monotonic() - start

        took = await asyncio.gather(*(at_80(p) for p in replicas))
        print(f"\nrollout 50 -> 80 set in Unleash reached all {REPLICAS} replicas in "
              f"{max(took):.2f}s (each: {', '.join(f'{t:.2f}' for t in took)})")
        after = [await sides(s, p, users) for p in replicas]
        assert after[0] == after[1] == after[2]
        assert all(after[0][u] == "balance-svc" for u in users if seen[0][u] == "balance-svc")


@pytest.mark.parametrize(("refresh", "limit"), [("1s", 3.5), ("500ms", 3.0)])
async def test_rollback_through_one_replica_reaches_all_three(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process, refresh: str, limit: float,
) -> None:
    """Unleash publishes a change on its next revision tick (every 1 s) and each replica sees
    it on its next poll: the last replica follows within tick + refresh_interval (+ latency).
    """
    flag = unleash_server.flag_name("rollback")
    await create_toggle(unleash_admin, flag, 100)
    replicas = await start_replicas(proxy_process, unleash_server, flag, upstreams, refresh)
    entry = replicas[0]
    lasts, after_returns, spreads = [], [], []
    async with aiohttp.ClientSession() as s:
        for round_ in range(ROUNDS):
            start = time.monotonic()
            await asyncio.gather(*(converged_after(s, p, "balance-svc", start)
                                   for p in replicas))
            await asyncio.sleep(0.3)  # a poll phase that differs between rounds

            start = time.monotonic()
            watchers = [asyncio.create_task(converged_after(s, p, "monolith", start))
                        for p in replicas]
            code, _, err = await run_cli("rollback", ROUTE, "--reason", f"drill {round_}",
                                         "--admin", entry.admin)
            returned = time.monotonic() - start
            assert code == 0, err
            # The replica that took the call routes to legacy before the command returns.
            assert await served_by(s, entry, "someone-else") == "monolith"
            times = await asyncio.gather(*watchers)
            lasts.append(max(times))
            after_returns.append(max(times) - returned)
            spreads.append(max(times) - times[0])
            print(f"\nround {round_}: rollback command returned after {returned:.2f}s; "
                  f"replicas on legacy after {', '.join(f'{t:.2f}' for t in times)}s; "
                  f"last replica {max(times) - times[0]:.2f}s after the receiving one, "
                  f"{max(times) - returned:.2f}s after the command returned")
            for p in replicas:
                view = await route_view(s, p)
                assert (view["weight"], view["state"]) == (0.0, "rolled_back")

            # Back to 100% for the next round, through another replica.
            other = replicas[(round_ + 1) % REPLICAS].admin
            for args in (("resume", ROUTE), ("set-weight", ROUTE, "100")):
                code, _, err = await run_cli(*args, "--reason", "next round", "--admin", other)
                assert code == 0, err
    print(f"\nrollback convergence over {ROUNDS} rounds (refresh {refresh}): last replica after "
          f"median {statistics.median(lasts):.2f}s, max {max(lasts):.2f}s from the command "
          f"start (CLI start-up included); after the receiving replica flipped: median "
          f"{statistics.median(spreads):.2f}s, max {max(spreads):.2f}s")
    assert max(spreads) <= limit
