"""The control plane: effective weights, rollbacks, reloads, gate actions, audit.

Every mutation follows the same order: change traffic first (every data plane, in-process or
worker, has applied it before the call returns), then bookkeeping (state file, audit log).
If persisting fails, the change still holds in memory and the result says it is not durable.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import Config, RouteSpec
from proxy.control.aggregate import Aggregator
from proxy.control.audit import AuditLog, entry_hash
from proxy.control.recovery import load_state
from proxy.control.state import StateStore, StateWriteError
from proxy.dataplane.split import bp_to_weight, weight_to_bp
from shadow.evidence import BackendEvidence, CheckResult, Evidence
from shadow.gate import Decision, decide
from shadow.promql import MetricsUnavailable

log = structlog.get_logger("strangler.runtime")


class RuntimeError_(Exception):
    """A refused admin action: `status` is the HTTP status the admin API answers with."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


class PlaneLink(Protocol):
    """A data plane the control plane drives: in-process, or a worker process."""

    async def apply_weights(self, updates: dict[str, tuple[int, int, bool]]) -> None:
        """route -> (weight in basis points, step, rolled back); applied before this returns."""

    async def install(self, config: Config, text: str, generation: int,
                      weights: dict[str, tuple[int, int, bool]]) -> None: ...


@dataclass(slots=True)
class MutationResult:
    route: str | None
    before: Any
    after: Any
    durable: bool = True
    warning: str | None = None
    audit: dict | None = None
    extra: dict = field(default_factory=dict)
    audit_hash: str | None = None  # SHA-256 of the audit entry's line (notifications quote it)


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class Runtime:
    def __init__(self, config_path: str, config: Config, text: str | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.config_text = text if text is not None else Path(config_path).read_text()
        self.generation = 1
        self.store = StateStore(config.state_dir)
        self.audit = AuditLog(config.state_dir / "audit.log")
        # An unreadable state.json starts every route rolled back (proxy.control.recovery).
        self.state, self.recovery = load_state(self.store, self.audit,
                                               [r.name for r in config.routes])
        self.agg = Aggregator()
        self.planes: list[PlaneLink] = []
        self.counters: dict[str, dict[tuple[str, ...], int]] = {
            "gate_decisions": {},
            "rollbacks": {},
        }
        self.last_decision: dict[str, dict] = {}
        self.lock = asyncio.Lock()
        self.durable = True
        self.persist_error: str | None = None
        self.flags: Any = None  # Unleash backend, when configured (proxy.control.flags_link)
        self.notifier: Any = None  # proxy.control.notify.Notifier, when serve runs one
        self._fail_notified: dict[str, int] = {}  # route -> step whose gate failure was sent
        self.prometheus: Any = None  # shadow.promql.PrometheusSource when gate needs it
        self.on_reload: list[Callable[[Config], Awaitable[None] | None]] = []
        self.started = time.time()
        self.metrics_error: str | None = None  # why the gate's metrics are unavailable now
        replaced = self.state.apply_file(config.file_weights())
        for route in config.routes:
            rt = self.state.route(route.name)
            if rt.step_started == 0.0:
                rt.step_started = time.time()
            self.agg.new_step(route.name, rt.step, rt.step_started)
        self._persist()
        if self.recovery is not None:
            self._audit(action="state_recovered", actor="system", route=None,
                        reason=f"{self.recovery.file}: {self.recovery.problem}",
                        after="every route rolled back", evidence=self.recovery.to_dict())
        if replaced:
            log.info("file weights replaced runtime values", routes=replaced)

    # -- views ---------------------------------------------------------------------------
    def spec(self, name: str) -> RouteSpec:
        spec = self.config.route(name)
        if spec is None:
            raise RuntimeError_(404, f"unknown route '{name}'",
                                {"routes": [r.name for r in self.config.routes]})
        return spec

    def effective(self, name: str) -> float:
        spec = self.spec(name)
        if self.flags is not None:
            return self.flags.weight(spec)
        return self.state.effective(name, spec.weight)

    def rolled_back(self, name: str) -> bool:
        if self.flags is not None:
            return self.flags.rolled_back(self.spec(name))
        r = self.state.routes.get(name)
        return bool(r and r.rolled_back)

    def weights_bp(self) -> dict[str, tuple[int, int, bool]]:
        """What the data planes need per route: (basis points, step, rolled back)."""
        return {
            r.name: (weight_to_bp(self.effective(r.name)), self.state.route(r.name).step,
                     self.rolled_back(r.name))
            for r in self.config.routes
        }

    def weights_for_metrics(self) -> dict[str, tuple[float, bool]]:
        return {r.name: (self.effective(r.name), self.rolled_back(r.name))
                for r in self.config.routes}

    def route_view(self, name: str) -> dict:
        spec = self.spec(name)
        rt = self.state.route(name)
        win = self.agg.window(name)
        tot = self.agg.total(name)
        return {
            "name": name,
            "weight": self.effective(name),
            "file_weight": spec.weight,
            "runtime_weight": rt.weight,
            "state": "rolled_back" if self.rolled_back(name) else "active",
            "legacy": spec.legacy,
            "target": spec.target,
            "match": _match_view(spec),
            "sticky": (
                {"header": spec.sticky.header} if spec.sticky and spec.sticky.header
                else {"cookie": spec.sticky.cookie} if spec.sticky else None
            ),
            "fallback_to_legacy": spec.fallback_to_legacy,
            "flag": spec.flag,
            "shadow": {"enabled": spec.shadow.enabled, "sample": spec.shadow.sample,
                       "reverse": spec.shadow.reverse},
            "promotion": {"steps": list(spec.promotion.steps),
                          "auto": spec.promotion.auto.enabled},
            "step": {"id": rt.step, "started": rt.step_started},
            "stats": {
                "step": _window_view(win),
                "total": _window_view(tot),
            },
            "last_decision": self.last_decision.get(name),
        }

    def routes_view(self) -> list[dict]:
        return [self.route_view(r.name) for r in self.config.routes]

    # -- mutations -----------------------------------------------------------------------
    async def _push(self, names: list[str]) -> None:
        weights = self.weights_bp()
        updates = {n: weights[n] for n in names if n in weights}
        await asyncio.gather(*(p.apply_weights(updates) for p in self.planes))

    def _new_step(self, name: str) -> None:
        rt = self.state.route(name)
        rt.step += 1
        rt.step_started = time.time()
        self.agg.new_step(name, rt.step, rt.step_started)
        self.agg.reset_recent(name)

    def _persist(self) -> str | None:
        try:
            self.store.save(self.state)
        except StateWriteError as exc:
            self.durable = False
            self.persist_error = str(exc)
            log.error("state not durable", error=str(exc))
            return str(exc)
        self.durable = True
        self.persist_error = None
        return None

    def _audit(self, **entry: Any) -> tuple[dict | None, str | None]:
        try:
            return self.audit.append(**entry), None
        except OSError as exc:
            log.error("audit log write failed", error=str(exc))
            return None, f"audit log not written: {exc}"

    def _finish(self, result: MutationResult, **audit: Any) -> MutationResult:
        warnings = []
        err = self._persist()
        if err:
            result.durable = False
            warnings.append(f"NOT DURABLE: the change holds in memory but was not saved: {err}")
        entry, aerr = self._audit(**audit)
        result.audit = entry
        result.audit_hash = entry_hash(entry) if entry is not None else None
        if aerr:
            result.durable = False
            warnings.append(aerr)
        result.warning = "; ".join(warnings) or None
        return result

    async def set_weight(
        self, name: str, weight: float, actor: str, reason: str,
        action: str = "set_weight", evidence: Any = None,
    ) -> MutationResult:
        if not 0 <= weight <= 100 or round(weight, 2) != weight:
            raise RuntimeError_(400, "weight must be between 0 and 100 with at most two decimals",
                                {"weight": weight})
        async with self.lock:
            self.spec(name)
            if self.rolled_back(name):
                raise RuntimeError_(409, f"route '{name}' is rolled back; resume it first",
                                    {"route": name, "state": "rolled_back"})
            before = self.effective(name)
            if self.flags is not None:
                await self.flags.set_weight(self.spec(name), weight)
            self.state.route(name).weight = weight
            if before != weight:
                self._new_step(name)
            await self._push([name])
            result = self._finish(
                MutationResult(name, before, weight),
                action=action, actor=actor, reason=reason, route=name,
                before=before, after=weight, evidence=evidence,
            )
            if before != weight:
                if action == "promote":
                    event = "complete" if weight >= 100 else "promote"
                    self._notify(event, result, "gate", actor, reason, evidence=evidence)
                else:
                    self._notify("weight_changed", result, "manual", actor, reason)
            return result

    async def rollback(
        self, names: list[str] | None, actor: str, reason: str, trigger: str = "manual",
        evidence: Any = None,
    ) -> list[MutationResult]:
        targets = names if names is not None else [r.name for r in self.config.routes]
        for n in targets:
            self.spec(n)
        # Traffic first: flip every data plane before taking the lock for bookkeeping, so a
        # rollback never waits behind a slow set-weight or reload.
        befores = {n: self.effective(n) for n in targets}
        changed = []
        for n in targets:
            rt = self.state.route(n)
            if not rt.rolled_back:
                rt.rolled_back = True
                self._new_step(n)
                changed.append(n)
        await self._push(targets)
        unconfirmed: set[str] = set()
        if self.flags is not None:
            for n in targets:
                await self.flags.rollback(self.spec(n))
            unconfirmed = {n for n in targets if self.flags.rollback_unconfirmed(n)}
        results = []
        async with self.lock:
            err = self._persist()
            for n in targets:
                key = (n, trigger)
                if n in changed:
                    self.counters["rollbacks"][key] = self.counters["rollbacks"].get(key, 0) + 1
                entry, aerr = self._audit(
                    action="rollback", actor=actor, reason=reason, route=n,
                    before=befores[n], after=0.0, evidence=evidence, trigger=trigger,
                    all=names is None,
                )
                res = MutationResult(n, befores[n], 0.0, audit=entry,
                                     extra={"already_rolled_back": n not in changed},
                                     audit_hash=entry_hash(entry) if entry else None)
                warns = []
                if err:
                    res.durable = False
                    warns.append("NOT DURABLE: rollback holds in memory but the state file "
                                 f"was not written: {err}")
                if aerr:
                    res.durable = False
                    warns.append(aerr)
                if n in unconfirmed:
                    res.durable = False
                    warns.append("NOT IN UNLEASH YET: rolled back on this replica; Unleash did "
                                 "not take the write, so other replicas keep their weight until "
                                 "it does (retried every refresh interval)")
                res.warning = "; ".join(warns) or None
                results.append(res)
        log.warning("rollback", routes=targets, trigger=trigger, actor=actor, reason=reason)
        from_gate = isinstance(evidence, dict) and "decision" in evidence
        for res in results:
            if res.route in changed:
                self._notify("rollback", res, "gate" if from_gate else trigger, actor, reason,
                             evidence=evidence)
        return results

    async def resume(self, name: str, actor: str, reason: str) -> MutationResult:
        async with self.lock:
            self.spec(name)
            rt = self.state.route(name)
            if not self.rolled_back(name):
                raise RuntimeError_(409, f"route '{name}' is not rolled back", {"route": name})
            rt.weight = 0.0  # the weight stays 0 until set or promoted
            if self.flags is not None:
                # Frozen until Unleash has the toggle at rollout 0 and on: while the writes are
                # on their way it may still show the rollout from before the rollback.
                await self.flags.resume(self.spec(name))
            rt.rolled_back = False
            self._new_step(name)
            await self._push([name])
            result = self._finish(
                MutationResult(name, "rolled_back", "active"),
                action="resume", actor=actor, reason=reason, route=name,
                before="rolled_back", after="active",
            )
            self._notify("resume", result, "manual", actor, reason, weights=(0.0, 0.0))
            return result

    async def reload(self, actor: str, reason: str = "reload") -> int:
        """Load the file again; raises ConfigError (the running config stays) when invalid."""
        async with self.lock:
            path = self.config_path
            text = await asyncio.to_thread(Path(path).read_text)
            try:
                config = await asyncio.to_thread(load_config, path, text)
            except ConfigError as exc:
                log.error("reload rejected", problems=[str(p) for p in exc.problems])
                self._audit(action="reload_rejected", actor=actor, reason=reason,
                            evidence={"problems": [str(p) for p in exc.problems]})
                raise
            before = {r.name: self.effective(r.name) for r in self.config.routes}
            self.config = config
            self.config_text = text
            replaced = self.state.apply_file(config.file_weights())
            for r in config.routes:
                old = before.get(r.name)
                if old is None or old != self.effective(r.name):
                    self._new_step(r.name)
            self.generation += 1
            weights = self.weights_bp()
            await asyncio.gather(
                *(p.install(config, text, self.generation, weights) for p in self.planes)
            )
            # A rollback may have landed while the new tables were being installed (rollback
            # does not wait for this lock): push the weights again so it cannot be undone.
            await self._push([r.name for r in config.routes])
            for hook in self.on_reload:
                res = hook(config)
                if asyncio.iscoroutine(res):
                    await res
            after = {r.name: self.effective(r.name) for r in config.routes}
            result = self._finish(
                MutationResult(None, before, after),
                action="reload", actor=actor, reason=reason, route=None,
                before=before, after=after,
                generation=self.generation, replaced_runtime_weights=replaced,
            )
            for name, new in after.items():
                old = before.get(name)
                if old is not None and old != new:
                    self._notify("weight_changed", result, "reload", actor, reason,
                                 route=name, weights=(old, new))
            log.info("config reloaded", generation=self.generation, replaced=replaced)
            return self.generation

    # -- notifications -------------------------------------------------------------------
    def _notify(self, event: str, result: MutationResult, trigger: str, actor: str,
                reason: str, *, evidence: Any = None, route: str | None = None,
                weights: tuple[Any, Any] | None = None, decision: str | None = None) -> None:
        """Queue a notification about a change that has taken effect (never blocks)."""
        if self.notifier is None:
            return
        before, after = weights if weights is not None else (result.before, result.after)
        self.notifier.emit(
            event, route or result.route, from_weight=before, to_weight=after, trigger=trigger,
            actor=actor, reason=reason, decision=decision, evidence=evidence,
            audit=result.audit, audit_hash=result.audit_hash,
        )

    def _notify_fail(self, name: str, decision: Decision, view: dict, actor: str,
                     rolled: MutationResult | None) -> None:
        """One `fail` per step: a gate that keeps failing (auto_rollback off) is heard once."""
        step = self.state.route(name).step
        if rolled is None and self._fail_notified.get(name) == step:
            return
        self._fail_notified[name] = step
        result = rolled or MutationResult(name, decision.from_weight, decision.to_weight)
        self._notify("fail", result, "gate", actor, " ".join(decision.reasons),
                     evidence=view, weights=(decision.from_weight, decision.to_weight),
                     decision="fail")

    # -- gate ----------------------------------------------------------------------------
    async def evidence(self, name: str) -> Evidence:
        """The current step's evidence: in-process counters, or Prometheus (every replica)."""
        spec = self.spec(name)
        weight = self.effective(name)
        prom = self.prometheus
        win = self.agg.window(name)
        window_s = max(1.0, time.time() - win.started)
        shadow_on = spec.shadow.enabled and spec.shadow.sample > 0
        if prom is not None and self.config.gate.metrics == "prometheus":
            return await prom.evidence(name, weight, window_s, shadow_on, spec.promotion.checks)
        checks: tuple[CheckResult, ...] = ()
        if spec.promotion.checks:
            if prom is None:
                checks = tuple(CheckResult(c.name, c.query, None, c.max, c.min)
                               for c in spec.promotion.checks)
            else:
                checks = tuple(await asyncio.gather(
                    *(prom.check(c, window_s) for c in spec.promotion.checks)))
        return Evidence(
            route=name,
            weight=weight,
            legacy=_backend_evidence(win.legacy),
            target=_backend_evidence(win.target),
            compared=win.compared,
            mismatched=win.mismatched,
            shadow_enabled=shadow_on,
            checks=checks,
        )

    def _metrics_outage(self, error: str | None) -> None:
        """One log line when the gate's metrics go away and one when they are back (the auto
        loop and CI retries evaluate often; the gate's answer carries the reason each time)."""
        if error is not None and self.metrics_error is None:
            log.warning("gate metrics unavailable: every gate decision holds until they return",
                        error=error)
        elif error is None and self.metrics_error is not None:
            log.info("gate metrics available again", was=self.metrics_error)
        self.metrics_error = error

    async def gate(self, name: str, act: bool, actor: str) -> tuple[Decision, list[str]]:
        """Evaluate the gate; with `act`, do what it says. Returns the decision and notes."""
        spec = self.spec(name)
        notes: list[str] = []
        if act and self.rolled_back(name):
            raise RuntimeError_(409, f"route '{name}' is rolled back; resume it before promoting",
                                {"route": name, "state": "rolled_back"})
        try:
            ev = await self.evidence(name)
            self._metrics_outage(None)
            if self.rolled_back(name):
                # A frozen route is not promoted whatever the evidence says.
                decision = Decision(name, "hold", 0.0, 0.0, (
                    f"route '{name}' is rolled back; `strangler resume {name}` before "
                    "promoting it",), ev.to_dict(spec.promotion))
            else:
                decision = decide(ev, spec.promotion)
        except MetricsUnavailable as exc:
            # No evidence is not bad evidence: hold, never fail, and say why.
            weight = self.effective(name)
            decision = Decision(name, "hold", weight, weight,
                                (f"metrics unavailable: {exc}",), {"error": str(exc)})
            self._metrics_outage(str(exc))
        key = (name, decision.decision)
        self.counters["gate_decisions"][key] = self.counters["gate_decisions"].get(key, 0) + 1
        view = decision.to_dict()
        view["evaluated_at"] = time.time()
        view["acted"] = False
        if act:
            if decision.decision == "promote":
                await self.set_weight(name, decision.to_weight, actor,
                                      "promotion gate: " + " ".join(decision.reasons),
                                      action="promote", evidence=view)
                view["acted"] = True
            elif decision.decision == "fail":
                rolled: MutationResult | None = None
                if spec.promotion.auto_rollback:
                    (rolled,) = await self.rollback(
                        [name], actor, "promotion gate failed: " + " ".join(decision.reasons),
                        trigger="auto", evidence=view)
                    view["acted"] = True
                    notes.append("rolled back")
                self._notify_fail(name, decision, view, actor, rolled)
        self.last_decision[name] = {
            k: view[k] for k in ("decision", "from_weight", "to_weight", "reasons",
                                 "evaluated_at", "acted")
        }
        return decision, notes


def _backend_evidence(b: Any) -> BackendEvidence:
    return BackendEvidence(
        requests=b.requests, errors=b.errors, p99=b.p99, latency_samples=b.latency_samples
    )


def _window_view(w: Any) -> dict:
    def backend(b: Any) -> dict:
        return {
            "requests": b.requests,
            "errors": b.errors,
            "error_rate": (b.errors / b.requests) if b.requests else None,
            "p99_ms": round(b.p99 * 1000, 3) if b.p99 is not None else None,
        }

    return {
        "since": w.started,
        "legacy": backend(w.legacy),
        "target": backend(w.target),
        "shadow": {
            "compared": w.compared,
            "mismatched": w.mismatched,
            "errors": w.shadow_errors,
            "mismatch_rate": (w.mismatched / w.compared) if w.compared else None,
        },
    }


def _match_view(spec: RouteSpec) -> dict:
    m = spec.match
    out: dict[str, Any] = {}
    for k in ("path", "path_prefix", "path_regex"):
        if getattr(m, k) is not None:
            out[k] = getattr(m, k)
    if m.methods:
        out["methods"] = list(m.methods)
    if m.headers:
        out["headers"] = dict(m.headers)
    return out


__all__ = ["MutationResult", "PlaneLink", "Runtime", "RuntimeError_", "bp_to_weight",
           "default_actor"]
