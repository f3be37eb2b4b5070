"""Issue 23, point 4: latency quantiles a statistician would sign.

Known latency distributions are recorded as the data plane records them (`Recorder.request`,
merged by the control plane's `Aggregator`) and judged by the gate as `strangler gate` does.
At the default sample floor (1,000 target samples; legacy at 19 times that, as at a 5% step)
the gate separates a target whose true p99 is 1.15x legacy's from one at 1.35x against the
1.25x limit, reading each p99 within 5% of the truth. With a wider distribution it never
misjudges: it holds, says how many more samples it needs, and decides once it has them.
"""

from __future__ import annotations

import math
import random

import pytest

from proxy.api.metrics import StranglerCollector, make_registry, render
from proxy.config.spec import PromotionSpec, RouteSpec, ShadowSpec
from proxy.control import views
from proxy.control.aggregate import Aggregator
from proxy.control.state import RouteRuntime
from proxy.dataplane.recorder import Recorder
from shadow.gate import decide

LIMIT = 1.25
LEGACY_P99 = 0.050  # seconds
Z99 = 2.326348
POLICY = PromotionSpec(max_p99_ratio=LIMIT, min_requests=500, max_error_rate_increase=0.01)
SPEC = RouteSpec(name="balance", match=None, legacy="monolith", target="svc",  # type: ignore
                 promotion=POLICY, shadow=ShadowSpec(enabled=False))
STARTED = 1_764_000_000.0


def lognormal(rng: random.Random, p99: float, sigma: float, n: int) -> list[float]:
    mu = math.log(p99) - sigma * Z99
    return [rng.lognormvariate(mu, sigma) for _ in range(n)]


def judged(target: list[float], legacy: list[float], policy: PromotionSpec = POLICY):
    """Record both samples as the data plane does, then ask the gate (in-process evidence)."""
    rec, agg = Recorder(), Aggregator()
    agg.new_step("balance", 7, STARTED)
    for side, values in (("target", target), ("legacy", legacy)):
        for seconds in values:
            rec.request("balance", 7, side, 200, seconds)
    agg.merge(rec.take())
    rt = RouteRuntime(step=7, step_started=STARTED)
    ev = views.evidence("balance", 5.0, SPEC, agg.window("balance"), rt, (), now=STARTED + 600)
    return ev, decide(ev, policy)


def sample_p99(values: list[float]) -> float:
    return sorted(values)[math.ceil(0.99 * len(values)) - 1]


@pytest.mark.parametrize("seed", range(10))
def test_at_the_default_floor_115_promotes_and_135_fails(seed: int) -> None:
    assert POLICY.min_latency_samples == 1000  # the default floor
    rng = random.Random(seed)
    legacy = lognormal(rng, LEGACY_P99, 0.1, 19_000)
    for ratio, expected in ((1.15, "promote"), (1.35, "fail")):
        target = lognormal(rng, LEGACY_P99 * ratio, 0.1, 1000)
        ev, d = judged(target, legacy)
        assert d.decision == expected, (ratio, d.reasons)
        # each p99 within 5% of the sample's own p99 and of the distribution's true one
        for values, side, true in ((target, ev.target, LEGACY_P99 * ratio),
                                   (legacy, ev.legacy, LEGACY_P99)):
            assert side.p99 == pytest.approx(sample_p99(values), rel=0.05)
            assert side.p99 == pytest.approx(true, rel=0.05)
        low, high = ev.p99_ratio_bounds()
        assert (high <= LIMIT) if expected == "promote" else (low > LIMIT)


@pytest.mark.parametrize("ratio", [1.15, 1.35])
def test_a_wider_distribution_is_never_misjudged_and_the_hold_says_how_much_more(
        ratio: float) -> None:
    """p99 / median = 2 (sigma 0.3): 1,000 samples cannot tell 1.15 from 1.35 at 95%, so the
    gate holds and names the samples it needs; given them, it decides, and decides right."""
    rng = random.Random(11)
    legacy = lognormal(rng, LEGACY_P99, 0.3, 19_000)
    target = lognormal(rng, LEGACY_P99 * ratio, 0.3, 1000)
    _, d = judged(target, legacy)
    assert d.decision == "hold", d.reasons
    (pending,) = [p for p in d.pending if p["bound"] == "p99_ratio"]
    assert pending["unit"] == "target latency samples" and pending["more"] > 0
    assert any("more target latency samples" in r for r in d.reasons)
    more = int(pending["more"] * 1.5)  # the projection, with room for sampling noise
    target += lognormal(rng, LEGACY_P99 * ratio, 0.3, more)
    legacy += lognormal(rng, LEGACY_P99, 0.3, 19 * more)
    _, d = judged(target, legacy)
    assert d.decision == ("promote" if ratio < LIMIT else "fail"), d.reasons


def test_never_misjudged_across_seeds_and_spreads() -> None:
    """At the floor, over 60 draws of each: 1.15 never fails, 1.35 never promotes."""
    for seed in range(20):
        for sigma in (0.1, 0.3, 0.6):
            rng = random.Random(1000 + seed)
            legacy = lognormal(rng, LEGACY_P99, sigma, 19_000)
            _, low = judged(lognormal(rng, LEGACY_P99 * 1.15, sigma, 1000), legacy)
            _, high = judged(lognormal(rng, LEGACY_P99 * 1.35, sigma, 1000), legacy)
            assert low.decision != "fail" and high.decision != "promote", (seed, sigma)


def test_histogram_sum_is_the_exact_sum_of_what_was_recorded() -> None:
    rng = random.Random(3)
    values = lognormal(rng, LEGACY_P99, 0.5, 5000)
    rec, agg = Recorder(), Aggregator()
    for seconds in values:
        rec.request("balance", 1, "legacy", 200, seconds)
    agg.merge(rec.take())
    counts, total = agg.latency[("balance", "legacy")]
    assert sum(counts) == 5000
    assert total == pytest.approx(math.fsum(values), rel=1e-12)
    # and /metrics says so: rate(_sum) / rate(_count) is the true mean (issue 26)
    registry = make_registry(StranglerCollector(agg, lambda: {"balance": (5.0, False)},
                                                dict, upstreams=tuple))
    text = render(registry)[0].decode()
    line = next(x for x in text.splitlines() if x.startswith(
        'strangler_request_duration_seconds_sum{backend="legacy",route="balance"}'))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(math.fsum(values), rel=1e-9)
