"""Admin API (contract §4): JSON over HTTP on `admin.listen`.

- `/healthz`, `/readyz`, `/metrics`, and the dashboard's HTML shell are open; everything under
  `/admin/` needs a bearer token when one is configured (`proxy.api.auth`): any token reads,
  only the admin token changes anything.
- Every refusal is `{"error": "...", "detail": ...}` with 400, 401, 403, 404, 405 or 409.
- Mutations need a `reason`; they answer with the route object after the change, the audit entry,
  `durable`, and a loud `warning` when the change holds in memory only.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from proxy.api import browser_guard
from proxy.api.auth import ACTOR_HEADER, AuthError, Caller, Tokens, actor_name
from proxy.api.metrics import (
    ProcessesCollector,
    StranglerCollector,
    WorkersCollector,
    make_registry,
    render,
)
from proxy.config.loader import ConfigError
from proxy.control.runtime import MutationResult, RuntimeError_
from shadow.pg import StoreUnavailable

log = structlog.get_logger("strangler.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/dashboard/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_LIMIT = 10_000
EXPORT_FORMATS = ("hurl", "pytest", "jsonl")

CALLER_KEY = web.RequestKey("caller", Caller)


def tls_unverified(config: Any) -> list[str]:
    """Where TLS certificates are not checked (`verify: false`): upstream names, `gate`,
    `tracing`, `flags.unleash`."""
    out = [name for name, up in config.upstreams.items() if up.tls and not up.tls.verify]
    if config.gate.tls is not None and not config.gate.tls.verify:
        out.append("gate")
    if config.tracing is not None and config.tracing.tls is not None \
            and not config.tracing.tls.verify:
        out.append("tracing")
    unleash = config.flags.unleash
    if config.flags.backend == "unleash" and unleash is not None and unleash.tls is not None \
            and not unleash.tls.verify:
        out.append("flags.unleash")
    return out

# Method, path and Admin's handler of every endpoint, registered in this order (POST .../weight
# is for clients without PUT).
ROUTES = tuple(tuple(line.split()) for line in """
GET   /healthz                            healthz
GET   /readyz                             readyz
GET   /metrics                            metrics
GET   /admin/whoami                       whoami
GET   /admin/routes                       routes
GET   /admin/routes/{name}                route
PUT   /admin/routes/{name}/weight         set_weight
POST  /admin/routes/{name}/weight         set_weight
POST  /admin/routes/{name}/rollback       rollback_one
POST  /admin/rollback                     rollback_all
POST  /admin/routes/{name}/resume         resume
GET   /admin/routes/{name}/gate           gate
POST  /admin/routes/{name}/promote        promote
GET   /admin/routes/{name}/diffs          diffs
GET   /admin/routes/{name}/diffs/export   diffs_export
GET   /admin/history                      history
GET   /admin/history/verify               history_verify
POST  /admin/reload                       reload
GET   /admin/debug/tasks                  debug_tasks
POST  /admin/routes/{name}/approve        approve
POST  /admin/routes/{name}/reset-evidence reset_evidence
POST  /admin/routes/{name}/retire         retire
""".strip().splitlines())


class ApiError(RuntimeError_):
    """A 400-class answer from a handler (bad input); answered like a refused runtime action."""


def error_response(status: int, error: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def build_admin_app(server: Any, tokens: Tokens | None = None) -> web.Application:
    """The admin application of one `serve`; tokens default to routes.yaml's admin.tokens
    (secrets from the environment), else the two environment tokens. A reload takes the new
    admin.tokens; one that cannot be read keeps the tokens in force (logged)."""
    if tokens is None:
        tokens, problems = Tokens.from_config(server.runtime.config)
        for problem in problems:  # serve refuses to start on these; a test app logs them
            log.error("admin token unusable", problem=problem)
        server.runtime.on_reload.append(lambda config: _reload_tokens(tokens, config))

    def admin_settings() -> tuple[str, tuple[str, ...]]:
        admin = server.runtime.config.admin
        return admin.listen.host, admin.allowed_hosts

    guard = browser_guard.middleware(browser_guard.BrowserGuard(admin_settings), error_response)
    app = web.Application(middlewares=[_errors, guard, _auth_middleware(tokens)])
    admin = Admin(server)
    admin.register(app)
    from proxy.api import migration_view  # the inventory, progress and retirement

    migration_view.register(app, server, admin.registry)
    _register_dashboard(app, server)
    return app


# -- middlewares -------------------------------------------------------------------------------
@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RuntimeError_ as exc:  # ApiError too
        return error_response(exc.status, exc.error, exc.detail)
    except StoreUnavailable as exc:  # reads of the shared store (history, diffs)
        return error_response(503, f"the shared store is unavailable: {exc}",
                              {"path": request.path})
    except AuthError as exc:
        resp = error_response(exc.status, exc.error)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="strangler"'
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {"method": request.method, "path": request.path}
        if exc.status == 405:
            detail["allowed"] = sorted(getattr(exc, "allowed_methods", ()) or ())
        return error_response(exc.status, exc.reason.lower(), detail)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # never a bare traceback page; the log has the details
        log.exception("admin handler failed", path=request.path, method=request.method)
        return error_response(500, "internal error", {"type": type(exc).__name__})


def _auth_middleware(tokens: Tokens) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await handler(request)
        caller = tokens.authorize(request.headers.get("Authorization"),
                                  write=request.method not in READ_METHODS)
        request[CALLER_KEY] = caller
        return await handler(request)

    return auth


def _reload_tokens(tokens: Tokens, config: Any) -> None:
    fresh, problems = Tokens.from_config(config)
    if problems:
        log.error("admin tokens not reloaded: the tokens in force stay", problems=problems)
        return
    tokens.replace_with(fresh)


def _register_dashboard(app: web.Application, server: Any) -> None:
    try:
        from proxy.api import dashboard  # owned by the dashboard; optional
    except ImportError:
        dashboard = None
    if dashboard is not None and hasattr(dashboard, "register"):
        dashboard.register(app, server)
        return

    async def placeholder(request: web.Request) -> web.Response:
        return web.Response(text=PLACEHOLDER_HTML, content_type="text/html")

    app.router.add_get("/", placeholder)


PLACEHOLDER_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>strangler</title></head>
<body><h1>strangler</h1>
<p>The dashboard is not installed. The admin API is at <code>/admin/routes</code>;
metrics at <a href="/metrics">/metrics</a>.</p></body></html>
"""


# -- request helpers ---------------------------------------------------------------------------
async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise ApiError(400, "request body is not valid JSON", {"message": str(exc)}) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", None)
    return data


def _reason(body: dict, required: bool = True, default: str = "") -> str:
    reason = body.get("reason")
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        if required:
            raise ApiError(400, "a reason is required for every change: send "
                           '{"reason": "..."} (the CLI: --reason TEXT)', {"field": "reason"})
        return default
    if not isinstance(reason, str):
        raise ApiError(400, "reason must be a string", {"field": "reason"})
    return reason.strip()[:2000]


def _weight(body: dict) -> float:
    raw = body.get("weight")
    if isinstance(raw, bool) or raw is None:
        raise ApiError(400, 'weight is required: send {"weight": 25, "reason": "..."}',
                       {"field": "weight"})
    try:
        weight = float(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "weight must be a number of percent (0-100)",
                       {"field": "weight", "value": raw}) from None
    if not math.isfinite(weight):
        raise ApiError(400, "weight must be a finite number", {"field": "weight"})
    return weight


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number", {"field": name, "value": raw}) \
            from None
    if value < 1:
        raise ApiError(400, f"{name} must be at least 1", {"field": name, "value": value})
    return min(value, MAX_LIMIT)


def _caller(request: web.Request) -> Caller:
    caller = request.get(CALLER_KEY)
    # every /admin path goes through auth; this is belt and braces
    return caller if caller is not None else Caller("open", True)


def _actor(request: web.Request) -> str:
    return actor_name(_caller(request), request.headers.get(ACTOR_HEADER))


# -- the endpoints -----------------------------------------------------------------------------
class Admin:
    def __init__(self, server: Any) -> None:
        self.server = server
        rt = server.runtime
        self.registry = make_registry(
            StranglerCollector(rt.agg, rt.weights_for_metrics, lambda: rt.counters,
                               store=lambda: _store_status(self.rt)),
            ProcessesCollector(getattr(server, "processes", lambda: [("main", os.getpid())])),
            WorkersCollector(lambda: getattr(self.server, "workers", ())),
        )

    @property
    def rt(self) -> Any:
        return self.server.runtime

    def register(self, app: web.Application) -> None:
        r = app.router
        for method, path, handler in ROUTES:
            if method == "GET":
                r.add_get(path, getattr(self, handler))  # add_get: HEAD is answered too
            else:
                r.add_route(method, path, getattr(self, handler))

    async def debug_tasks(self, request: web.Request) -> web.Response:
        from proxy.api.debug import task_counts

        return web.json_response(await task_counts(self.server))

    # health ---------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"generation": self.rt.generation, "durable": self.rt.durable}
        degraded = getattr(self.server, "degraded", None)
        if degraded:
            body["degraded"] = degraded if isinstance(degraded, dict | list | str) else True
        if not self.rt.durable:
            body["persist_error"] = self.rt.persist_error
        stale = getattr(self.rt.flags, "stale_reason", None)
        if stale:
            body["flags_stale"] = stale
        unverified = tls_unverified(self.rt.config)
        if unverified:  # verify: false somewhere: said here too, not only in the start log
            body["tls_unverified"] = unverified
        recovery = getattr(self.rt, "recovery", None)
        if recovery is not None:
            degraded = True
            body["state_recovered"] = recovery.to_dict()
        if self.server.ready:
            # Degraded (e.g. no flag data: every route on legacy) still takes traffic: 200.
            status = "degraded" if degraded else "ready"
            return web.json_response({"status": status, **body})
        return web.json_response({"status": "starting", **body}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        self.server.flush()
        body, content_type = render(self.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # reads ----------------------------------------------------------------------------------
    async def whoami(self, request: web.Request) -> web.Response:
        """The caller's role: the dashboard skips its sign-in form when the role is `open` (no
        token configured) and greys out the changes a `read` token cannot make."""
        caller = request.get(CALLER_KEY) or Caller("open", True)
        return web.json_response({"role": caller.role, "can_write": caller.can_write,
                                  "name": caller.name})

    async def routes(self, request: web.Request) -> web.Response:
        return web.json_response({"routes": self.rt.routes_view(),
                                  "generation": self.rt.generation,
                                  "durable": self.rt.durable})

    async def route(self, request: web.Request) -> web.Response:
        return web.json_response(self.rt.route_view(request.match_info["name"]))

    async def history(self, request: web.Request) -> web.Response:
        route = request.query.get("route") or None
        limit = _int_query(request, "limit", 100)
        entries = await asyncio.to_thread(self.rt.audit.entries, route, limit)
        return web.json_response({"entries": entries, "route": route, "limit": limit})

    async def history_verify(self, request: web.Request) -> web.Response:
        audit = self.rt.audit
        result = await asyncio.to_thread(audit.verify)
        body = {"ok": result.ok, "entries": result.entries, "bad_line": result.bad_line,
                "message": result.message, "suspect_lines": list(result.suspect_lines)}
        return web.json_response(body)

    async def diffs(self, request: web.Request) -> web.Response:
        from proxy.api.diffs_view import diffs_view, no_store_view

        name = request.match_info["name"]
        self.rt.spec(name)
        limit = _int_query(request, "limit", 20) or 20
        if getattr(self.server, "diff_store", None) is None:
            return web.json_response(no_store_view(self.rt, request, name))
        summary = await diffs_view(self.server, self.rt, request, name, limit)
        summary["shadow_errors"] = self._shadow_errors(name)
        return web.json_response(summary)

    def _shadow_errors(self, name: str) -> dict:
        """Mirrors that got no answer (not differences, never in `mismatched`): the current
        step's and all since start, from the control plane's counters."""
        def counts(w: Any) -> dict:
            return {"errors": w.shadow_errors,
                    "kinds": {f"{side}/{kind}": n
                              for (side, kind), n in sorted(w.shadow_error_kinds.items())}}
        return {"step": counts(self.rt.agg.window(name)), "total": counts(self.rt.agg.total(name))}

    async def diffs_export(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        spec = self.rt.spec(name)
        fmt = request.query.get("format", "hurl")
        if fmt not in EXPORT_FORMATS:
            raise ApiError(400, f"unknown export format {fmt!r}; use one of "
                           f"{', '.join(EXPORT_FORMATS)}", {"field": "format"})
        store = getattr(self.server, "diff_store", None)
        if store is None:
            raise ApiError(409, "no diff store: shadowing is not running, nothing to export",
                           {"route": name})
        from shadow.export import export

        def run() -> tuple[int, str]:
            with tempfile.TemporaryDirectory(prefix="strangler-export-") as d:
                path = Path(d) / f"export.{fmt}"
                n = export(store, name, fmt, path, compare=spec.shadow.compare)
                return n, path.read_text(encoding="utf-8")

        count, text = await asyncio.to_thread(run)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Strangler-Cases": str(count)})

    # gate -----------------------------------------------------------------------------------
    async def gate(self, request: web.Request) -> web.Response:
        return await self._gate(request, act=False)

    async def promote(self, request: web.Request) -> web.Response:
        await _body(request)  # validate when present; the reason comes from the gate
        return await self._gate(request, act=True)

    async def _gate(self, request: web.Request, act: bool) -> web.Response:
        name = self.rt.lead(request.match_info["name"])  # a group: its first route
        result = await self.rt.gate(name, act=act, actor=_actor(request))
        return web.json_response(self._decision_body(name, result))

    def _decision_body(self, name: str, result: Any) -> dict:
        body = result.decision.to_dict()
        view = result.view
        body["acted"] = bool(view.get("acted"))
        body["evaluated_at"] = view.get("evaluated_at")
        body["step"] = view.get("step")
        body["approval"] = view.get("approval")
        body["notes"] = list(result.notes)
        if self.rt.rolled_back(name) and not body["acted"]:
            body["notes"].append("the route is rolled back: `resume` it before promoting")
        body["weight"] = self.rt.effective(name)
        body["state"] = "rolled_back" if self.rt.rolled_back(name) else "active"
        body["durable"] = self.rt.durable
        if not self.rt.durable:
            body["warning"] = _not_durable(self.rt.persist_error)
        return body

    # four eyes and fresh evidence --------------------------------------------------------
    async def approve(self, request: web.Request) -> web.Response:
        name, body = await self._route_body(request)
        reason = _reason(body)
        caller = _caller(request)
        result = await self.rt.approve(name, _actor(request), caller.name is not None, reason)
        return web.json_response(self._decision_body(name, result))

    async def reset_evidence(self, request: web.Request) -> web.Response:
        name, body = await self._route_body(request)
        reason = _reason(body)
        result = await self.rt.reset_evidence(name, _actor(request), reason)
        return web.json_response(await self._mutation(result))

    async def retire(self, request: web.Request) -> web.Response:
        """The decision that a route's legacy side can go (proxy.api.migration_view)."""
        from proxy.api.migration_view import retire

        name = request.match_info["name"]
        self.rt.spec(name)
        body = await _body(request)
        reason = _reason(body)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ApiError(400, "force must be true or false", {"field": "force"})
        return web.json_response(await retire(self.server, name, _actor(request), reason,
                                              force, _days_field(body)))

    # mutations ------------------------------------------------------------------------------
    async def _route_body(self, request: web.Request) -> tuple[str, dict]:
        """The route named in the path (404 when unknown) and the request's body."""
        name = self.rt.lead(request.match_info["name"])  # a group: its first route
        body = await _body(request)
        return name, body

    async def set_weight(self, request: web.Request) -> web.Response:
        name, body = await self._route_body(request)
        weight = _weight(body)  # before the reason: a missing weight is the first error
        reason = _reason(body)
        result = await self.rt.set_weight(name, weight, _actor(request), reason)
        # 202: recorded as a request that waits for a second person's approval
        status = 202 if result.extra.get("approval") else 200
        return web.json_response(await self._mutation(result), status=status)

    async def rollback_one(self, request: web.Request) -> web.Response:
        name, body = await self._route_body(request)
        reason = _reason(body)
        (result,) = await self.rt.rollback([name], _actor(request), reason)
        return web.json_response(await self._mutation(result))

    async def rollback_all(self, request: web.Request) -> web.Response:
        body = await _body(request)
        reason = _reason(body)
        results = await self.rt.rollback(None, _actor(request), reason)
        items = [await self._mutation(r) for r in results]
        warnings = sorted({i["warning"] for i in items if i.get("warning")})
        return web.json_response({
            "rolled_back": [r.route for r in results],
            "routes": items,
            "durable": all(i["durable"] for i in items),
            "warning": "; ".join(warnings) or None,
        })

    async def resume(self, request: web.Request) -> web.Response:
        name, body = await self._route_body(request)
        reason = _reason(body)
        result = await self.rt.resume(name, _actor(request), reason)
        return web.json_response(await self._mutation(result))

    async def reload(self, request: web.Request) -> web.Response:
        body = await _body(request)
        reason = _reason(body, required=False, default="admin API reload")
        try:
            result = await self.rt.reload_result(actor=_actor(request), reason=reason)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            return web.json_response(
                {"error": "the file is invalid; the running config stays in force",
                 "detail": {"errors": problems}, "errors": problems}, status=400)
        except OSError as exc:
            raise ApiError(400, f"cannot read the config file: {exc.strerror or exc}",
                           {"path": self.rt.config_path}) from None
        await self.rt.settle(result)  # a shared trail: the entry's place in the chain
        return web.json_response({"generation": result.extra["generation"],
                                  "durable": self.rt.durable and result.durable,
                                  "warning": result.warning})

    async def _mutation(self, result: MutationResult) -> dict:
        """The route object after the change, plus what changed and whether it is on disk."""
        await self.rt.settle(result)  # a shared trail: the entry's place in the chain
        body: dict[str, Any] = {}
        if result.route is not None and self.rt.config.route(result.route) is not None:
            body.update(self.rt.route_view(result.route))
        elif result.extra.get("group"):  # a group moved: its members, and their one state
            lead = result.extra["routes"][0]
            body.update(name=result.route, weight=self.rt.effective(lead),
                        state="rolled_back" if self.rt.rolled_back(lead) else "active",
                        members=[self.rt.route_view(m) for m in result.extra["routes"]])
        body.update({
            "route": result.route,
            "from": result.before,
            "to": result.after,
            "audit": result.audit,
            "durable": result.durable,
            "warning": result.warning,
            **result.extra,
        })
        if not result.durable and not result.warning:
            body["warning"] = _not_durable(self.rt.persist_error)
        return body


def _store_status(rt: Any) -> dict | None:
    status = getattr(rt.audit, "status", None)
    return status() if status is not None else None


def _days_field(body: dict) -> float:
    raw = body.get("days", 14)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 3650:
        raise ApiError(400, "days must be a number of days, more than 0 and at most 3650",
                       {"field": "days"})
    return float(raw)


def _not_durable(error: str | None) -> str:
    return ("NOT DURABLE: the change holds in memory but was not saved to state_dir"
            + (f": {error}" if error else "") + "; it will be lost at restart")
