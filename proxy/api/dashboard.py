"""The dashboard (contract §4 `GET /`): a static page served from the package, and the one
thing the JSON API lacks for it, recent traffic per route as a time series.

- `/` and `/static/*` are open (they hold no data); every number comes from `/admin/...` with the
  bearer token the page keeps in sessionStorage. Files are read once at start (the package ships
  them flat in `proxy/api/static/`) and revalidated by ETag; the page runs under a strict CSP.
- `GET /admin/routes/{name}/series?since=T` (token needed, like every `/admin` path): points of
  about one second each for the last ten minutes, per backend requests, errors and p99, plus
  shadow comparisons. The aggregator's totals are sampled when a merge touches a route, at most
  once a second, so an idle route costs nothing and the page shows history as soon as it opens.
- `GET /admin/routes/{name}/reconcile` and `GET /admin/reconcile` (all routes): the newest
  `strangler reconcile` run, read from its tables in state_dir/diffs.sqlite3 (`latest` null, or
  the route absent, before the first run).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.control.aggregate import Aggregator, RouteWindow
from shadow.reconcile_store import latest_runs
from shadow.sqldb import locator
from shadow.stats import LATENCY, quantile

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SERIES_INTERVAL = 1.0  # seconds between points of one route
SERIES_KEEP = 600  # points per route: ten minutes at one a second


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file directly in `directory`, by name (the package keeps them flat)."""
    assets = {}
    for path in sorted(directory.iterdir()):
        ctype = CONTENT_TYPES.get(path.suffix)
        if not path.is_file() or ctype is None:
            continue
        body = path.read_bytes()
        assets[path.name] = Asset(body, ctype, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff"}
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


# -- traffic series --------------------------------------------------------------------------
Snapshot = tuple[int, int, list[int], int, int, list[int], int, int]


def _snapshot(w: RouteWindow) -> Snapshot:
    return (w.legacy.requests, w.legacy.errors, list(w.legacy.latency),
            w.target.requests, w.target.errors, list(w.target.latency),
            w.compared, w.mismatched)


def _p99_ms(now: list[int], before: list[int]) -> float | None:
    q = quantile(LATENCY, [a - b for a, b in zip(now, before, strict=True)], 0.99)
    return None if q is None else round(q * 1000, 3)


class TrafficSeries:
    """Per-route points of recent traffic, fed by `Aggregator.listeners` (control plane only)."""

    def __init__(self, agg: Aggregator, interval: float = SERIES_INTERVAL,
                 keep: int = SERIES_KEEP, clock: Callable[[], float] = time.time) -> None:
        self.agg = agg
        self.interval = interval
        self.keep = keep
        self.clock = clock
        self.points: dict[str, deque[dict]] = {}
        self._last: dict[str, tuple[float, Snapshot]] = {}
        now = clock()
        for route, w in agg.totals.items():  # what came before the page existed is the baseline
            self._last[route] = (now, _snapshot(w))

    def on_merge(self, routes: set[str]) -> None:
        now = self.clock()
        for route in routes:
            last = self._last.get(route)
            if last is not None and now - last[0] < self.interval:
                continue
            w = self.agg.totals.get(route)
            if w is None:
                continue
            snap = _snapshot(w)
            if last is None:  # first traffic of a route: it started from nothing
                zero = [0] * len(w.legacy.latency)
                last = (now - self.interval, (0, 0, zero, 0, 0, zero, 0, 0))
            t0, old = last
            self._last[route] = (now, snap)
            point = {
                "t": round(now, 3),
                "dt": round(now - t0, 3),
                "legacy": {"requests": snap[0] - old[0], "errors": snap[1] - old[1],
                           "p99_ms": _p99_ms(snap[2], old[2])},
                "target": {"requests": snap[3] - old[3], "errors": snap[4] - old[4],
                           "p99_ms": _p99_ms(snap[5], old[5])},
                "shadow": {"compared": snap[6] - old[6], "mismatched": snap[7] - old[7]},
            }
            dq = self.points.get(route)
            if dq is None:
                dq = self.points[route] = deque(maxlen=self.keep)
            dq.append(point)

    def view(self, route: str, since: float = 0.0) -> dict:
        pts = [p for p in self.points.get(route, ()) if p["t"] > since]
        return {"route": route, "interval": self.interval, "now": round(self.clock(), 3),
                "points": pts}


# -- registration ----------------------------------------------------------------------------
SERIES_KEY = web.AppKey("dashboard_series", TrafficSeries)


def register(app: web.Application, server: Any) -> None:
    """Add `/`, `/static/{name}`, `/favicon.ico` and the series endpoint to the admin app."""
    assets = load_assets()
    series = TrafficSeries(server.runtime.agg)
    server.runtime.agg.listeners.append(series.on_merge)
    app[SERIES_KEY] = series

    async def index(request: web.Request) -> web.Response:
        return _serve(request, assets["index.html"])

    async def static(request: web.Request) -> web.Response:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            return web.json_response({"error": "not found", "detail": {"path": request.path}},
                                     status=404)
        return _serve(request, asset)

    async def favicon(request: web.Request) -> web.Response:
        return _serve(request, assets["favicon.svg"])

    async def route_series(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        server.runtime.spec(name)  # 404 for an unknown route, like the other route endpoints
        try:
            since = float(request.query.get("since") or 0)
        except ValueError:
            return web.json_response({"error": "since must be a number (epoch seconds)",
                                      "detail": {"field": "since"}}, status=400)
        return web.json_response(series.view(name, since))

    def store_path() -> Path | str | dict:
        return locator(server.runtime.config)

    async def route_reconcile(request: web.Request) -> web.Response:
        """The route's newest `strangler reconcile` run (null before the first)."""
        name = request.match_info["name"]
        server.runtime.spec(name)
        runs = await asyncio.to_thread(latest_runs, store_path(), name)
        return web.json_response({"route": name, "latest": runs.get(name)})

    async def all_reconcile(request: web.Request) -> web.Response:
        runs = await asyncio.to_thread(latest_runs, store_path(), None, 5, 0)
        return web.json_response({"routes": runs})

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/admin/routes/{name}/series", route_series)
    app.router.add_get("/admin/routes/{name}/reconcile", route_reconcile)
    app.router.add_get("/admin/reconcile", all_reconcile)


__all__ = ["CSP", "STATIC_DIR", "TrafficSeries", "load_assets", "register"]
