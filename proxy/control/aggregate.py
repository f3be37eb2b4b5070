"""Control-plane view of the traffic: totals since start plus the current step's window.

Deltas from every data plane (in-process or worker processes) are merged here. Each delta key
carries the step id it was recorded under; only keys of a route's current step count toward the
step window the gate judges, so every step is judged on its own evidence.

Shadow results are kept apart: `compared` counts pairs that were compared (match or mismatch),
`shadow_errors` the mirrors that got no answer (by side and kind) or could not be compared: an
error is never counted as a difference.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from proxy.dataplane.recorder import Delta
from shadow.stats import DIFFERENCE, LATENCY, quantile


def _is_error(code: int) -> bool:
    return code >= 500


def _zeros(size: int) -> list[int]:
    return [0] * size


@dataclass(slots=True)
class BackendWindow:
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: _zeros(LATENCY.size))
    latency_sum: float = 0.0

    def add_latency(self, counts: dict[int, int], seconds: float) -> None:
        lat = self.latency
        for i, c in counts.items():
            lat[i] += c
        self.latency_sum += seconds

    @property
    def p99(self) -> float | None:
        return quantile(LATENCY, self.latency, 0.99)

    @property
    def latency_samples(self) -> int:
        return sum(self.latency)


@dataclass(slots=True)
class RouteWindow:
    step: int = 0
    started: float = field(default_factory=time.time)
    legacy: BackendWindow = field(default_factory=BackendWindow)
    target: BackendWindow = field(default_factory=BackendWindow)
    compared: int = 0  # match + mismatch
    mismatched: int = 0
    shadow_errors: int = 0  # mirrors without an answer, and pairs the comparer could not judge
    # (side, kind) -> mirrors the side did not answer (side legacy|target; kind connect|...)
    shadow_error_kinds: dict[tuple[str, str], int] = field(default_factory=dict)
    paired: list[int] = field(default_factory=lambda: _zeros(DIFFERENCE.size))
    fallbacks: int = 0  # target failures answered by legacy (already in target's errors)

    def backend(self, name: str) -> BackendWindow | None:
        if name == "target":
            return self.target
        if name == "legacy":
            return self.legacy
        return None

    @property
    def target_shadow_errors(self) -> int:
        return sum(n for (side, _), n in self.shadow_error_kinds.items() if side == "target")


class Aggregator:
    def __init__(self, guard_horizon: float = 60.0) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (route, backend) -> [LATENCY counts, exact sum of seconds]
        self.latency: dict[tuple[str, str], list] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.shadow: dict[tuple[str, str], int] = {}
        self.shadow_errors: dict[tuple[str, str, str], int] = {}  # (route, side, kind)
        # route -> [DIFFERENCE counts, sum of d > 0, sum of |d| for d <= 0]
        self.paired: dict[str, list] = {}
        self.skipped: dict[tuple[str, str], int] = {}
        self.store_events: dict[str, int] = {}  # the comparers' diff store (event -> count)
        self.fallbacks: dict[tuple[str, str], int] = {}  # (route, reason)
        # Pinned (QA) requests and ignored pins: exported, never part of a window or `recent`.
        self.overrides: dict[tuple[str, str, int], int] = {}
        self.override_ignored: dict[tuple[str, str], int] = {}
        self.traces: dict[tuple[str], int] = {}  # spans by result (proxy.dataplane.otlp)
        self.steps: dict[str, RouteWindow] = {}
        self.totals: dict[str, RouteWindow] = {}
        # Guardrail: per route, (time, target req, target err, legacy req, legacy err) per merge.
        self.recent: dict[str, deque[tuple[float, int, int, int, int]]] = {}
        self.guard_horizon = guard_horizon
        self.listeners: list = []  # callables(route_names) after each merge

    def window(self, route: str) -> RouteWindow:
        w = self.steps.get(route)
        if w is None:
            w = self.steps[route] = RouteWindow()
        return w

    def total(self, route: str) -> RouteWindow:
        w = self.totals.get(route)
        if w is None:
            w = self.totals[route] = RouteWindow()
        return w

    def new_step(self, route: str, step: int, started: float | None = None) -> None:
        self.steps[route] = RouteWindow(step=step, started=started or time.time())

    def merge(self, delta: Delta, now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        touched: dict[str, list[int]] = {}
        for (route, step, backend, code), n in delta.requests.items():
            key = (route, backend, code)
            self.requests[key] = self.requests.get(key, 0) + n
            err = n if _is_error(code) else 0
            tb = self.total(route).backend(backend)
            if tb is not None:
                tb.requests += n
                tb.errors += err
            w = self.steps.get(route)
            if w is not None and w.step == step:
                b = w.backend(backend)
                if b is not None:
                    b.requests += n
                    b.errors += err
            t = touched.setdefault(route, [0, 0, 0, 0])
            if backend == "target":
                t[0] += n
                t[1] += err
            elif backend == "legacy":
                t[2] += n
                t[3] += err
        for (route, step, backend), (counts, seconds) in delta.latency.items():
            agg = self.latency.get((route, backend))
            if agg is None:
                agg = self.latency[(route, backend)] = [_zeros(LATENCY.size), 0.0]
            for i, c in counts.items():
                agg[0][i] += c
            agg[1] += seconds
            for w in self._windows(route, step):
                b = w.backend(backend)
                if b is not None:
                    b.add_latency(counts, seconds)
        for key, n in delta.upstream_errors.items():
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + n
        for tkey, n in delta.traces.items():
            self.traces[tkey] = self.traces.get(tkey, 0) + n
        for (route, step, result), n in delta.shadow.items():
            key = (route, result)
            self.shadow[key] = self.shadow.get(key, 0) + n
            for w in self._windows(route, step):
                if result == "error":
                    w.shadow_errors += n
                    continue
                w.compared += n
                if result == "mismatch":
                    w.mismatched += n
        for (route, step, side, kind), n in delta.shadow_errors.items():
            key3 = (route, side, kind)
            self.shadow_errors[key3] = self.shadow_errors.get(key3, 0) + n
            for w in self._windows(route, step):
                kinds = w.shadow_error_kinds
                kinds[(side, kind)] = kinds.get((side, kind), 0) + n
        for (route, step), (counts, slower, faster) in delta.paired.items():
            agg = self.paired.get(route)
            if agg is None:
                agg = self.paired[route] = [_zeros(DIFFERENCE.size), 0.0, 0.0]
            agg[1] += slower
            agg[2] += faster
            for hist in (agg[0], *(w.paired for w in self._windows(route, step))):
                for i, c in counts.items():
                    hist[i] += c
        for (route, step, reason), n in delta.fallbacks.items():
            self.fallbacks[(route, reason)] = self.fallbacks.get((route, reason), 0) + n
            for w in self._windows(route, step):
                w.fallbacks += n  # its target failure is in the target's errors already
        for key, n in delta.skipped.items():
            self.skipped[key] = self.skipped.get(key, 0) + n
        for okey, n in delta.overrides.items():
            self.overrides[okey] = self.overrides.get(okey, 0) + n
        for key, n in delta.override_ignored.items():
            self.override_ignored[key] = self.override_ignored.get(key, 0) + n
        for event, n in delta.store.items():
            self.store_events[event] = self.store_events.get(event, 0) + n
        for route, (tr, te, lr, le) in touched.items():
            dq = self.recent.setdefault(route, deque())
            dq.append((now, tr, te, lr, le))
            while dq and dq[0][0] < now - self.guard_horizon:
                dq.popleft()
        for listener in self.listeners:
            listener(set(touched))
        return set(touched)

    def _windows(self, route: str, step: int) -> list[RouteWindow]:
        """The route's totals, and its step window when `step` is the current one."""
        out = [self.total(route)]
        w = self.steps.get(route)
        if w is not None and w.step == step:
            out.append(w)
        return out

    def recent_rates(self, route: str, window: float, now: float | None = None) -> tuple[
        int, int, int, int
    ]:
        """(target requests, target errors, legacy requests, legacy errors) in the last window."""
        now = time.monotonic() if now is None else now
        tr = te = lr = le = 0
        for t, a, b, c, d in self.recent.get(route, ()):
            if t >= now - window:
                tr += a
                te += b
                lr += c
                le += d
        return tr, te, lr, le

    def reset_recent(self, route: str) -> None:
        self.recent.pop(route, None)
