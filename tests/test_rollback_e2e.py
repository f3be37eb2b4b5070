"""Rollback end to end: `strangler serve` as a subprocess, real upstreams, the CLI as an SRE
types it. Under load, nothing reaches target once `strangler rollback` has returned; the freeze
survives restarts and reloads; a state_dir that cannot be written still rolls back."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: false
    """


def config(mono: int, svc: int, weight: float = 50) -> str:
    return routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono, svc=svc,
                       weight=weight)


@dataclass
class Arrivals:
    """Target's own clock: when each request reached it."""

    times: list[float] = field(default_factory=list)

    async def handler(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        return web.json_response({"served_by": "svc"})

    def after(self, t: float) -> int:
        return sum(1 for x in self.times if x > t)


@dataclass
class Load:
    """Bounded concurrent GETs; records (sent, served_by or error) for every request."""

    url: str
    concurrency: int = 8
    # The cap is a safety bound, not the test's length: the test stops the load 500 requests
    # after the rollback returned. 6,000 ran out before a slow rollback (2.5 s) returned.
    max_requests: int = 100_000
    max_seconds: float = 40.0
    results: list[tuple[float, str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        async with aiohttp.ClientSession() as s:
            async def worker(i: int) -> None:
                n = 0
                while not self.stop.is_set() and time.monotonic() < deadline \
                        and len(self.results) < self.max_requests:
                    sent = time.monotonic()
                    try:
                        async with s.get(f"{self.url}/api/v1/balance/{i}-{n}") as r:
                            body = await r.json()
                            who = body["served_by"] if r.status == 200 else f"HTTP {r.status}"
                    except (aiohttp.ClientError, ValueError) as exc:
                        who = f"error {type(exc).__name__}"
                    self.results.append((sent, who))
                    n += 1

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    def failed(self) -> list[str]:
        return [who for _, who in self.results if who not in ("monolith", "svc")]


async def _served(url: str, n: int = 40) -> dict[str, int]:
    out: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"{url}/api/v1/balance/{i}") as r:
                assert r.status == 200
                who = (await r.json())["served_by"]
                out[who] = out.get(who, 0) + 1
    return out


async def _route(admin: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(admin + "/admin/routes/balance") as r:
            assert r.status == 200
            return await r.json()


async def test_rollback_under_load_reaches_no_target_after_return(upstreams, proxy_process):
    arrivals = Arrivals()
    mono = await upstreams("monolith")
    svc = await upstreams("svc", handler=arrivals.handler)
    p = await proxy_process(config(mono.port, svc.port), args=("--workers", "2",
                                                                "--no-access-log"))
    load = Load(p.url)
    task = asyncio.create_task(load.run())
    try:
        await wait_for(lambda: len(arrivals.times) >= 100 or task.done(), timeout=20)
        issued = time.monotonic()
        code, out, err = await run_cli("rollback", "balance", "--reason", "e2e under load",
                                       env={"STRANGLER_ADMIN_URL": p.admin})
        returned = time.monotonic()
        assert code == 0, err
        count_at_return = len(load.results)
        await wait_for(lambda: len(load.results) >= count_at_return + 500 or task.done(),
                       timeout=20)
    finally:
        load.stop.set()
        await task
    late_arrivals = arrivals.after(returned)
    sent_after = [who for sent, who in load.results if sent > returned]
    print(f"\nrollback effect under load: {len(load.results)} requests, "
          f"{len(arrivals.times)} reached target, command took {returned - issued:.3f}s, "
          f"{arrivals.after(issued) - late_arrivals} reached target while it ran, "
          f"{late_arrivals} after it returned; {len(sent_after)} requests sent after")
    assert load.failed() == []
    assert late_arrivals == 0
    assert len(sent_after) >= 500 and set(sent_after) == {"monolith"}
    assert "rolled back" in out
    assert await p.stop() == 0


async def test_rollback_holds_through_restart_and_reload_until_resume(upstreams,
                                                                      proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port, weight=20))
    cli_env = {"STRANGLER_ADMIN_URL": p.admin}
    code, _, err = await run_cli("rollback", "balance", "--reason", "bad deploy", env=cli_env)
    assert code == 0, err

    assert await p.stop() == 0
    await p.start()
    route = await _route(p.admin)
    assert (route["state"], route["weight"]) == ("rolled_back", 0)
    assert await _served(p.url) == {"monolith": 40}

    # GitOps edits the file to 50: the file's new value does not undo the rollback
    p.config.write_text(p.config.read_text().replace("weight: 20", "weight: 50"))
    async with aiohttp.ClientSession() as s:
        async with s.post(p.admin + "/admin/reload") as r:
            assert r.status == 200
            assert (await r.json())["generation"] == 2
    route = await _route(p.admin)
    assert (route["state"], route["weight"], route["file_weight"]) == ("rolled_back", 0, 50)
    assert await _served(p.url) == {"monolith": 40}

    code, _, err = await run_cli("resume", "balance", "--reason", "fix deployed", env=cli_env)
    assert code == 0, err
    route = await _route(p.admin)
    assert (route["state"], route["weight"]) == ("active", 0)
    assert await _served(p.url) == {"monolith": 40}
    code, _, err = await run_cli("set-weight", "balance", "100", "--reason", "cut over",
                                 env=cli_env)
    assert code == 0, err
    assert await _served(p.url) == {"svc": 40}
    assert await p.stop() == 0


async def test_rollback_with_unwritable_state_dir_still_routes_to_legacy(upstreams,
                                                                        proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port, weight=100))
    assert await _served(p.url, 10) == {"svc": 10}
    # A state_dir that nothing can write to, root included: a plain file where the directory was.
    state = p.dir / "state"
    shutil.move(state, p.dir / "state.moved")
    state.write_text("not a directory\n")
    code, out, err = await run_cli("rollback", "balance", "--reason", "disk trouble", "--json",
                                   env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, err
    body = json.loads(out)
    assert (body["state"], body["weight"], body["durable"]) == ("rolled_back", 0, False)
    assert "NOT DURABLE" in body["warning"]
    assert "WARNING: NOT DURABLE" in err
    assert await _served(p.url) == {"monolith": 40}
    async with aiohttp.ClientSession() as s:
        async with s.get(p.admin + "/readyz") as r:
            ready = await r.json()
    assert ready["durable"] is False
    assert await p.stop() == 0
