"""Statistics the promotion gate relies on: Wilson intervals, a difference-of-proportions
bound, log-bucketed histograms with quantiles and their distribution-free bounds, and the
projection of how much more evidence a bound needs.

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
- A quantile's bounds come from order statistics: among n values, the r-th smallest is below
  the true p-quantile with probability P(Binomial(n, p) >= r), whatever the distribution. The
  p99 ratio's 95% bounds combine each side's 97.5% bounds (Bonferroni), and the paired median
  difference's bounds are the sign test's: the same rule at p = 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


# --- histograms ------------------------------------------------------------------------------
#
# Latencies are counted in fixed, log-spaced buckets (a DDSketch-like grid: mergeable by adding
# counts, the same in every worker and replica). `LATENCY` has 16 buckets per octave (each
# 4.4% wide) from 50 µs to 62 s: a quantile read from it is within 4.4% of the sample's own
# quantile whatever the distribution (the estimate stays inside the bucket of the true order
# statistic), and much closer for smooth ones (log-linear interpolation inside the bucket).
# Prometheus gets exactly these buckets, so the gate reading Prometheus computes the same
# numbers with the same code. `DIFFERENCE` is the signed grid of paired latency differences
# (target minus legacy on the same request): the buckets of `PAIRED` (8 per octave of |d|)
# for d > 0 (target slower) and mirrored for d <= 0; Prometheus gets them as two histograms of
# |d|, one per direction.


class Grid:
    """Bucket edges of one histogram kind: counts are plain lists indexed by `index(x)`.

    Unsigned (x >= 0): bucket 0 is (0, base], bucket k is (base*2**((k-1)/m), base*2**(k/m)]
    for k = 1..top, and bucket top + 1 the overflow. Signed: the unsigned buckets of |x|, for
    x > 0 above index `half`, for x <= 0 mirrored below it ([-base, 0] is bucket half - 1).
    """

    __slots__ = ("base", "bounds", "half", "lower", "per_octave", "signed", "size", "top",
                 "upper")

    def __init__(self, base: float, per_octave: int, up_to: float, signed: bool = False) -> None:
        self.base = base
        self.per_octave = per_octave
        self.top = math.ceil(per_octave * math.log2(up_to / base) - 1e-9)
        self.bounds = tuple(base * 2 ** (k / per_octave) for k in range(self.top + 1))
        self.signed = signed
        lower: tuple[float, ...] = (0.0, *self.bounds)  # magnitude bucket k: (lower, upper]
        upper: tuple[float, ...] = (*self.bounds, math.inf)
        self.half = len(lower)
        if signed:
            lower, upper = (tuple(-u for u in reversed(upper)) + lower,
                            tuple(-lo for lo in reversed(lower)) + upper)
        self.lower, self.upper = lower, upper
        self.size = len(lower)

    def magnitude_index(self, x: float) -> int:
        """The unsigned bucket of x >= 0 (0 up to `base`, top + 1 = overflow)."""
        if x <= self.base:
            return 0
        k = math.ceil(math.log2(x / self.base) * self.per_octave - 1e-9)
        return k if k <= self.top else self.top + 1

    def index(self, x: float) -> int:
        if not self.signed:
            return self.magnitude_index(x)
        if x > 0:
            return self.half + self.magnitude_index(x)
        return self.half - 1 - self.magnitude_index(-x)

    def value(self, i: int, f: float) -> float:
        """The value at fraction f (0..1, in increasing order) of bucket i: log-linear inside a
        bucket away from zero, linear in a bucket that reaches zero; an open end is clamped to
        the finite edge."""
        lo, hi = self.lower[i], self.upper[i]
        if math.isinf(hi):
            return lo
        if math.isinf(lo):
            return hi
        if lo > 0:
            return lo * (hi / lo) ** f
        if hi < 0:
            return -((-lo) * ((-hi) / (-lo)) ** f)
        return lo + (hi - lo) * f

    def le_bounds(self) -> tuple[float, ...]:
        """Prometheus `le` of every bucket of an unsigned grid but the last (+Inf)."""
        return self.upper[:-1]

    def counts_from_cumulative(self, cumulative: dict[float, float]) -> list[float]:
        """Unsigned bucket counts from Prometheus' cumulative `le` counts."""
        out = [0.0] * self.size
        prev = 0.0
        for i, le in enumerate((*self.le_bounds(), math.inf)):
            cum = cumulative.get(le)
            if cum is None:
                continue
            out[i] = max(0.0, cum - prev)
            prev = max(prev, cum)
        return out

    def split(self, counts: Sequence[float]) -> tuple[list[float], list[float]]:
        """A signed grid's counts as two unsigned ones: (x > 0, x <= 0 by |x|)."""
        h = self.half
        return list(counts[h:]), list(reversed(counts[:h]))

    def join(self, above: Sequence[float], below: Sequence[float]) -> list[float]:
        """The inverse of `split`."""
        return [*reversed(below), *above]


LATENCY = Grid(50e-6, 16, 60.0)
PAIRED = Grid(50e-6, 8, 60.0)  # |target - legacy| per direction, as Prometheus gets it
DIFFERENCE = Grid(50e-6, 8, 60.0, signed=True)


def total(counts: Sequence[float]) -> float:
    return float(sum(counts))


def value_at_rank(grid: Grid, counts: Sequence[float], rank: float) -> float | None:
    """The value at (1-based, fractional) `rank` among the counted values, interpolated inside
    its bucket; None when empty. Ranks outside (0, n] are clamped."""
    n = total(counts)
    if n <= 0:
        return None
    rank = min(max(rank, 0.0), n)
    cum = 0.0
    last = 0
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        last = i
        if cum + c >= rank:
            return grid.value(i, (rank - cum) / c)
        cum += c
    return grid.value(last, 1.0)  # rounding: rank just above the last count


def quantile(grid: Grid, counts: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of the counted values; None when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    return value_at_rank(grid, counts, q * total(counts))


def _binomial_cdf(n: int, p: float) -> list[float]:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, p) (for n * min(p, 1 - p) small; exact)."""
    q = 1.0 - p
    pmf = [0.0] * (n + 1)
    if p >= 0.5:
        pmf[n] = p**n
        for k in range(n, 0, -1):
            pmf[k - 1] = pmf[k] * k / (n - k + 1) * (q / p)
    else:
        pmf[0] = q**n
        for k in range(n):
            pmf[k + 1] = pmf[k] * (n - k) / (k + 1) * (p / q)
    out, acc = [], 0.0
    for x in pmf:
        acc += x
        out.append(min(acc, 1.0))
    return out


def order_ranks(n: int, p: float, alpha: float) -> tuple[int, int]:
    """Distribution-free one-sided bounds for the p-quantile from order statistics.

    Returns (r, s): the r-th smallest value is at or below the true p-quantile, and the s-th at
    or above it, each with probability >= 1 - alpha (Binomial(n, p) tails; r = 0 means no lower
    bound, s = n + 1 no upper bound). Exact for small samples, the normal approximation with a
    continuity correction once n * min(p, 1 - p) >= 50.
    """
    if n <= 0:
        return 0, 1
    if n * min(p, 1 - p) >= 50:
        z = _z(alpha)
        sd = math.sqrt(n * p * (1 - p))
        r = math.floor(n * p - z * sd + 0.5)
        s = math.ceil(n * p + z * sd + 0.5)
        return max(0, min(n, r)), max(1, min(n + 1, s))
    cdf = _binomial_cdf(n, p)
    r = 0  # largest r with P(B >= r) = 1 - cdf[r - 1] >= 1 - alpha
    for k in range(1, n + 1):
        if 1.0 - cdf[k - 1] >= 1.0 - alpha:
            r = k
        else:
            break
    s = n + 1  # smallest s with P(B <= s - 1) >= 1 - alpha
    for k in range(1, n + 1):
        if cdf[k - 1] >= 1.0 - alpha:
            s = k
            break
    return r, s


def _z(alpha: float) -> float:
    """One-sided standard normal quantile for the levels the gate uses."""
    known = {0.05: Z_95_ONE_SIDED, 0.025: Z_95_TWO_SIDED}
    if alpha in known:
        return known[alpha]
    # Bisection on erfc, for levels other than the two above.
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def quantile_bounds(grid: Grid, counts: Sequence[float], q: float,
                    alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) lower and upper bounds of the distribution's q-quantile from the
    counted sample: the order statistics `order_ranks` names, read from the histogram. No data
    or too few values for a bound give the grid's end (0 or -inf below, inf above)."""
    n = round(total(counts))
    r, s = order_ranks(n, q, alpha)
    low = value_at_rank(grid, counts, r - 0.5) if r >= 1 else (
        -math.inf if grid.signed else 0.0)
    high = value_at_rank(grid, counts, s - 0.5) if s <= n else math.inf
    return (low if low is not None else 0.0), (high if high is not None else math.inf)


def scaled(counts: Sequence[float], k: float) -> list[float]:
    return [c * k for c in counts]


def more_needed(decided: Callable[[float], bool], have: float, cap: float = 1000.0
                ) -> float | None:
    """How many more units (requests, comparisons, samples) until `decided(scale)` holds, if
    the rates seen so far stay as they are: `decided` is asked about the evidence scaled by a
    factor >= 1 (and assumed to stay decided at larger factors). None when even `cap` times
    the evidence would not decide."""
    if have <= 0:
        return None
    if not decided(cap):
        return None
    lo, hi = 1.0, cap
    for _ in range(100):  # bisection to within a hundredth of a unit
        if (hi - lo) * have < 0.01:
            break
        mid = (lo + hi) / 2 if hi / lo < 4 else math.sqrt(lo * hi)
        if decided(mid):
            hi = mid
        else:
            lo = mid
    return max(1.0, math.ceil(have * (hi - 1.0) - 0.01))
