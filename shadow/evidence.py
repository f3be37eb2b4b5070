"""The numbers a gate decision is made from, for one route over the current step's window.

Sources (in-process counters, Prometheus) build an `Evidence`; `shadow.gate.decide` reads it;
`Evidence.to_dict` is what the CLI, the admin API and the audit log show. Latency is kept as
histogram counts (`shadow.stats.LATENCY`, `DIFFERENCE`), so every quantile and bound is
computed here, the same way whichever source counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.config.spec import PromotionSpec
from shadow.stats import (
    DIFFERENCE,
    LATENCY,
    diff_interval,
    quantile,
    quantile_bounds,
    total,
    wilson_interval,
)

P99 = 0.99
SIDE_ALPHA = 0.025  # each side's p99 bound: one-sided 97.5%, so the ratio's bounds are 95%
PAIRED_ALPHA = 0.05  # the paired median difference: one-sided 95% bounds (sign test)


@dataclass(frozen=True, slots=True)
class BackendEvidence:
    requests: int
    errors: int  # 5xx answers, including the proxy's own 502/504 for this backend
    latency: tuple[float, ...] = ()  # LATENCY bucket counts (empty: no latency data)

    @classmethod
    def of(cls, requests: int, errors: int, seconds: Iterable[float]) -> BackendEvidence:
        """From raw latencies (tests, tools): counted in the gate's own buckets."""
        counts = [0] * LATENCY.size
        for s in seconds:
            counts[LATENCY.index(s)] += 1
        return cls(requests, errors, tuple(counts))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def latency_samples(self) -> int:
        return round(total(self.latency))

    @property
    def p99(self) -> float | None:
        return quantile(LATENCY, self.latency, P99) if self.latency else None

    def p99_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """One-sided 97.5% lower and upper bounds of the true p99 (0 and inf when the sample
        cannot give one); `scale` projects the same distribution with that many times the
        samples."""
        counts = self.latency if scale == 1.0 else [c * scale for c in self.latency]
        return quantile_bounds(LATENCY, counts, P99, SIDE_ALPHA)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.p99_bounds()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _num(self.error_rate),
            "p99_seconds": _num(self.p99),
            "p99_lower_975": _num(low) if self.latency_samples else None,
            "p99_upper_975": _num(high),
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
    dry_run: bool = False  # reported, never judged

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
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    route: str
    weight: float  # current effective weight, percent
    legacy: BackendEvidence
    target: BackendEvidence
    compared: int  # shadow pairs compared (match or mismatch) in the window
    mismatched: int  # of which differed
    shadow_enabled: bool
    checks: tuple[CheckResult, ...] = ()
    # mirrors without an answer (or that the comparer could not judge); never mismatches
    shadow_errors: int = 0
    # (side, kind) -> count: the side that did not answer a mirror, and how
    shadow_error_kinds: tuple[tuple[tuple[str, str], int], ...] = ()
    paired: tuple[float, ...] = ()  # DIFFERENCE counts: target - legacy on the same request
    fallbacks: int = 0  # target failures a client never saw (legacy answered instead)
    step: int = 0
    since: float | None = None  # epoch seconds the step (this evidence) began
    since_reason: str = ""  # why the step began: "weight 1% -> 5%", "target changed", ...
    window_seconds: float = 0.0  # how long the step has gathered evidence
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # -- shadow -----------------------------------------------------------------------------
    @property
    def mismatch_rate(self) -> float | None:
        return self.mismatched / self.compared if self.compared > 0 else None

    def mismatch_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """95% Wilson interval of the mismatch rate; (0, 1) without comparisons."""
        return wilson_interval(self.mismatched * scale, self.compared * scale)  # type: ignore

    @property
    def target_shadow_errors(self) -> int:
        """Mirrors sent to target that it did not answer (connect, timeout, reset)."""
        return sum(n for (side, _), n in self.shadow_error_kinds if side == "target")

    @property
    def mirrored(self) -> int:
        """Pairs attempted: compared, or ended in an error."""
        return self.compared + self.shadow_errors

    @property
    def shadow_error_rate(self) -> float | None:
        return self.target_shadow_errors / self.mirrored if self.mirrored else None

    def shadow_error_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """95% Wilson interval of the share of mirrors target did not answer."""
        return wilson_interval(self.target_shadow_errors * scale,  # type: ignore[arg-type]
                               self.mirrored * scale)

    # -- errors -----------------------------------------------------------------------------
    def error_increase_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """One-sided 95% bounds of target error rate minus legacy error rate."""
        t, leg = self.target, self.legacy
        return diff_interval(t.errors * scale, t.requests * scale,  # type: ignore[arg-type]
                             leg.errors * scale, leg.requests * scale)  # type: ignore[arg-type]

    # -- latency ----------------------------------------------------------------------------
    def p99_ratio(self) -> float | None:
        """target p99 / legacy p99, or None when either p99 is missing."""
        t, leg = self.target.p99, self.legacy.p99
        if t is None or leg is None:
            return None
        if leg <= 0:
            return math.inf if t > 0 else 1.0
        return t / leg

    def p99_ratio_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """95% bounds of the true p99 ratio: each side's 97.5% bounds combined (Bonferroni);
        (0, inf) while a side has too few samples to bound its p99."""
        t_low, t_high = self.target.p99_bounds(scale)
        l_low, l_high = self.legacy.p99_bounds(scale)
        low = t_low / l_high if l_high > 0 and math.isfinite(l_high) else 0.0
        high = t_high / l_low if l_low > 0 else math.inf
        return low, high

    @property
    def pairs(self) -> int:
        return round(total(self.paired))

    def paired_median(self) -> float | None:
        return quantile(DIFFERENCE, self.paired, 0.5) if self.paired else None

    def paired_bounds(self, scale: float = 1.0) -> tuple[float, float]:
        """One-sided 95% bounds of the median of target-minus-legacy on the same requests
        (the sign test's: order statistics at p = 0.5)."""
        counts: Sequence[float] = self.paired if scale == 1.0 else [c * scale
                                                                    for c in self.paired]
        return quantile_bounds(DIFFERENCE, counts, 0.5, PAIRED_ALPHA)

    def paired_share_slower(self) -> float | None:
        """Share of pairs where target took longer (the sign test's statistic)."""
        n = total(self.paired)
        if n <= 0:
            return None
        return total(self.paired[DIFFERENCE.half:]) / n

    @property
    def route_requests(self) -> int:
        return self.legacy.requests + self.target.requests

    def to_dict(self, policy: PromotionSpec | None = None) -> dict[str, Any]:
        """Every number a decision uses; with `policy`, also the thresholds it was judged by."""
        m_low, m_high = self.mismatch_bounds()
        e_low, e_high = self.error_increase_bounds()
        s_low, s_high = self.shadow_error_bounds()
        r_low, r_high = self.p99_ratio_bounds()
        p_low, p_high = self.paired_bounds()
        out: dict[str, Any] = {
            "route": self.route,
            "weight": self.weight,
            "step": self.step,
            "since": self.since,
            "since_reason": self.since_reason,
            "window_seconds": round(self.window_seconds, 3),
            "legacy": self.legacy.to_dict(),
            "target": self.target.to_dict(),
            "fallbacks": self.fallbacks,
            "error_rate_increase": _num(_diff(self.target.error_rate, self.legacy.error_rate)),
            "error_rate_increase_lower_95": e_low,
            "error_rate_increase_upper_95": e_high,
            "p99_ratio": _num(self.p99_ratio()),
            "p99_ratio_lower_95": _num(r_low) if r_low > 0 else None,
            "p99_ratio_upper_95": _num(r_high),
            "shadow": {
                "enabled": self.shadow_enabled,
                "compared": self.compared,
                "mismatched": self.mismatched,
                "mismatch_rate": _num(self.mismatch_rate),
                "mismatch_rate_lower_95": m_low,
                "mismatch_rate_upper_95": m_high,
                "errors": self.shadow_errors,
                "target_errors": self.target_shadow_errors,
                "error_kinds": {f"{side}/{kind}": n for (side, kind), n in
                                self.shadow_error_kinds},
                "target_error_rate": _num(self.shadow_error_rate),
                "target_error_rate_lower_95": s_low,
                "target_error_rate_upper_95": s_high,
            },
            "paired_latency": {
                "pairs": self.pairs,
                "median_difference_seconds": _num(self.paired_median()),
                "lower_95": _num(p_low) if self.pairs else None,
                "upper_95": _num(p_high) if self.pairs else None,
                "share_target_slower": _num(self.paired_share_slower()),
            },
            "checks": [c.to_dict() for c in self.checks],
        }
        if policy is not None:
            out["thresholds"] = thresholds(policy)
        return out


def thresholds(policy: PromotionSpec) -> dict[str, Any]:
    hold = policy.max_hold
    approval = policy.approval
    return {
        "steps": list(policy.steps),
        "min_requests": policy.min_requests,
        "min_comparisons": policy.min_comparisons,
        "max_mismatch_rate": policy.max_mismatch_rate,
        "max_shadow_error_rate": policy.max_shadow_error_rate,
        "max_error_rate_increase": policy.max_error_rate_increase,
        "max_p99_ratio": policy.max_p99_ratio,
        "max_paired_latency_increase": policy.max_paired_latency_increase,
        "min_latency_samples": policy.min_latency_samples,
        "early_fail_samples": policy.early_fail_samples,
        "min_fail_events": policy.min_fail_events,
        "auto_rollback": policy.auto_rollback,
        "max_hold": None if hold is None else {"duration": hold.duration,
                                               "requests": hold.requests},
        "approval": None if approval is None else {"from_weight": approval.from_weight,
                                                   "expires": approval.expires},
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _num(x: float | None) -> float | None:
    """JSON-safe number: NaN and infinities become None."""
    if x is None or not math.isfinite(x):
        return None
    return x
