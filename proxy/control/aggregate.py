"""Control-plane view of the traffic: totals since start plus the current weight step's window.

Deltas from every data plane (in-process or worker processes) are merged here. Each delta key
carries the step it was recorded under; only keys of a route's current step count toward the
step window the gate judges, so every step is judged on its own evidence.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from proxy.dataplane.recorder import LAT_BUCKETS, Delta, quantile


def _is_error(code: int) -> bool:
    return code >= 500


@dataclass(slots=True)
class BackendWindow:
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (LAT_BUCKETS + 1))

    def add_latency(self, hist: list[int]) -> None:
        lat = self.latency
        for i, c in enumerate(hist):
            if c:
                lat[i] += c

    @property
    def p99(self) -> float | None:
        return quantile(self.latency, 0.99)

    @property
    def latency_samples(self) -> int:
        return sum(self.latency)


@dataclass(slots=True)
class RouteWindow:
    step: int = 0
    started: float = field(default_factory=time.time)
    legacy: BackendWindow = field(default_factory=BackendWindow)
    target: BackendWindow = field(default_factory=BackendWindow)
    compared: int = 0
    mismatched: int = 0
    shadow_errors: int = 0

    def backend(self, name: str) -> BackendWindow | None:
        if name == "target":
            return self.target
        if name == "legacy":
            return self.legacy
        return None


class Aggregator:
    def __init__(self, guard_horizon: float = 60.0) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.shadow: dict[tuple[str, str], int] = {}
        self.skipped: dict[tuple[str, str], int] = {}
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
        for (route, step, backend), hist in delta.latency.items():
            key = (route, backend)
            agg = self.latency.get(key)
            if agg is None:
                agg = self.latency[key] = [0] * (LAT_BUCKETS + 1)
            for i, c in enumerate(hist):
                if c:
                    agg[i] += c
            tb = self.total(route).backend(backend)
            if tb is not None:
                tb.add_latency(hist)
            w = self.steps.get(route)
            if w is not None and w.step == step:
                b = w.backend(backend)
                if b is not None:
                    b.add_latency(hist)
        for key, n in delta.upstream_errors.items():
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + n
        for tkey, n in delta.traces.items():
            self.traces[tkey] = self.traces.get(tkey, 0) + n
        for (route, step, result), n in delta.shadow.items():
            key = (route, result)
            self.shadow[key] = self.shadow.get(key, 0) + n
            for w in (self.total(route), self.steps.get(route)):
                if w is None or (w is not self.totals.get(route) and w.step != step):
                    continue
                # A side that could not answer is not equivalent: an error counts as a
                # compared-and-mismatched request, as in the Prometheus source.
                if result == "error":
                    w.shadow_errors += n
                w.compared += n
                if result != "match":
                    w.mismatched += n
        for key, n in delta.skipped.items():
            self.skipped[key] = self.skipped.get(key, 0) + n
        for okey, n in delta.overrides.items():
            self.overrides[okey] = self.overrides.get(okey, 0) + n
        for key, n in delta.override_ignored.items():
            self.override_ignored[key] = self.override_ignored.get(key, 0) + n
        for route, (tr, te, lr, le) in touched.items():
            dq = self.recent.setdefault(route, deque())
            dq.append((now, tr, te, lr, le))
            while dq and dq[0][0] < now - self.guard_horizon:
                dq.popleft()
        for listener in self.listeners:
            listener(set(touched))
        return set(touched)

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
