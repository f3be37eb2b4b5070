"""decide(evidence, policy) on hand-computed evidence, at each boundary of each rule."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.spec import CheckSpec, MaxHoldSpec, PromotionSpec
from shadow.evidence import BackendEvidence, CheckResult, Evidence
from shadow.gate import Decision, decide, next_step
from shadow.stats import DIFFERENCE, LATENCY, Z_95_ONE_SIDED, Z_95_TWO_SIDED, wilson_interval

Z2 = Z_95_TWO_SIDED**2  # 3.841459
Z1_2 = Z_95_ONE_SIDED**2  # 2.705545
_N = NormalDist()


def latency(p99: float | None, n: int, sigma: float = 0.3) -> tuple[float, ...]:
    """n latencies from a lognormal of spread `sigma` whose p99 is `p99`, as the gate's bucket
    counts (each bucket gets its exact share: no sampling noise)."""
    if p99 is None or n == 0:
        return ()
    mu = math.log(p99) - sigma * _N.inv_cdf(0.99)

    def cdf(x: float) -> float:
        if x <= 0:
            return 0.0
        if math.isinf(x):
            return 1.0
        return _N.cdf((math.log(x) - mu) / sigma)

    return tuple(n * (cdf(hi) - cdf(lo)) for lo, hi in zip(LATENCY.lower, LATENCY.upper,
                                                          strict=True))


def paired(median: float, n: int, sd: float = 0.001) -> tuple[float, ...]:
    """n differences, normal around `median` (seconds), as DIFFERENCE bucket counts."""
    dist = NormalDist(median, sd)

    def cdf(x: float) -> float:
        return 0.0 if x == -math.inf else 1.0 if x == math.inf else dist.cdf(x)

    return tuple(n * (cdf(hi) - cdf(lo)) for lo, hi in zip(DIFFERENCE.lower, DIFFERENCE.upper,
                                                          strict=True))


def policy(**kw: Any) -> PromotionSpec:
    return PromotionSpec(**kw)


def evidence(
    *,
    weight: float = 5.0,
    t_req: int = 1000,
    t_err: int = 0,
    l_req: int = 100_000,
    l_err: int = 0,
    t_p99: float | None = 0.020,
    l_p99: float | None = 0.020,
    t_lat: int | None = None,
    l_lat: int | None = None,
    compared: int = 5000,
    mismatched: int = 0,
    shadow: bool = True,
    checks: tuple[CheckResult, ...] = (),
    **more: Any,
) -> Evidence:
    """A clean route at 5% with plenty of evidence, unless told otherwise."""
    return Evidence(
        route="balance",
        weight=weight,
        legacy=BackendEvidence(l_req, l_err, latency(l_p99, l_req if l_lat is None else l_lat)),
        target=BackendEvidence(t_req, t_err, latency(t_p99, t_req if t_lat is None else t_lat)),
        compared=compared,
        mismatched=mismatched,
        shadow_enabled=shadow,
        checks=checks,
        **more,
    )


def check(value: float | None, max: float | None = 0.04, min: float | None = None,
          dry_run: bool = False) -> CheckResult:
    spec = CheckSpec(name="cost_per_tx", query="max(cost_per_tx)", max=max, min=min)
    return CheckResult(spec.name, spec.query, value, spec.max, spec.min, dry_run)


def text(d: Decision) -> str:
    return " ".join(d.reasons)


# --- the happy path and the contract's JSON -------------------------------------------------


def test_clean_evidence_promotes_to_the_next_step() -> None:
    d = decide(evidence(), policy())
    assert (d.decision, d.from_weight, d.to_weight) == ("promote", 5.0, 25.0)
    assert "The gate passes: promote would go from 5% to 25%." in d.reasons
    assert "Promoting from 5% to 25%." in decide(evidence(), policy(), acting=True).reasons


def test_decision_json_has_the_contract_fields_and_every_number() -> None:
    d = decide(evidence(t_err=1, l_err=20, compared=4000, mismatched=0), policy())
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert set(out) == {"route", "decision", "from_weight", "to_weight", "reasons", "pending",
                        "evidence"}
    ev = out["evidence"]
    assert ev["target"]["requests"] == 1000 and ev["target"]["errors"] == 1
    assert ev["target"]["error_rate"] == pytest.approx(0.001)
    assert ev["legacy"]["error_rate"] == pytest.approx(0.0002)
    assert ev["target"]["p99_seconds"] == pytest.approx(0.020, rel=0.005)
    assert ev["legacy"]["p99_seconds"] == pytest.approx(0.020, rel=0.005)
    assert ev["target"]["latency_samples"] == 1000
    assert ev["target"]["p99_lower_975"] < 0.020 < ev["target"]["p99_upper_975"]
    assert ev["p99_ratio_lower_95"] < 1.0 < ev["p99_ratio_upper_95"] < 1.25
    assert ev["shadow"]["compared"] == 4000 and ev["shadow"]["mismatched"] == 0
    assert ev["shadow"]["errors"] == 0
    assert ev["shadow"]["mismatch_rate"] == 0.0
    assert ev["shadow"]["mismatch_rate_upper_95"] == pytest.approx(Z2 / (4000 + Z2))
    assert ev["thresholds"]["max_mismatch_rate"] == 0.001
    assert ev["thresholds"]["min_requests"] == 500
    assert ev["thresholds"]["max_p99_ratio"] == 1.25
    assert ev["thresholds"]["max_shadow_error_rate"] == 0.01
    assert ev["thresholds"]["max_hold"] is None and ev["thresholds"]["approval"] is None


def test_the_evidence_says_since_when_and_why() -> None:
    e = evidence(step=1764000123, since=1764000123.0, window_seconds=85.0,
                 since_reason="target changed (svc http://127.0.0.1:1 -> svc2 "
                              "http://127.0.0.1:2)")
    d = decide(e, policy(min_requests=5000))
    assert d.reasons[0] == ("Evidence since 2025-11-24 16:02:03 UTC (85 s at step 1764000123: "
                            "target changed (svc http://127.0.0.1:1 -> svc2 "
                            "http://127.0.0.1:2)).")
    assert d.evidence["since_reason"].startswith("target changed")


# --- min_requests and min_comparisons --------------------------------------------------------


def test_exactly_min_requests_is_enough() -> None:
    p = policy(max_error_rate_increase=0.01, max_p99_ratio=None)
    assert decide(evidence(t_req=500), p).decision == "promote"


def test_one_request_short_of_min_requests_holds_and_says_how_many_are_missing() -> None:
    p = policy(max_error_rate_increase=0.01, max_p99_ratio=None)
    d = decide(evidence(t_req=499), p)
    assert (d.decision, d.to_weight) == ("hold", 5.0)
    assert ("target has served 499 of the 500 requests needed at this step: about 1 more "
            "target requests.") in d.reasons
    assert d.pending == ({"bound": "min_requests", "more": 1, "unit": "target requests",
                          "seconds": None},)


def test_a_hold_says_roughly_how_long_at_the_current_rate() -> None:
    p = policy(max_error_rate_increase=0.01, max_p99_ratio=None)
    d = decide(evidence(t_req=250, window_seconds=80.0), p)
    assert ("target has served 250 of the 500 requests needed at this step: about 250 more "
            "target requests, ~80 s at the current 3.12/s.") in d.reasons
    assert d.pending[0]["seconds"] == 80.0


def test_exactly_min_comparisons_is_enough() -> None:
    # 0 of 500: upper bound z^2/(500+z^2) = 0.76%, so allow 0.8%.
    p = policy(max_mismatch_rate=0.008)
    assert decide(evidence(compared=500), p).decision == "promote"


def test_one_comparison_short_holds_and_says_how_many_are_missing() -> None:
    d = decide(evidence(compared=499), policy(max_mismatch_rate=0.008))
    assert d.decision == "hold"
    assert "499 of the 500 shadow comparisons needed so far: about 1 more comparisons." \
        in d.reasons


def test_comparisons_are_not_required_with_shadowing_off() -> None:
    d = decide(evidence(compared=0, shadow=False), policy())
    assert d.decision == "promote"


# --- mismatch rate: Wilson upper bound for promotion, lower bound for failure ----------------


def test_mismatch_upper_bound_just_under_the_limit_promotes() -> None:
    # 0 mismatches: upper = z^2/(n+z^2) <= 0.001  <=>  n >= 999 z^2 = 3837.6
    d = decide(evidence(compared=3838), policy())
    assert d.evidence["shadow"]["mismatch_rate_upper_95"] == pytest.approx(Z2 / (3838 + Z2))
    assert d.evidence["shadow"]["mismatch_rate_upper_95"] < 0.001
    assert d.decision == "promote"


def test_mismatch_upper_bound_just_over_the_limit_holds_and_says_how_many_more() -> None:
    d = decide(evidence(compared=3837), policy())
    assert d.evidence["shadow"]["mismatch_rate_upper_95"] > 0.001
    assert d.decision == "hold"
    assert ("0 of 3837 shadow comparisons differed (0.00%); its 95% bounds 0.00% to 0.10% "
            "straddle the limit 0.10%: about 1 more comparisons.") in d.reasons


def test_mismatch_lower_bound_over_the_limit_fails() -> None:
    low, _ = wilson_interval(5, 500)  # 0.43%
    d = decide(evidence(compared=500, mismatched=5), policy(max_mismatch_rate=low - 1e-6))
    assert (d.decision, d.to_weight) == ("fail", 0.0)
    assert "5 of 500 shadow comparisons differed (1.00%)" in text(d)
    assert "The gate fails at 5%: promote would roll back to legacy (auto_rollback is on)." \
        in d.reasons


def test_acting_on_a_fail_says_it_rolls_back() -> None:
    d = decide(evidence(compared=500, mismatched=50), policy(), acting=True)
    assert "Gate failed at 5%: rolling back to legacy (auto_rollback is on)." in d.reasons


def test_mismatch_lower_bound_at_the_limit_does_not_fail() -> None:
    low, _ = wilson_interval(5, 500)
    d = decide(evidence(compared=500, mismatched=5), policy(max_mismatch_rate=low + 1e-6))
    assert d.decision == "hold"


def test_fewer_than_three_mismatches_never_fail() -> None:
    # 2 of 500: Wilson lower bound 0.11% > 0.10%, but Wilson is optimistic with 1-2 events.
    assert wilson_interval(2, 500)[0] > 0.001
    d = decide(evidence(compared=500, mismatched=2), policy())
    assert d.decision == "hold"


def test_a_planted_difference_fails_before_min_comparisons() -> None:
    # Everything differs: after 50 comparisons the evidence is conclusive.
    d = decide(evidence(t_req=10, compared=50, mismatched=50), policy())
    assert d.decision == "fail"
    assert "50 of 50 shadow comparisons differed (100.00%)" in text(d)


def test_fail_is_not_judged_on_fewer_than_50_comparisons() -> None:
    d = decide(evidence(t_req=10, compared=49, mismatched=49), policy())
    assert d.decision == "hold"


# --- shadow errors: a side that does not answer is an error, never a difference ---------------


def test_target_down_at_weight_0_fails_on_errors_not_differences() -> None:
    e = evidence(weight=0, t_req=0, t_p99=None, compared=0, shadow_errors=80,
                 shadow_error_kinds=((("target", "connect"), 80),))
    d = decide(e, policy())
    assert d.decision == "fail"
    assert ("errors, not differences: 80 of 80 mirrored requests got no answer from target "
            "(target connect 80)") in text(d)
    assert "differed" not in text(d)
    assert d.evidence["shadow"]["errors"] == 80 and d.evidence["shadow"]["mismatched"] == 0


def test_a_few_target_shadow_errors_within_the_limit_pass() -> None:
    e = evidence(compared=5000, shadow_errors=2, shadow_error_kinds=((("target", "timeout"), 2),))
    d = decide(e, policy())
    assert d.decision == "promote"
    assert "2 of 5002 mirrored requests got no answer from target (target timeout 2)" in text(d)


def test_legacy_side_shadow_errors_are_reported_not_judged() -> None:
    e = evidence(compared=500, shadow_errors=100, shadow_error_kinds=((("legacy", "reset"), 100),),
                 mismatched=0)
    d = decide(e, policy(max_mismatch_rate=0.008))
    assert d.decision == "promote"
    assert "none was target's" in text(d)


# --- error rate: one-sided 95% bounds of the increase ----------------------------------------


def test_error_increase_just_inside_the_limit_promotes() -> None:
    # 0 errors on both sides: the increase's upper bound is z^2/(n+z^2) with z = 1.645;
    # <= 0.005  <=>  n >= 199 z^2 = 538.4
    p = policy(max_p99_ratio=None)
    d = decide(evidence(t_req=539), p)
    assert d.evidence["error_rate_increase_upper_95"] == pytest.approx(Z1_2 / (539 + Z1_2))
    assert d.decision == "promote"


def test_error_increase_just_outside_the_limit_holds_and_says_how_many_more() -> None:
    d = decide(evidence(t_req=538), policy(max_p99_ratio=None))
    assert d.decision == "hold"
    assert "straddling the limit 0.50 points: about 1 more target requests." in text(d)


def test_error_increase_clearly_above_the_limit_fails() -> None:
    d = decide(evidence(t_req=100, t_err=20, l_err=100), policy())
    assert d.decision == "fail"
    assert ("target error rate 20.00% (20 of 100) vs legacy's 0.10% (100 of 100000): the "
            "increase (95% one-sided bounds) is at least") in text(d)
    assert "above the limit 0.50 points" in text(d)


def test_target_failures_clients_never_saw_are_said_so() -> None:
    d = decide(evidence(t_req=100, t_err=20, fallbacks=20), policy())
    assert "20 of them were answered by legacy after the fallback" in text(d)


def test_error_increase_fail_boundary_is_the_lower_bound() -> None:
    e = evidence(t_req=1000, t_err=30, l_err=1000)  # 3.0% vs 1.0%
    low = e.error_increase_bounds()[0]
    assert decide(e, policy(max_error_rate_increase=low - 1e-6)).decision == "fail"
    assert decide(e, policy(max_error_rate_increase=low + 1e-6)).decision != "fail"


def test_target_as_bad_as_legacy_is_not_an_increase() -> None:
    d = decide(evidence(t_req=2000, t_err=20, l_err=1000), policy())  # both 1%
    assert d.decision == "promote"


def test_error_fail_needs_three_target_errors() -> None:
    d = decide(evidence(t_req=60, t_err=2), policy())
    assert d.decision == "hold"


def test_errors_fail_before_min_requests_once_50_requests_are_in() -> None:
    assert decide(evidence(t_req=50, t_err=10), policy()).decision == "fail"
    assert decide(evidence(t_req=49, t_err=10), policy()).decision == "hold"


# --- p99 ratio: bounds from order statistics --------------------------------------------------


def test_equal_p99s_promote() -> None:
    d = decide(evidence(t_p99=1.0, l_p99=1.0), policy())
    assert d.decision == "promote"
    assert "is 1.00x legacy's" in text(d) and "95% bounds 0.93x to 1.12x" in text(d)
    assert "the upper bound is within the limit 1.25x" in text(d)


def test_p99_ratio_above_the_limit_fails_with_numbers() -> None:
    d = decide(evidence(t_p99=0.041, l_p99=0.025), policy())
    assert d.decision == "fail"
    assert ("target p99 41.0 ms is 1.64x legacy's 25.0 ms (1000 and 100000 samples; 95% "
            "bounds 1.52x to 1.85x)") in text(d)
    assert "even the lower bound is above the limit 1.25x" in text(d)


def test_p99_ratio_at_the_limit_holds_it_cannot_be_told_apart() -> None:
    d = decide(evidence(t_p99=1.25, l_p99=1.0), policy())
    assert d.decision == "hold"
    assert "the bounds straddle the limit 1.25x" in text(d)
    assert "not decidable at the current rates" in text(d)  # the estimate is the limit


def test_p99_is_not_judged_below_the_floor_of_1000_samples() -> None:
    p = policy(min_requests=50, max_error_rate_increase=0.1)
    d = decide(evidence(t_req=999, t_p99=0.021, l_p99=0.02), p)
    assert d.decision == "hold"
    assert ("a p99 needs at least 1000 latency samples per backend (target has 999, legacy "
            "100000): about 1 more target latency samples.") in d.reasons


def test_a_p99_far_above_the_limit_fails_early() -> None:
    p = policy(min_requests=50, max_error_rate_increase=0.1)
    assert decide(evidence(t_req=50, t_p99=0.5, l_p99=0.02), p).decision == "fail"
    assert decide(evidence(t_req=49, t_p99=0.5, l_p99=0.02), p).decision == "hold"


def test_p99_needs_a_few_hundred_samples_before_it_has_an_upper_bound() -> None:
    # Below ~370 values, no order statistic is a 97.5% upper bound of the true p99.
    e = evidence(t_req=300, t_p99=0.02, l_p99=0.02)
    assert e.target.p99_bounds()[1] == math.inf
    assert decide(e, policy(min_latency_samples=300, min_requests=300,
                            max_error_rate_increase=0.1)).decision == "hold"


def test_max_p99_ratio_null_does_not_judge_the_unpaired_p99() -> None:
    d = decide(evidence(t_p99=0.5, l_p99=0.02), policy(max_p99_ratio=None))
    assert d.decision == "promote"
    assert "target p99" not in text(d)


# --- paired latency: the sign test's bounds on the same requests ------------------------------


def test_paired_latency_is_reported_when_not_judged() -> None:
    d = decide(evidence(paired=paired(0.002, 1000)), policy())
    assert d.decision == "promote"
    assert "paired latency on 1000 mirrored requests: target minus legacy is +2.00 ms" in text(d)
    assert "(reported, not judged: max_paired_latency_increase is not set)" in text(d)


def test_paired_latency_above_its_limit_fails() -> None:
    d = decide(evidence(paired=paired(0.002, 1000)), policy(max_paired_latency_increase=0.001))
    assert d.decision == "fail"
    assert "even the lower bound is above the limit +1.00 ms" in text(d)


def test_paired_latency_within_its_limit_passes() -> None:
    d = decide(evidence(paired=paired(0.002, 1000)), policy(max_paired_latency_increase=0.005))
    assert d.decision == "promote"


def test_paired_latency_at_its_limit_holds() -> None:
    d = decide(evidence(paired=paired(0.002, 1000)), policy(max_paired_latency_increase=0.002))
    assert d.decision == "hold"
    assert "more pairs" in text(d) or "not decidable" in text(d)


def test_paired_latency_is_judged_at_weight_0() -> None:
    e = evidence(weight=0, t_req=0, t_p99=None, paired=paired(0.050, 1000))
    assert decide(e, policy(max_paired_latency_increase=0.010)).decision == "fail"


# --- the evidence floors are policy, not constants ---------------------------------------------


def test_min_latency_samples_lets_a_p99_be_judged_on_30_samples() -> None:
    slow = evidence(t_req=30, t_p99=0.5, l_p99=0.02)  # 25x legacy's p99, 30 target samples
    p = policy(min_requests=30, max_error_rate_increase=0.2)
    held = decide(slow, p)
    assert held.decision == "hold"
    assert "a p99 needs at least 1000 latency samples per backend (target has 30" in text(held)
    judged = decide(slow, replace(p, min_latency_samples=30))
    assert judged.decision == "fail"
    assert "is 25.00x legacy's 20.0 ms (30 and 100000 samples; 95% bounds 18.67x to inf)" \
        in text(judged)
    assert decide(slow, replace(p, min_latency_samples=31)).decision == "hold"


def test_min_latency_samples_also_holds_a_clean_route_that_min_requests_would_pass() -> None:
    clean = evidence(t_req=1000)
    assert decide(clean, policy()).decision == "promote"
    d = decide(clean, policy(min_latency_samples=1001))
    assert d.decision == "hold"
    assert "a p99 needs at least 1001 latency samples per backend (target has 1000" in text(d)


def test_early_fail_samples_moves_when_a_planted_difference_fails() -> None:
    planted = evidence(t_req=10, compared=20, mismatched=20)
    assert decide(planted, policy()).decision == "hold"  # 20 < 50 comparisons
    assert decide(planted, policy(early_fail_samples=20)).decision == "fail"
    assert decide(planted, policy(early_fail_samples=21)).decision == "hold"
    # and later than the default: 60 of 60 is conclusive, but not yet with a floor of 100
    later = evidence(t_req=10, compared=60, mismatched=60)
    assert decide(later, policy()).decision == "fail"
    assert decide(later, policy(early_fail_samples=100)).decision == "hold"


def test_min_fail_events_sets_how_many_bad_events_a_fail_needs() -> None:
    two = evidence(compared=500, mismatched=2)  # Wilson lower bound 0.11% > the 0.10% limit
    assert decide(two, policy()).decision == "hold"
    assert decide(two, policy(min_fail_events=2)).decision == "fail"
    errors = evidence(t_req=100, t_err=5)
    assert decide(errors, policy()).decision == "fail"
    assert decide(errors, policy(min_fail_events=6)).decision != "fail"


def test_the_floors_are_in_the_evidence_thresholds() -> None:
    d = decide(evidence(), policy(min_latency_samples=30, early_fail_samples=20,
                                  min_fail_events=5))
    th = json.loads(json.dumps(d.to_dict()))["evidence"]["thresholds"]
    assert (th["min_latency_samples"], th["early_fail_samples"], th["min_fail_events"]) == (
        30, 20, 5)
    th = decide(evidence(), policy()).evidence["thresholds"]
    assert (th["min_latency_samples"], th["early_fail_samples"], th["min_fail_events"]) == (
        1000, 50, 3)


def test_missing_p99_holds() -> None:
    d = decide(evidence(t_p99=None), policy())
    assert d.decision == "hold"


# --- inconclusive: max_hold ---------------------------------------------------------------------


def test_a_hold_past_max_hold_is_inconclusive() -> None:
    straddling = dict(t_p99=1.25, l_p99=1.0)  # the p99 bound cannot decide
    p = policy(max_hold=MaxHoldSpec(duration=3600.0))
    assert decide(evidence(**straddling, window_seconds=3599.0), p).decision == "hold"
    d = decide(evidence(**straddling, window_seconds=3600.0), p)
    assert (d.decision, d.to_weight) == ("inconclusive", 5.0)
    assert "Inconclusive at 5%: the evidence has not settled within max_hold (60 min at this " \
        "step)." in text(d)
    assert d.pending and d.pending[0]["bound"] == "p99_ratio"


def test_max_hold_by_route_requests() -> None:
    p = policy(max_hold=MaxHoldSpec(requests=101_000))
    e = evidence(t_p99=1.25, l_p99=1.0)  # 1,000 + 100,000 route requests
    assert decide(e, p).decision == "inconclusive"
    assert decide(replace(e, legacy=replace(e.legacy, requests=99_999)), p).decision == "hold"


def test_max_hold_never_overrides_a_fail_or_a_promote() -> None:
    p = policy(max_hold=MaxHoldSpec(duration=1.0))
    assert decide(evidence(window_seconds=10.0), p).decision == "promote"
    assert decide(evidence(t_err=100, window_seconds=10.0), p).decision == "fail"


# --- custom checks --------------------------------------------------------------------------


def test_check_without_data_holds_never_fails() -> None:
    d = decide(evidence(checks=(check(None),)), policy())
    assert d.decision == "hold"
    assert "check cost_per_tx has no data (query: max(cost_per_tx)): waiting for data." \
        in d.reasons


def test_check_above_max_fails() -> None:
    d = decide(evidence(checks=(check(0.05),)), policy())
    assert d.decision == "fail"
    assert "check cost_per_tx is 0.05, outside max 0.04." in d.reasons


def test_check_below_min_fails() -> None:
    d = decide(evidence(checks=(check(0.5, max=None, min=0.9),)), policy())
    assert d.decision == "fail"


def test_check_at_its_max_passes_and_is_reported() -> None:
    d = decide(evidence(checks=(check(0.04),)), policy())
    assert d.decision == "promote"
    assert "check cost_per_tx is 0.04, within max 0.04." in d.reasons
    assert d.evidence["checks"][0]["value"] == 0.04


def test_a_dry_run_check_is_reported_but_never_fails_or_holds() -> None:
    d = decide(evidence(checks=(check(0.05, dry_run=True),)), policy())
    assert d.decision == "promote"
    assert ("check cost_per_tx is 0.05, outside max 0.04 (dry run: reported, not judged)."
            in d.reasons)
    assert decide(evidence(checks=(check(None, dry_run=True),)), policy()).decision == "promote"
    assert d.evidence["checks"][0]["dry_run"] is True


# --- the ladder ------------------------------------------------------------------------------


def test_complete_at_100_still_reports_evidence() -> None:
    d = decide(evidence(weight=100, l_req=0, t_err=500), policy())
    assert (d.decision, d.from_weight, d.to_weight) == ("complete", 100, 100)
    assert d.evidence["target"]["errors"] == 500


def test_not_started_route_goes_to_the_first_step_on_shadow_evidence_alone() -> None:
    d = decide(evidence(weight=0, t_req=0, t_p99=None, compared=4000), policy())
    assert (d.decision, d.to_weight) == ("promote", 1.0)


def test_not_started_route_waits_for_comparisons() -> None:
    d = decide(evidence(weight=0, t_req=0, t_p99=None, compared=100), policy())
    assert d.decision == "hold"
    assert "100 of the 500 shadow comparisons needed so far: about 400 more comparisons." \
        in d.reasons
    assert not any("target has served" in r for r in d.reasons)


def test_not_started_route_without_shadowing_starts_at_the_first_step() -> None:
    d = decide(evidence(weight=0, t_req=0, compared=0, shadow=False), policy())
    assert (d.decision, d.to_weight) == ("promote", 1.0)


def test_weight_off_the_ladder_goes_to_the_next_step_above() -> None:
    assert decide(evidence(weight=7), policy()).to_weight == 25.0
    assert decide(evidence(weight=0.5), policy()).to_weight == 1.0


def test_last_step_below_100_is_followed_by_100() -> None:
    assert decide(evidence(weight=50), policy(steps=(10.0, 50.0))).to_weight == 100.0
    assert next_step(50, (1.0, 5.0, 25.0, 50.0, 100.0)) == 100.0


def test_fail_without_auto_rollback_keeps_the_weight() -> None:
    d = decide(evidence(t_p99=0.1, l_p99=0.02), policy(auto_rollback=False))
    assert (d.decision, d.to_weight) == ("fail", 5.0)
    assert "auto_rollback is off" in text(d)


def test_fail_wins_over_missing_evidence() -> None:
    e = replace(evidence(t_req=60, t_err=30), compared=10)
    d = decide(e, policy())
    assert d.decision == "fail"


# --- properties over arbitrary consistent evidence -------------------------------------------


@st.composite
def any_evidence(draw: st.DrawFn) -> Evidence:
    def backend() -> BackendEvidence:
        n = draw(st.integers(0, 5000))
        p99 = draw(st.one_of(st.none(), st.floats(0.0001, 60.0)))
        samples = draw(st.integers(0, n))
        return BackendEvidence(n, draw(st.integers(0, n)), latency(p99, samples, 0.3))

    compared = draw(st.integers(0, 10_000))
    errors = draw(st.integers(0, 500))
    side = draw(st.sampled_from(["legacy", "target"]))
    return Evidence(
        route="r",
        weight=draw(st.sampled_from([0.0, 0.5, 1.0, 5.0, 7.25, 25.0, 50.0, 100.0])),
        legacy=backend(),
        target=backend(),
        compared=compared,
        mismatched=draw(st.integers(0, compared)),
        shadow_enabled=draw(st.booleans()),
        checks=tuple(
            check(v) for v in draw(st.lists(st.one_of(st.none(), st.floats(0, 0.1)), max_size=2))
        ),
        shadow_errors=errors,
        shadow_error_kinds=(((side, "connect"), errors),) if errors else (),
        paired=paired(draw(st.floats(-0.01, 0.01)), draw(st.integers(0, 3000))),
        window_seconds=draw(st.floats(0, 1e5)),
    )


@settings(deadline=None, max_examples=60)
@given(any_evidence(), st.sampled_from([None, 0.002]))
def test_every_decision_is_explained_and_consistent(e: Evidence, paired_limit: Any) -> None:
    p = policy(max_paired_latency_increase=paired_limit, max_hold=MaxHoldSpec(duration=5e4))
    d = decide(e, p)
    assert d.reasons and all(r.endswith(".") for r in d.reasons)
    json.dumps(d.to_dict(), allow_nan=False)
    if d.decision == "promote":
        assert d.to_weight > d.from_weight
        assert not e.shadow_enabled or e.mismatch_bounds()[1] <= p.max_mismatch_rate
        assert e.weight == 0 or e.target.requests >= p.min_requests
        assert all(c.ok for c in e.checks)
        assert not d.pending
    elif d.decision in ("hold", "inconclusive"):
        assert d.to_weight == d.from_weight
        assert d.pending
        assert (d.decision == "inconclusive") == (e.window_seconds >= 5e4)
    elif d.decision == "fail":
        assert d.to_weight == 0.0
    else:
        assert e.weight == 100
