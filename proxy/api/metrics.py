"""Prometheus exposition of the contract's metrics (§6), read from the control plane.

A custom collector reads the aggregated counters at scrape time, so the hot path never touches
prometheus-client objects and `--workers N` is covered without multiprocess files: workers ship
their deltas to the control plane, which is the only process that serves /metrics.

Every configured route (and upstream) has its label series from the first scrape, at 0, so
`increase()`/`rate()` see the first request instead of starting from it: requests for both
backends with the codes 200, 500, 502, 503 and 504, the latency histograms, comparison results
and shadow errors, skip reasons, fallbacks, upstream error kinds, gate decisions and rollback
triggers.

The latency histograms' `_sum` is the exact sum of the observed values, so
`rate(_sum)/rate(_count)` is the true mean. With `gate.metrics: prometheus` their buckets are the
gate's own (`shadow.stats.LATENCY`, 16 per octave; `PAIRED`, 8 per octave), so the gate reading
Prometheus computes the same quantiles as the in-process gate; otherwise every 8th (every 4th)
of them, half-octave steps: about a tenth of the series, for dashboards (a scrape of 10 routes
renders in ~20 ms instead of ~70 ms, on the loop that serves requests with `--workers 1`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from proxy.control.aggregate import Aggregator
from shadow.comparer import SKIP_REASONS as COMPARER_SKIP_REASONS
from shadow.stats import DIFFERENCE, LATENCY, PAIRED, Grid

BACKENDS = ("legacy", "target")
CODES = (200, 500, 502, 503, 504)
RESULTS = ("match", "mismatch", "error")
# the data plane's reasons (proxy.dataplane.mirror), then the comparer's (shadow.comparer)
SKIP_REASONS = ("queue_full", "body_too_large", "unsafe_method", "sampled_out", "rate_limited",
                "budget", "comparer_busy", *COMPARER_SKIP_REASONS)
ERROR_KINDS = ("connect", "timeout", "reset", "tls", "busy")  # proxy.dataplane.upstream_errors
SIDES = ("legacy", "target")  # the mirrored side that did not answer
FALLBACK_REASONS = ("connect", "timeout", "reset", "tls", "busy", "5xx")
DIRECTIONS = ("target_slower", "target_faster")  # paired differences: d > 0, d <= 0
DECISIONS = ("promote", "complete", "hold", "fail", "inconclusive")
TRIGGERS = ("manual", "gate", "guardrail")
STORE_EVENTS = ("samples_dropped", "write_failed")
TRACE_RESULTS = ("exported", "export_failed", "queue_full")


class StranglerCollector:
    def __init__(
        self,
        agg: Aggregator,
        weights: Callable[[], dict[str, tuple[float, bool]]],
        counters: Callable[[], dict[str, dict[tuple[str, ...], int]]],
        upstreams: Callable[[], Iterable[str]] | None = None,
        fine: Callable[[], bool] | None = None,
        store: Callable[[], dict | None] | None = None,
    ) -> None:
        self.agg = agg
        self.store = store  # the shared audit trail's status (None: local files)
        self.weights = weights  # route -> (effective weight, rolled back)
        self.counters = counters  # "gate_decisions" / "rollbacks" -> label tuple -> count
        runtime = getattr(weights, "__self__", None)  # knows the configured upstreams and gate
        if upstreams is None:
            # read at every scrape: a reload may change the upstreams
            upstreams = (lambda: runtime.config.upstreams) if hasattr(runtime, "config") \
                else tuple
        self.upstreams = upstreams
        if fine is None:  # the gate's own buckets when the gate reads Prometheus
            fine = (lambda: runtime.config.gate.metrics == "prometheus") \
                if hasattr(runtime, "config") else (lambda: True)
        self.fine = fine

    def collect(self) -> Iterator[Any]:
        agg = self.agg
        weights = self.weights()
        routes = sorted(weights)
        requests: dict[tuple[str, str, int], int] = {
            (r, b, c): 0 for r in routes for b in BACKENDS for c in CODES
        }
        requests.update(agg.requests)
        yield _family(CounterMetricFamily, "strangler_requests",
                      "Requests served, by route, backend and status code",
                      ["route", "backend", "code"], requests)

        hist = HistogramMetricFamily(
            "strangler_request_duration_seconds",
            "Time from request head to the end of the response, by route and backend",
            labels=["route", "backend"],
        )
        every = 1 if self.fine() else 8  # coarse: half-octave steps
        zero = [[0] * LATENCY.size, 0.0]
        latency = {(r, b): zero for r in routes for b in BACKENDS}
        latency.update(agg.latency)
        for (route, backend), (counts, seconds) in sorted(latency.items()):
            hist.add_metric([route, backend], _buckets(LATENCY, counts, every), seconds)
        yield hist

        paired = HistogramMetricFamily(
            "strangler_shadow_latency_difference_seconds",
            "Target's time minus legacy's on the same mirrored request, by direction "
            "(target_slower: d > 0; target_faster: d <= 0, as |d|)",
            labels=["route", "direction"],
        )
        pzero = [[0] * DIFFERENCE.size, 0.0, 0.0]
        for route in sorted({*routes, *agg.paired}):
            counts, slower, faster = agg.paired.get(route, pzero)
            up, down = DIFFERENCE.split(counts)
            step = 1 if every == 1 else 4
            paired.add_metric([route, "target_slower"], _buckets(PAIRED, up, step), slower)
            paired.add_metric([route, "target_faster"], _buckets(PAIRED, down, step), faster)
        yield paired

        yield _family(GaugeMetricFamily, "strangler_route_weight",
                      "Effective weight of the route, percent to target", ["route"],
                      {(route,): w for route, (w, _) in weights.items()})
        yield _family(GaugeMetricFamily, "strangler_route_rolled_back",
                      "1 while the route is rolled back (frozen)", ["route"],
                      {(route,): 1.0 if rb else 0.0 for route, (_, rb) in weights.items()})
        yield _family(CounterMetricFamily, "strangler_shadow_comparisons",
                      "Shadow comparisons by result", ["route", "result"],
                      _zeros(agg.shadow, routes, RESULTS))
        yield _family(CounterMetricFamily, "strangler_shadow_errors",
                      "Mirrored requests the other side did not answer, by side and kind (also "
                      "in strangler_shadow_comparisons_total as result error)",
                      ["route", "side", "kind"],
                      _zeros(agg.shadow_errors, [(r, s) for r in routes for s in SIDES],
                             ERROR_KINDS))
        yield _family(CounterMetricFamily, "strangler_fallbacks",
                      "Requests answered by legacy after target failed, by reason (the target's "
                      "failure is in strangler_requests_total too)", ["route", "reason"],
                      _zeros(agg.fallbacks, routes, FALLBACK_REASONS))
        yield _family(CounterMetricFamily, "strangler_shadow_skipped",
                      "Requests not mirrored, by reason", ["route", "reason"],
                      _zeros(agg.skipped, routes, SKIP_REASONS))
        yield _family(CounterMetricFamily, "strangler_override_requests",
                      "Requests pinned to a backend by a trusted override header (QA traffic, "
                      "not in strangler_requests_total nor in the gate's evidence)",
                      ["route", "backend", "code"], agg.overrides)
        yield _family(CounterMetricFamily, "strangler_override_ignored",
                      "Override headers not honoured, by reason (untrusted, invalid, rolled_back)",
                      ["route", "reason"], agg.override_ignored)
        yield _family(CounterMetricFamily, "strangler_upstream_errors",
                      "Upstream failures by kind", ["upstream", "kind"],
                      _zeros(agg.upstream_errors, sorted(self.upstreams()), ERROR_KINDS))

        yield _family(CounterMetricFamily, "strangler_diff_store_events",
                      "What the comparers' diff store lost or could not write: samples_dropped "
                      "(queue full, or the store unavailable), write_failed (writes retried "
                      "later: their counters wait in memory)", ["event"],
                      {(e,): agg.store_events.get(e, 0) for e in STORE_EVENTS})
        status = self.store() if self.store is not None else None
        yield _family(GaugeMetricFamily, "strangler_store_up",
                      "1 while the store (store.backend) can be written; 0 while a shared "
                      "store is unavailable", ["backend"],
                      {("postgres" if status is not None else "local",):
                       1.0 if status is None or status["up"] else 0.0})
        yield _family(GaugeMetricFamily, "strangler_audit_buffered",
                      "Audit entries this replica acknowledged that wait in its outbox for the "
                      "shared store (0 with local files)", [],
                      {(): float(status["buffered"]) if status is not None else 0.0})
        # Spans of sampled requests (tracing:), zero-filled while tracing is configured.
        config = getattr(getattr(self.weights, "__self__", None), "config", None)
        if agg.traces or getattr(config, "tracing", None) is not None:
            traces = {(r,): 0 for r in TRACE_RESULTS}
            traces.update(agg.traces)
            yield _family(CounterMetricFamily, "strangler_trace_spans",
                          "Spans exported over OTLP, or dropped (export_failed, queue_full)",
                          ["result"], traces)

        extra = self.counters()
        yield _family(CounterMetricFamily, "strangler_gate_decisions",
                      "Gate decisions acted on (promote, auto-promotion, approve), by decision",
                      ["route", "decision"],
                      _zeros(extra.get("gate_decisions", {}), routes, DECISIONS))
        yield _family(CounterMetricFamily, "strangler_gate_evaluations",
                      "Every gate evaluation, reads (gate, dashboard) included, by decision",
                      ["route", "decision"],
                      _zeros(extra.get("gate_evaluations", {}), routes, DECISIONS))
        yield _family(CounterMetricFamily, "strangler_rollbacks", "Rollbacks by trigger",
                      ["route", "trigger"], _zeros(extra.get("rollbacks", {}), routes, TRIGGERS))
        # sink = the sink's index in `notify:` (never its url); proxy.control.notify zero-fills the
        # results of every configured sink
        yield _family(CounterMetricFamily, "strangler_notifications",
                      "Notifications by sink and result (sent, failed, dropped)",
                      ["sink", "result"], extra.get("notifications", {}))


def _family(kind: type, name: str, doc: str, labels: list[str], values: dict) -> Any:
    """A counter or gauge family with one sample per key of `values` (a tuple of label values;
    a status code becomes its text), in key order."""
    family = kind(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric([str(v) for v in key], n)
    return family


def _zeros(counts: dict, names: Iterable[Any], values: Iterable[str]) -> dict:
    """`counts` with a 0 for every (name, value) pair it does not have yet (a name may be a
    tuple of label values)."""
    out: dict = {(*(n if isinstance(n, tuple) else (n,)), v): 0 for n in names for v in values}
    out.update(counts)
    return out


def _buckets(grid: Grid, counts: list, every: int = 1) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs of an unsigned grid's buckets (of every `every`-th bound:
    still exact counts, only coarser), +Inf last."""
    out = []
    running = 0
    for i, (bound, c) in enumerate(zip(grid.le_bounds(), counts, strict=False)):
        running += c
        if i % every == 0:
            out.append((_fmt(bound), running))
    out.append(("+Inf", sum(counts)))
    return out


def _fmt(bound: float) -> str:
    return f"{bound:.6g}"  # buckets are 4.4% apart at most: 6 digits tell every one apart


# -- process_* for every process of one serve ----------------------------------------------------
Processes = Callable[[], Iterable[tuple[str, int]]]


class ProcessesCollector:
    """The standard `process_*` series (CPU seconds, resident and virtual memory, open and max
    fds, start time) of every process of this `serve`, labelled `process` with the same name its
    log lines carry (`main`, `worker-0`, `main/comparer`, `worker-0/comparer`, ...): with
    `--workers N` a leaking or spinning worker shows as itself, and `sum by (instance)` is the
    replica's total. Read from /proc at scrape time by prometheus-client's ProcessCollector (one
    per pid); a process that exited meanwhile has no series. Linux only (elsewhere: none)."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self._readers: dict[int, ProcessCollector] = {}

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        live: dict[int, ProcessCollector] = {}
        for name, pid in self.processes():
            reader = self._readers.get(pid) or ProcessCollector(pid=lambda p=pid: p, registry=None)
            live[pid] = reader
            for metric in reader.collect():
                family = families.get(metric.name)
                if family is None:
                    kind = CounterMetricFamily if metric.type == "counter" else GaugeMetricFamily
                    family = families[metric.name] = kind(metric.name, metric.documentation,
                                                          labels=["process"])
                for sample in metric.samples:
                    family.add_metric([name], sample.value)
        self._readers = live
        yield from families.values()


class WorkersCollector:
    """`strangler_worker_unacknowledged_seconds`, per worker process (`--workers N`): how long
    the oldest change it was sent has waited for its acknowledgement, 0 once it acknowledged
    everything. A worker whose event loop is held (stopped, starved of CPU) serves nothing and
    applies nothing; this shows it before its clients' timeouts do (/readyz: degraded.planes).
    No series without worker processes."""

    def __init__(self, links: Callable[[], Iterable[Any]]) -> None:
        self.links = links  # WorkerLink objects: `index`, `unacked` ({"op", "since"} or None)

    def collect(self) -> Iterator[Any]:
        links = list(self.links())
        if not links:
            return
        now = time.time()
        family = GaugeMetricFamily(
            "strangler_worker_unacknowledged_seconds",
            "Seconds the oldest change sent to this worker process has waited for its "
            "acknowledgement (0: it has acknowledged everything)", labels=["process"])
        for link in links:
            unacked = link.unacked
            family.add_metric([f"worker-{link.index}"],
                              max(0.0, now - unacked["since"]) if unacked else 0.0)
        yield family


def comparer_children(pid: int) -> list[int]:
    """The comparer processes (`python -m shadow.comparer`) a data plane process started."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"shadow.comparer" in f.read():
                        out.append(child)
            except OSError:
                continue
    return out


def make_registry(*collectors: Any) -> CollectorRegistry:
    """A registry of our collectors, plus `python_info` (prometheus-client's PlatformCollector).
    Pass a ProcessesCollector for the `process_*` series."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its Content-Type for a scraper's `Accept` header, as prometheus-client
    negotiates it: OpenMetrics 1.0 when asked for (`application/openmetrics-text`), else the
    Prometheus text format 0.0.4."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
