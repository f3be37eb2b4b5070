"""set-weight -> rollback -> resume, over and over, on three replicas sharing one real Unleash.

What users rely on: a rollback sends nobody to the target on the replica that took it from the
moment the call returns, and on every other replica once it has followed; `resume` lifts the
freeze with the weight at 0 until someone sets it: no replica may ever report, or route by, the
weight the route had before it was rolled back (issue 17 part 1: a resumed route read its
pre-rollback weight once in six runs).

How: three `strangler serve` replicas poll Unleash fast while traffic flows to each of them; a
sampler per replica reads its effective weight (admin API) every few ms, and the target upstream
notes, for every request it gets, which phase the request was sent in and which phase it arrived
in. Every sample and every target hit is checked against the weights the operator had set in
those phases; the cycles vary which replica takes each call and how long each phase lasts.
The replicas reach Unleash through a forwarder that slows its Admin API (as a loaded or distant
Unleash does), so polls land while a replica's writes are on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from tests.support import ProxyProcess, free_port
from tests.test_unleash_backend import PATH, ROUTE, config_text, create_toggle
from tests.unleash_server import UnleashServer

pytestmark = pytest.mark.unleash

REPLICAS = 3
# 16 in `make test` (every fault kind occurs twice in them: refused rollbacks at cycles 2, 10,
# 14, a retry held across the resume at 2 and 10); STRANGLER_RACE_CYCLES=30 for a longer run.
CYCLES = int(os.environ.get("STRANGLER_RACE_CYCLES", "16"))
BUDGET = 180.0  # seconds for all cycles; the loop stops (and says so) when it is spent
MIN_CYCLES = 10  # fewer than this within the budget fails: the machine was too busy to tell
SAMPLE_EVERY = 0.004  # seconds between two reads of one replica's weight
TRAFFIC_EVERY = 0.003  # seconds between two requests to one replica
FOLLOW = 10.0  # seconds a replica may take to follow Unleash (tick 1 s + refresh, busy cores)
WEIGHTS = (12.34, 37.5, 61.01, 88.0)  # the operator's weights, in turn (never 0)
ADMIN_DELAY = (0.05, 0.4)  # seconds the forwarder holds each Admin API request (uniform)
FOLLOWED = 0.25  # seconds after a replica shows a rollback by which its data plane has it


@dataclass
class Faults:
    """What the forwarder does to Admin API requests whose path ends with `suffix`: refuse them
    (503), or hold them `stall` seconds more (`stalled` is set when one arrives)."""

    suffix: str = "/off"
    refuse: bool = False
    stall: float = 0.0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)


async def slow_admin_forwarder(unleash: UnleashServer, rng: random.Random, port: int,
                               faults: Faults) -> web.AppRunner:
    """Unleash on another port, its Admin API slowed by ADMIN_DELAY (and `faults`); the client
    API as is."""
    client = aiohttp.ClientSession(auto_decompress=True)

    async def forward(request: web.Request) -> web.Response:
        if request.path.startswith("/api/admin/"):
            await asyncio.sleep(rng.uniform(*ADMIN_DELAY))
            if request.path.endswith(faults.suffix):
                if faults.refuse:
                    return web.json_response({"message": "refused by the test"}, status=503)
                if faults.stall:
                    faults.stalled.set()
                    await asyncio.sleep(faults.stall)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "if-none-match",
                                    "unleash-appname", "unleash-sdk", "unleash-connection-id",
                                    "unleash-interval", "unleash-instanceid", "user-agent")}
        async with client.request(request.method, unleash.base + request.path_qs,
                                  headers=headers, data=await request.read()) as resp:
            body = await resp.read()
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() in ("etag", "content-type")}
            return web.Response(status=resp.status, body=body or None, headers=keep)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: client.close())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@dataclass(frozen=True)
class Policy:
    """What one replica may show in a phase: `weights` it may report, `target` if it may
    route any request to the target, `converging` while a rollback is on its way to it (it may
    still show the old weight until it has shown 0 once)."""

    weights: frozenset[float]
    target: bool
    converging: bool = False


@dataclass
class Phases:
    """Numbered phases, each a Policy per replica; samples and hits name the phases they span."""

    policies: list[tuple[str, tuple[Policy, ...]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def now(self) -> int:
        return len(self.policies) - 1

    def enter(self, label: str, *policies: Policy) -> None:
        self.policies.append((label, tuple(policies)))

    def replace(self, replica: int, policy: Policy) -> None:
        label, current = self.policies[-1]
        changed = list(current)
        changed[replica] = policy
        self.enter(label, *changed)

    def tighten(self, replica: int, followed: Policy) -> None:
        """No target hits for a replica that followed a rollback, unless its phase moved on."""
        if self.policies[-1][1][replica] is followed:
            self.replace(replica, Policy(followed.weights, target=False))

    def span(self, replica: int, first: int, last: int) -> list[Policy]:
        return [self.policies[i][1][replica] for i in range(first, last + 1)]

    def label(self, index: int) -> str:
        return f"{index}:{self.policies[index][0]}"


def all_of(policy: Policy) -> tuple[Policy, ...]:
    return (policy,) * REPLICAS


async def sampler(s: aiohttp.ClientSession, proxy: ProxyProcess, replica: int, phases: Phases,
                  last: list[tuple[float, str] | None], stop: asyncio.Event) -> None:
    """Read the replica's effective weight in a loop; record what breaks its phases' policies."""
    while not stop.is_set():
        sent = phases.now
        try:
            async with s.get(f"{proxy.admin}/admin/routes/{ROUTE}") as resp:
                view = await resp.json()
        except (aiohttp.ClientError, OSError) as exc:
            phases.violations.append(f"replica {replica}: admin API failed: {exc!r}")
            return
        got = phases.now
        weight, state = view["weight"], view["state"]
        last[replica] = (weight, state)
        span = phases.span(replica, sent, got)
        allowed = set().union(*(p.weights for p in span))
        if weight not in allowed:
            phases.violations.append(
                f"replica {replica} reported weight {weight} ({state}) between phases "
                f"{phases.label(sent)} and {phases.label(got)}; allowed {sorted(allowed)}")
        current = phases.policies[got][1][replica]
        if current.converging and weight == 0 and span[0].converging:
            # It has followed the rollback: from now on 0 only, and (once its data plane has
            # it too) nothing to the target.
            followed = Policy(frozenset({0.0}), target=True)
            phases.replace(replica, followed)
            asyncio.get_running_loop().call_later(FOLLOWED, phases.tighten, replica, followed)
        await asyncio.sleep(SAMPLE_EVERY)


async def traffic(s: aiohttp.ClientSession, proxy: ProxyProcess, replica: int, phases: Phases,
                  counts: dict[str, int], stop: asyncio.Event) -> None:
    """Requests to one replica, each tagged with its replica and the phase it was sent in."""
    n = 0
    while not stop.is_set():
        n += 1
        headers = {"X-User-Id": f"r{replica}-{n}", "X-Test-Replica": str(replica),
                   "X-Test-Phase": str(phases.now)}
        try:
            async with s.get(proxy.url + PATH, headers=headers) as resp:
                side = (await resp.json())["served_by"]
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            phases.violations.append(f"replica {replica}: request failed: {exc!r}")
            return
        counts[side] = counts.get(side, 0) + 1
        await asyncio.sleep(TRAFFIC_EVERY)


def target_handler(phases: Phases):
    """The target upstream's answer; a hit in phases that forbid the target is a violation."""

    async def handle(request: web.Request) -> web.Response:
        replica = int(request.headers["X-Test-Replica"])
        sent, got = int(request.headers["X-Test-Phase"]), phases.now
        if not any(p.target for p in phases.span(replica, sent, got)):
            phases.violations.append(
                f"replica {replica} sent a request to the target between phases "
                f"{phases.label(sent)} and {phases.label(got)}")
        return web.json_response({"served_by": "balance-svc"})

    return handle


async def until(check, what: str, within: float = FOLLOW) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


async def call(s: aiohttp.ClientSession, proxy: ProxyProcess, path: str, body: dict) -> dict:
    async with s.post(f"{proxy.admin}/admin/routes/{ROUTE}/{path}", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


async def test_resume_never_brings_back_the_weight_from_before_the_rollback(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, upstreams,
    proxy_process,
) -> None:
    phases = Phases()
    zero = Policy(frozenset({0.0}), target=False)
    phases.enter("start", *all_of(zero))
    mono = await upstreams("monolith")
    svc = await upstreams("balance-svc", handler=target_handler(phases))
    flag = unleash_server.flag_name("resume-race")
    await create_toggle(unleash_admin, flag, 0)
    rng = random.Random(17)
    port = free_port()
    faults = Faults()
    forwarder = await slow_admin_forwarder(unleash_server, rng, port, faults)
    url = f"http://127.0.0.1:{port}/api"
    try:
        replicas = list(await asyncio.gather(*(
            proxy_process(config_text(url, flag, mono, svc, refresh="250ms"),
                          env=unleash_server.env(), name=f"replica{i}")
            for i in range(REPLICAS))))
        await cycles(replicas, phases, rng, faults)
    finally:
        await forwarder.cleanup()


async def cycles(replicas: list[ProxyProcess], phases: Phases, rng: random.Random,
                 faults: Faults) -> None:
    zero = Policy(frozenset({0.0}), target=False)
    last: list[tuple[float, str] | None] = [None] * REPLICAS
    counts: dict[str, int] = {}
    stop = asyncio.Event()
    done = 0
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(sampler(s, p, i, phases, last, stop))
                 for i, p in enumerate(replicas)]
        tasks += [asyncio.create_task(traffic(s, p, i, phases, counts, stop))
                  for i, p in enumerate(replicas)]
        try:
            await until(lambda: all(x == (0.0, "active") for x in last), "replicas at 0")
            for cycle in range(CYCLES):
                if time.monotonic() - started > BUDGET or phases.violations:
                    break
                weight = WEIGHTS[cycle % len(WEIGHTS)]
                at = Policy(frozenset({weight}), target=True)
                entry, back, resumer = (rng.randrange(REPLICAS) for _ in range(3))
                # Mostly resume soon after the rollback, while polls that show it still land
                # (on the other replicas, before they have seen it); sometimes after all have.
                quick = cycle % 3 != 0
                # Sometimes Unleash refuses the rollback: it holds on the replica that took it
                # and is retried there, until Unleash takes it or the route is resumed; in
                # every other such cycle a retry is still on its way when resume is called.
                refused = quick and cycle % 4 == 2
                stalled = refused and cycle % 8 == 2

                phases.enter(f"c{cycle} set-weight {weight} via {entry}",
                             *all_of(Policy(frozenset({0.0, weight}), target=True)))
                await call(s, replicas[entry], "weight", {"weight": weight, "reason": "race"})
                await until(lambda w=weight: all(x == (w, "active") for x in last),
                            f"cycle {cycle}: every replica at {weight}")
                phases.enter(f"c{cycle} at {weight}", *all_of(at))
                await asyncio.sleep(rng.uniform(0.0, 0.6))  # a poll phase that varies

                phases.enter(f"c{cycle} rolling back via {back}",
                             *all_of(Policy(frozenset({weight, 0.0}), target=True)))
                faults.refuse = refused
                answer = await call(s, replicas[back], "rollback", {"reason": "race"})
                assert answer["weight"] == 0.0, answer
                converging = Policy(frozenset({weight, 0.0}), target=True, converging=True)
                phases.enter(f"c{cycle} rolled back via {back}",
                             *(zero if i == back else converging for i in range(REPLICAS)))
                if quick:
                    resumer = back
                    await asyncio.sleep(rng.uniform(0.0, 1.3))
                    if stalled:  # Unleash takes the next retry, but only after resume's writes
                        faults.stall, faults.refuse = 2.0, False
                        faults.stalled.clear()
                        await asyncio.wait_for(faults.stalled.wait(), FOLLOW)
                    faults.refuse = False
                else:
                    await until(lambda: all(x == (0.0, "rolled_back") for x in last),
                                f"cycle {cycle}: every replica rolled back")
                    await asyncio.sleep(rng.uniform(0.0, 1.0))

                answer = await call(s, replicas[resumer], "resume", {"reason": "race"})
                assert answer["weight"] == 0.0, (
                    f"cycle {cycle}: resume via replica {resumer} answered weight "
                    f"{answer['weight']} ({answer['state']}); the operator set 0")
                if stalled:  # the late retry has landed by now: it must not undo the resume
                    await asyncio.sleep(faults.stall + ADMIN_DELAY[1] + 0.5)
                # Until the next set-weight: 0 only, on every replica, every instant.
                await until(lambda: all(x == (0.0, "active") for x in last),
                            f"cycle {cycle}: every replica resumed at 0 (last seen: {last})")
                faults.stall = 0.0
                await asyncio.sleep(rng.uniform(0.3, 1.6))  # polls land while resumed
                done += 1
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    took = time.monotonic() - started
    print(f"\n{done} set-weight/rollback/resume cycles on {REPLICAS} replicas in {took:.0f}s; "
          f"{len(phases.policies)} phases; requests by side: {counts}")
    assert not phases.violations, "\n".join(phases.violations[:20])
    assert done >= MIN_CYCLES, f"only {done} cycles in {BUDGET}s: the machine is too busy"
    assert counts.get("balance-svc", 0) > 0 and counts.get("monolith", 0) > 0, counts
