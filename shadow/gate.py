"""The promotion gate: a pure function from evidence and policy to a decision.

`decide` changes nothing and reads no clock; the caller (CLI, admin API, auto-promotion loop)
acts on the `Decision`. The rules, in the order they are applied:

1. complete - the route is at 100%: nothing to promote (the evidence is still reported).
2. fail - the evidence is clearly bad (any one of these):
   - the mismatch rate's 95% Wilson *lower* bound is above `max_mismatch_rate`;
   - target's error rate exceeds legacy's by more than `max_error_rate_increase` with 95%
     confidence (the lower end of the one-sided Newcombe bound is above the margin);
   - target p99 / legacy p99 is above `max_p99_ratio`, each backend having at least
     `min_latency_samples` latency samples;
   - a custom check's value is outside its `max`/`min`.
   A fail needs no `min_requests`/`min_comparisons`: it is judged as soon as the test has
   `early_fail_samples` samples (or the configured minimum, if lower) and at least
   `min_fail_events` bad events (mismatches or target errors). The event floor is there because
   Wilson's lower bound is known to be optimistic with one or two events (Brown, Cai &
   DasGupta 2001): a single odd response must not roll a route back.
3. hold - not enough evidence, or inconclusive: target requests < `min_requests` (not at
   weight 0), comparisons < `min_comparisons` (with shadowing on), a check without data, fewer
   than `min_latency_samples` latency samples on a backend, or a bound that straddles its limit.
4. promote - the mismatch rate's 95% Wilson upper bound is at most `max_mismatch_rate`, the
   error increase's 95% upper bound is at most `max_error_rate_increase`, the p99 ratio is at
   most `max_p99_ratio` and every check is within bounds: go to the next entry of `steps`
   above the current weight (100 when there is none).
   At weight 0 (not started) only the shadow evidence and the checks are judged; with
   shadowing off there is nothing to wait for and the route goes to the first step.
A fail moves to weight 0 when `auto_rollback` is on, otherwise it leaves the weight alone.
The three floors (`min_latency_samples`, `early_fail_samples`, `min_fail_events`; defaults 100,
50, 3) are `promotion` fields read from the policy: they apply whatever `min_requests` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.config.spec import PromotionSpec
from shadow.evidence import CheckResult, Evidence
from shadow.stats import within_margin

DecisionKind = Literal["promote", "complete", "hold", "fail"]

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    decision: DecisionKind
    from_weight: float
    to_weight: float
    reasons: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object (`strangler gate --json`, the admin API, the audit log)."""
        return {
            "route": self.route,
            "decision": self.decision,
            "from_weight": self.from_weight,
            "to_weight": self.to_weight,
            "reasons": list(self.reasons),
            "evidence": self.evidence,
        }


def next_step(weight: float, steps: tuple[float, ...]) -> float:
    """The first step strictly above `weight`; 100 when the ladder has none."""
    for s in sorted(steps):
        if s > weight + _EPS:
            return s
    return 100.0


def decide(evidence: Evidence, policy: PromotionSpec) -> Decision:
    ev = evidence
    w = ev.weight
    numbers = ev.to_dict(policy)

    def out(kind: DecisionKind, to: float, reasons: list[str]) -> Decision:
        return Decision(ev.route, kind, w, to, tuple(reasons), numbers)

    if w >= 100.0 - _EPS:
        return out("complete", w, [f"{ev.route} is at 100%: nothing left to promote."])

    fails = _fail_reasons(ev, policy)
    if fails:
        to = 0.0 if policy.auto_rollback else w
        action = (
            "rolling back to legacy (auto_rollback is on)."
            if policy.auto_rollback
            else f"staying at {_pct(w)} (auto_rollback is off)."
        )
        return out("fail", to, [*fails, f"Gate failed at {_pct(w)}: {action}"])

    holds, passes = _judge(ev, policy)
    if holds:
        return out("hold", w, [*holds, f"Holding at {_pct(w)} until the evidence is conclusive."])

    to = next_step(w, policy.steps)
    return out("promote", to, [*passes, f"Promoting from {_pct(w)} to {_pct(to)}."])


# --- fail ------------------------------------------------------------------------------------


def _floor(configured: int, p: PromotionSpec) -> int:
    """Samples before a fail is judged: `early_fail_samples`, or the configured minimum."""
    return max(1, min(configured, p.early_fail_samples))


def _bound_above(samples: int, minimum: int, events: int,
                 bounds: Callable[[], tuple[float, float]], limit: float,
                 p: PromotionSpec) -> float | None:
    """The 95% lower bound from `bounds` when it is above `limit`, judged only once there are
    enough samples and failing events (else None)."""
    if samples >= _floor(minimum, p) and events >= p.min_fail_events:
        low = bounds()[0]
        if low > limit:
            return low
    return None


def _mismatch_fail(ev: Evidence, p: PromotionSpec, low: float) -> str:
    return (f"{ev.mismatched} of {ev.compared} shadow comparisons differed "
            f"({_rate(ev.mismatch_rate)}); even the 95% lower bound {_rate(low)} is above "
            f"the limit {_rate(p.max_mismatch_rate)}.")


def _errors_fail(ev: Evidence, p: PromotionSpec, low: float) -> str:
    return (f"{_target_errors(ev)} is above legacy's {_legacy_rate(ev)}; with 95% confidence "
            f"the increase is at least {_points(low)}, above the limit "
            f"{_points(p.max_error_rate_increase)}.")


def _fail_reasons(ev: Evidence, p: PromotionSpec) -> list[str]:
    reasons: list[str] = []
    t, leg = ev.target, ev.legacy
    low = _bound_above(ev.compared, p.min_comparisons, ev.mismatched, ev.mismatch_bounds,
                       p.max_mismatch_rate, p)
    if low is not None:
        reasons.append(_mismatch_fail(ev, p, low))
    low = _bound_above(t.requests, p.min_requests, t.errors, ev.error_increase_bounds,
                       p.max_error_rate_increase, p)
    if low is not None:
        reasons.append(_errors_fail(ev, p, low))

    ratio = ev.p99_ratio()
    if _latency_judgeable(ev, p) and ratio is not None and ratio > p.max_p99_ratio:
        reasons.append(
            f"{_p99(ev, ratio)}, above the limit {p.max_p99_ratio:.2f}x "
            f"({t.latency_samples} and {leg.latency_samples} samples)."
        )

    reasons += [_check(c, within=False) for c in ev.checks if c.ok is False]
    return reasons


# --- hold or promote --------------------------------------------------------------------------


def _judge(ev: Evidence, p: PromotionSpec) -> tuple[list[str], list[str]]:
    """(reasons to hold, sentences for a promotion) - promote only when the first is empty."""
    holds: list[str] = []
    passes: list[str] = []
    started = ev.weight > _EPS
    t, leg = ev.target, ev.legacy

    if started and t.requests < p.min_requests:
        holds.append(
            f"target has served {t.requests} of the {p.min_requests} requests needed at this "
            f"step ({p.min_requests - t.requests} more)."
        )

    if ev.shadow_enabled:
        if ev.compared < p.min_comparisons:
            holds.append(
                f"{ev.compared} of the {p.min_comparisons} shadow comparisons needed so far "
                f"({p.min_comparisons - ev.compared} more)."
            )
        _, high = ev.mismatch_bounds()
        text = (
            f"mismatch rate {_rate(ev.mismatch_rate)} ({ev.mismatched} of {ev.compared}); "
            f"its 95% upper bound {_rate(high)}"
        )
        if high <= p.max_mismatch_rate:
            passes.append(f"{text} is within the limit {_rate(p.max_mismatch_rate)}.")
        elif ev.compared >= p.min_comparisons:
            holds.append(
                f"{text} is above the limit {_rate(p.max_mismatch_rate)}: "
                f"inconclusive, more comparisons are needed."
            )
    elif not started:
        passes.append("shadowing is off, so there is no evidence to gather before the first step.")

    if started:
        _, high = ev.error_increase_bounds()
        text = (
            f"{_target_errors(ev)} vs legacy's {_legacy_rate(ev)}: the increase is at most "
            f"{_points(high)} (95% upper bound)"
        )
        if within_margin(t.errors, t.requests, leg.errors, leg.requests, p.max_error_rate_increase):
            passes.append(f"{text}, within the limit {_points(p.max_error_rate_increase)}.")
        elif t.requests >= p.min_requests:
            holds.append(
                f"{text}, above the limit {_points(p.max_error_rate_increase)}: "
                f"inconclusive, more target requests are needed."
            )

        if not _latency_judgeable(ev, p):
            holds.append(
                f"a p99 needs at least {p.min_latency_samples} latency samples per backend "
                f"(target has {t.latency_samples}, legacy {leg.latency_samples})."
            )
        elif (ratio := ev.p99_ratio()) is None:
            holds.append("p99 latency is not available for both backends.")
        else:
            passes.append(f"{_p99(ev, ratio)}, within the limit {p.max_p99_ratio:.2f}x.")

    for c in ev.checks:
        if c.ok is None:
            holds.append(f"check {c.name} has no data (query: {c.query}).")
        elif c.ok:
            passes.append(_check(c, within=True))
    return holds, passes


def _latency_judgeable(ev: Evidence, p: PromotionSpec) -> bool:
    n = p.min_latency_samples
    return ev.target.latency_samples >= n and ev.legacy.latency_samples >= n


# --- wording --------------------------------------------------------------------------------


def _pct(weight: float) -> str:
    return f"{weight:g}%"


def _rate(r: float | None) -> str:
    return "n/a" if r is None else f"{r * 100:.2f}%"


def _points(d: float) -> str:
    return f"{d * 100:.2f} points"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _errors(side: Any) -> str:
    """One backend's error rate with its counts, e.g. `0.40% (2 of 500)`."""
    return f"{_rate(side.error_rate)} ({side.errors} of {side.requests})"


def _legacy_rate(ev: Evidence) -> str:
    return _errors(ev.legacy)


def _target_errors(ev: Evidence) -> str:
    return f"target error rate {_errors(ev.target)}"


def _p99(ev: Evidence, ratio: float) -> str:
    return f"target p99 {_ms(ev.target.p99)} is {ratio:.2f}x legacy's {_ms(ev.legacy.p99)}"


def _check(c: CheckResult, within: bool) -> str:
    """The sentence of a judged custom check: its value, within or outside its bounds."""
    parts = []
    if c.max is not None:
        parts.append(f"max {c.max:g}")
    if c.min is not None:
        parts.append(f"min {c.min:g}")
    limits = " and ".join(parts) if parts else "no bounds"
    return f"check {c.name} is {c.value:g}, {'within' if within else 'outside'} {limits}."
