"""The migration's admin endpoints (contract §4) and metrics, over the inventory's rollups
(proxy.control.rollups, proxy.control.migration):

- `GET /admin/inventory?since=7d[&unrouted=1][&limit=N][&raw=1]`: endpoints by traffic, progress
  over the window, declared endpoints without traffic; `raw=1` adds the mergeable counts (the
  CLI merges several replicas' from it).
- `GET /admin/progress[?days=30]`: share of requests and endpoints on new services over the
  last 24 h and per UTC day.
- `GET /admin/retire-check[?days=14]` (every route) and `GET /admin/routes/{name}/retire-check`;
  `POST /admin/routes/{name}/retire` (admin.py) records the decision (`retire`).
- `strangler_migration_progress_ratio{of}` and `strangler_migration_endpoints{state}`: the last
  24 h, refreshed every PROGRESS_REFRESH seconds (a scrape never reads the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from proxy.control import migration
from proxy.control.results import RuntimeError_
from proxy.control.rollups import DAY

PROGRESS_REFRESH = 30.0
MAX_DAYS = 3650
PROGRESS_KEY = web.AppKey("migration_progress", dict)


def _bad(message: str, field: str) -> web.Response:
    return web.json_response({"error": message, "detail": {"field": field}}, status=400)


def _days(request: web.Request, default: float) -> float:
    raw = request.query.get("days")
    if raw in (None, ""):
        return default
    try:
        days = float(raw)
    except ValueError:
        raise _Refused(_bad("days must be a number of days, e.g. 14", "days")) from None
    if not 0 < days <= MAX_DAYS:
        raise _Refused(_bad(f"days must be more than 0 and at most {MAX_DAYS}", "days"))
    return days


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__()
        self.response = response


def routes_info(rt: Any) -> dict[str, dict]:
    return {r.name: {"weight": rt.effective(r.name),
                     "state": "rolled_back" if rt.rolled_back(r.name) else "active"}
            for r in rt.config.routes}


async def raw_inventory(server: Any, since_s: float) -> dict:
    rt = server.runtime
    traffic = await server.rollups.read(time.time() - since_s)
    raw = migration.raw_from(traffic, routes_info(rt), rt.config.inventory.declared)
    raw["enabled"] = rt.config.inventory.enabled
    return raw


async def retire_checks(server: Any, names: list[str], days: float) -> list[dict]:
    """The retirement check of each route in `names` (one read of the log and the store)."""
    from shadow.reconcile_store import latest_runs

    rt = server.runtime
    now = time.time()
    audit = await asyncio.to_thread(rt.audit.entries)
    runs = await asyncio.to_thread(latest_runs, rt.config.state_dir / "diffs.sqlite3", None, 0, 0)
    enabled = rt.config.inventory.enabled
    traffic = await server.rollups.read(now - days * DAY) if enabled else None
    out = []
    for name in names:
        spec = rt.spec(name)
        check = migration.retire_check(
            name, days, now=now, weight=rt.effective(name),
            state="rolled_back" if rt.rolled_back(name) else "active", audit=audit,
            traffic=traffic, reverse_shadow=spec.shadow.enabled and spec.shadow.reverse
            and spec.shadow.sample > 0, reconcile=runs.get(name))
        check["retired"] = _retired(audit, name)
        out.append(check)
    return out


async def retire(server: Any, name: str, actor: str, reason: str, force: bool,
                 days: float) -> dict:
    """Record (audit action `retired`) that `name`'s legacy side can be deleted: refused (409,
    with every unmet condition) unless its retirement check passes, or `force`."""
    if server.rollups is None:
        raise RuntimeError_(409, "the traffic inventory is not running", {"route": name})
    (check,) = await retire_checks(server, [name], days)
    if not check["ready"] and not force:
        raise RuntimeError_(409, f"route '{name}' is not ready to retire: "
                            + "; ".join(check["unmet"]), {"route": name, "check": check})
    rt = server.runtime
    weight = rt.effective(name)
    try:
        entry = await asyncio.to_thread(
            rt.audit.append, action="retired", actor=actor, route=name, reason=reason,
            before=weight, after=weight, forced=force and not check["ready"],
            evidence={"check": check})
    except OSError as exc:
        raise RuntimeError_(503, f"not recorded: the audit log refused the entry ({exc})",
                            {"route": name}) from exc
    return {"route": name, "retired": True, "forced": force and not check["ready"],
            "check": check, "audit": entry}


def _retired(audit: list[dict], name: str) -> dict | None:
    for e in audit:  # newest first
        if e.get("action") == "retired" and e.get("route") == name:
            return {"time": e.get("time"), "actor": e.get("actor"), "reason": e.get("reason"),
                    "forced": bool(e.get("forced")), "seq": e.get("seq")}
    return None


def register(app: web.Application, server: Any, registry: Any) -> None:
    """Add the endpoints to the admin app, and the progress gauges to its metrics registry."""
    cache: dict[str, Any] = {"progress": None, "at": 0.0}
    app[PROGRESS_KEY] = cache
    registry.register(MigrationCollector(cache))

    def guarded(handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            if server.rollups is None:
                return web.json_response({"error": "the traffic inventory is not running",
                                          "detail": None}, status=409)
            try:
                return await handler(request)
            except _Refused as exc:
                return exc.response
        return run

    async def inventory(request: web.Request) -> web.Response:
        try:
            since = migration.parse_since(request.query.get("since") or "7d")
        except ValueError as exc:
            return _bad(str(exc), "since")
        limit_raw = request.query.get("limit")
        limit = None
        if limit_raw:
            if not limit_raw.isdigit() or int(limit_raw) < 1:
                return _bad("limit must be a whole number of at least 1", "limit")
            limit = min(int(limit_raw), 100_000)
        raw = await raw_inventory(server, since)
        unrouted = request.query.get("unrouted") in ("1", "true")
        view = migration.inventory_view(raw, unrouted=unrouted, limit=limit)
        view["enabled"] = raw["enabled"]
        view["grain"] = raw["grain"]
        if request.query.get("raw") in ("1", "true"):
            view["raw"] = raw
        return web.json_response(view)

    async def progress(request: web.Request) -> web.Response:
        days = _days(request, 30)
        now = time.time()
        last = await server.rollups.read(now - DAY)
        series = await server.rollups.read(now - days * DAY)
        body = {"enabled": server.runtime.config.inventory.enabled, "days": days,
                "last_24h": migration.progress(last.totals()),
                "daily": migration.daily(series), "first": series.first}
        cache.update(progress=body["last_24h"], at=now)
        return web.json_response(body)

    async def retire_check_all(request: web.Request) -> web.Response:
        days = _days(request, 14)
        names = [r.name for r in server.runtime.config.routes]
        return web.json_response({"days": days, "routes": await retire_checks(server, names,
                                                                              days)})

    async def retire_check_one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        server.runtime.spec(name)  # 404 for an unknown route
        days = _days(request, 14)
        (result,) = await retire_checks(server, [name], days)
        return web.json_response(result)

    async def refresh(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):
                    if server.rollups is not None:
                        t = await server.rollups.read(time.time() - DAY)
                        cache.update(progress=migration.progress(t.totals()), at=time.time())
                await asyncio.sleep(PROGRESS_REFRESH)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(refresh)
    app.router.add_get("/admin/inventory", guarded(inventory))
    app.router.add_get("/admin/progress", guarded(progress))
    app.router.add_get("/admin/retire-check", guarded(retire_check_all))
    app.router.add_get("/admin/routes/{name}/retire-check", guarded(retire_check_one))


class MigrationCollector:
    """The last 24 h's progress as gauges (this replica: for several, `sum()` the request
    counters instead, or merge with `strangler inventory --replica`)."""

    def __init__(self, cache: dict[str, Any]) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        p = self.cache.get("progress")
        ratio = GaugeMetricFamily(
            "strangler_migration_progress_ratio",
            "Share served by new services over the last 24 h, of requests or of endpoints",
            labels=["of"])
        eps = GaugeMetricFamily(
            "strangler_migration_endpoints",
            "Endpoints with traffic in the last 24 h, by where they are served (migrated: at "
            "least 99% on new services)", labels=["state"])
        if p is not None:
            for of in ("requests", "endpoints"):
                share = p[of]["share"]
                ratio.add_metric([of], share if share is not None else 0.0)
            e = p["endpoints"]
            eps.add_metric(["migrated"], e["migrated"])
            eps.add_metric(["partly"], e["partly"])
            eps.add_metric(["legacy"], e["total"] - e["migrated"] - e["partly"])
        yield ratio
        yield eps
