"""Per-process request statistics, recorded on the hot path and shipped as deltas.

The data plane only increments plain dict counters here (no locks, no label lookups); every
~200 ms the delta is taken and merged into the control plane's `Aggregator` (in-process, or over
the worker channel with `--workers N`). Keys carry the route's weight *step*, so the gate can
judge each step on the requests recorded under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Fine latency buckets: 50 µs * 2**(i/4), i = 0..87 (about 100 s), plus overflow.
LAT_BASE = 50e-6
LAT_STEPS_PER_OCTAVE = 4
LAT_BUCKETS = 88
LAT_BOUNDS = tuple(LAT_BASE * 2 ** (i / LAT_STEPS_PER_OCTAVE) for i in range(LAT_BUCKETS))
_LOG_BASE = math.log2(LAT_BASE)


def latency_index(seconds: float) -> int:
    """Index of the first bound >= seconds (LAT_BUCKETS = overflow)."""
    if seconds <= LAT_BASE:
        return 0
    i = math.ceil((math.log2(seconds) - _LOG_BASE) * LAT_STEPS_PER_OCTAVE - 1e-9)
    return i if i < LAT_BUCKETS else LAT_BUCKETS


def quantile(counts: list[int], q: float) -> float | None:
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank and c:
            return LAT_BOUNDS[i] if i < LAT_BUCKETS else LAT_BOUNDS[-1] * 2
    return LAT_BOUNDS[-1] * 2


@dataclass(slots=True)
class Delta:
    # (route, step, backend, code) -> count
    requests: dict[tuple[str, int, str, int], int] = field(default_factory=dict)
    # (route, step, backend) -> fine histogram counts
    latency: dict[tuple[str, int, str], list[int]] = field(default_factory=dict)
    # (upstream, kind) -> count
    upstream_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    # (route, step, result) -> count; result match|mismatch|error
    shadow: dict[tuple[str, int, str], int] = field(default_factory=dict)
    # (route, reason) -> count
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    # pinned (QA) requests, kept out of `requests`: (route, backend, code) -> count
    overrides: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # override headers not honoured: (route, reason) -> count
    override_ignored: dict[tuple[str, str], int] = field(default_factory=dict)
    # spans of sampled requests: (result,) -> count; exported | export_failed | queue_full
    traces: dict[tuple[str], int] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.requests or self.latency or self.upstream_errors or self.shadow or self.skipped
            or self.overrides or self.override_ignored or self.traces
        )

    def to_wire(self) -> dict:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "latency": [[*k, v] for k, v in self.latency.items()],
            "upstream_errors": [[*k, v] for k, v in self.upstream_errors.items()],
            "shadow": [[*k, v] for k, v in self.shadow.items()],
            "skipped": [[*k, v] for k, v in self.skipped.items()],
            "overrides": [[*k, v] for k, v in self.overrides.items()],
            "override_ignored": [[*k, v] for k, v in self.override_ignored.items()],
            "traces": [[*k, v] for k, v in self.traces.items()],
        }

    @classmethod
    def from_wire(cls, data: dict) -> Delta:
        d = cls()
        d.requests = {(r, s, b, c): n for r, s, b, c, n in data["requests"]}
        d.latency = {(r, s, b): h for r, s, b, h in data["latency"]}
        d.upstream_errors = {(u, k): n for u, k, n in data["upstream_errors"]}
        d.shadow = {(r, s, x): n for r, s, x, n in data["shadow"]}
        d.skipped = {(r, x): n for r, x, n in data["skipped"]}
        d.overrides = {(r, b, c): n for r, b, c, n in data.get("overrides", ())}
        d.override_ignored = {(r, x): n for r, x, n in data.get("override_ignored", ())}
        d.traces = {(r,): n for r, n in data.get("traces", ())}
        return d


def _bump(counts: dict, key: tuple) -> None:
    counts[key] = counts.get(key, 0) + 1


class Recorder:
    """Hot-path counters. `request` is one dict update per request: a count per (route, step,
    backend, status, latency bucket), expanded into a `Delta` by `take` (every ~200 ms)."""

    __slots__ = ("delta", "hits")

    def __init__(self) -> None:
        self.delta = Delta()
        self.hits: dict[tuple[str, int, str, int, int], int] = {}

    def request(self, route: str, step: int, backend: str, code: int, seconds: float) -> None:
        if seconds <= LAT_BASE:
            i = 0
        else:
            i = math.ceil((math.log2(seconds) - _LOG_BASE) * LAT_STEPS_PER_OCTAVE - 1e-9)
            if i > LAT_BUCKETS:
                i = LAT_BUCKETS
        key = (route, step, backend, code, i)
        hits = self.hits
        hits[key] = hits.get(key, 0) + 1

    def upstream_error(self, upstream: str, kind: str) -> None:
        _bump(self.delta.upstream_errors, (upstream, kind))

    def shadow_result(self, route: str, step: int, result: str) -> None:
        _bump(self.delta.shadow, (route, step, result))

    def shadow_skipped(self, route: str, reason: str) -> None:
        _bump(self.delta.skipped, (route, reason))

    def override_request(self, route: str, backend: str, code: int) -> None:
        """A pinned (QA) request: counted apart, never in the gate's or guardrail's numbers."""
        _bump(self.delta.overrides, (route, backend, code))

    def override_ignored(self, route: str, reason: str) -> None:
        _bump(self.delta.override_ignored, (route, reason))

    def trace_spans(self, result: str, n: int) -> None:
        """Spans exported, or dropped (export_failed, queue_full): proxy.dataplane.otlp."""
        traces = self.delta.traces
        traces[(result,)] = traces.get((result,), 0) + n

    def take(self) -> Delta:
        delta, self.delta = self.delta, Delta()
        hits, self.hits = self.hits, {}
        requests, latency = delta.requests, delta.latency
        for (route, step, backend, code, i), n in hits.items():
            key = (route, step, backend, code)
            requests[key] = requests.get(key, 0) + n
            lkey = (route, step, backend)
            hist = latency.get(lkey)
            if hist is None:
                hist = latency[lkey] = [0] * (LAT_BUCKETS + 1)
            hist[i] += n
        return delta
