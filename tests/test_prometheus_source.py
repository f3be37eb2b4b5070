"""The gate's Prometheus source against a real Prometheus scraping two replicas.

Two exporters on 127.0.0.1 play two proxy replicas: each is the proxy's own metrics code (its
Recorder, Aggregator and StranglerCollector) fed with known values; scripts/prometheus-dev runs
Prometheus scraping both every second. Besides the counts, two routes carry known latency
distributions (true p99 ratios 1.15 and 1.35): the gate reading Prometheus must compute the
same p99s and decide as the in-process gate does.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import Gauge, start_http_server

from proxy.api.metrics import StranglerCollector, make_registry
from proxy.config.spec import CheckSpec, PromotionSpec
from proxy.control.aggregate import Aggregator
from proxy.dataplane.recorder import Recorder
from shadow.evidence import BackendEvidence, Evidence
from shadow.gate import decide
from shadow.promql import MetricsUnavailable, PrometheusSource
from tests.support import free_port

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "balance"
WINDOW = 120.0


@dataclass
class Replica:
    """What one replica serves: (requests, 5xx) per backend, latency, comparisons, a gauge."""

    legacy: tuple[int, int]
    target: tuple[int, int]
    legacy_latency: float
    target_latency: float
    match: int
    mismatch: int
    error: int
    cost: float


# The target gets 105 requests: comfortably over the gate's 100 samples for a p99 without
# relying on increase() extrapolating upwards (95 made the promote test flaky).
REPLICAS = (
    Replica((400, 4), (62, 3), 0.008, 0.03, 300, 2, 1, 0.03),
    Replica((600, 0), (43, 2), 0.008, 0.03, 200, 1, 0, 0.05),
)


# Known latency distributions, split over the two replicas: lognormal, sigma 0.1, legacy p99
# 50 ms; target 1,000 samples (the default floor), legacy 19,000 (as at a 5% step).
LATENCY_ROUTES = {"p99-115": 1.15, "p99-135": 1.35}
LEGACY_P99 = 0.050


def _lognormal(rng: random.Random, p99: float, n: int, sigma: float = 0.1) -> list[float]:
    mu = math.log(p99) - sigma * 2.326348
    return [rng.lognormvariate(mu, sigma) for _ in range(n)]


def _latencies() -> dict[str, dict[str, list[float]]]:
    rng = random.Random(5)
    return {route: {"target": _lognormal(rng, LEGACY_P99 * ratio, 1000),
                    "legacy": _lognormal(rng, LEGACY_P99, 19_000)}
            for route, ratio in LATENCY_ROUTES.items()}


LATENCIES = _latencies()


class Exporter:
    """One replica's /metrics: the proxy's recorder, aggregator and collector."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.agg = Aggregator()
        routes = (ROUTE, *LATENCY_ROUTES)
        self.registry = make_registry(StranglerCollector(
            self.agg, lambda: {r: (5.0, False) for r in routes}, lambda: {},
            upstreams=lambda: ()))
        self.cost = Gauge("strangler_test_cost_per_tx", "", registry=self.registry)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1",
                                                     registry=self.registry)
        self.address = f"127.0.0.1:{self.server.server_port}"

    def serve(self, rep: Replica, share: slice) -> None:
        rec = self.recorder
        for backend, (n, errors), latency in (
            ("legacy", rep.legacy, rep.legacy_latency),
            ("target", rep.target, rep.target_latency),
        ):
            for i in range(n):
                rec.request(ROUTE, 1, backend, 500 if i < errors else 200, latency)
        for result in ("match", "mismatch"):
            for _ in range(getattr(rep, result)):
                rec.shadow_result(ROUTE, 1, result)
        for _ in range(rep.error):
            rec.shadow_error(ROUTE, 1, "target", "timeout")
        for route, sides in LATENCIES.items():
            for backend, values in sides.items():
                for seconds in values[share]:
                    rec.request(route, 1, backend, 200, seconds)
        self.agg.merge(rec.take())
        self.cost.set(rep.cost)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _query(url: str, promql: str) -> float | None:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        result = json.load(resp)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait_for(url: str, promql: str, want: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = _query(url, promql)
        if value is not None and value >= want:
            return
        time.sleep(0.25)
    raise AssertionError(f"{promql} = {value} after {timeout} s, wanted >= {want}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus holding both replicas' numbers: its base URL."""
    exporters = [Exporter() for _ in REPLICAS]
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    script = str(ROOT / "scripts" / "prometheus-dev")
    subprocess.run(
        [script, "start", str(workdir), str(port), *(e.address for e in exporters)],
        check=True,
        capture_output=True,
        timeout=40,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # A zero baseline of several samples per replica keeps increase()'s extrapolation small.
        baseline = f'min(count_over_time(strangler_requests_total{{route="{ROUTE}"}}[1m]))'
        _wait_for(url, f"count(up == 1) >= {len(exporters)}", 1)
        _wait_for(url, baseline, 5)
        halves = (slice(0, None, 2), slice(1, None, 2))
        for exporter, rep, share in zip(exporters, REPLICAS, halves, strict=True):
            exporter.serve(rep, share)
        total = sum(r.legacy[0] + r.target[0] for r in REPLICAS)
        _wait_for(url, f'sum(strangler_requests_total{{route="{ROUTE}"}})', total)
        _wait_for(url, "count(strangler_test_cost_per_tx > 0)", len(exporters))
        yield url
    finally:
        subprocess.run([script, "stop", str(workdir)], check=False, timeout=30)
        for e in exporters:
            e.close()


def _between(value: float, expected: float, slack: float = 0.25) -> bool:
    """increase() extrapolates a little past the last sample: allow for it, upwards only."""
    return expected - 0.5 <= value <= expected * (1 + slack) + 0.5


async def test_evidence_sums_both_replicas(prometheus: str) -> None:
    async with PrometheusSource(prometheus) as source:
        ev = await source.evidence(ROUTE, 5.0, WINDOW, shadow_enabled=True)

    legacy = sum(r.legacy[0] for r in REPLICAS)  # 1000: 400 + 600
    target = sum(r.target[0] for r in REPLICAS)  # 105: 62 + 43
    assert _between(ev.legacy.requests, legacy), ev
    assert _between(ev.target.requests, target), ev
    assert _between(ev.target.errors, 5), ev
    assert _between(ev.legacy.errors, 4), ev
    assert ev.target.error_rate == pytest.approx(5 / 105, abs=0.015)
    assert _between(ev.target.latency_samples, target), ev
    assert _between(ev.compared, 503), ev  # 302 + 201: matches and mismatches
    assert _between(ev.mismatched, 3), ev  # errors are not mismatches
    assert _between(ev.shadow_errors, 1), ev
    assert ev.shadow_error_kinds == ((("target", "timeout"), ev.shadow_errors),)
    # every latency was one value: the p99 reads within one bucket (4.4%) of it
    assert ev.legacy.p99 == pytest.approx(0.008, rel=0.045)
    assert ev.target.p99 == pytest.approx(0.03, rel=0.045)


async def test_unknown_route_has_no_evidence(prometheus: str) -> None:
    async with PrometheusSource(prometheus) as source:
        ev = await source.evidence("nope", 5.0, WINDOW, shadow_enabled=True)
    assert (ev.target.requests, ev.legacy.requests, ev.compared) == (0, 0, 0)
    assert ev.target.p99 is None


async def test_checks_return_the_value_or_no_data_and_the_gate_holds_without_data(
    prometheus: str,
) -> None:
    cost = CheckSpec(name="cost_per_tx", query="max(strangler_test_cost_per_tx)", max=0.06)
    missing = CheckSpec(name="conversion", query="max(strangler_no_such_metric)", min=0.9)
    windowed = CheckSpec(
        name="target_5xx",
        query='sum(increase(strangler_requests_total{backend="target",code="500"}[$window]))',
        max=100,
    )
    policy = PromotionSpec(
        min_requests=50,
        min_comparisons=50,
        max_mismatch_rate=0.05,
        max_shadow_error_rate=0.05,
        max_error_rate_increase=0.2,
        max_p99_ratio=None,  # 105 target samples cannot bound a p99 (see the test below)
    )
    async with PrometheusSource(prometheus) as source:
        assert (await source.check(cost)).value == 0.05  # the larger of the two replicas
        assert (await source.check(missing)).value is None
        result = await source.check(windowed, WINDOW)
        assert result.value is not None and _between(result.value, 5)

        with_data = await source.evidence(ROUTE, 5.0, WINDOW, True, [cost])
        without_data = await source.evidence(ROUTE, 5.0, WINDOW, True, [cost, missing])

    promoted = decide(with_data, policy)
    assert (promoted.decision, promoted.to_weight) == ("promote", 25.0), promoted.reasons
    held = decide(without_data, policy)
    assert held.decision == "hold"
    assert ("check conversion has no data (query: max(strangler_no_such_metric)): waiting for "
            "data.") in held.reasons


async def test_a_dry_run_check_is_reported_never_judged(prometheus: str) -> None:
    """checks[].dry_run: outside its bounds, or even a query Prometheus rejects, is shown and
    never fails or holds the gate."""
    policy = PromotionSpec(min_requests=50, min_comparisons=50, max_mismatch_rate=0.05,
                           max_shadow_error_rate=0.05, max_error_rate_increase=0.2,
                           max_p99_ratio=None)
    outside = CheckSpec(name="cost_dry", query="max(strangler_test_cost_per_tx)", max=0.01,
                        dry_run=True)
    broken = CheckSpec(name="typo_dry", query="sum(", max=1, dry_run=True)
    async with PrometheusSource(prometheus) as source:
        ev = await source.evidence(ROUTE, 5.0, WINDOW, True, [outside, broken])
    d = decide(ev, policy)
    assert d.decision == "promote", d.reasons
    assert "check cost_dry is 0.05, outside max 0.01 (dry run: reported, not judged)." \
        in d.reasons
    assert "check typo_dry has no data (query: sum() (dry run: reported, not judged)." \
        in d.reasons


async def test_a_query_prometheus_rejects_raises_metrics_unavailable(prometheus: str) -> None:
    async with PrometheusSource(prometheus) as source:
        with pytest.raises(MetricsUnavailable, match="rejected"):
            await source.query("sum(")
        with pytest.raises(MetricsUnavailable, match="aggregate it"):
            await source.query("strangler_test_cost_per_tx")


def _local(route: str) -> Evidence:
    """What the in-process gate of one proxy that saw both replicas' traffic would judge."""
    sides = {}
    for backend, values in LATENCIES[route].items():
        sides[backend] = BackendEvidence.of(len(values), 0, values)
    return Evidence(route, 5.0, sides["legacy"], sides["target"], 0, 0, False)


@pytest.mark.parametrize(("route", "expected"), [("p99-115", "promote"), ("p99-135", "fail")])
async def test_prometheus_reads_the_same_p99_and_decides_as_in_process(
        prometheus: str, route: str, expected: str) -> None:
    """Known distributions, true p99 ratios 1.15 and 1.35 against the 1.25 limit at the
    default sample floor: the same p99s (well within 5%) and the same decision."""
    policy = PromotionSpec(min_requests=500, max_error_rate_increase=0.01)
    async with PrometheusSource(prometheus) as source:
        prom = await source.evidence(route, 5.0, WINDOW, shadow_enabled=False)
    local = _local(route)
    assert _between(prom.target.latency_samples, 1000) and \
        _between(prom.legacy.latency_samples, 19_000), prom
    for side in ("target", "legacy"):
        p, loc = getattr(prom, side), getattr(local, side)
        assert p.p99 == pytest.approx(loc.p99, rel=0.01), side  # same buckets, same code
        true = LEGACY_P99 * (LATENCY_ROUTES[route] if side == "target" else 1)
        assert p.p99 == pytest.approx(true, rel=0.05), side
    assert prom.p99_ratio() == pytest.approx(LATENCY_ROUTES[route], rel=0.05)
    assert decide(local, policy).decision == expected
    assert decide(prom, policy).decision == expected, decide(prom, policy).reasons
