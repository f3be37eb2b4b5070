"""The promotion gate: a pure function from evidence and policy to a decision.

`decide` changes nothing and reads no clock; the caller (CLI, admin API, auto-promotion loop)
acts on the `Decision`. Every bound is judged the same way: a 95% confidence bound on the
quantity; **fail** when even its optimistic end is beyond the limit, **pass** when even its
pessimistic end is within it, **hold** while it straddles the limit (each hold says how much
more evidence it needs at the current rate, and roughly how long that is). In order:

1. complete - the route is at 100%: nothing to promote (the evidence is still reported).
2. fail - the evidence is clearly bad (any one of these):
   - mismatch rate: the 95% Wilson *lower* bound is above `max_mismatch_rate`;
   - shadow errors: the share of mirrored requests that target did not answer (connect,
     timeout, reset; never counted as differences) has its 95% lower bound above
     `max_shadow_error_rate`;
   - error rate: target's exceeds legacy's by more than `max_error_rate_increase` with 95%
     confidence (the lower end of the one-sided Newcombe bound is above the margin);
   - p99 ratio: its 95% lower bound (order statistics, each side at 97.5%) is above
     `max_p99_ratio`;
   - paired latency: the median of target-minus-legacy on the same mirrored requests has its
     95% lower bound (sign test) above `max_paired_latency_increase`;
   - a custom check's value is outside its `max`/`min` (not a `dry_run` one).
   A fail needs no `min_requests`/`min_comparisons`: it is judged as soon as the test has
   `early_fail_samples` samples (or the configured minimum, if lower) and, for counted
   events, at least `min_fail_events` of them. The event floor is there because Wilson's lower
   bound is known to be optimistic with one or two events (Brown, Cai & DasGupta 2001): a
   single odd response must not roll a route back.
3. hold - not enough evidence: target requests < `min_requests` (not at weight 0),
   comparisons < `min_comparisons` (with shadowing on), fewer than `min_latency_samples` per
   backend (or pairs) for a latency bound, a check without data, or a bound that straddles.
   **inconclusive** instead of hold once the step has held for `max_hold` (a duration or a
   number of route requests): the evidence did not settle; auto-promotion pauses.
4. promote - every bound passes: go to the next entry of `steps` above the current weight (100
   when there is none). At weight 0 (not started) only the shadow evidence (comparisons,
   shadow errors, paired latency) and the checks are judged; with shadowing off there is
   nothing to wait for and the route goes to the first step.
A fail moves to weight 0 when `auto_rollback` is on, otherwise it leaves the weight alone.
With `acting=False` (`strangler gate`, the dashboard) the sentences say what promote *would* do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.config.spec import PromotionSpec
from shadow.evidence import CheckResult, Evidence
from shadow.stats import more_needed

DecisionKind = Literal["promote", "complete", "hold", "fail", "inconclusive"]
Status = Literal["pass", "fail", "hold"]

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    decision: DecisionKind
    from_weight: float
    to_weight: float
    reasons: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)
    # every bound not yet decided: {bound, more, unit, seconds} (seconds: at the current rate)
    pending: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object (`strangler gate --json`, the admin API, the audit log)."""
        return {
            "route": self.route,
            "decision": self.decision,
            "from_weight": self.from_weight,
            "to_weight": self.to_weight,
            "reasons": list(self.reasons),
            "pending": [dict(p) for p in self.pending],
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """One bound's answer: its sentence, and for a hold what it still needs."""

    bound: str
    status: Status
    text: str
    more: float | None = None  # units still needed (None: unknown, or never at these rates)
    unit: str = ""
    rate: float = 0.0  # units per second seen so far at this step


def next_step(weight: float, steps: tuple[float, ...]) -> float:
    """The first step strictly above `weight`; 100 when the ladder has none."""
    for s in sorted(steps):
        if s > weight + _EPS:
            return s
    return 100.0


def decide(evidence: Evidence, policy: PromotionSpec, acting: bool = False) -> Decision:
    ev = evidence
    w = ev.weight
    numbers = ev.to_dict(policy)
    head = [evidence_since(ev)] if ev.since is not None else []

    def out(kind: DecisionKind, to: float, reasons: list[str],
            pending: tuple[dict[str, Any], ...] = ()) -> Decision:
        return Decision(ev.route, kind, w, to, tuple(head + reasons), numbers, pending)

    if w >= 100.0 - _EPS:
        return out("complete", w, [f"{ev.route} is at 100%: nothing left to promote."])

    verdicts = judge(ev, policy)
    fails = [v.text for v in verdicts if v.status == "fail"]
    holds = [v for v in verdicts if v.status == "hold"]
    passes = [v.text for v in verdicts if v.status == "pass"]
    if fails:
        to = 0.0 if policy.auto_rollback else w
        if policy.auto_rollback:
            action = ("Gate failed at {w}: rolling back to legacy (auto_rollback is on)."
                      if acting else
                      "The gate fails at {w}: promote would roll back to legacy "
                      "(auto_rollback is on).")
        else:
            action = ("Gate failed at {w}: staying at {w} (auto_rollback is off)." if acting
                      else "The gate fails at {w}: promote would leave the weight at {w} "
                      "(auto_rollback is off).")
        return out("fail", to, [*fails, action.format(w=_pct(w))])

    if holds:
        pending = tuple(_pending(v) for v in holds)
        texts = [v.text for v in holds]
        limit = _held_too_long(ev, policy)
        if limit is not None:
            return out("inconclusive", w, [*texts, (
                f"Inconclusive at {_pct(w)}: the evidence has not settled within max_hold "
                f"({limit}). Auto-promotion pauses on this step; `strangler reset-evidence` "
                "starts it afresh, or change the step or the policy.")], pending)
        return out("hold", w, [*texts, f"Holding at {_pct(w)} until the evidence is "
                                       "conclusive."], pending)

    to = next_step(w, policy.steps)
    final = (f"Promoting from {_pct(w)} to {_pct(to)}." if acting
             else f"The gate passes: promote would go from {_pct(w)} to {_pct(to)}.")
    return out("promote", to, [*passes, final])


def judge(ev: Evidence, p: PromotionSpec) -> list[Verdict]:
    """Every bound's verdict (fails, holds and passes; informational lines pass)."""
    started = ev.weight > _EPS
    found: list[Verdict | None] = []
    if started:
        found.append(_requests_floor(ev, p))
    if ev.shadow_enabled:
        found += [_comparisons_floor(ev, p), _mismatches(ev, p), _shadow_errors(ev, p)]
    elif not started:
        found.append(Verdict("shadow", "pass", "shadowing is off, so there is no evidence to "
                             "gather before the first step."))
    if started:
        found += [_error_increase(ev, p), _p99(ev, p)]
    if ev.shadow_enabled or ev.pairs:
        found.append(_paired(ev, p))
    found += [_check(c) for c in ev.checks]
    return [v for v in found if v is not None]


# --- the bounds -------------------------------------------------------------------------------


def _floor(configured: int, p: PromotionSpec) -> int:
    """Samples before a fail is judged: `early_fail_samples`, or the configured minimum."""
    return max(1, min(configured, p.early_fail_samples))


def _requests_floor(ev: Evidence, p: PromotionSpec) -> Verdict | None:
    t = ev.target.requests
    if t >= p.min_requests:
        return None
    more = p.min_requests - t
    return _hold("min_requests", f"target has served {t} of the {p.min_requests} requests "
                 "needed at this step", more, "target requests", _rate(t, ev))


def _comparisons_floor(ev: Evidence, p: PromotionSpec) -> Verdict | None:
    if ev.compared >= p.min_comparisons:
        return None
    more = p.min_comparisons - ev.compared
    return _hold("min_comparisons", f"{ev.compared} of the {p.min_comparisons} shadow "
                 "comparisons needed so far", more, "comparisons", _rate(ev.compared, ev))


def _proportion(bound: str, x: int, n: int, floor_n: int, limit: float,
                bounds: Callable[[float], tuple[float, float]], text: str, unit: str,
                rate: float | None, p: PromotionSpec) -> Verdict:
    """A rate judged by its 95% bounds (Wilson or Newcombe): fail, pass or hold."""
    if n == 0:
        return _hold(bound, f"no {unit} yet at this step", None, unit, rate)
    low, high = bounds(1.0)
    if n >= floor_n and x >= p.min_fail_events and low > limit:
        return Verdict(bound, "fail", f"{text}; even the 95% lower bound {_r(low)} is above the "
                       f"limit {_r(limit)}.")
    if high <= limit:
        return Verdict(bound, "pass", f"{text}; the 95% upper bound {_r(high)} is within the "
                       f"limit {_r(limit)}.")
    return _straddle(bound, f"{text}; its 95% bounds {_r(low)} to {_r(high)} straddle the "
                     f"limit {_r(limit)}", x / n, limit, bounds, n, unit, rate)


def _mismatches(ev: Evidence, p: PromotionSpec) -> Verdict:
    text = (f"{ev.mismatched} of {ev.compared} shadow comparisons differed "
            f"({_r(ev.mismatch_rate)})")
    return _proportion("mismatch_rate", ev.mismatched, ev.compared,
                       _floor(p.min_comparisons, p), p.max_mismatch_rate, ev.mismatch_bounds,
                       text, "comparisons", _rate(ev.compared, ev), p)


def _shadow_errors(ev: Evidence, p: PromotionSpec) -> Verdict | None:
    if not ev.shadow_errors:
        return None  # nothing to say; with no error the bound cannot fail, and mismatches
        #              already hold a step that has too few comparisons
    kinds = ", ".join(f"{side} {kind} {n}" for (side, kind), n in ev.shadow_error_kinds)
    comparer = ev.shadow_errors - sum(n for _, n in ev.shadow_error_kinds)
    if comparer:
        kinds = ", ".join(x for x in (kinds, f"not comparable {comparer}") if x)
    text = (f"errors, not differences: {ev.target_shadow_errors} of {ev.mirrored} mirrored "
            f"requests got no answer from target ({kinds})")
    if not ev.target_shadow_errors:  # legacy-side or comparer errors: reported, not judged
        return Verdict("shadow_errors", "pass", f"shadow errors: {ev.shadow_errors} of "
                       f"{ev.mirrored} mirrored requests could not be compared ({kinds}); "
                       "none was target's.")
    return _proportion("shadow_error_rate", ev.target_shadow_errors, ev.mirrored,
                       _floor(p.min_comparisons, p), p.max_shadow_error_rate,
                       ev.shadow_error_bounds, text, "mirrored requests",
                       _rate(ev.mirrored, ev), p)


def _error_increase(ev: Evidence, p: PromotionSpec) -> Verdict:
    t, leg = ev.target, ev.legacy
    seen = ""
    if ev.fallbacks:
        seen = (f"; {ev.fallbacks} of them were answered by legacy after the fallback, so "
                "clients did not see them")
    text = (f"target error rate {_errors(t)} vs legacy's {_errors(leg)}{seen}: the increase "
            f"(95% one-sided bounds)")
    low, high = ev.error_increase_bounds()
    limit = p.max_error_rate_increase
    if t.requests >= _floor(p.min_requests, p) and t.errors >= p.min_fail_events \
            and low > limit:
        return Verdict("error_rate_increase", "fail", f"{text} is at least {_pts(low)}, above "
                       f"the limit {_pts(limit)}.")
    if high <= limit:
        return Verdict("error_rate_increase", "pass", f"{text} is at most {_pts(high)}, within "
                       f"the limit {_pts(limit)}.")
    if t.requests == 0:
        return _hold("error_rate_increase", f"{text}: no target requests yet", None,
                     "target requests", _rate(0, ev))
    return _straddle("error_rate_increase", f"{text} is {_pts(low)} to {_pts(high)}, "
                     f"straddling the limit {_pts(limit)}",
                     (t.error_rate or 0.0) - (leg.error_rate or 0.0), limit,
                     ev.error_increase_bounds, t.requests, "target requests",
                     _rate(t.requests, ev))


def _p99(ev: Evidence, p: PromotionSpec) -> Verdict | None:
    limit = p.max_p99_ratio
    if limit is None:
        return None
    t, leg = ev.target, ev.legacy
    n_t, n_l = t.latency_samples, leg.latency_samples
    ratio = ev.p99_ratio()
    low, high = ev.p99_ratio_bounds()
    text = (f"target p99 {_ms(t.p99)} is {_x(ratio)} legacy's {_ms(leg.p99)} ({n_t} and "
            f"{n_l} samples; 95% bounds {_x(low)} to {_x(high)})")
    early = _floor(p.min_latency_samples, p)
    if min(n_t, n_l) >= early and low > limit:
        return Verdict("p99_ratio", "fail", f"{text}: even the lower bound is above the limit "
                       f"{limit:.2f}x.")
    if min(n_t, n_l) < p.min_latency_samples:
        more = p.min_latency_samples - n_t
        if n_t >= p.min_latency_samples:
            return _hold("min_latency_samples", f"a p99 needs at least "
                         f"{p.min_latency_samples} latency samples per backend (legacy has "
                         f"{n_l})", p.min_latency_samples - n_l, "legacy latency samples",
                         _rate(n_l, ev))
        return _hold("min_latency_samples", f"a p99 needs at least {p.min_latency_samples} "
                     f"latency samples per backend (target has {n_t}, legacy {n_l})", more,
                     "target latency samples", _rate(n_t, ev))
    if high <= limit:
        return Verdict("p99_ratio", "pass", f"{text}: the upper bound is within the limit "
                       f"{limit:.2f}x.")
    return _straddle("p99_ratio", f"{text}: the bounds straddle the limit {limit:.2f}x",
                     ratio if ratio is not None else 1.0, limit, ev.p99_ratio_bounds, n_t,
                     "target latency samples", _rate(n_t, ev))


def _paired(ev: Evidence, p: PromotionSpec) -> Verdict | None:
    limit = p.max_paired_latency_increase
    n = ev.pairs
    if n == 0:
        if limit is None:
            return None
        return _hold("paired_latency", f"paired latency has no mirrored pair yet (needs "
                     f"{p.min_latency_samples})", p.min_latency_samples, "pairs",
                     _rate(0, ev))
    median = ev.paired_median()
    low, high = ev.paired_bounds()
    share = ev.paired_share_slower() or 0.0
    text = (f"paired latency on {n} mirrored requests: target minus legacy is "
            f"{_dms(median)} (median; 95% bounds {_dms(low)} to {_dms(high)}), target "
            f"slower on {share:.0%} of them")
    if limit is None:
        return Verdict("paired_latency", "pass", f"{text} (reported, not judged: "
                       "max_paired_latency_increase is not set).")
    if n >= _floor(p.min_latency_samples, p) and low > limit:
        return Verdict("paired_latency", "fail", f"{text}: even the lower bound is above the "
                       f"limit {_dms(limit)}.")
    if n < p.min_latency_samples:
        return _hold("paired_latency", f"{text}; judging it needs {p.min_latency_samples} "
                     "pairs", p.min_latency_samples - n, "pairs", _rate(n, ev))
    if high <= limit:
        return Verdict("paired_latency", "pass", f"{text}: the upper bound is within the limit "
                       f"{_dms(limit)}.")
    return _straddle("paired_latency", f"{text}: the bounds straddle the limit {_dms(limit)}",
                     median if median is not None else 0.0, limit, ev.paired_bounds, n,
                     "pairs", _rate(n, ev))


def _check(c: CheckResult) -> Verdict:
    """The sentence of a custom check: its value, within or outside its bounds."""
    parts = []
    if c.max is not None:
        parts.append(f"max {c.max:g}")
    if c.min is not None:
        parts.append(f"min {c.min:g}")
    limits = " and ".join(parts) if parts else "no bounds"
    ok = c.ok
    if ok is None:
        text = f"check {c.name} has no data (query: {c.query})"
    else:
        text = f"check {c.name} is {c.value:g}, {'within' if ok else 'outside'} {limits}"
    if c.dry_run:
        return Verdict(f"check:{c.name}", "pass", f"{text} (dry run: reported, not judged).")
    if ok is None:
        return _hold(f"check:{c.name}", text, None, "", None)
    return Verdict(f"check:{c.name}", "pass" if ok else "fail", text + ".")


# --- hold bookkeeping -------------------------------------------------------------------------


def _straddle(bound: str, text: str, estimate: float, limit: float,
              bounds: Callable[[float], tuple[float, float]], have: float, unit: str,
              rate: float | None) -> Verdict:
    """A hold on a bound that straddles its limit: how many more units would decide it, if the
    evidence kept its shape (`bounds(k)` is the bound on k times the evidence)."""
    def decided(k: float) -> bool:
        low, high = bounds(k)
        return high <= limit if estimate <= limit else low > limit

    more = more_needed(decided, have)
    return _hold(bound, text, more, unit, rate, more is None)


def _hold(bound: str, text: str, more: float | None, unit: str,
          rate: float | None, undecidable: bool = False) -> Verdict:
    """A hold's sentence: what it needs, and at the rate seen so far (units per second; None
    when the step's length is not known) roughly how long that is. `undecidable`: no amount
    of evidence at the rates seen so far would decide it."""
    if undecidable:
        need = ("not decidable at the current rates: the estimate sits at (or too close to) "
                "the limit; more than 1,000 times the evidence so far would be needed")
    elif more is None:
        need = "waiting for data"
    else:
        need = f"about {_count(more)} more {unit}"
        if rate:
            need += f", ~{_duration(more / rate)} at the current {_rate_text(rate)}"
        elif rate == 0.0:
            need += " (none at this step so far)"
    return Verdict(bound, "hold", f"{text}: {need}.", more, unit, rate or 0.0)


def _pending(v: Verdict) -> dict[str, Any]:
    seconds = v.more / v.rate if v.more is not None and v.rate > 0 else None
    return {"bound": v.bound, "more": v.more, "unit": v.unit,
            "seconds": None if seconds is None else round(seconds, 1)}


def _rate(count: float, ev: Evidence) -> float | None:
    return count / ev.window_seconds if ev.window_seconds > 0 else None


def _rate_text(rate: float) -> str:
    return f"{rate:.3g}/s" if rate >= 0.1 else f"{rate * 60:.3g}/min"


def _held_too_long(ev: Evidence, p: PromotionSpec) -> str | None:
    """The max_hold limit this step has reached (its wording), or None."""
    hold = p.max_hold
    if hold is None:
        return None
    if hold.duration is not None and ev.window_seconds >= hold.duration:
        return f"{_duration(hold.duration)} at this step"
    if hold.requests is not None and ev.route_requests >= hold.requests:
        return f"{hold.requests} route requests at this step"
    return None


# --- wording --------------------------------------------------------------------------------


def evidence_since(ev: Evidence) -> str:
    assert ev.since is not None
    return since_sentence(ev.since, ev.window_seconds, ev.step, ev.since_reason)


def since_sentence(since: float, seconds: float, step: Any, reason: str | None) -> str:
    """`Evidence since <time> (<duration> at step <id>: <reason>).`: every decision's first
    reason (also when no evidence could be read: the step's own record says it)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    why = f": {reason}" if reason else ""
    return f"Evidence since {stamp} ({_duration(seconds)} at step {step}{why})."


def _pct(weight: float) -> str:
    return f"{weight:g}%"


def _r(r: float | None) -> str:
    return "n/a" if r is None else f"{r * 100:.2f}%"


def _pts(d: float) -> str:
    return f"{d * 100:.2f} points"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _dms(seconds: float | None) -> str:
    """A signed duration: +2.1 ms, -0.4 ms; unbounded ends as -inf / +inf."""
    if seconds is None:
        return "n/a"
    if math.isinf(seconds):
        return "+inf" if seconds > 0 else "-inf"
    return f"{seconds * 1000:+.2f} ms"


def _x(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    if math.isinf(ratio):
        return "inf"
    return f"{ratio:.2f}x"


def _errors(side: Any) -> str:
    """One backend's error rate with its counts, e.g. `0.40% (2 of 500)`."""
    return f"{_r(side.error_rate)} ({side.errors} of {side.requests})"


def _count(n: float, digits: int = 0) -> str:
    return f"{n:,.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
