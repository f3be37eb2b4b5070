"""What the control plane shows of a route: the window numbers, and the gate's evidence.

Pure functions over the aggregator's windows and the route's step; `Runtime` calls them for
`GET /admin/routes`, the dashboard and the gate. Shadow errors are shown beside, never inside,
the mismatch numbers.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.config.spec import RouteSpec
from proxy.control.aggregate import BackendWindow, RouteWindow
from proxy.control.state import RouteRuntime
from shadow.evidence import BackendEvidence, CheckResult, Evidence
from shadow.stats import DIFFERENCE, quantile, quantile_bounds


def backend_evidence(b: BackendWindow) -> BackendEvidence:
    return BackendEvidence(b.requests, b.errors, tuple(b.latency))


def evidence(name: str, weight: float, spec: RouteSpec, win: RouteWindow, rt: RouteRuntime,
             checks: tuple[CheckResult, ...], now: float | None = None) -> Evidence:
    """The current step's evidence from the in-process counters."""
    now = time.time() if now is None else now
    return Evidence(
        route=name,
        weight=weight,
        legacy=backend_evidence(win.legacy),
        target=backend_evidence(win.target),
        compared=win.compared,
        mismatched=win.mismatched,
        shadow_enabled=shadow_on(spec),
        checks=checks,
        shadow_errors=win.shadow_errors,
        shadow_error_kinds=tuple(sorted(win.shadow_error_kinds.items())),
        paired=tuple(win.paired),
        fallbacks=win.fallbacks,
        **since(rt, now),
    )


def since(rt: RouteRuntime, now: float) -> dict[str, Any]:
    """The Evidence fields that say which step it is and since when."""
    return {"step": rt.step, "since": rt.step_started, "since_reason": rt.step_reason,
            "window_seconds": max(0.0, now - rt.step_started)}


def shadow_on(spec: RouteSpec) -> bool:
    return spec.shadow.enabled and spec.shadow.sample > 0


def window_view(w: RouteWindow) -> dict:
    def backend(b: BackendWindow) -> dict:
        p99 = b.p99
        return {
            "requests": b.requests,
            "errors": b.errors,
            "error_rate": (b.errors / b.requests) if b.requests else None,
            "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
        }

    pairs = sum(w.paired)
    median = quantile(DIFFERENCE, w.paired, 0.5)
    low, high = quantile_bounds(DIFFERENCE, w.paired, 0.5, 0.05)
    return {
        "since": w.started,
        "legacy": backend(w.legacy),
        "target": backend(w.target),
        "fallbacks": w.fallbacks,
        "shadow": {
            "compared": w.compared,
            "mismatched": w.mismatched,
            "errors": w.shadow_errors,
            "target_errors": w.target_shadow_errors,
            "error_kinds": {f"{side}/{kind}": n
                            for (side, kind), n in sorted(w.shadow_error_kinds.items())},
            "mismatch_rate": (w.mismatched / w.compared) if w.compared else None,
        },
        "paired_latency": {
            "pairs": pairs,
            "median_ms": _ms(median),
            "lower_95_ms": _ms(low) if pairs else None,
            "upper_95_ms": _ms(high) if pairs else None,
        },
    }


def _ms(seconds: float | None) -> float | None:
    if seconds is None or seconds != seconds or abs(seconds) == float("inf"):
        return None
    return round(seconds * 1000, 3)


def match_view(spec: RouteSpec) -> dict:
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


def step_view(rt: RouteRuntime) -> dict:
    return {"id": rt.step, "started": rt.step_started, "reason": rt.step_reason}


def decision_view(last: dict | None, step: int, now: float) -> dict | None:
    """The last decision acted on, when it is about the current step; with its age."""
    if not last or last.get("step") != step:
        return None
    return {**last, "age_seconds": round(max(0.0, now - last["evaluated_at"]), 1)}
