"""Prometheus exposition of the contract's metrics (§6), read from the control plane.

A custom collector reads the aggregated counters at scrape time, so the hot path never touches
prometheus-client objects and `--workers N` is covered without multiprocess files: workers ship
their deltas to the control plane, which is the only process that serves /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest

from proxy.aggregate import Aggregator
from proxy.recorder import LAT_BOUNDS, LAT_BUCKETS

# Exported bucket bounds: a subset of the fine bounds (50 µs * 2**(i/4)), sub-millisecond first.
EXPORT_INDEXES = tuple(i for i in range(0, LAT_BUCKETS, 4))  # every octave: 50µs, 100µs, 200µs...
EXPORT_BOUNDS = tuple(LAT_BOUNDS[i] for i in EXPORT_INDEXES)


class StranglerCollector:
    def __init__(
        self,
        agg: Aggregator,
        weights: Callable[[], dict[str, tuple[float, bool]]],
        counters: Callable[[], dict[str, dict[tuple[str, ...], int]]],
    ) -> None:
        self.agg = agg
        self.weights = weights  # route -> (effective weight, rolled back)
        self.counters = counters  # "gate_decisions" / "rollbacks" -> label tuple -> count

    def collect(self) -> Iterator[Any]:
        agg = self.agg
        req = CounterMetricFamily(
            "strangler_requests", "Requests served, by route, backend and status code",
            labels=["route", "backend", "code"],
        )
        for (route, backend, code), n in sorted(agg.requests.items()):
            req.add_metric([route, backend, str(code)], n)
        yield req

        hist = HistogramMetricFamily(
            "strangler_request_duration_seconds",
            "Time from request head to the end of the response, by route and backend",
            labels=["route", "backend"],
        )
        for (route, backend), counts in sorted(agg.latency.items()):
            buckets = []
            running = 0
            pos = 0
            for idx, bound in zip(EXPORT_INDEXES, EXPORT_BOUNDS, strict=True):
                while pos <= idx:
                    running += counts[pos]
                    pos += 1
                buckets.append((_fmt(bound), running))
            total = sum(counts)
            buckets.append(("+Inf", total))
            # Sum is estimated from bucket bounds (fine buckets are within 19% of a value).
            approx_sum = sum(
                c * (LAT_BOUNDS[i] if i < LAT_BUCKETS else LAT_BOUNDS[-1])
                for i, c in enumerate(counts)
            )
            hist.add_metric([route, backend], buckets, approx_sum)
        yield hist

        weight = GaugeMetricFamily(
            "strangler_route_weight", "Effective weight of the route, percent to target",
            labels=["route"],
        )
        rolled = GaugeMetricFamily(
            "strangler_route_rolled_back", "1 while the route is rolled back (frozen)",
            labels=["route"],
        )
        for route, (w, rb) in sorted(self.weights().items()):
            weight.add_metric([route], w)
            rolled.add_metric([route], 1.0 if rb else 0.0)
        yield weight
        yield rolled

        cmp_ = CounterMetricFamily(
            "strangler_shadow_comparisons", "Shadow comparisons by result",
            labels=["route", "result"],
        )
        for (route, result), n in sorted(agg.shadow.items()):
            cmp_.add_metric([route, result], n)
        yield cmp_

        skipped = CounterMetricFamily(
            "strangler_shadow_skipped", "Requests not mirrored, by reason",
            labels=["route", "reason"],
        )
        for (route, reason), n in sorted(agg.skipped.items()):
            skipped.add_metric([route, reason], n)
        yield skipped

        up = CounterMetricFamily(
            "strangler_upstream_errors", "Upstream failures by kind",
            labels=["upstream", "kind"],
        )
        for (upstream, kind), n in sorted(agg.upstream_errors.items()):
            up.add_metric([upstream, kind], n)
        yield up

        extra = self.counters()
        gate = CounterMetricFamily(
            "strangler_gate_decisions", "Gate evaluations by decision",
            labels=["route", "decision"],
        )
        for labels, n in sorted(extra.get("gate_decisions", {}).items()):
            gate.add_metric(list(labels), n)
        yield gate
        rb = CounterMetricFamily(
            "strangler_rollbacks", "Rollbacks by trigger", labels=["route", "trigger"]
        )
        for labels, n in sorted(extra.get("rollbacks", {}).items()):
            rb.add_metric(list(labels), n)
        yield rb


def _fmt(bound: float) -> str:
    return f"{bound:.6g}"


def make_registry(collector: StranglerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
