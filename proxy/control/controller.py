"""Background gate work in the control process: auto-promotion loops and the guardrail.

The guardrail watches each route's short sliding window after every stats merge and rolls the
route back (trigger `guardrail`) when target's error rate is far above legacy's; it does not
wait for the promotion interval. Auto-promotion runs the gate every `promotion.auto.interval`
and acts on it; it pauses on a step whose gate answered `inconclusive` (a new step, e.g.
`strangler reset-evidence`, resumes it), and a promotion that needs a second person's approval
waits for `strangler approve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from proxy.control.runtime import Runtime

log = structlog.get_logger("strangler.controller")


class Controller:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tasks: dict[str, asyncio.Task] = {}
        self.guard_busy: set[str] = set()
        self.background: set[asyncio.Task] = set()
        runtime.agg.listeners.append(self._after_merge)
        runtime.on_reload.append(self._on_reload)

    async def start(self) -> None:
        self._sync_auto()

    def _on_reload(self, config: object) -> None:
        self._sync_auto()

    def _sync_auto(self) -> None:
        config = self.runtime.config
        wanted = {  # a group is promoted once, by its first route's loop (proxy.control.groups)
            r.name: r.promotion.auto.interval
            for r in config.routes
            if r.promotion.auto.enabled and (r.group is None
                                              or config.group(r.group).routes[0] == r.name)
        }
        for name in list(self.tasks):
            if name not in wanted:
                self.tasks.pop(name).cancel()
        for name, interval in wanted.items():
            if name not in self.tasks:
                self.tasks[name] = asyncio.get_running_loop().create_task(
                    self._auto(name, interval)
                )

    async def _auto(self, name: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            rt = self.runtime
            if rt.config.route(name) is None or rt.rolled_back(name):
                continue
            if rt.effective(name) >= 100 or rt.auto_paused(name):
                continue
            try:
                result = await rt.gate(name, act=True, actor="auto-promotion")
                log.info("auto gate", route=name, decision=result.decision.decision,
                         to=result.decision.to_weight, acted=result.view.get("acted"))
            except Exception:
                log.exception("auto gate failed", route=name)

    def _after_merge(self, touched: set[str]) -> None:
        rt = self.runtime
        now = time.monotonic()
        for name in touched:
            spec = rt.config.route(name)
            if spec is None or name in self.guard_busy:
                continue
            if spec.group is not None and spec.group in self.guard_busy:
                continue  # a member already rolls its group back
            g = spec.promotion.guardrail
            if not g.enabled or rt.rolled_back(name):
                continue
            tr, te, lr, le = rt.agg.recent_rates(name, g.window, now)
            if tr < g.min_requests:
                continue
            t_rate = te / tr
            l_rate = le / lr if lr else 0.0
            if t_rate >= g.max_error_rate and t_rate - l_rate >= g.min_error_rate_increase:
                self.guard_busy.add(name)
                if spec.group is not None:
                    self.guard_busy.add(spec.group)
                evidence = {
                    "window_seconds": g.window,
                    "target": {"requests": tr, "errors": te, "error_rate": t_rate},
                    "legacy": {"requests": lr, "errors": le, "error_rate": l_rate},
                    "thresholds": {"max_error_rate": g.max_error_rate,
                                   "min_error_rate_increase": g.min_error_rate_increase,
                                   "min_requests": g.min_requests},
                }
                task = asyncio.get_running_loop().create_task(self._guard(name, evidence))
                self.background.add(task)
                task.add_done_callback(self.background.discard)

    async def _guard(self, name: str, evidence: dict) -> None:
        try:
            t = evidence["target"]
            await self.runtime.rollback(
                [name], "guardrail",
                f"guardrail: target error rate {t['error_rate']:.1%} over the last "
                f"{evidence['window_seconds']:g}s ({t['errors']}/{t['requests']})",
                trigger="guardrail", evidence=evidence,
            )
        except Exception:
            log.exception("guardrail rollback failed", route=name)
        finally:
            self.guard_busy.discard(name)
            spec = self.runtime.config.route(name)
            if spec is not None and spec.group is not None:
                self.guard_busy.discard(spec.group)

    async def stop(self) -> None:
        tasks = list(self.tasks.values()) + list(self.background)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
