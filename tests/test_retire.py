"""`strangler retire-check ROUTE` against a real `strangler serve` whose state_dir holds weeks of
history: a hash-chained audit log written with past clocks and inventory rollups recorded the way
serve records them, with the clock moved back. It passes for the right reasons (QA pins to legacy
aside) and fails with each unmet condition in words: a rollback inside the window, a recent
weight change, legacy traffic (a live fallback, through two workers), reverse shadow differences,
a reconcile run with differences, records that do not cover the window."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp import web

from proxy.config.spec import InventorySpec
from proxy.control import audit as audit_module
from proxy.control.audit import AuditLog
from proxy.control.rollup_sqlite import SqliteRollupStore
from proxy.control.rollups import DAY, HOUR, Rollups
from proxy.control.state import RouteRuntime, RuntimeState, StateStore
from proxy.dataplane.inventory import latency_index
from shadow.reconcile import RunResult
from shadow.reconcile_store import ReconcileStore
from tests.support import TWO_UPSTREAMS, ProxyProcess, free_port, routes_yaml, run_cli

pytestmark = pytest.mark.slow

ROUTES = TWO_UPSTREAMS + """
    overrides:
      trusted: {{cidrs: [127.0.0.1/32]}}
    routes:
      - name: cart
        match: {{path_prefix: /cart}}
        legacy: monolith
        target: svc
        weight: 100
        override: true
        shadow: false
      - name: search
        match: {{path_prefix: /search}}
        legacy: monolith
        target: svc
        weight: 100
        shadow: {{reverse: true, sample: 1.0, max_rate: unlimited}}
"""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@contextmanager
def _at(t: float):
    """The audit log's clock at `t` (it reads time.time and time.gmtime)."""
    real_gmtime = time.gmtime
    with mock.patch.object(audit_module.time, "time", lambda: t), \
            mock.patch.object(audit_module.time, "gmtime",
                              lambda *a: real_gmtime(a[0] if a else t)):
        yield


def history(state: Path, *, now: float, audit: list[tuple[float, dict]],
            legacy_days: tuple[int, ...] = (), started_days: int = 30) -> None:
    """Past audit entries (days ago, entry) and 20 days of cart/search traffic on target (plus
    legacy traffic of cart `legacy_days` ago), recorded as serve records them."""
    state.mkdir(parents=True, exist_ok=True)
    # the runtime state the audit log led to (serve rolls everything back without it)
    StateStore(state).save(RuntimeState(
        routes={name: RouteRuntime(weight=100.0, step=2, step_started=now - 25 * DAY)
                for name in ("cart", "search")},
        file_weights={"cart": 100.0, "search": 100.0}))
    log = AuditLog(state / "audit.log")
    for days_ago, entry in audit:
        with _at(now - days_ago * DAY):
            log.append(**entry)
    clock = Clock(now - started_days * DAY)
    r = Rollups(SqliteRollupStore(state / "inventory.sqlite3"), InventorySpec(), clock=clock)
    for d in range(20, 0, -1):
        clock.t = now - d * DAY
        rows = [["GET", "/cart/{id}", "cart", "target", 500, 0, [[latency_index(0.003), 500]]],
                ["GET", "/search", "search", "target", 200, 0, [[latency_index(0.01), 200]]]]
        if d in legacy_days:
            rows.append(["GET", "/cart/{id}", "cart", "legacy", 3, 0, [[latency_index(0.004),
                                                                         3]]])
        r.add(rows)
        r.flush_now()
    r.store.close()


PROMOTED = [(25, {"action": "set_weight", "actor": "alice", "reason": "ramp", "route": "cart",
                  "before": 50.0, "after": 100.0}),
            (25, {"action": "set_weight", "actor": "alice", "reason": "ramp", "route": "search",
                  "before": 50.0, "after": 100.0})]


async def _serve(tmp_path: Path, mono, svc, name: str, args: tuple[str, ...] = (),
                 prepare=None) -> ProxyProcess:
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port)
    p = ProxyProcess(tmp_path / name, text, args=args)
    if prepare is not None:
        prepare(p.dir / "state")
    return await p.start()


async def _check(p: ProxyProcess, route: str, *more: str) -> tuple[int, dict, str]:
    code, out, err = await run_cli("retire-check", route, "--json", *more, "--admin", p.admin)
    assert code in (0, 1), err
    _, text, _ = await run_cli("retire-check", route, *more, "--admin", p.admin)
    return code, json.loads(out), text


def _failed(result: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in result["conditions"] if not c["ok"]}


async def _get(url: str, n: int, headers: dict | None = None) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"{url}/{i}", headers=headers) as r:
                await r.read()


async def test_ready_after_weeks_at_full_weight_qa_pins_aside(upstreams, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    now = time.time()
    p = await _serve(tmp_path, mono, svc, "ready",
                     prepare=lambda s: history(s, now=now, audit=PROMOTED))
    try:
        await _get(p.url + "/cart", 20)
        await _get(p.url + "/cart", 5, {"X-Strangler-Backend": "legacy"})  # QA pins
        assert mono.count() == 5
        code, result, text = await _check(p, "cart")
        assert code == 0, result
        assert result["ready"] and result["unmet"] == []
        assert [c["name"] for c in result["conditions"]] == [
            "weight", "held", "rollback", "legacy_traffic"]
        assert "legacy served no live request of this route in the window (7020 on the new " \
            "service; QA pins aside)" in text
        assert text.startswith("cart: READY to retire (last 14 days)")
        # the dashboard's list has it too
        async with aiohttp.ClientSession() as s:
            async with s.get(p.admin + "/admin/retire-check") as r:
                listed = {x["route"]: x["ready"] for x in (await r.json())["routes"]}
        assert listed["cart"] is True
        # the decision, recorded with the check as its evidence
        code, out, err = await run_cli("retire", "cart", "--reason", "legacy cart code removed "
                                       "in PR 4512", "--actor", "alice", "--admin", p.admin)
        assert code == 0, err
        assert "cart: retired: recorded in the audit log of" in out
        code, out, _ = await run_cli("history", "cart", "--json", "--admin", p.admin)
        entry = json.loads(out)["entries"][0]
        assert (entry["action"], entry["actor"], entry["forced"]) == ("retired", "alice (no token)",
                                                                  False)
        assert entry["reason"] == "legacy cart code removed in PR 4512"
        assert entry["evidence"]["check"]["ready"] is True
        async with aiohttp.ClientSession() as s:
            async with s.get(p.admin + "/admin/retire-check") as r:
                marks = {x["route"]: x["retired"] for x in (await r.json())["routes"]}
        assert marks["cart"]["actor"] == "alice (no token)" and marks["search"] is None
    finally:
        await p.stop()


async def test_a_rollback_inside_the_window_fails_it(upstreams, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    now = time.time()
    audit = [*PROMOTED,
             (3, {"action": "rollback", "actor": "system", "reason": "target errors 31%",
                  "route": "cart", "before": 100.0, "after": 0.0, "trigger": "auto"}),
             (2.9, {"action": "resume", "actor": "bob", "reason": "fixed", "route": "cart",
                    "before": "rolled_back", "after": "active"}),
             (2.8, {"action": "set_weight", "actor": "bob", "reason": "back", "route": "cart",
                    "before": 0.0, "after": 100.0})]
    p = await _serve(tmp_path, mono, svc, "rollback",
                     prepare=lambda s: history(s, now=now, audit=audit))
    try:
        code, result, text = await _check(p, "cart")
        assert code == 1 and not result["ready"]
        failed = _failed(result)
        assert set(failed) == {"held", "rollback"}
        assert failed["rollback"].startswith("1 rollback(s) in the window, the last at ")
        assert failed["rollback"].endswith("(auto: target errors 31%)")
        assert failed["held"].startswith("at its current weight only since ")
        assert "(set_weight by bob); the window needs 14 days" in failed["held"]
        assert "FAIL rollback: 1 rollback(s) in the window" in text
        # a window that starts after the rollback is clean again
        code, result, _ = await _check(p, "cart", "--days", "2")
        assert code == 0, result
        # not ready: nothing is recorded, unless forced (and then marked so, with the reasons)
        code, out, _ = await run_cli("retire", "cart", "--reason", "x", "--admin", p.admin)
        assert code == 1 and "not recorded (fix what is unmet, or --force)" in out
        code, out, _ = await run_cli("history", "cart", "--json", "--admin", p.admin)
        assert "retired" not in {e["action"] for e in json.loads(out)["entries"]}
        code, out, err = await run_cli("retire", "cart", "--reason", "the outage was the "
                                       "network", "--force", "--json", "--admin", p.admin)
        assert code == 0, err
        forced = json.loads(out)
        assert forced["forced"] is True and forced["audit"]["forced"] is True
        assert forced["audit"]["evidence"]["check"]["unmet"][0].startswith("at its current")
    finally:
        await p.stop()


async def test_legacy_traffic_fails_it_recorded_or_live(upstreams, tmp_path: Path) -> None:
    mono = await upstreams("monolith")
    svc = await upstreams("svc", status=503)  # the new service is failing: legacy answers
    now = time.time()
    p = await _serve(tmp_path, mono, svc, "legacy", args=("--workers", "2"),
                     prepare=lambda s: history(s, now=now, audit=PROMOTED, legacy_days=(6,)))
    try:
        code, result, _ = await _check(p, "cart")
        assert code == 1
        assert _failed(result)["legacy_traffic"].startswith(
            "legacy served 3 live request(s) of this route in the window (fallbacks included)")
        assert "search" not in json.dumps(_failed(result))
        code, result, _ = await _check(p, "cart", "--days", "5")
        assert code == 0, result  # day 6 is outside a 5-day window
        await _get(p.url + "/cart", 8)  # through both workers: every one falls back to legacy
        assert mono.count() == 8
        code, result, _ = await _check(p, "cart", "--days", "5")
        assert code == 1
        assert _failed(result)["legacy_traffic"].startswith("legacy served 8 live request(s)")
    finally:
        await p.stop()


async def test_reverse_shadow_and_reconcile_must_be_clean(upstreams, tmp_path: Path) -> None:
    async def drifting(request: web.Request) -> web.Response:
        return web.json_response({"hits": 7 if request.path.endswith("/2") else 1})

    mono = await upstreams("monolith", handler=drifting)
    svc = await upstreams("svc", handler=lambda r: _json({"hits": 1}))
    now = time.time()

    def prepare(state: Path) -> None:
        history(state, now=now, audit=PROMOTED)
        with ReconcileStore(state / "diffs.sqlite3") as store:
            run = store.begin("cart", "store", now - 2 * DAY)
            store.finish(run, RunResult("cart", "store", now - 2 * DAY, now - 2 * DAY + 60,
                                        100, 100, 4, 0, {}, 0, (("$.total", "changed", 4),), ()))

    p = await _serve(tmp_path, mono, svc, "shadow", prepare=prepare)
    try:
        code, result, _ = await _check(p, "search")
        assert code == 1
        assert _failed(result) == {"reverse_shadow": "reverse shadow compared nothing in the "
                                                     "window"}
        await _get(p.url + "/search", 2)  # /search/0 equal, /search/1 equal
        await _wait_compared(p, "search", 2)
        code, result, _ = await _check(p, "search")
        assert code == 0, result
        assert {c["name"]: c["detail"] for c in result["conditions"]}["reverse_shadow"] == \
            "reverse shadow: 2 comparisons, all equal"
        await _get(p.url + "/search", 3)  # /search/2 differs
        await _wait_compared(p, "search", 5)
        code, result, _ = await _check(p, "search")
        assert code == 1
        assert _failed(result) == {"reverse_shadow": "reverse shadow: 1 of 5 comparisons "
                                                     "differed"}

        code, result, _ = await _check(p, "cart")
        assert code == 1
        assert _failed(result)["reconcile"].endswith(
            "found 4 difference(s) and 0 error(s) in 100 compared")
    finally:
        await p.stop()


async def test_records_that_do_not_cover_the_window_fail_it(upstreams, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    p = await _serve(tmp_path, mono, svc, "fresh")
    try:
        await _get(p.url + "/cart", 3)
        code, result, text = await _check(p, "cart")
        assert code == 1
        failed = _failed(result)
        assert set(failed) == {"held", "legacy_traffic"}
        assert failed["legacy_traffic"].startswith("the inventory's records begin at ")
        assert failed["legacy_traffic"].endswith("they cannot cover 14 days")
        assert text.startswith("cart: NOT ready to retire")
        code, _, err = await run_cli("retire-check", "nope", "--admin", p.admin)
        assert code == 2 and "unknown route 'nope'" in err
        code, _, err = await run_cli("retire-check", "cart", "--days", "0", "--admin", p.admin)
        assert code == 2 and "--days must be more than 0" in err
    finally:
        await p.stop()


def _json(body: dict):
    async def answer() -> web.Response:
        return web.json_response(body)
    return answer()


async def _wait_compared(p: ProxyProcess, route: str, n: int) -> None:
    from tests.support import wait_for

    async def done() -> bool:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{p.admin}/admin/routes/{route}") as r:
                return (await r.json())["stats"]["total"]["shadow"]["compared"] >= n

    await wait_for(done, timeout=20)


# the history helper also serves bench/inventory.py's simulated months
__all__ = ["HOUR", "history"]
