"""`GET /admin/routes/{name}/diffs`: the route's shadow differences, for one evidence window.

By default the window is the route's current evidence under the route's current compare rules,
nothing recorded before the last change of either:
- with the local store (one replica): the route's current step, the step id the gate judges,
  which the data plane tags every mirrored request with: what the gate counts;
- with the shared store (`store.backend: postgres`): every replica's comparisons since this
  replica's current step began (`fleet`: the windows keyed at or after its step id, whatever
  replica recorded them; shadow.store "Fleet windows"), the time window the gate's Prometheus
  mode counts the fleet's evidence over.
`all=1` answers with the totals of every window the store still has; there, a row that the
current `ignore` rules cover is marked `ignored` (listed after the live ones), never shown as a
live difference.

Every restart starts a new step (proxy.control.steps), so after one `status`, `gate` and the
default view all count from zero together; `all=1` still shows what came before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from shadow.diff import Comparator, rules_id

__all__ = ["diffs_view", "no_store_view"]

MAX_SAMPLES = 50


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes", "on")


def _window(rt: Any, name: str, all_time: bool) -> dict[str, Any]:
    spec = rt.spec(name)
    if all_time:
        return {"step": None, "rules": None, "fleet": rt.config.store.shared}
    route = rt.state.route(name)
    return {"step": route.step, "rules": rules_id(spec.shadow.compare),
            "step_started": route.step_started, "fleet": rt.config.store.shared}


def no_store_view(rt: Any, request: web.Request, name: str) -> dict[str, Any]:
    all_time = _flag(request, "all")
    window = _window(rt, name, all_time)
    return {"route": name, "window": {**window, "all": all_time, "first": None, "last": None},
            "compared": 0, "mismatched": 0, "errors": 0, "fields": [], "fields_total": 0,
            "samples": [], "note": "no diff store: shadowing is not running"}


async def diffs_view(server: Any, rt: Any, request: web.Request, name: str,
                     limit: int) -> dict[str, Any]:
    """The summary the API returns (store summary plus the window it is for)."""
    spec = rt.spec(name)
    all_time = _flag(request, "all")
    store = server.diff_store
    window = _window(rt, name, all_time)
    compare = spec.shadow.compare
    # With a second legacy copy, noise was measured and removed before recording.
    heuristic = compare.noise_upstream is None
    # Counts and samples are read from disk: let what the comparer has land first (bounded
    # wait; with --workers N the workers' comparers write within 0.2 s on their own).
    shadow = getattr(server, "shadow", None)
    if shadow is not None:
        await shadow.flush(2.0)
    comparator = Comparator(compare)
    summary = await asyncio.to_thread(
        store.summary, name, limit, window["step"], min(limit, MAX_SAMPLES), None, heuristic,
        rules=window["rules"], ignored=comparator.ignores, fleet=window.get("fleet", False))
    summary["window"].update(window)
    return summary
