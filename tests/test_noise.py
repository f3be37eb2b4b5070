"""Noise cancellation with and without a second copy of legacy."""

from __future__ import annotations

import random

from shadow.model import Comparison, Difference
from shadow.noise import NoiseModel, NoiseThresholds


def cmp(*paths: str, kind: str = "value") -> Comparison:
    return Comparison(tuple(Difference(p, kind, 1, 2) for p in paths))


def test_field_differing_in_this_requests_noise_comparison_is_noise() -> None:
    m = NoiseModel()
    out = m.observe(cmp("$.server_time", "$.amount"), cmp("$.server_time"))
    assert [d.path for d in out.differences] == ["$.amount"]
    assert out.noise == ("$.server_time",)


def test_array_indices_generalised_and_ancestors_cover_children() -> None:
    m = NoiseModel()
    out = m.observe(cmp("$.items[5].ts", "$.meta.x", "$.items[0].amount"), cmp("$.items[2].ts"))
    assert {d.path for d in out.differences} == {"$.meta.x", "$.items[0].amount"}
    out = m.observe(cmp("$.meta.x", "$.a"), cmp("$.meta", kind="missing"))
    assert [d.path for d in out.differences] == ["$.a"]


def test_a_different_kind_on_a_noisy_field_is_still_real() -> None:
    m = NoiseModel()
    out = m.observe(cmp("$.t", kind="missing"), cmp("$.t"))
    assert [d.kind for d in out.differences] == ["missing"]


def test_rates_decide_after_min_samples() -> None:
    rng = random.Random(7)
    m = NoiseModel(NoiseThresholds(min_samples=20))
    # $.flaky differs in ~30% of legacy-vs-legacy and ~30% of legacy-vs-target: noise.
    # $.real differs in every primary comparison and never between legacy copies: real.
    reported_flaky = reported_real = 0
    for i in range(200):
        flaky_p = rng.random() < 0.3
        flaky_n = rng.random() < 0.3
        primary = cmp("$.real", *(["$.flaky"] if flaky_p else []))
        noise = cmp(*(["$.flaky"] if flaky_n else []))
        out = m.observe(primary, noise)
        paths = {d.path for d in out.differences}
        if i >= 20:
            reported_flaky += "$.flaky" in paths
            reported_real += "$.real" in paths
    assert reported_real == 180
    assert reported_flaky == 0


def test_thresholds_are_relative_and_absolute() -> None:
    m = NoiseModel(NoiseThresholds(min_samples=10))
    # primary 50%, noise 20% of 100 -> 0.5 > 2 * 0.2 and 0.3 > 0.01: real
    for i in range(100):
        m.observe(cmp(*(["$.a"] if i % 2 else [])), cmp(*(["$.a"] if i % 5 == 0 else [])))
    assert m.observe(cmp("$.a"), cmp()).differences
    n, pr, nr = m.rates("$.a")
    assert n == 101 and abs(pr - 51 / 101) < 1e-9 and abs(nr - 20 / 101) < 1e-9
    m2 = NoiseModel(NoiseThresholds(min_samples=10))
    # primary 30%, noise 20%: not twice as often -> noise
    for i in range(100):
        m2.observe(cmp(*(["$.a"] if i % 10 < 3 else [])), cmp(*(["$.a"] if i % 5 == 0 else [])))
    assert not m2.observe(cmp("$.a"), cmp()).differences


def test_without_a_noise_copy_nothing_is_moved_but_likely_noise_is_flagged() -> None:
    m = NoiseModel()
    for _ in range(19):
        out = m.observe(cmp("$.ts", "$.items[3].at"), None)
        assert len(out.differences) == 2
    assert not m.likely_noise("$.ts")  # fewer than 20 comparisons
    m.observe(cmp("$.ts", "$.items[1].at"), None)
    assert m.likely_noise("$.ts") and m.likely_noise("$.items[9].at")
    for _ in range(3):
        m.observe(cmp(), None)
    assert not m.likely_noise("$.ts")  # 20 of 23 < 90%
    assert not m.likely_noise("$.other")


def test_errors_pass_through_untouched() -> None:
    m = NoiseModel()
    err = Comparison((), error="comparison failed")
    assert m.observe(err, cmp("$.a")) is err
