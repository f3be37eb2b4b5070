"""Issue 23, point 1: evidence belongs to what it judges.

A real `strangler serve` with real upstreams: a reload that changes the route's target (or its
compare rules) starts a new step, and the gate never judges the new step on the old one's
evidence; a restart starts a new step too; `strangler reset-evidence` starts one on purpose;
`gate`, `status` and the dashboard's data say since when and why.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for

ROUTES = TWO_UPSTREAMS.replace("    default_upstream", """\
      svc2: {{url: "http://127.0.0.1:{svc2}"}}
    default_upstream""") + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 25
        shadow:
          sample: 1.0
          compare: {{ignore: []}}
        promotion:
          min_requests: 60
          min_comparisons: 60
          max_mismatch_rate: 0.06
          max_error_rate_increase: 0.06
          max_p99_ratio: null
          guardrail: {{enabled: false}}
"""


def accounts(currency: str = "EUR"):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"account": request.path.rsplit("/", 1)[-1], "balance": 100,
                                  "currency": currency})
    return handler


async def send(url: str, n: int, concurrency: int = 16) -> None:
    counter = iter(range(n))
    async with aiohttp.ClientSession() as s:
        async def loop() -> None:
            for i in counter:
                async with s.get(f"{url}/api/v1/balance/{i}",
                                 headers={"X-User-Id": str(i)}) as r:
                    await r.read()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    await asyncio.sleep(0.5)  # mirrors land, counters reach the control plane (every 0.2 s)


async def cli(proxy, *args: str) -> tuple[int, dict | str, str]:
    code, out, err = await run_cli(*args, "--admin", proxy.admin,
                                   *(("--json",) if args[0] != "reset-evidence" else ()))
    try:
        return code, json.loads(out), err
    except ValueError:
        return code, out, err


async def route_view(proxy) -> dict:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/admin/routes/balance") as r:
        return await r.json()


async def start(upstreams, proxy_process, svc_currency: str = "EUR"):
    mono = await upstreams("monolith", handler=accounts())
    svc = await upstreams("svc", handler=accounts(svc_currency))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, svc2=free_port())  # nothing listens on svc2
    return await proxy_process(text), text


async def test_target_changed_by_reload_holds_on_new_evidence_never_promotes(
        upstreams, proxy_process):
    proxy, text = await start(upstreams, proxy_process)
    await send(proxy.url, 600)
    code, body, err = await cli(proxy, "gate", "balance")
    assert (code, body["decision"], body["to_weight"]) == (0, "promote", 50.0), (body, err)
    step = body["step"]

    # The target moves to an upstream where nothing listens; the file watcher reloads.
    proxy.config.write_text(text.replace("target: svc\n", "target: svc2\n"))
    view = await wait_for(_target_is(proxy, "svc2"), timeout=15, interval=0.2)
    assert view["step"]["id"] != step
    assert view["evidence_since"]["reason"].startswith("target changed (svc http://127.0.0.1:")
    assert "-> svc2 http://127.0.0.1:" in view["evidence_since"]["reason"]
    assert view["stats"]["step"]["target"]["requests"] == 0  # the old target's are not here

    for command in ("gate", "promote"):
        code, body, err = await cli(proxy, command, "balance")
        assert (code, body["decision"]) == (4, "hold"), (command, body, err)
        assert body["reasons"][0].startswith("Evidence since ")
        assert "target changed (svc http://" in body["reasons"][0]
        assert body["evidence"]["target"]["requests"] == 0
    assert (await route_view(proxy))["weight"] == 25  # never promoted on the old evidence

    # The reload is audited with the file's hash and what changed.
    code, history, _ = await cli(proxy, "history")
    reload = next(e for e in history["entries"] if e["action"] == "reload")
    ev = reload["evidence"]
    assert ev["config_hash"]["from"] != ev["config_hash"]["to"]
    assert ev["routes_changed"] == ["balance"]
    assert "routes.balance.target: 'svc' -> 'svc2'" in ev["changes"]
    assert ev["summary"] == "route balance: target"
    assert ev["new_steps"]["balance"].startswith("target changed")
    code, out, _ = await run_cli("history", "--admin", proxy.admin)
    assert "file change: route balance: target" in out


def _target_is(proxy, name: str):
    async def check() -> dict | None:
        view = await route_view(proxy)
        return view if view["target"] == name else None
    return check


async def test_new_compare_rules_start_new_evidence(upstreams, proxy_process):
    proxy, text = await start(upstreams, proxy_process, svc_currency="USD")
    await send(proxy.url, 300)
    code, body, _ = await cli(proxy, "gate", "balance")
    assert (code, body["decision"]) == (1, "fail")  # every comparison differs on $.currency
    assert not (await route_view(proxy))["state"] == "rolled_back"  # gate changes nothing

    proxy.config.write_text(text.replace("compare: {ignore: []}",
                                         'compare: {ignore: ["$.currency"]}'))
    view = await wait_for(_reason_has(proxy, "compare rules changed (ignore)"), timeout=15,
                          interval=0.2)
    assert view["stats"]["step"]["shadow"]["compared"] == 0
    await send(proxy.url, 600)
    code, body, err = await cli(proxy, "gate", "balance")
    assert (code, body["decision"]) == (0, "promote"), (body, err)
    assert body["evidence"]["shadow"]["mismatched"] == 0  # no blend of before and after


def _reason_has(proxy, text: str):
    async def check() -> dict | None:
        view = await route_view(proxy)
        return view if text in view["evidence_since"]["reason"] else None
    return check


async def test_a_restart_starts_new_evidence_and_every_view_agrees(upstreams, proxy_process):
    proxy, _ = await start(upstreams, proxy_process)
    await send(proxy.url, 200)
    before = (await route_view(proxy))["step"]["id"]
    assert await proxy.stop() == 0
    await proxy.start()
    view = await route_view(proxy)
    assert view["step"]["id"] > before and view["evidence_since"]["reason"] == "restart"
    await send(proxy.url, 100)
    view = await route_view(proxy)
    _, gate, _ = await cli(proxy, "gate", "balance")
    _, diffs, _ = await cli(proxy, "diffs", "balance")
    step = view["stats"]["step"]
    assert gate["step"] == view["step"]["id"]
    assert gate["evidence"]["target"]["requests"] == step["target"]["requests"]
    assert gate["evidence"]["legacy"]["requests"] == step["legacy"]["requests"]
    assert gate["evidence"]["shadow"]["compared"] == step["shadow"]["compared"]
    assert step["legacy"]["requests"] + step["target"]["requests"] == 100  # none from before
    assert diffs["shadow_errors"]["step"]["errors"] == step["shadow"]["errors"] == 0
    _code, status, _ = await run_cli("status", "--admin", proxy.admin)
    assert "balance: evidence since " in status and "(restart)" in status


async def test_reset_evidence_starts_afresh_and_is_audited(upstreams, proxy_process):
    proxy, _ = await start(upstreams, proxy_process)
    await send(proxy.url, 200)
    old = (await route_view(proxy))["step"]
    code, out, err = await run_cli("reset-evidence", "balance", "--reason", "fixed in 1.4.3",
                                   "--admin", proxy.admin, "--actor", "dana")
    assert code == 0, err
    assert "evidence reset" in out
    view = await route_view(proxy)
    assert view["step"]["id"] > old["id"] and view["weight"] == 25
    assert view["evidence_since"]["reason"] == "reset-evidence by dana (no token): fixed in 1.4.3"
    assert view["stats"]["step"]["legacy"]["requests"] == 0
    code, history, _ = await cli(proxy, "history", "balance")
    entry = history["entries"][0]
    assert (entry["action"], entry["reason"]) == ("reset_evidence", "fixed in 1.4.3")
    assert entry["evidence"]["previous_step"]["step"] == old["id"]

    # Bad input: a rolled-back route has nothing to reset; refused, nothing changes.
    code, _, err = await run_cli("rollback", "balance", "--reason", "x", "--admin", proxy.admin)
    assert code == 0, err
    step = (await route_view(proxy))["step"]["id"]
    code, out, err = await run_cli("reset-evidence", "balance", "--reason", "again",
                                   "--admin", proxy.admin)
    assert code == 1 and "is rolled back" in err and "resume" in err
    assert (await route_view(proxy))["step"]["id"] == step
    code, out, err = await run_cli("reset-evidence", "balance", "--admin", proxy.admin)
    assert code == 2 and "--reason" in err  # the reason is required
    code, out, _ = await run_cli("history", "--verify", "--admin", proxy.admin)
    assert code == 0 and "chain intact" in out
