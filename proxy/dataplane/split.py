"""Pure traffic split: route + weight + sticky key -> legacy or target.

Weights are held as basis points (0..10000, i.e. 0.01% granularity). A request goes to target
when its bucket is below the weight, so raising the weight only ever moves buckets from legacy
to target and lowering it only the reverse: ramps are monotonic for every sticky key.

The bucket of a sticky key is a keyed BLAKE2b of (route name, key): the same in every worker,
replica and restart (never Python's salted `hash()`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

BUCKETS = 10_000


def weight_to_bp(percent: float) -> int:
    """Percent (two decimals) -> basis points."""
    return max(0, min(BUCKETS, round(percent * 100)))


def bp_to_weight(bp: int) -> float:
    return bp / 100


class StickyHasher:
    """Per-route keyed hash; the keyed BLAKE2b state is built once at route compile time."""

    __slots__ = ("_base",)

    def __init__(self, route_name: str) -> None:
        self._base = hashlib.blake2b(
            digest_size=8, key=route_name.encode()[:64], person=b"strangler.v1"
        )

    def bucket(self, key: bytes) -> int:
        h = self._base.copy()
        h.update(key)
        return int.from_bytes(h.digest(), "big") % BUCKETS


def choose_target(
    weight_bp: int,
    hasher: StickyHasher,
    sticky_key: bytes | None,
    rand: Callable[[], float] = random.random,
) -> bool:
    """True when the request goes to target. One random draw only without a sticky key.
    (Inlined in `Exchange._choose_backend`, a step of `Exchange.read_head`: keep both in step.)"""
    if weight_bp <= 0:
        return False
    if weight_bp >= BUCKETS:
        return True
    if sticky_key:
        return hasher.bucket(sticky_key) < weight_bp
    return rand() * BUCKETS < weight_bp
