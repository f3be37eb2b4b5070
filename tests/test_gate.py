"""decide(evidence, policy) on hand-computed evidence, at each boundary of each rule."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.spec import CheckSpec, PromotionSpec
from shadow.evidence import BackendEvidence, CheckResult, Evidence
from shadow.gate import Decision, decide, next_step
from shadow.stats import Z_95_ONE_SIDED, Z_95_TWO_SIDED, wilson_interval

Z2 = Z_95_TWO_SIDED**2  # 3.841459
Z1_2 = Z_95_ONE_SIDED**2  # 2.705545


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
) -> Evidence:
    """A clean route at 5% with plenty of evidence, unless told otherwise."""
    return Evidence(
        route="balance",
        weight=weight,
        legacy=BackendEvidence(l_req, l_err, l_p99, l_req if l_lat is None else l_lat),
        target=BackendEvidence(t_req, t_err, t_p99, t_req if t_lat is None else t_lat),
        compared=compared,
        mismatched=mismatched,
        shadow_enabled=shadow,
        checks=checks,
    )


def check(value: float | None, max: float | None = 0.04, min: float | None = None) -> CheckResult:
    spec = CheckSpec(name="cost_per_tx", query="max(cost_per_tx)", max=max, min=min)
    return CheckResult(spec.name, spec.query, value, spec.max, spec.min)


def text(d: Decision) -> str:
    return " ".join(d.reasons)


# --- the happy path and the contract's JSON -------------------------------------------------


def test_clean_evidence_promotes_to_the_next_step() -> None:
    d = decide(evidence(), policy())
    assert (d.decision, d.from_weight, d.to_weight) == ("promote", 5.0, 25.0)
    assert "Promoting from 5% to 25%." in d.reasons


def test_decision_json_has_the_contract_fields_and_every_number() -> None:
    d = decide(evidence(t_err=1, l_err=20, compared=4000, mismatched=0), policy())
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert set(out) == {"route", "decision", "from_weight", "to_weight", "reasons", "evidence"}
    ev = out["evidence"]
    assert ev["target"]["requests"] == 1000 and ev["target"]["errors"] == 1
    assert ev["target"]["error_rate"] == pytest.approx(0.001)
    assert ev["legacy"]["error_rate"] == pytest.approx(0.0002)
    assert ev["target"]["p99_seconds"] == 0.020 and ev["legacy"]["p99_seconds"] == 0.020
    assert ev["shadow"]["compared"] == 4000 and ev["shadow"]["mismatched"] == 0
    assert ev["shadow"]["mismatch_rate"] == 0.0
    assert ev["shadow"]["mismatch_rate_upper_95"] == pytest.approx(Z2 / (4000 + Z2))
    assert ev["thresholds"]["max_mismatch_rate"] == 0.001
    assert ev["thresholds"]["min_requests"] == 500
    assert ev["thresholds"]["max_p99_ratio"] == 1.25


# --- min_requests and min_comparisons --------------------------------------------------------


def test_exactly_min_requests_is_enough() -> None:
    p = policy(max_error_rate_increase=0.01)
    assert decide(evidence(t_req=500), p).decision == "promote"


def test_one_request_short_of_min_requests_holds_and_says_how_many_are_missing() -> None:
    p = policy(max_error_rate_increase=0.01)
    d = decide(evidence(t_req=499), p)
    assert (d.decision, d.to_weight) == ("hold", 5.0)
    assert "target has served 499 of the 500 requests needed at this step (1 more)." in d.reasons


def test_exactly_min_comparisons_is_enough() -> None:
    # 0 of 500: upper bound z^2/(500+z^2) = 0.76%, so allow 0.8%.
    p = policy(max_mismatch_rate=0.008)
    assert decide(evidence(compared=500), p).decision == "promote"


def test_one_comparison_short_holds_and_says_how_many_are_missing() -> None:
    d = decide(evidence(compared=499), policy(max_mismatch_rate=0.008))
    assert d.decision == "hold"
    assert "499 of the 500 shadow comparisons needed so far (1 more)." in d.reasons


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


def test_mismatch_upper_bound_just_over_the_limit_holds_as_inconclusive() -> None:
    d = decide(evidence(compared=3837), policy())
    assert d.evidence["shadow"]["mismatch_rate_upper_95"] > 0.001
    assert d.decision == "hold"
    assert "95% upper bound 0.10% is above the limit 0.10%" in text(d)
    assert "inconclusive" in text(d)


def test_mismatch_lower_bound_over_the_limit_fails() -> None:
    low, _ = wilson_interval(5, 500)  # 0.43%
    d = decide(evidence(compared=500, mismatched=5), policy(max_mismatch_rate=low - 1e-6))
    assert (d.decision, d.to_weight) == ("fail", 0.0)
    assert "5 of 500 shadow comparisons differed (1.00%)" in text(d)


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


# --- error rate: one-sided 95% bounds of the increase ----------------------------------------


def test_error_increase_just_inside_the_limit_promotes() -> None:
    # 0 errors on both sides: the increase's upper bound is z^2/(n+z^2) with z = 1.645;
    # <= 0.005  <=>  n >= 199 z^2 = 538.4
    d = decide(evidence(t_req=539), policy())
    assert d.evidence["error_rate_increase_upper_95"] == pytest.approx(Z1_2 / (539 + Z1_2))
    assert d.decision == "promote"


def test_error_increase_just_outside_the_limit_holds_as_inconclusive() -> None:
    d = decide(evidence(t_req=538), policy())
    assert d.decision == "hold"
    assert "more target requests are needed" in text(d)


def test_error_increase_clearly_above_the_limit_fails() -> None:
    d = decide(evidence(t_req=100, t_err=20, l_err=100), policy())
    assert d.decision == "fail"
    assert "target error rate 20.00% (20 of 100) is above legacy's 0.10% (100 of 100000)" in text(d)
    assert "above the limit 0.50 points" in text(d)


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


# --- p99 ratio ------------------------------------------------------------------------------


def test_p99_ratio_at_the_limit_promotes() -> None:
    d = decide(evidence(t_p99=1.25, l_p99=1.0), policy())
    assert d.decision == "promote"
    assert "target p99 1250.0 ms is 1.25x legacy's 1000.0 ms, within the limit 1.25x." in d.reasons


def test_p99_ratio_above_the_limit_fails_with_numbers() -> None:
    d = decide(evidence(t_p99=0.041, l_p99=0.025), policy())
    assert d.decision == "fail"
    assert "target p99 41.0 ms is 1.64x legacy's 25.0 ms, above the limit 1.25x" in text(d)


def test_p99_is_not_judged_below_100_latency_samples() -> None:
    p = policy(min_requests=50, max_error_rate_increase=0.1)
    d = decide(evidence(t_req=99, t_p99=0.5, l_p99=0.02), p)
    assert d.decision == "hold"
    assert "at least 100 latency samples per backend (target has 99, legacy 100000)" in text(d)
    assert decide(evidence(t_req=100, t_p99=0.5, l_p99=0.02), p).decision == "fail"


# --- the evidence floors are policy, not constants ---------------------------------------------


def test_min_latency_samples_lets_a_p99_be_judged_on_30_samples() -> None:
    slow = evidence(t_req=30, t_p99=0.5, l_p99=0.02)  # 25x legacy's p99, 30 target samples
    p = policy(min_requests=30, max_error_rate_increase=0.2)
    held = decide(slow, p)
    assert held.decision == "hold"
    assert "a p99 needs at least 100 latency samples per backend (target has 30" in text(held)
    judged = decide(slow, replace(p, min_latency_samples=30))
    assert judged.decision == "fail"
    assert "target p99 500.0 ms is 25.00x legacy's 20.0 ms" in text(judged)
    assert "(30 and 100000 samples)" in text(judged)
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
        100, 50, 3)


def test_missing_p99_holds() -> None:
    d = decide(evidence(t_p99=None), policy())
    assert d.decision == "hold"


# --- custom checks --------------------------------------------------------------------------


def test_check_without_data_holds_never_fails() -> None:
    d = decide(evidence(checks=(check(None),)), policy())
    assert d.decision == "hold"
    assert "check cost_per_tx has no data (query: max(cost_per_tx))." in d.reasons


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
    assert "100 of the 500 shadow comparisons needed so far (400 more)." in d.reasons
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
        return BackendEvidence(n, draw(st.integers(0, n)), p99, draw(st.integers(0, n)))

    compared = draw(st.integers(0, 10_000))
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
    )


@given(any_evidence())
def test_every_decision_is_explained_and_consistent(e: Evidence) -> None:
    p = policy()
    d = decide(e, p)
    assert d.reasons and all(r.endswith(".") for r in d.reasons)
    json.dumps(d.to_dict(), allow_nan=False)
    if d.decision == "promote":
        assert d.to_weight > d.from_weight
        assert not e.shadow_enabled or e.mismatch_bounds()[1] <= p.max_mismatch_rate
        assert e.weight == 0 or e.target.requests >= p.min_requests
        assert all(c.ok for c in e.checks)
    elif d.decision == "hold":
        assert d.to_weight == d.from_weight
    elif d.decision == "fail":
        assert d.to_weight == 0.0
    else:
        assert e.weight == 100
