"""The gate's Prometheus source against a real Prometheus scraping two replicas.

Two exporters on 127.0.0.1 play two proxy replicas (the contract's metric names, known
values); scripts/prometheus-dev runs Prometheus scraping both every second.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from proxy.config.spec import CheckSpec, PromotionSpec
from shadow.gate import decide
from shadow.promql import MetricsUnavailable, PrometheusSource
from shadow.stats import PROMETHEUS_BOUNDS

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


class Exporter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("strangler_requests", "", ["route", "backend", "code"], registry=r)
        self.duration = Histogram(
            "strangler_request_duration_seconds",
            "",
            ["route", "backend"],
            buckets=PROMETHEUS_BOUNDS,
            registry=r,
        )
        self.comparisons = Counter(
            "strangler_shadow_comparisons", "", ["route", "result"], registry=r
        )
        self.cost = Gauge("strangler_test_cost_per_tx", "", registry=r)
        # Every series exists at 0 before Prometheus' first scrape, so increase() sees it all.
        for backend in ("legacy", "target"):
            for code in ("200", "500"):
                self.requests.labels(ROUTE, backend, code)
            self.duration.labels(ROUTE, backend)
        for result in ("match", "mismatch", "error"):
            self.comparisons.labels(ROUTE, result)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=r)
        self.address = f"127.0.0.1:{self.server.server_port}"

    def serve(self, rep: Replica) -> None:
        for backend, (n, errors), latency in (
            ("legacy", rep.legacy, rep.legacy_latency),
            ("target", rep.target, rep.target_latency),
        ):
            self.requests.labels(ROUTE, backend, "200").inc(n - errors)
            self.requests.labels(ROUTE, backend, "500").inc(errors)
            for _ in range(n):
                self.duration.labels(ROUTE, backend).observe(latency)
        for result in ("match", "mismatch", "error"):
            self.comparisons.labels(ROUTE, result).inc(getattr(rep, result))
        self.cost.set(rep.cost)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
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
        for exporter, rep in zip(exporters, REPLICAS, strict=True):
            exporter.serve(rep)
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
    assert _between(ev.compared, 504), ev  # 303 + 201
    assert _between(ev.mismatched, 4), ev  # mismatches and errors
    # Buckets (0.005, 0.01] and (0.025, 0.05]: histogram_quantile interpolates inside them.
    assert ev.legacy.p99 is not None and 0.005 < ev.legacy.p99 <= 0.01
    assert ev.target.p99 is not None and 0.025 < ev.target.p99 <= 0.05


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
        max_error_rate_increase=0.2,
        max_p99_ratio=10,
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
    assert "check conversion has no data (query: max(strangler_no_such_metric))." in held.reasons


async def test_a_query_prometheus_rejects_raises_metrics_unavailable(prometheus: str) -> None:
    async with PrometheusSource(prometheus) as source:
        with pytest.raises(MetricsUnavailable, match="rejected"):
            await source.query("sum(")
        with pytest.raises(MetricsUnavailable, match="aggregate it"):
            await source.query("strangler_test_cost_per_tx")
