"""The numbers a gate decision is made from, for one route over the current step's window.

Sources (in-process counters, Prometheus) build an `Evidence`; `shadow.gate.decide` reads it;
`Evidence.to_dict` is what the CLI, the admin API and the audit log show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from proxy.config.spec import PromotionSpec
from shadow.stats import diff_interval, wilson_interval


@dataclass(frozen=True, slots=True)
class BackendEvidence:
    requests: int
    errors: int  # 5xx answers, including the proxy's own 502/504 for this backend
    p99: float | None  # seconds
    latency_samples: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _num(self.error_rate),
            "p99_seconds": _num(self.p99),
            "latency_samples": self.latency_samples,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A custom check (`promotion.checks`): a PromQL value and its bounds."""

    name: str
    query: str
    value: float | None  # None: the query returned no data
    max: float | None = None
    min: float | None = None

    @property
    def has_data(self) -> bool:
        return self.value is not None and not math.isnan(self.value)

    @property
    def ok(self) -> bool | None:
        """True within bounds, False outside, None without data."""
        if not self.has_data:
            return None
        assert self.value is not None
        if self.max is not None and self.value > self.max:
            return False
        return not (self.min is not None and self.value < self.min)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "query": self.query,
            "value": _num(self.value),
            "max": self.max,
            "min": self.min,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    route: str
    weight: float  # current effective weight, percent
    legacy: BackendEvidence
    target: BackendEvidence
    compared: int  # shadow comparisons in the window
    mismatched: int  # of which differed
    shadow_enabled: bool
    checks: tuple[CheckResult, ...] = ()

    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatched / self.compared if self.compared > 0 else None

    def mismatch_bounds(self) -> tuple[float, float]:
        """95% Wilson interval of the mismatch rate; (0, 1) without comparisons."""
        return wilson_interval(self.mismatched, self.compared)

    def error_increase_bounds(self) -> tuple[float, float]:
        """One-sided 95% bounds of target error rate minus legacy error rate."""
        return diff_interval(
            self.target.errors, self.target.requests, self.legacy.errors, self.legacy.requests
        )

    def p99_ratio(self) -> float | None:
        """target p99 / legacy p99, or None when either p99 is missing."""
        t, leg = self.target.p99, self.legacy.p99
        if t is None or leg is None:
            return None
        if leg <= 0:
            return math.inf if t > 0 else 1.0
        return t / leg

    def to_dict(self, policy: PromotionSpec | None = None) -> dict[str, Any]:
        """Every number a decision uses; with `policy`, also the thresholds it was judged by."""
        m_low, m_high = self.mismatch_bounds()
        e_low, e_high = self.error_increase_bounds()
        out: dict[str, Any] = {
            "route": self.route,
            "weight": self.weight,
            "legacy": self.legacy.to_dict(),
            "target": self.target.to_dict(),
            "error_rate_increase": _num(_diff(self.target.error_rate, self.legacy.error_rate)),
            "error_rate_increase_lower_95": e_low,
            "error_rate_increase_upper_95": e_high,
            "p99_ratio": _num(self.p99_ratio()),
            "shadow": {
                "enabled": self.shadow_enabled,
                "compared": self.compared,
                "mismatched": self.mismatched,
                "mismatch_rate": _num(self.mismatch_rate),
                "mismatch_rate_lower_95": m_low,
                "mismatch_rate_upper_95": m_high,
            },
            "checks": [c.to_dict() for c in self.checks],
        }
        if policy is not None:
            out["thresholds"] = {
                "steps": list(policy.steps),
                "min_requests": policy.min_requests,
                "min_comparisons": policy.min_comparisons,
                "max_mismatch_rate": policy.max_mismatch_rate,
                "max_error_rate_increase": policy.max_error_rate_increase,
                "max_p99_ratio": policy.max_p99_ratio,
                "min_latency_samples": policy.min_latency_samples,
                "early_fail_samples": policy.early_fail_samples,
                "min_fail_events": policy.min_fail_events,
                "auto_rollback": policy.auto_rollback,
            }
        return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _num(x: float | None) -> float | None:
    """JSON-safe number: NaN and infinities become None."""
    if x is None or not math.isfinite(x):
        return None
    return x
