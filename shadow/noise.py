"""Diffy-style noise cancellation: what differs between two copies of legacy is not evidence.

With a second legacy upstream (`compare.noise_upstream`) every mirrored request also yields a
*noise* comparison (legacy vs legacy-2). Per field (the path with array indices generalised,
`$.items[3].ts` -> `$.items[*].ts`, and the kind, where `value` and `type` count as one) the model
counts in how many comparisons it differed in the primary (legacy vs target) and in the noise
comparison. A difference in the primary is real only when:

- it is not also present in this request's noise comparison (same field, or any ancestor of it:
  if legacy-2 differs on `$.meta`, nothing under `$.meta` is evidence for this request); and
- once the field has `min_samples` (default 20) observations, its primary rate is clearly above
  its noise rate: `primary_rate - noise_rate > abs_threshold` (default 0.01) AND
  `primary_rate > rel_threshold * noise_rate` (default 2.0). Below `min_samples` only the
  per-request rule applies.

Without a noise comparison nothing is moved (every difference counts), but `likely_noise(path)`
is True for a field that differed in at least `likely_noise_rate` (default 0.9) of the route's
comparisons, after at least `likely_noise_min` (default 20): shown as "likely nondeterministic",
never silently dropped. At most `max_fields` (default 10,000) fields are tracked per route.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, replace

from shadow.jsonpath import generalize
from shadow.model import Comparison, Difference

__all__ = ["NoiseModel", "NoiseThresholds"]


@dataclass(frozen=True, slots=True)
class NoiseThresholds:
    abs_threshold: float = 0.01
    rel_threshold: float = 2.0
    min_samples: int = 20
    likely_noise_rate: float = 0.9
    likely_noise_min: int = 20
    max_fields: int = 10_000


def _field(d: Difference) -> tuple[str, str]:
    kind = "value" if d.kind == "type" else d.kind
    return generalize(d.path), kind


def _ancestors(path: str) -> list[str]:
    """`$.a[*].b` -> ['$', '$.a', '$.a[*]'] (JSON paths only)."""
    if not path.startswith("$"):
        return []
    out: list[str] = []
    i = 1
    while i < len(path):
        c = path[i]
        if c in ".[" and i > 0:
            out.append(path[:i])
        if c == "[" and path.startswith("['", i):
            j = i + 2
            while j < len(path) and path[j] != "'":
                j += 2 if path[j] == "\\" else 1
            i = j + 1
            continue
        i += 1
    return ["$", *[p for p in out if p != "$"]]


class NoiseModel:
    """Per-route noise statistics. Thread-safe; memory bounded by `max_fields`."""

    def __init__(self, thresholds: NoiseThresholds | None = None) -> None:
        self.t = thresholds or NoiseThresholds()
        self._lock = threading.Lock()
        self._paired = 0  # comparisons that came with a noise comparison
        self._total = 0  # all comparisons observed
        self._primary: Counter[tuple[str, str]] = Counter()  # among paired comparisons
        self._noise: Counter[tuple[str, str]] = Counter()
        self._any: Counter[str] = Counter()  # generalised path -> comparisons where it differed

    def observe(self, primary: Comparison, noise: Comparison | None) -> Comparison:
        """Count this request and return `primary` with its noisy differences moved to `.noise`."""
        if primary.error is not None:
            return primary
        pfields = {_field(d) for d in primary.differences}
        with self._lock:
            self._total += 1
            for p in {f[0] for f in pfields}:
                self._bump(self._any, p)
            if noise is None or noise.error is not None:
                return primary
            nfields = {_field(d) for d in noise.differences}
            self._paired += 1
            for f in pfields:
                self._bump(self._primary, f)
            for f in nfields:
                self._bump(self._noise, f)
            npaths = {p for p, _ in nfields}
            real: list[Difference] = []
            moved: list[str] = []
            for d in primary.differences:
                f = _field(d)
                if f in nfields or any(a in npaths for a in _ancestors(f[0])):
                    moved.append(d.path)
                elif not self._significant(f):
                    moved.append(d.path)
                else:
                    real.append(d)
        if not moved:
            return primary
        kept = {d.path for d in real}
        return replace(primary, differences=tuple(real), noise=(*primary.noise, *moved),
                       renames=tuple(r for r in primary.renames if r[0] in kept and r[1] in kept))

    def observe_match(self, n: int = 1) -> None:
        """Count `n` comparisons without differences and without a noise copy: what `observe`
        does for them, minus building and returning anything."""
        with self._lock:
            self._total += n

    def _bump(self, counter: Counter, key: object) -> None:
        if key in counter or len(counter) < self.t.max_fields:
            counter[key] += 1

    def _significant(self, f: tuple[str, str]) -> bool:
        n = self._paired
        if n < self.t.min_samples:
            return True
        primary_rate = self._primary[f] / n
        noise_rate = self._noise[f] / n
        return (
            primary_rate - noise_rate > self.t.abs_threshold
            and primary_rate > self.t.rel_threshold * noise_rate
        )

    def likely_noise(self, path: str) -> bool:
        """Did this field differ in almost every comparison of the route (no second copy needed)?"""
        with self._lock:
            if self._total < self.t.likely_noise_min:
                return False
            return self._any[generalize(path)] >= self.t.likely_noise_rate * self._total

    def rates(self, path: str, kind: str = "value") -> tuple[int, float, float]:
        """(paired comparisons, primary rate, noise rate) of a field, for the diffs view."""
        f = _field(Difference(path, kind, None, None))
        with self._lock:
            n = self._paired
            if not n:
                return 0, 0.0, 0.0
            return n, self._primary[f] / n, self._noise[f] / n
