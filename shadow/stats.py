"""Statistics the promotion gate relies on: Wilson intervals, a difference-of-proportions
bound, and a cheap fixed-bucket latency histogram.

In plain words:
- A *Wilson score interval* is the range of true rates that are consistent (at 95%) with
  seeing `successes` out of `n`. Unlike "rate +/- 2 standard errors" it behaves well at 0
  events and small counts: 0 mismatches out of 500 gives [0, 0.76%], not [0, 0].
- For "is target's error rate higher than legacy's by more than a margin?" we use Newcombe's
  hybrid score interval for the difference of two proportions (Newcombe 1998, method 10):
  take a Wilson interval for each side and combine the distances from each rate to its bounds
  as a square root of a sum of squares. It is the Wald idea (estimate +/- spread) with Wilson
  spreads, so it stays sensible when one side has no errors at all. The error tests are
  one-sided at 95% (z = 1.645): "exceeds by more than the margin" means the lower end of the
  difference is above the margin; "within the margin" means the upper end is at or below it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

Z_95_TWO_SIDED = 1.959964  # each end of a 95% interval
Z_95_ONE_SIDED = 1.644854  # a single 95% bound


def wilson_interval(successes: int, n: int, z: float = Z_95_TWO_SIDED) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0.0, 1.0) when there is no data."""
    if n <= 0:
        return 0.0, 1.0
    if successes < 0 or successes > n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Exact at the edges (avoids 1e-17 noise instead of 0 for 0 events).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def diff_interval(
    x1: int, n1: int, x2: int, n2: int, z: float = Z_95_ONE_SIDED
) -> tuple[float, float]:
    """Newcombe hybrid score interval for p1 - p2 (p1 = x1/n1, p2 = x2/n2).

    With the default z each end is a one-sided 95% bound. A side without data has the
    uninformative Wilson interval (0, 1), so the result is wide, never falsely confident.
    """
    p1 = x1 / n1 if n1 > 0 else 0.0
    p2 = x2 / n2 if n2 > 0 else 0.0
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def exceeds_by_more_than(x1: int, n1: int, x2: int, n2: int, margin: float) -> bool:
    """True when p1 - p2 > margin with 95% confidence (one-sided)."""
    return diff_interval(x1, n1, x2, n2)[0] > margin


def within_margin(x1: int, n1: int, x2: int, n2: int, margin: float) -> bool:
    """True when p1 - p2 <= margin with 95% confidence (one-sided)."""
    return diff_interval(x1, n1, x2, n2)[1] <= margin


# --- latency histogram -------------------------------------------------------------------

#: Cumulative bounds exposed to Prometheus (`le` labels), in seconds. All of them are also
#: exact bounds of the fine histogram, so the exported counts are exact, not rounded.
PROMETHEUS_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_MIN_BOUND = 50e-6
_MAX_BOUND = 60.0
_FACTOR = 2**0.25


def _fine_bounds() -> tuple[float, ...]:
    """50 us * 2**(k/4) up to 60 s, merged with PROMETHEUS_BOUNDS.

    Merging only splits buckets, so no bucket is wider than a factor 2**0.25 (~19%).
    """
    grid: list[float] = []
    b = _MIN_BOUND
    k = 0
    while b < _MAX_BOUND * (1 - 1e-9):
        grid.append(b)
        k += 1
        b = _MIN_BOUND * _FACTOR**k
    merged = list(PROMETHEUS_BOUNDS)
    for g in grid:
        if all(abs(g - p) > 1e-9 * p for p in PROMETHEUS_BOUNDS):
            merged.append(g)
    return tuple(sorted(merged))


FINE_BOUNDS: tuple[float, ...] = _fine_bounds()


class LatencyHistogram:
    """Counts of latencies in fixed buckets (upper bounds FINE_BOUNDS, plus overflow).

    `observe` is one bisect over ~100 floats and two additions: well under a microsecond.
    A value equal to a bound lands in that bound's bucket (Prometheus `le` semantics).
    """

    __slots__ = ("_counts", "count", "sum")

    _bounds: list[float] = list(FINE_BOUNDS)
    _n_buckets = len(FINE_BOUNDS) + 1

    def __init__(self) -> None:
        self._counts = [0] * self._n_buckets
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts into this one (e.g. from another worker)."""
        counts = self._counts
        for i, c in enumerate(other._counts):
            counts[i] += c
        self.count += other.count
        self.sum += other.sum

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), interpolated linearly inside its bucket; None when empty.

        Same method as Prometheus' histogram_quantile: rank q*count, find its bucket, place it
        proportionally between the bucket's lower and upper bound. Values in the overflow
        bucket report the highest finite bound (60 s).
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        if self.count == 0:
            return None
        rank = q * self.count
        bounds = self._bounds
        cum = 0
        for i, c in enumerate(self._counts):
            if c and cum + c >= rank:
                if i == len(bounds):
                    return bounds[-1]
                lower = bounds[i - 1] if i > 0 else 0.0
                upper = bounds[i]
                return lower + (upper - lower) * max(0.0, rank - cum) / c
            cum += c
        return bounds[-1]  # pragma: no cover - unreachable when count matches the buckets

    def to_list(self) -> list[float]:
        """Bucket counts (len(FINE_BOUNDS) + 1 of them) followed by the sum of observations."""
        return [*self._counts, self.sum]

    @classmethod
    def from_list(cls, data: Sequence[float]) -> LatencyHistogram:
        if len(data) != cls._n_buckets + 1:
            raise ValueError(f"expected {cls._n_buckets + 1} numbers, got {len(data)}")
        h = cls()
        h._counts = [int(c) for c in data[:-1]]
        if any(c < 0 for c in h._counts):
            raise ValueError("bucket counts must not be negative")
        h.count = sum(h._counts)
        h.sum = float(data[-1])
        return h

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencyHistogram:
        h = cls()
        for v in values:
            h.observe(v)
        return h

    def prometheus_buckets(self) -> list[tuple[float, int]]:
        """Cumulative counts at PROMETHEUS_BOUNDS and +Inf, as (le, count) pairs."""
        out: list[tuple[float, int]] = []
        bounds = self._bounds
        cum = 0
        i = 0
        for le in PROMETHEUS_BOUNDS:
            while i < len(bounds) and bounds[i] <= le:
                cum += self._counts[i]
                i += 1
            out.append((le, cum))
        out.append((math.inf, self.count))
        return out

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, p99={self.quantile(0.99)})"
