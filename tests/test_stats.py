"""The gate's statistics against published values, and the latency histogram's guarantees."""

from __future__ import annotations

import itertools
import math
import random
import timeit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadow.stats import (
    FINE_BOUNDS,
    PROMETHEUS_BOUNDS,
    Z_95_TWO_SIDED,
    LatencyHistogram,
    diff_interval,
    exceeds_by_more_than,
    wilson_interval,
    within_margin,
)

# --- Wilson ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998) single-proportion example
        (10, 100, 0.0552, 0.1744),
        (1, 10, 0.0179, 0.4042),
        (0, 10, 0.0, 0.2775),
        (5, 5, 0.5655, 1.0),
    ],
)
def test_wilson_matches_published_values(x: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(x, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_zero_events_upper_bound_is_z2_over_n_plus_z2() -> None:
    z2 = Z_95_TWO_SIDED**2
    assert wilson_interval(0, 500) == (0.0, pytest.approx(z2 / (500 + z2)))


def test_wilson_without_data_is_uninformative() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_point_estimate(xn: tuple[int, int]) -> None:
    x, n = xn
    lo, hi = wilson_interval(x, n)
    assert 0.0 <= lo <= x / n <= hi <= 1.0


# --- difference of proportions (Newcombe hybrid score) ---------------------------------------


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [  # Newcombe (1998), "Interval estimation for the difference...", method 10
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_difference_interval_matches_newcombe(
    x1: int, n1: int, x2: int, n2: int, low: float, high: float
) -> None:
    lo, hi = diff_interval(x1, n1, x2, n2, z=Z_95_TWO_SIDED)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_target_clearly_worse_exceeds_the_margin() -> None:
    assert exceeds_by_more_than(20, 100, 0, 10_000, margin=0.005)
    assert not within_margin(20, 100, 0, 10_000, margin=0.005)


def test_equal_clean_sides_are_within_the_margin_only_with_enough_requests() -> None:
    # One-sided 95%: with zero errors the upper bound is z^2/(n+z^2), z = 1.645.
    assert not within_margin(0, 100, 0, 100_000, margin=0.005)
    assert within_margin(0, 600, 0, 100_000, margin=0.005)
    assert not exceeds_by_more_than(0, 600, 0, 100_000, margin=0.005)


def test_no_legacy_data_never_makes_a_confident_claim_of_excess() -> None:
    assert not exceeds_by_more_than(3, 100, 0, 0, margin=0.005)


# --- latency histogram -----------------------------------------------------------------------


def test_bounds_span_50us_to_60s_at_most_a_quarter_octave_apart() -> None:
    assert FINE_BOUNDS[0] == pytest.approx(50e-6)
    assert FINE_BOUNDS[-1] == 60.0
    ratios = [b / a for a, b in itertools.pairwise(FINE_BOUNDS)]
    assert max(ratios) <= 2**0.25 + 1e-9
    assert set(PROMETHEUS_BOUNDS) <= set(FINE_BOUNDS)


def test_empty_histogram_has_no_quantile() -> None:
    assert LatencyHistogram().quantile(0.99) is None


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantile_is_within_one_bucket_of_the_true_value(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.02), 0.8) for _ in range(20_000)]
    h = LatencyHistogram.of(values)
    true = sorted(values)[int(q * len(values)) - 1]
    assert h.quantile(q) == pytest.approx(true, rel=0.19)


def test_values_beyond_60s_report_60s() -> None:
    h = LatencyHistogram.of([120.0] * 10)
    assert h.quantile(0.99) == 60.0


def test_value_on_a_bound_counts_in_that_bucket() -> None:
    h = LatencyHistogram.of([0.001, 0.0010001])
    buckets = dict(h.prometheus_buckets())
    assert buckets[0.001] == 1
    assert buckets[0.0025] == 2


def test_prometheus_buckets_are_cumulative_and_end_with_inf() -> None:
    h = LatencyHistogram.of([0.00003, 0.003, 0.03, 0.3, 3.0, 300.0])
    buckets = h.prometheus_buckets()
    assert [le for le, _ in buckets] == [*PROMETHEUS_BOUNDS, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)
    assert dict(buckets)[0.0001] == 1
    assert dict(buckets)[0.005] == 2
    assert dict(buckets)[60.0] == 5
    assert counts[-1] == 6


def test_merge_equals_observing_everything_in_one() -> None:
    a = LatencyHistogram.of([0.001, 0.01, 0.1])
    b = LatencyHistogram.of([0.002, 0.2, 2.0, 20.0])
    a.merge(b)
    whole = LatencyHistogram.of([0.001, 0.01, 0.1, 0.002, 0.2, 2.0, 20.0])
    assert a.to_list() == pytest.approx(whole.to_list())
    assert a.count == 7
    assert a.quantile(0.5) == whole.quantile(0.5)


def test_list_round_trip_keeps_counts_sum_and_quantiles() -> None:
    h = LatencyHistogram.of([0.004, 0.004, 0.05, 1.5])
    back = LatencyHistogram.from_list(h.to_list())
    assert back.count == 4
    assert back.sum == pytest.approx(1.558)
    assert back.quantile(0.75) == h.quantile(0.75)


def test_from_list_rejects_a_foreign_layout() -> None:
    with pytest.raises(ValueError):
        LatencyHistogram.from_list([1, 2, 3])


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=200))
def test_quantiles_are_monotone_and_bounded(values: list[float]) -> None:
    h = LatencyHistogram.of(values)
    qs = [h.quantile(q) for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0)]
    assert all(q is not None for q in qs)
    assert qs == sorted(qs)  # type: ignore[type-var]
    assert 0.0 <= qs[0] and qs[-1] <= 60.0  # type: ignore[operator]


def test_observe_costs_less_than_a_microsecond() -> None:
    h = LatencyHistogram()
    n = 20_000
    best = min(timeit.repeat("h.observe(0.0123)", globals={"h": h}, number=n, repeat=5)) / n
    assert best < 1e-6, f"observe took {best * 1e9:.0f} ns"
