"""Admin API (aiohttp) — minimal bootstrap version: health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.metrics import StranglerCollector, make_registry, render


def build_admin_app(server: Any) -> web.Application:
    rt = server.runtime
    registry = make_registry(
        StranglerCollector(rt.agg, rt.weights_for_metrics, lambda: rt.counters)
    )
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if server.ready:
            return web.json_response({"status": "ready", "generation": rt.generation})
        return web.json_response({"status": "starting"}, status=503)

    async def metrics(request: web.Request) -> web.Response:
        server.flush()
        return web.Response(body=render(registry), content_type="text/plain")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
