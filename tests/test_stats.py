"""The gate's statistics against published values, and the latency histograms' guarantees."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadow.stats import (
    DIFFERENCE,
    LATENCY,
    Z_95_TWO_SIDED,
    Grid,
    diff_interval,
    exceeds_by_more_than,
    more_needed,
    order_ranks,
    quantile,
    quantile_bounds,
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


# --- histograms -------------------------------------------------------------------------------


def counts_of(values: list[float], grid: Grid = LATENCY) -> list[int]:
    counts = [0] * grid.size
    for v in values:
        counts[grid.index(v)] += 1
    return counts


def test_latency_buckets_span_50us_to_60s_16_per_octave() -> None:
    assert LATENCY.bounds[0] == pytest.approx(50e-6)
    assert LATENCY.bounds[-1] >= 60.0 > LATENCY.bounds[-2]
    ratios = [b / a for a, b in itertools.pairwise(LATENCY.bounds)]
    assert max(ratios) == pytest.approx(2 ** (1 / 16)) and max(ratios) - 1 < 0.045


def test_empty_histogram_has_no_quantile() -> None:
    assert quantile(LATENCY, [0] * LATENCY.size, 0.99) is None


@given(st.lists(st.floats(60e-6, 50.0), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.99, 1.0]))
def test_any_distribution_reads_within_one_bucket_of_its_own_quantile(
        values: list[float], q: float) -> None:
    """The guarantee, whatever the data: the estimate stays inside the bucket of the sample's
    q-quantile, so it is within 4.4% of it."""
    est = quantile(LATENCY, counts_of(values), q)
    true = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    assert est is not None
    assert abs(est / true - 1) <= 2 ** (1 / 16) - 1 + 1e-9


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.999])
def test_smooth_distributions_read_far_closer(sigma: float, q: float) -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(math.log(0.02), sigma) for _ in range(50_000))
    true = values[math.ceil(q * len(values)) - 1]
    assert quantile(LATENCY, counts_of(values), q) == pytest.approx(true, rel=0.01)


def test_values_beyond_the_top_report_the_top_bound() -> None:
    assert quantile(LATENCY, counts_of([120.0] * 10), 0.99) == LATENCY.bounds[-1]


def test_value_on_a_bound_counts_in_that_bucket() -> None:
    i = LATENCY.index(0.0001)
    assert LATENCY.upper[i] == pytest.approx(0.0001)
    assert LATENCY.index(0.0001 * 1.0001) == i + 1


def test_signed_differences_split_and_join_by_direction() -> None:
    values = [-0.5, -0.002, -0.00001, 0.0, 0.00001, 0.002, 0.5]
    counts = counts_of(values, DIFFERENCE)
    slower, faster = DIFFERENCE.split(counts)
    assert sum(slower) == 3 and sum(faster) == 4  # 0 counts as "not slower"
    assert DIFFERENCE.join(slower, faster) == counts
    assert quantile(DIFFERENCE, counts, 0.5) == pytest.approx(0.0, abs=50e-6)
    assert quantile(DIFFERENCE, counts, 0.0) < -0.45 and quantile(DIFFERENCE, counts, 1.0) > 0.45


# --- quantile bounds from order statistics ------------------------------------------------------


@pytest.mark.parametrize(("n", "p", "alpha", "ranks"), [
    (100, 0.5, 0.025, (40, 61)),  # the textbook 95% interval of a median of 100: X(40), X(61)
    (20, 0.5, 0.025, (6, 15)),  # exact: P(B <= 5) = 0.0207
    (100, 0.99, 0.025, (97, 101)),  # no upper bound for a p99 of 100 values
    (400, 0.99, 0.025, (392, 400)),
])
def test_order_ranks_match_the_binomial_tails(n: int, p: float, alpha: float,
                                             ranks: tuple[int, int]) -> None:
    assert order_ranks(n, p, alpha) == ranks


def test_p99_bounds_cover_the_true_p99_at_their_level() -> None:
    """Coverage on 400 samples of 1,000: each one-sided 97.5% bound misses about 2.5%."""
    true = math.exp(math.log(0.02) + 0.5 * 2.326348)
    misses_low = misses_high = 0
    for seed in range(400):
        rng = random.Random(seed)
        c = counts_of([rng.lognormvariate(math.log(0.02), 0.5) for _ in range(1000)])
        low, high = quantile_bounds(LATENCY, c, 0.99, 0.025)
        misses_low += low > true
        misses_high += high < true
    assert misses_low <= 20 and misses_high <= 20, (misses_low, misses_high)


def test_more_needed_finds_the_scale_that_decides() -> None:
    # decided once 100 * k >= 250: 150 more
    assert more_needed(lambda k: 100 * k >= 250, 100) == 150
    assert more_needed(lambda k: False, 100) is None
    assert more_needed(lambda k: True, 0) is None


def test_recording_a_request_keeps_nothing_per_request() -> None:
    """The recorder's memory between two flushes grows with the series seen, never with the
    requests: 50,000 requests on three series leave no allocated block behind. (Its cost per
    request is measured in bench/, `python -m bench.icount`, not timed here.)"""
    import sys

    from proxy.dataplane.recorder import Recorder

    r = Recorder()
    calls = [("balance", 1, "legacy", 200, 0.0123), ("balance", 1, "target", 200, 0.0051),
             ("balance", 1, "legacy", 502, 2.5)]
    for c in calls:
        r.request(*c)
    before = sys.getallocatedblocks()
    for _ in range(50_000 // len(calls)):
        for c in calls:
            r.request(*c)
    grown = sys.getallocatedblocks() - before
    assert grown < 16, f"{grown} blocks kept by 50,000 requests"
    delta = r.take()
    assert sum(delta.requests.values()) == 3 + 3 * (50_000 // 3)
    assert delta.requests[("balance", 1, "legacy", 502)] == 1 + 50_000 // 3
