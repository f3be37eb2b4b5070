"""The control plane: effective weights, steps, rollbacks, reloads, gate actions, approvals, audit.

Every mutation follows the same order: change traffic first (every data plane, in-process or
worker, has applied it before the call returns), then bookkeeping (state file, audit log).
If persisting fails, the change still holds in memory and the result says it is not durable.

Every effective change is in the audit log: serve started and stopped (config hash, version),
weights the file changed while the proxy was stopped, every reload (config hash and what
changed), weight changes, promotions, rollbacks (trigger manual, gate or guardrail), resumes,
evidence resets, approval requests and approvals, and a step that ends inconclusive. A new step
(`proxy.control.steps`) begins whenever anything the evidence depends on changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from proxy import __version__
from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import Config, RouteSpec
from proxy.control import changes as config_changes
from proxy.control import steps, views
from proxy.control.aggregate import Aggregator
from proxy.control.audit import entry_hash
from proxy.control.foureyes import FourEyes, approval_view, stamp
from proxy.control.groups import Groups
from proxy.control.recovery import load_state
from proxy.control.results import GateResult, MutationResult, RuntimeError_
from proxy.control.state import StateStore, StateWriteError
from proxy.control.stores import open_trail
from proxy.control.trail import ApprovalStore, AuditTrail
from proxy.dataplane.split import bp_to_weight, weight_to_bp
from shadow.evidence import CheckResult, Evidence
from shadow.gate import Decision, decide, evidence_since, since_sentence
from shadow.promql import MetricsUnavailable

log = structlog.get_logger("strangler.runtime")


class PlaneLink(Protocol):
    """A data plane the control plane drives: in-process, or a worker process."""

    async def apply_weights(self, updates: dict[str, tuple[int, int, bool]]) -> None:
        """route -> (weight in basis points, step id, rolled back); applied before it returns."""

    async def install(self, config: Config, text: str, generation: int,
                      weights: dict[str, tuple[int, int, bool]]) -> None: ...

    def describe(self) -> dict:
        """Which plane this is, for an answer or an audit entry (worker index and pid)."""


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class Runtime(FourEyes, Groups):
    def __init__(self, config_path: str, config: Config, text: str | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.config_text = text if text is not None else Path(config_path).read_text()
        self.generation = 1
        self.store = StateStore(config.state_dir)
        # files in state_dir, or the fleet's PostgreSQL store (proxy.control.stores)
        trail, approvals, self.replica = open_trail(config)
        self.audit: AuditTrail = trail
        self.approvals: ApprovalStore = approvals
        # An unreadable state.json starts every route rolled back (proxy.control.recovery).
        self.state, self.recovery = load_state(self.store, self.audit,
                                               [r.name for r in config.routes])
        self.agg = Aggregator()
        self.planes: list[PlaneLink] = []
        self.counters: dict[str, dict[tuple[str, ...], int]] = {
            "gate_decisions": {},  # decisions acted on: promote, auto-promotion, approve
            "gate_evaluations": {},  # every evaluation, reads included
            "rollbacks": {},
        }
        self.last_decision: dict[str, dict] = {}  # route -> last decision acted on (with step)
        self.lock = asyncio.Lock()
        self.durable = True
        self.persist_error: str | None = None
        self.flags: Any = None  # Unleash backend, when configured (proxy.control.flags_link)
        self.notifier: Any = None  # proxy.control.notify.Notifier, when serve runs one
        self._fail_notified: dict[str, int] = {}  # route -> step whose gate failure was sent
        self._inconclusive_noted: dict[str, int] = {}  # route -> step audited inconclusive
        self.prometheus: Any = None  # shadow.promql.PrometheusSource when gate needs it
        self.on_reload: list[Callable[[Config], Awaitable[None] | None]] = []
        self.on_new_step: list[Callable[[str, int], None]] = []  # (route, step id)
        self.started = time.time()
        self.metrics_error: str | None = None  # why the gate's metrics are unavailable now
        self.config_hash = config_changes.config_hash(self.config_text)
        self._start_weights = self._begin()

    def _begin(self) -> list[tuple[str, float, float]]:
        """Start: the file's weights, and a new step for every route (restart evidence is
        never blended with the evidence before it). Returns the routes whose effective weight
        the file changed while the proxy was stopped: (route, before, after)."""
        before = {r.name: self.state.effective(r.name, self.state.file_weights.get(
            r.name, r.weight)) for r in self.config.routes}
        file_backend = self.config.flags.backend == "file"  # else Unleash holds the weights
        known = set(self.state.routes)
        replaced = self.state.apply_file(self.config.file_weights())
        moved = []
        for route in self.config.routes:
            rt = self.state.route(route.name)
            identity = steps.identity(self.config, route)
            after = self.state.effective(route.name, route.weight)
            if route.name not in known:
                why = ["first start of this route"]
            else:
                why = ["restart"]
                if file_backend and before[route.name] != after:
                    why.append(f"weight {before[route.name]:g}% -> {after:g}% (routes.yaml "
                               "changed while stopped)")
                    moved.append((route.name, before[route.name], after))
                why += steps.changes(rt.identity, identity)
            self._new_step(route.name, "; ".join(why), identity)
        self._align_groups("start")  # proxy.control.groups
        if replaced:
            log.info("file weights replaced runtime values", routes=replaced)
        if self.recovery is not None:
            self._audit(action="state_recovered", actor="system", route=None,
                        reason=f"{self.recovery.file}: {self.recovery.problem}",
                        after="every route rolled back", evidence=self.recovery.to_dict())
        return moved

    def serve_started(self, workers: int = 1) -> None:
        """Serving: persist the start's state and audit it (serve_started, then each weight the
        file changed while the proxy was stopped)."""
        previous = self.state.config_hash
        self.state.config_hash = self.config_hash
        self._persist()
        routes = {r.name: {"step": self.state.route(r.name).step,
                           "weight": self.effective(r.name),
                           "reason": self.state.route(r.name).step_reason}
                  for r in self.config.routes}
        changed = previous is not None and previous != self.config_hash
        self._audit(action="serve_started", actor="system",
                    reason=f"strangler {__version__} started (pid {os.getpid()}, {workers} "
                    f"worker{'s' if workers != 1 else ''})"
                    + ("; routes.yaml changed since the last run" if changed else ""),
                    evidence={"version": __version__, "config": self.config_path,
                              "config_hash": self.config_hash,
                              "previous_config_hash": previous, "pid": os.getpid(),
                              "workers": workers, "routes": routes})
        for name, before, after in self._start_weights:
            self._audit(action="weight_from_file", actor="system", route=name,
                        before=before, after=after,
                        reason=f"routes.yaml sets {name} to {after:g}% (it was {before:g}% "
                        "when the proxy last ran)", evidence={"config_hash": self.config_hash})

    def serve_stopped(self, reason: str) -> None:
        self._audit(action="serve_stopped", actor="system", reason=reason,
                    evidence={"version": __version__, "config_hash": self.config_hash,
                              "uptime_seconds": round(time.time() - self.started, 1),
                              "generation": self.generation})

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
        """What the data planes need per route: (basis points, step id, rolled back)."""
        return {
            r.name: (weight_to_bp(self.effective(r.name)), self.state.route(r.name).step,
                     self.rolled_back(r.name))
            for r in self.config.routes
        }

    def weights_for_metrics(self) -> dict[str, tuple[float, bool]]:
        return {r.name: (self.effective(r.name), self.rolled_back(r.name))
                for r in self.config.routes}

    def auto_paused(self, name: str) -> bool:
        """Auto-promotion waits: this step ended inconclusive."""
        last = self.last_decision.get(name)
        return bool(last and last.get("step") == self.state.route(name).step
                    and last.get("decision") == "inconclusive")

    def route_view(self, name: str) -> dict:
        spec = self.spec(name)
        rt = self.state.route(name)
        now = time.time()
        pending = self.approvals.pending(name)
        return {
            "name": name,
            "weight": self.effective(name),
            "file_weight": spec.weight,
            "runtime_weight": rt.weight,
            "state": "rolled_back" if self.rolled_back(name) else "active",
            "legacy": spec.legacy,
            "target": spec.target,
            "match": views.match_view(spec),
            "sticky": (
                {"header": spec.sticky.header} if spec.sticky and spec.sticky.header
                else {"cookie": spec.sticky.cookie} if spec.sticky else None
            ),
            "fallback_to_legacy": spec.fallback_to_legacy,
            "group": spec.group,
            "flag": spec.flag,
            "shadow": {"enabled": spec.shadow.enabled, "sample": spec.shadow.sample,
                       "reverse": spec.shadow.reverse},
            "promotion": {"steps": list(spec.promotion.steps),
                          "auto": spec.promotion.auto.enabled,
                          "auto_paused": self.auto_paused(name),
                          "approval_from_weight": (spec.promotion.approval.from_weight
                                                   if spec.promotion.approval else None)},
            "step": views.step_view(rt),
            "evidence_since": {"time": rt.step_started, "reason": rt.step_reason,
                               "seconds": round(max(0.0, now - rt.step_started), 1)},
            "stats": {
                "step": views.window_view(self.agg.window(name)),
                "total": views.window_view(self.agg.total(name)),
            },
            "last_decision": views.decision_view(self.last_decision.get(name), rt.step, now),
            "approval": approval_view(pending, now) if pending else None,
        }

    def routes_view(self) -> list[dict]:
        return [self.route_view(r.name) for r in self.config.routes]

    # -- bookkeeping ---------------------------------------------------------------------
    async def _push(self, names: list[str], planes: list | None = None) -> list[dict]:
        """Send `names`' weights to every data plane; the planes that did not confirm (each
        with the error). A worker that does not acknowledge in time still has the change
        waiting in its socket; the change is saved and audited all the same, and says so: an
        SRE's rollback must not fail, unsaved and unaudited, because one worker is slow."""
        planes = self.planes if planes is None else planes
        weights = self.weights_bp()
        updates = {n: weights[n] for n in names if n in weights}
        outcomes = await asyncio.gather(*(p.apply_weights(updates) for p in planes),
                                        return_exceptions=True)
        return self._unconfirmed(outcomes, "weights", list(updates), planes)

    def _unconfirmed(self, outcomes: list[Any], op: str, routes: list[str],
                     planes: list | None = None) -> list[dict]:
        """The planes whose outcome (as `gather(..., return_exceptions=True)` gives it, in
        `planes`' order, by default `self.planes`) is no acknowledgement (a timeout, or the link
        broken: a worker that died serves nothing): each described, with the error. Any other
        error is raised, as before: it is a fault, not a slow plane."""
        unconfirmed = []
        for plane, outcome in zip(self.planes if planes is None else planes, outcomes,
                                  strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, TimeoutError | OSError):
                    raise outcome
                unconfirmed.append({**plane.describe(),
                                    "error": str(outcome) or type(outcome).__name__})
                log.error("data plane did not confirm", op=op, routes=routes, **unconfirmed[-1])
        return unconfirmed

    def _new_step(self, name: str, reason: str = "weight changed",
                  identity: dict[str, str] | None = None) -> None:
        """A new step id for `name`: its evidence starts empty, its last decision and any
        pending approval no longer apply."""
        rt = self.state.route(name)
        rt.step = steps.next_step_id(rt.step)
        rt.step_started = time.time()
        rt.step_reason = reason
        if identity is not None:
            rt.identity = identity
        self.agg.new_step(name, rt.step, rt.step_started)
        self.agg.reset_recent(name)
        self.last_decision.pop(name, None)
        self._void_approval(name, f"a new step began: {reason}")
        for hook in self.on_new_step:  # the shared diff store's step marks (no I/O here)
            hook(name, rt.step)

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

    def _finish(self, result: MutationResult, unconfirmed: list[dict] | None = None,
                **audit: Any) -> MutationResult:
        """Save, audit, and say in the answer what did not hold (`unconfirmed`: data planes
        that did not acknowledge the push, from `_push`)."""
        warnings = []
        if unconfirmed:
            audit["unconfirmed_planes"] = unconfirmed
            warnings.append(unconfirmed_warning(unconfirmed))
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

    async def settle(self, result: MutationResult) -> MutationResult:
        """Give the result's audit entry its place in the trail (a shared trail chains it in
        the background); when the store is down it stays pending, and the answer says so."""
        if result.audit is None or not result.audit.get("pending"):
            return result
        entry = await self.audit.settle(result.audit)
        result.audit = entry
        result.audit_hash = entry_hash(entry) if entry is not None else None
        if entry is not None and entry.get("pending"):
            note = ("AUDIT BUFFERED: the shared store is unavailable; the entry is on this "
                    "replica's disk (audit.outbox) and joins the fleet's trail, in order, when "
                    "the store is back")
            result.warning = f"{result.warning}; {note}" if result.warning else note
        return result

    def close(self) -> None:
        """Ship what the shared trail still buffers (bounded), stop its threads."""
        for part in (self.audit, self.approvals):
            close = getattr(part, "close", None)
            if close is not None:
                close()

    def _count(self, family: str, name: str, value: str) -> None:
        counts = self.counters[family]
        counts[(name, value)] = counts.get((name, value), 0) + 1

    # -- mutations -----------------------------------------------------------------------
    async def set_weight(
        self, name: str, weight: float, actor: str, reason: str,
        action: str = "set_weight", evidence: Any = None,
    ) -> MutationResult:
        """An operator's weight. Raising it to `promotion.approval.from_weight` or above asks
        for a second person's approval instead (the result's extra has `approval`)."""
        if not 0 <= weight <= 100 or round(weight, 2) != weight:
            raise RuntimeError_(400, "weight must be between 0 and 100 with at most two decimals",
                                {"weight": weight})
        self.spec(name)
        if self._needs_approval(name, weight) and not self.rolled_back(name):
            before = self.effective(name)
            request = await self._request_approval(name, "set_weight", before, weight, actor,
                                                   reason, evidence)
            return MutationResult(name, before, before,
                                  extra={"approval": approval_view(request, time.time()),
                                         "acted": False})
        return await self._apply_weight(name, weight, actor, reason, action, evidence)

    async def _apply_weight(self, name: str, weight: float, actor: str, reason: str,
                            action: str, evidence: Any = None, **audit: Any) -> MutationResult:
        """`name`'s weight, or its group's: every member in one push, audited once."""
        async with self.lock:
            unit, names = self.unit(name)
            for n in names:
                self.spec(n)
                if self.rolled_back(n):
                    raise RuntimeError_(409, f"route '{n}' is rolled back; resume "
                                        f"{'it' if n == unit else 'group ' + repr(unit)} first",
                                        {"route": n, "state": "rolled_back"})
            before = self.effective(name)
            if self.flags is not None:
                await self.flags.set_weight(self.spec(name), weight)
            for n in names:
                self.state.route(n).weight = weight
                if before != weight:
                    self._new_step(n, f"weight {before:g}% -> {weight:g}% ({action} by {actor})")
            unconfirmed = await self._push(names)
            if unit != name:
                audit["routes"] = names
            result = self._finish(
                MutationResult(unit, before, weight, extra=self.group_extra(name)),
                unconfirmed=unconfirmed, action=action, actor=actor, reason=reason, route=unit,
                before=before, after=weight, evidence=evidence, **audit,
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
        """Everything to legacy, frozen until resume. `trigger`: manual, gate or guardrail.
        Never waits for an approval."""
        units = dict(self.unit(n) for n in names) if names is not None else \
            dict(self.unit(r.name) for r in self.config.routes)  # a group moves whole
        targets = [n for members in units.values() for n in members]
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
                self._new_step(n, f"rollback ({trigger}) by {actor}")
                changed.append(n)
        unconfirmed_planes = await self._push(targets)
        unconfirmed: set[str] = set()
        if self.flags is not None:
            for n in targets:
                await self.flags.rollback(self.spec(n))
            unconfirmed = {n for n in targets if self.flags.rollback_unconfirmed(n)}
        results = []
        async with self.lock:
            err = self._persist()
            for n in targets:
                if n in changed:
                    self._count("rollbacks", n, trigger)
            for n, members in units.items():  # one entry per route, or per group
                fields: dict[str, Any] = {"routes": members} if members != [n] else {}
                if unconfirmed_planes:
                    fields["unconfirmed_planes"] = unconfirmed_planes
                entry, aerr = self._audit(
                    action="rollback", actor=actor, reason=reason, route=n,
                    before=befores[members[0]], after=0.0, evidence=evidence, trigger=trigger,
                    all=names is None, **fields,
                )
                moved = any(m in changed for m in members)
                res = MutationResult(n, befores[members[0]], 0.0, audit=entry,
                                     extra={"already_rolled_back": not moved,
                                            **self.group_extra(n)},
                                     audit_hash=entry_hash(entry) if entry else None)
                warns = []
                if err:
                    res.durable = False
                    warns.append("NOT DURABLE: rollback holds in memory but the state file "
                                 f"was not written: {err}")
                if aerr:
                    res.durable = False
                    warns.append(aerr)
                if unconfirmed_planes:
                    warns.append(unconfirmed_warning(unconfirmed_planes))
                if unconfirmed.intersection(members):
                    res.durable = False
                    warns.append("NOT IN UNLEASH YET: rolled back on this replica; Unleash did "
                                 "not take the write, so other replicas keep their weight until "
                                 "it does (retried every refresh interval)")
                res.warning = "; ".join(warns) or None
                results.append(res)
        log.warning("rollback", routes=targets, trigger=trigger, actor=actor, reason=reason)
        for res in results:
            if not res.extra.get("already_rolled_back"):
                self._notify("rollback", res, trigger, actor, reason, evidence=evidence)
        return results

    async def resume(self, name: str, actor: str, reason: str) -> MutationResult:
        async with self.lock:
            unit, names = self.unit(name)
            self.spec(name)
            if not any(self.rolled_back(n) for n in names):
                raise RuntimeError_(409, f"route '{name}' is not rolled back", {"route": name})
            for n in names:  # a group resumes whole
                rt = self.state.route(n)
                rt.weight = 0.0  # the weight stays 0 until set or promoted
                if self.flags is not None:
                    # Frozen until Unleash has the toggle at rollout 0 and on: while the writes
                    # are on their way it may still show the rollout from before the rollback.
                    await self.flags.resume(self.spec(n))
                rt.rolled_back = False
                self._new_step(n, f"resume by {actor}")
            unconfirmed = await self._push(names)
            result = self._finish(
                MutationResult(unit, "rolled_back", "active", extra=self.group_extra(name)),
                unconfirmed=unconfirmed, action="resume", actor=actor, reason=reason, route=unit,
                before="rolled_back", after="active",
                **({"routes": names} if unit != name else {}),
            )
            self._notify("resume", result, "manual", actor, reason, weights=(0.0, 0.0))
            return result

    async def reset_evidence(self, name: str, actor: str, reason: str) -> MutationResult:
        """"I fixed the new service, judge it afresh": a new step at the same weight."""
        async with self.lock:
            self.spec(name)
            if self.rolled_back(name):
                raise RuntimeError_(409, f"route '{name}' is rolled back: there is no evidence "
                                    f"to reset; `strangler resume {name}` first (a resume "
                                    "starts new evidence itself)",
                                    {"route": name, "state": "rolled_back"})
            rt = self.state.route(name)
            unit, names = self.unit(name)  # a group is judged afresh whole
            olds = {}
            for n in names:
                m = self.state.route(n)
                olds[n] = {"step": m.step, "since": m.step_started, "reason": m.step_reason}
            old = olds[name]
            for n in names:
                self._new_step(n, f"reset-evidence by {actor}: {reason}")
            unconfirmed = await self._push(names)
            weight = self.effective(name)
            evidence: dict[str, Any] = {"previous_step": old, "step": views.step_view(rt)}
            if len(names) > 1:  # a group: the audit shows every member's steps
                evidence["members"] = {
                    n: {"previous_step": olds[n], "step": views.step_view(self.state.route(n))}
                    for n in names}
            # a group answers as the group (its members' route objects), as resume does
            return self._finish(
                MutationResult(unit, old, views.step_view(rt), extra=self.group_extra(name)),
                unconfirmed=unconfirmed, action="reset_evidence", actor=actor, reason=reason,
                route=unit,
                before=weight, after=weight, evidence=evidence,
                **({"routes": names} if unit != name else {}),
            )

    async def reload(self, actor: str, reason: str = "reload") -> int:
        """Load the file again; raises ConfigError (the running config stays) when invalid.
        The new generation."""
        return (await self.reload_result(actor, reason)).extra["generation"]

    async def reload_result(self, actor: str, reason: str = "reload") -> MutationResult:
        """`reload`, answering with what it did: `extra["generation"]`, and the warning (a
        worker that did not confirm, a state or audit write that failed)."""
        async with self.lock:
            path = self.config_path
            text = await asyncio.to_thread(Path(path).read_text)
            try:
                config = await asyncio.to_thread(load_config, path, text)
            except ConfigError as exc:
                log.error("reload rejected", problems=[str(p) for p in exc.problems])
                self._audit(action="reload_rejected", actor=actor, reason=reason,
                            evidence={"problems": [str(p) for p in exc.problems],
                                      "config_hash": config_changes.config_hash(text)})
                raise
            old_config, old_hash = self.config, self.config_hash
            if config.store != old_config.store:  # the trail and its threads are per process
                log.warning("store: changed in routes.yaml; the running audit trail, approvals "
                            "and diff store stay as they are until the next restart",
                            running=old_config.store.backend, file=config.store.backend)
            before = {r.name: self.effective(r.name) for r in old_config.routes}
            self.config = config
            self.config_text = text
            self.config_hash = config_changes.config_hash(text)
            self.state.config_hash = self.config_hash
            replaced = self.state.apply_file(config.file_weights())
            new_steps = {}
            for r in config.routes:
                identity = steps.identity(config, r)
                old = before.get(r.name)
                if old is None:
                    why = ["route added by reload"]
                else:
                    why = [f"weight {old:g}% -> {self.effective(r.name):g}% (reload)"] \
                        if old != self.effective(r.name) else []
                    why += steps.changes(self.state.route(r.name).identity, identity)
                if why:
                    self._new_step(r.name, "; ".join(why), identity)
                    new_steps[r.name] = self.state.route(r.name).step_reason
                if r.promotion.approval is None:
                    self._void_approval(r.name, "promotion.approval was removed by a reload")
            self._align_groups("reload")  # proxy.control.groups
            self.generation += 1
            weights = self.weights_bp()
            installed = await asyncio.gather(
                *(p.install(config, text, self.generation, weights) for p in self.planes),
                return_exceptions=True,
            )
            # A worker that did not acknowledge has the new config waiting in its socket: the
            # reload is saved and audited all the same, naming it (as for a weight change).
            unconfirmed = self._unconfirmed(installed, "install", [r.name for r in config.routes])
            # A rollback may have landed while the new tables were being installed (rollback
            # does not wait for this lock): push the weights again so it cannot be undone. Not
            # to a plane that has not confirmed the install: it reads its socket in order, so
            # any rollback's weights reach it after the new tables, and waiting for it again
            # would hold this lock (and a rollback's answer) another ACK_TIMEOUT.
            confirmed = [p for p, outcome in zip(self.planes, installed, strict=True)
                         if not isinstance(outcome, BaseException)]
            unconfirmed += await self._push([r.name for r in config.routes], confirmed)
            for hook in self.on_reload:
                res = hook(config)
                if asyncio.iscoroutine(res):
                    await res
            after = {r.name: self.effective(r.name) for r in config.routes}
            summary = config_changes.summary(old_config, config)
            result = self._finish(
                MutationResult(None, before, after, extra={"generation": self.generation}),
                unconfirmed=unconfirmed, action="reload", actor=actor, reason=reason, route=None,
                before=before, after=after,
                evidence={"config_hash": {"from": old_hash, "to": self.config_hash},
                          "summary": config_changes.sentence(summary),
                          "new_steps": new_steps, **summary},
                generation=self.generation, replaced_runtime_weights=replaced,
            )
            for name, new in after.items():
                old = before.get(name)
                if old is not None and old != new:
                    self._notify("weight_changed", result, "reload", actor, reason,
                                 route=name, weights=(old, new))
            log.info("config reloaded", generation=self.generation, replaced=replaced,
                     changes=config_changes.sentence(summary))
            return result

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

    def _notify_once(self, seen: dict[str, int], event: str, name: str, decision: Decision,
                     view: dict, actor: str, rolled: MutationResult | None = None) -> None:
        """One `fail` (or `inconclusive`) per step: a gate that keeps answering it is heard
        once."""
        step = self.state.route(name).step
        if rolled is None and seen.get(name) == step:
            return
        seen[name] = step
        result = rolled or MutationResult(name, decision.from_weight, decision.to_weight)
        self._notify(event, result, "gate", actor, " ".join(decision.reasons),
                     evidence=view, weights=(decision.from_weight, decision.to_weight),
                     decision=event)

    # -- gate ----------------------------------------------------------------------------
    async def evidence(self, name: str) -> Evidence:
        """The current step's evidence: in-process counters, or Prometheus (every replica)."""
        spec = self.spec(name)
        weight = self.effective(name)
        prom = self.prometheus
        rt = self.state.route(name)
        now = time.time()
        window_s = max(1.0, now - rt.step_started)
        dry = {c.name: c.dry_run for c in spec.promotion.checks}
        if prom is not None and self.config.gate.metrics == "prometheus":
            ev = await prom.evidence(name, weight, window_s, views.shadow_on(spec),
                                     spec.promotion.checks)
            return dataclasses.replace(ev, **views.since(rt, now))
        checks: tuple[CheckResult, ...] = ()
        if spec.promotion.checks:
            if prom is None:
                checks = tuple(CheckResult(c.name, c.query, None, c.max, c.min, c.dry_run)
                               for c in spec.promotion.checks)
            else:
                checks = tuple(await asyncio.gather(
                    *(prom.check(c, window_s) for c in spec.promotion.checks)))
        checks = tuple(dataclasses.replace(c, dry_run=dry.get(c.name, False)) for c in checks)
        return views.evidence(name, weight, spec, self.agg.window(name), rt, checks, now)

    def _metrics_outage(self, error: str | None) -> None:
        """One log line when the gate's metrics go away and one when they are back (the auto
        loop and CI retries evaluate often; the gate's answer carries the reason each time)."""
        if error is not None and self.metrics_error is None:
            log.warning("gate metrics unavailable: every gate decision holds until they return",
                        error=error)
        elif error is None and self.metrics_error is not None:
            log.info("gate metrics available again", was=self.metrics_error)
        self.metrics_error = error

    async def _evaluate(self, name: str, acting: bool) -> GateResult:
        """The decision on the current step's evidence (a group's, for a member: every
        member's, proxy.control.groups); counted as an evaluation only."""
        group = self.group_of(name)
        if group is not None:
            return await self._evaluate_group(group, acting)
        return await self._evaluate_route(name, acting)

    async def _evaluate_route(self, name: str, acting: bool) -> GateResult:
        spec = self.spec(name)
        step = self.state.route(name).step
        try:
            ev = await self.evidence(name)
            self._metrics_outage(None)
            if self.rolled_back(name):
                # A frozen route is not promoted whatever the evidence says; the first reason
                # still says since when and why the evidence counts, as in every decision.
                decision = Decision(name, "hold", 0.0, 0.0, (
                    *([evidence_since(ev)] if ev.since is not None else []),
                    f"route '{name}' is rolled back; `strangler resume {name}` before "
                    "promoting it"), ev.to_dict(spec.promotion))
            else:
                decision = decide(ev, spec.promotion, acting=acting)
        except MetricsUnavailable as exc:
            # No evidence is not bad evidence: hold, never fail, and say why.
            weight = self.effective(name)
            rt = self.state.route(name)
            since = since_sentence(rt.step_started, max(0.0, time.time() - rt.step_started),
                                   rt.step, rt.step_reason)
            decision = Decision(name, "hold", weight, weight,
                                (since, f"metrics unavailable: {exc}"), {"error": str(exc)})
            self._metrics_outage(str(exc))
        self._count("gate_evaluations", name, decision.decision)
        view = decision.to_dict()
        view["evaluated_at"] = time.time()
        view["acted"] = False
        view["step"] = step
        return GateResult(decision, view)

    async def gate(self, name: str, act: bool, actor: str) -> GateResult:
        """Evaluate the gate; with `act`, do what it says (a decision, counted as one).
        Without, nothing changes and nothing is counted but the evaluation."""
        spec = self.spec(name)
        if act and self.rolled_back(name):
            raise RuntimeError_(409, f"route '{name}' is rolled back; resume it before promoting",
                                {"route": name, "state": "rolled_back"})
        result = await self._evaluate(name, acting=act)
        if not act:
            # a promotion that waits for a second person shows the request it waits for
            now = time.time()
            request = self._awaited_request(name, result.decision, now)
            if request is not None:
                result.view["approval"] = approval_view(request, now)
            return result
        decision, view = result.decision, result.view
        self._count("gate_decisions", name, decision.decision)
        if decision.decision == "promote":
            if self._needs_approval(name, decision.to_weight):
                request = await self._request_approval(
                    name, "promote", decision.from_weight, decision.to_weight, actor,
                    "promotion gate: " + " ".join(decision.reasons), view)
                view["approval"] = approval_view(request, time.time())
                result.notes.append(
                    f"awaiting approval: promoting to {decision.to_weight:g}% needs "
                    f"`strangler approve {name} --reason ...` by a named admin other than "
                    f"{request.requested_by}, before {stamp(request.expires_at)}")
            else:
                await self._apply_weight(name, decision.to_weight, actor,
                                         "promotion gate: " + " ".join(decision.reasons),
                                         "promote", view)
                view["acted"] = True
        elif decision.decision == "fail":
            rolled: MutationResult | None = None
            if spec.promotion.auto_rollback:
                (rolled,) = await self.rollback(
                    [name], actor, "promotion gate failed: " + " ".join(decision.reasons),
                    trigger="gate", evidence=view)
                view["acted"] = True
                result.notes.append("rolled back")
            self._notify_once(self._fail_notified, "fail", name, decision, view, actor, rolled)
        elif decision.decision == "inconclusive":
            self._inconclusive(name, decision, view, actor)
        for member in self.members(name):  # a group's decision is each member's
            step = view["step"] if member == name else view["members"][member].get("step")
            self._remember(member, view, step)
        return result

    def _inconclusive(self, name: str, decision: Decision, view: dict, actor: str) -> None:
        """Once per step: audited and notified; auto-promotion pauses on this step."""
        step = self.state.route(name).step
        if self._inconclusive_noted.get(name) != step:
            self._audit(action="gate_inconclusive", actor=actor, route=name,
                        before=decision.from_weight, after=decision.from_weight,
                        reason=" ".join(decision.reasons), evidence=view)
        self._notify_once(self._inconclusive_noted, "inconclusive", name, decision, view, actor)

    def _remember(self, name: str, view: dict, step: int) -> None:
        """The last decision acted on, kept with the step it judged: once a new step begins
        (the decision's own promotion or rollback included) it is no longer shown."""
        self.last_decision[name] = {
            k: view.get(k) for k in ("decision", "from_weight", "to_weight", "reasons",
                                     "evaluated_at", "acted", "approval")
        } | {"step": step}


__all__ = ["GateResult", "MutationResult", "PlaneLink", "Runtime", "RuntimeError_",
           "bp_to_weight", "default_actor"]


def unconfirmed_warning(unconfirmed: list[dict]) -> str:
    """The answer's warning for data planes that did not acknowledge a push."""
    which = "; ".join(
        (f"worker {u['worker']} (pid {u['pid']})" if "worker" in u else "the data plane")
        + f": {u['error']}" for u in unconfirmed)
    return (f"NOT CONFIRMED by every data plane: {which}. The change is saved and audited; a "
            "worker that is alive applies it as soon as it reads its control socket, before "
            "anything else it reads there")
