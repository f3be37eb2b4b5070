# cython: annotation_typing=False
"""Per-process request statistics, recorded on the hot path and shipped as deltas.

The data plane only increments counters here (no locks, no label lookups): a request is counted
in its (route, step, backend)'s `RecorderSlot`, arrays of counts by status code and latency
bucket (~10 KB each; the slots counted in during the last batch, and the one each route keeps
per backend, stay alive). Every ~200 ms the delta is taken and merged into the control plane's
`Aggregator` (in-process, or over the worker channel with `--workers N`). Keys carry the route's
*step id*, so the gate judges each step on the requests recorded under it.

Latencies are counted in the buckets of `shadow.stats.LATENCY` (16 per octave, 50 µs to 62 s)
with their exact sum; paired latency differences (target minus legacy on one mirrored request)
in those of `shadow.stats.DIFFERENCE`. On the wire and in a delta, histograms are sparse:
{bucket: count} plus the sum of the observed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shadow.stats import DIFFERENCE, LATENCY

LAT_BASE = LATENCY.base
LAT_PER_OCTAVE = LATENCY.per_octave
LAT_OVERFLOW = LATENCY.size - 1  # the last bucket: above the top bound
_LOG_BASE = math.log2(LAT_BASE)
# DIFFERENCE, a signed grid: bucket HALF + k for a difference d > 0 in magnitude bucket k, and
# HALF - 1 - k for d <= 0 with -d in bucket k
DIFF_BASE = DIFFERENCE.base
DIFF_PER_OCTAVE = DIFFERENCE.per_octave
DIFF_TOP = DIFFERENCE.top
DIFF_HALF = DIFFERENCE.half
assert DIFFERENCE.signed

# A sparse histogram: [{bucket index: count}, sum of the values]
Sparse = list


@dataclass(slots=True)
class Delta:
    # (route, step, backend, code) -> count
    requests: dict[tuple[str, int, str, int], int] = field(default_factory=dict)
    # (route, step, backend) -> [{LATENCY bucket: count}, sum of seconds]
    latency: dict[tuple[str, int, str], Sparse] = field(default_factory=dict)
    # (upstream, kind) -> count
    upstream_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    # (route, step, result) -> count; result match|mismatch|error
    shadow: dict[tuple[str, int, str], int] = field(default_factory=dict)
    # the mirrored side that did not answer: (route, step, side, kind) -> count (also in
    # `shadow` as result error; a comparer failure is there alone)
    shadow_errors: dict[tuple[str, int, str, str], int] = field(default_factory=dict)
    # (route, step) -> [{DIFFERENCE bucket: count}, sum of d > 0, sum of |d| for d <= 0] where
    # d = target's seconds - legacy's on one mirrored request
    paired: dict[tuple[str, int], Sparse] = field(default_factory=dict)
    # (route, reason) -> count
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    # requests answered by legacy after target failed: (route, step, reason) -> count
    fallbacks: dict[tuple[str, int, str], int] = field(default_factory=dict)
    # pinned (QA) requests, kept out of `requests`: (route, backend, code) -> count
    overrides: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # override headers not honoured: (route, reason) -> count
    override_ignored: dict[tuple[str, str], int] = field(default_factory=dict)
    # the comparer's diff store: event (samples_dropped, write_failed) -> count
    store: dict[str, int] = field(default_factory=dict)
    # spans of sampled requests: (result,) -> count; exported | export_failed | queue_full
    traces: dict[tuple[str], int] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.requests or self.latency or self.upstream_errors or self.shadow or self.skipped
            or self.overrides or self.override_ignored or self.shadow_errors or self.paired
            or self.fallbacks or self.store or self.traces
        )

    def to_wire(self) -> dict:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "latency": [[*k, list(h[0].items()), h[1]] for k, h in self.latency.items()],
            "upstream_errors": [[*k, v] for k, v in self.upstream_errors.items()],
            "shadow": [[*k, v] for k, v in self.shadow.items()],
            "shadow_errors": [[*k, v] for k, v in self.shadow_errors.items()],
            "paired": [[*k, list(h[0].items()), h[1], h[2]] for k, h in self.paired.items()],
            "skipped": [[*k, v] for k, v in self.skipped.items()],
            "fallbacks": [[*k, v] for k, v in self.fallbacks.items()],
            "overrides": [[*k, v] for k, v in self.overrides.items()],
            "override_ignored": [[*k, v] for k, v in self.override_ignored.items()],
            "store": [[k, v] for k, v in self.store.items()],
            "traces": [[*k, v] for k, v in self.traces.items()],
        }

    @classmethod
    def from_wire(cls, data: dict) -> Delta:
        d = cls()
        d.requests = {(r, s, b, c): n for r, s, b, c, n in data["requests"]}
        d.latency = {(r, s, b): [{int(i): n for i, n in h}, t]
                     for r, s, b, h, t in data["latency"]}
        d.upstream_errors = {(u, k): n for u, k, n in data["upstream_errors"]}
        d.shadow = {(r, s, x): n for r, s, x, n in data["shadow"]}
        d.shadow_errors = {(r, s, a, k): n for r, s, a, k, n in data.get("shadow_errors", ())}
        d.paired = {(r, s): [{int(i): n for i, n in h}, up, down]
                    for r, s, h, up, down in data.get("paired", ())}
        d.skipped = {(r, x): n for r, x, n in data["skipped"]}
        d.fallbacks = {(r, s, x): n for r, s, x, n in data.get("fallbacks", ())}
        d.overrides = {(r, b, c): n for r, b, c, n in data.get("overrides", ())}
        d.override_ignored = {(r, x): n for r, x, n in data.get("override_ignored", ())}
        d.store = {k: n for k, n in data.get("store", ())}
        d.traces = {(r,): n for r, n in data.get("traces", ())}
        return d


def _bump(counts: dict, key: tuple) -> None:
    counts[key] = counts.get(key, 0) + 1


def _difference_index(d: float) -> int:
    """`DIFFERENCE.index(d)`, the same arithmetic; compiled, C's (a mirror's paired latency)."""
    x = d if d > 0 else -d
    if x <= DIFF_BASE:
        k = 0
    else:
        k = math.ceil(math.log2(x / DIFF_BASE) * DIFF_PER_OCTAVE - 1e-9)
        if k > DIFF_TOP:
            k = DIFF_TOP + 1
    return DIFF_HALF + k if d > 0 else DIFF_HALF - 1 - k


try:  # compiled (setup.py): a slot's counts are C arrays (recorder.pxd)
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False

CODES = 1000  # status codes 0..999 are counted in a slot's array; any other in its dict
LAT_SIZE = LATENCY.size
assert LAT_SIZE == 326, "recorder.pxd sizes RecorderSlot.lat to LATENCY.size"
DIFF_SIZE = DIFFERENCE.size
assert DIFF_SIZE == 328, "recorder.pxd sizes ShadowSlot.paired to DIFFERENCE.size"


class RecorderSlot:
    """The counts of one (route, step, backend) since the last `take`: requests per status
    code, latencies per LATENCY bucket and their sum. Counting a request is a few increments,
    no key built, nothing allocated (issue 29: the recorder's 5-tuple key and its dict lookup
    were ~1,200 instructions a request). The exchange keeps its route's slot on the route
    (`CompiledRoute.rec_legacy`/`rec_target`) and asks the recorder only when the step changed.
    A slot puts itself on the recorder's `active` list at its first count after a take."""

    __slots__ = ("backend", "codes", "lat", "other_codes", "recorder", "route", "step",
                 "total", "touched")

    def __init__(self, recorder: Recorder, route: str, step: int, backend: str) -> None:
        self.recorder = recorder
        self.route = route
        self.step = step
        self.backend = backend
        self.touched = False
        self.total = 0.0
        self.other_codes: dict[int, int] = {}
        if not _COMPILED:  # compiled, they are C arrays, zeroed with the object
            setattr(self, "lat", [0] * LAT_SIZE)  # noqa: B010 (not an attribute when compiled)
            setattr(self, "codes", [0] * CODES)  # noqa: B010

    def add(self, code: int, seconds: float) -> None:
        # LATENCY.index, inlined: this runs for every request
        if seconds <= LAT_BASE:
            i = 0
        else:
            i = math.ceil((math.log2(seconds) - _LOG_BASE) * LAT_PER_OCTAVE - 1e-9)
            if i > LAT_OVERFLOW:
                i = LAT_OVERFLOW
        self.lat[i] += 1
        self.total += seconds
        if 0 <= code < CODES:
            self.codes[code] += 1
        else:
            self.other_codes[code] = self.other_codes.get(code, 0) + 1
        if not self.touched:
            self.touched = True
            self.recorder.active.append(self)

    def drain(self, requests: dict, latency: dict) -> None:
        """Adds the counts to a Delta's `requests` and `latency`, and zeroes them."""
        self.touched = False
        route, step, backend = self.route, self.step, self.backend
        for code in range(CODES):
            c = self.codes[code]
            if c:
                self.codes[code] = 0
                key = (route, step, backend, code)
                requests[key] = requests.get(key, 0) + c
        for code, c in self.other_codes.items():
            key = (route, step, backend, code)
            requests[key] = requests.get(key, 0) + c
        self.other_codes.clear()
        key3 = (route, step, backend)
        h = latency.get(key3)
        if h is None:
            h = latency[key3] = [{}, 0.0]
        counts = h[0]
        for i in range(LAT_SIZE):
            c = self.lat[i]
            if c:
                self.lat[i] = 0
                counts[i] = counts.get(i, 0) + c
        h[1] += self.total
        self.total = 0.0


class ShadowSlot:
    """A shadow mirror's counts of one (route, step) since the last `take`: its byte-identical
    matches, and its paired latency differences (per DIFFERENCE bucket, and the sums of the
    positive ones and of the others' magnitudes). As for RecorderSlot, counting is a few
    increments, no key built (the match and paired-latency keys and their dict updates were
    ~3,000 instructions a mirror); the mirror keeps its route's slot (mirror._Compiled.slot).
    `take` adds them to the delta's `shadow` (result "match") and `paired`."""

    __slots__ = ("down", "matches", "paired", "recorder", "route", "step", "touched", "up")

    def __init__(self, recorder: Recorder, route: str, step: int) -> None:
        self.recorder = recorder
        self.route = route
        self.step = step
        self.matches = 0
        self.up = 0.0
        self.down = 0.0
        self.touched = False
        if not _COMPILED:  # compiled, a C array, zeroed with the object
            setattr(self, "paired", [0] * DIFF_SIZE)  # noqa: B010

    def match(self) -> None:
        """One mirrored answer byte-identical to the primary's."""
        self.matches += 1
        if not self.touched:
            self._touch()

    def pair(self, difference: float) -> None:
        """Target's time minus legacy's on one mirrored request (seconds, signed)."""
        self.paired[_difference_index(difference)] += 1
        if difference > 0:
            self.up += difference
        else:
            self.down -= difference
        if not self.touched:
            self._touch()

    def _touch(self) -> None:
        self.touched = True
        self.recorder.shadow_active.append(self)

    def drain(self, shadow: dict, paired: dict) -> None:
        """Adds the counts to a Delta's `shadow` and `paired`, and zeroes them."""
        self.touched = False
        route, step = self.route, self.step
        if self.matches:
            key = (route, step, "match")
            shadow[key] = shadow.get(key, 0) + self.matches
            self.matches = 0
        key2 = (route, step)
        h = None
        for i in range(DIFF_SIZE):
            c = self.paired[i]
            if c:
                self.paired[i] = 0
                if h is None:
                    h = paired.get(key2)
                    if h is None:
                        h = paired[key2] = [{}, 0.0, 0.0]
                counts = h[0]
                counts[i] = counts.get(i, 0) + c
        if h is not None:
            h[1] += self.up
            h[2] += self.down
        self.up = 0.0
        self.down = 0.0


class Recorder:
    """Hot-path counters. A request is counted in its (route, step, backend)'s `RecorderSlot`;
    `take` (every ~200 ms) turns the slots counted since into a `Delta`."""

    __slots__ = ("active", "delta", "shadow_active", "shadow_slots", "slots")

    def __init__(self) -> None:
        self.delta = Delta()
        self.slots: dict[tuple[str, int, str], RecorderSlot] = {}
        self.active: list[RecorderSlot] = []  # slots counted in since the last take
        self.shadow_slots: dict[tuple[str, int], ShadowSlot] = {}
        self.shadow_active: list[ShadowSlot] = []  # the same, of a shadow mirror

    def slot(self, route: str, step: int, backend: str) -> RecorderSlot:
        key = (route, step, backend)
        s = self.slots.get(key)
        if s is None:
            s = self.slots[key] = RecorderSlot(self, route, step, backend)
        return s

    def shadow_slot(self, route: str, step: int) -> ShadowSlot:
        key = (route, step)
        s = self.shadow_slots.get(key)
        if s is None:
            s = self.shadow_slots[key] = ShadowSlot(self, route, step)
        return s

    def request(self, route: str, step: int, backend: str, code: int, seconds: float) -> None:
        self.slot(route, step, backend).add(code, seconds)

    def upstream_error(self, upstream: str, kind: str) -> None:
        _bump(self.delta.upstream_errors, (upstream, kind))

    def shadow_result(self, route: str, step: int, result: str) -> None:
        _bump(self.delta.shadow, (route, step, result))

    def shadow_error(self, route: str, step: int, side: str, kind: str) -> None:
        """The mirrored side (`legacy` or `target`) did not answer (connect, timeout, reset)."""
        _bump(self.delta.shadow, (route, step, "error"))
        _bump(self.delta.shadow_errors, (route, step, side, kind))

    def paired_latency(self, route: str, step: int, difference: float) -> None:
        """Target's time minus legacy's on one mirrored request (seconds, signed)."""
        key = (route, step)
        h = self.delta.paired.get(key)
        if h is None:
            h = self.delta.paired[key] = [{}, 0.0, 0.0]
        i = _difference_index(difference)
        counts = h[0]
        counts[i] = counts.get(i, 0) + 1
        if difference > 0:
            h[1] += difference
        else:
            h[2] -= difference

    def shadow_skipped(self, route: str, reason: str) -> None:
        _bump(self.delta.skipped, (route, reason))

    def fallback(self, route: str, step: int, reason: str) -> None:
        """Target failed (reason: connect, timeout, reset, 5xx) and legacy was asked instead."""
        _bump(self.delta.fallbacks, (route, step, reason))

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
        active, self.active = self.active, []
        requests, latency = delta.requests, delta.latency
        for s in active:
            s.drain(requests, latency)
        # only the slots counted in this batch stay findable: old steps' slots are let go (a
        # route may still hold one; counted again, it puts itself on `active`, and two slots of
        # one key add up here)
        self.slots = {(s.route, s.step, s.backend): s for s in active}
        shadow_active, self.shadow_active = self.shadow_active, []
        for t in shadow_active:
            t.drain(delta.shadow, delta.paired)
        self.shadow_slots = {(t.route, t.step): t for t in shadow_active}
        return delta
