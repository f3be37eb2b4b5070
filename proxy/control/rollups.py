"""The traffic inventory's rollups: every data plane's endpoint rows, added up per hour and per
UTC day across workers, kept in state_dir for a retention and read back for the inventory,
migration progress and retirement checks (proxy.control.migration).

Rows arrive from the data planes every ~200 ms (`add`, on the event loop) and wait in memory;
every FLUSH_INTERVAL seconds (and at stop) they are added into the store's hour and day buckets
(`flush`, in a thread). A read (`read`) is the store plus what waits, so nothing is counted twice
or missed while a flush runs (both hold one lock). A SIGKILL loses at most FLUSH_INTERVAL.

Bounds: an open bucket admits at most 2 x `max_templates` endpoints (first come; later ones are
added to `other`); when a bucket closes it is compacted to its `max_templates` busiest endpoints
plus `other`. Hourly buckets are kept HOURLY_DAYS days, daily ones `retention_days`.

Shadow comparison counts per route (for retirement: reverse shadow must be clean) are taken from
the aggregator's totals at each flush and kept the same way.

The storage is behind `RollupStore`: one implementation per module (`rollup_sqlite`: a SQLite
file in state_dir); a shared database for several replicas can be another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from proxy.config.spec import InventorySpec
from proxy.dataplane.inventory import OTHER

log = structlog.get_logger("strangler.rollups")

HOUR = 3600
DAY = 86400
GRAINS = (HOUR, DAY)
HOURLY_DAYS = 15
FLUSH_INTERVAL = 10.0

Key = tuple[str, str, str, str]  # method, template, route, backend
Stats = list  # [requests, errors, {latency bucket: count}]
# One bucket's row: (bucket start, key, stats)
Row = tuple[int, Key, Stats]


def bucket(t: float, grain: int) -> int:
    return int(t // grain) * grain


def add_stats(dst: dict[Key, Stats], key: Key, requests: int, errors: int,
              latency: Iterable[tuple[int, int]] | dict[int, int]) -> None:
    s = dst.get(key)
    if s is None:
        s = dst[key] = [0, 0, {}]
    s[0] += requests
    s[1] += errors
    hist = s[2]
    for i, n in (latency.items() if isinstance(latency, dict) else latency):
        i = int(i)
        hist[i] = hist.get(i, 0) + n


class RollupStore(Protocol):
    """Where rollups live. Buckets are (grain seconds, start epoch seconds)."""

    def add(self, grain: int, start: int, rows: dict[Key, Stats],
            shadow: dict[str, list[int]]) -> None:
        """Add counts into the bucket (creating rows as needed), in one transaction."""

    def read(self, grain: int, since: int, until: int | None = None) -> list[Row]:
        """Rows of buckets with since <= start (< until)."""

    def read_shadow(self, grain: int, since: int, until: int | None = None
                    ) -> list[tuple[int, str, list[int]]]:
        """(start, route, [compared, mismatched, errors]) of the buckets."""

    def endpoints(self, grain: int, start: int) -> set[tuple[str, str]]:
        """The (method, template) pairs a bucket has."""

    def compact(self, grain: int, start: int, keep: int) -> int:
        """Keep the bucket's `keep` busiest endpoints, fold the rest into `other`; how many
        endpoints were folded."""

    def prune(self, grain: int, before: int) -> int:
        """Delete buckets that start before `before`; how many rows went."""

    def first(self) -> float | None:
        """When the earliest kept data begins (bucket start), None when empty."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def size(self) -> int:
        """Bytes on disk."""

    def close(self) -> None: ...


@dataclass
class Traffic:
    """What `Rollups.read` returns: rows per bucket, with where they came from."""

    since: float
    until: float
    grain: int
    rows: list[Row] = field(default_factory=list)
    shadow: list[tuple[int, str, list[int]]] = field(default_factory=list)
    first: float | None = None  # when the kept data begins

    def totals(self) -> dict[Key, Stats]:
        out: dict[Key, Stats] = {}
        for _, key, s in self.rows:
            add_stats(out, key, s[0], s[1], s[2])
        return out


class Rollups:
    def __init__(self, store: RollupStore, spec: InventorySpec,
                 shadow_totals: Callable[[], dict[tuple[str, str], int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.spec = spec
        self.clock = clock
        self.shadow_totals = shadow_totals
        self._shadow_seen: dict[tuple[str, str], int] = dict(shadow_totals() if shadow_totals
                                                               else {})
        # hour start -> key -> stats, waiting for the next flush
        self.pending: dict[int, dict[Key, Stats]] = {}
        self.pending_shadow: dict[int, dict[str, list[int]]] = {}
        self._open: dict[tuple[int, int], set[tuple[str, str]]] = {}  # bucket -> endpoints
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.folded = 0  # rows added to `other` by the open-bucket bound (metric)
        if store.first() is None:
            store.set_meta("started", str(clock()))

    def configure(self, spec: InventorySpec) -> None:
        self.spec = spec

    # -- from the data planes ---------------------------------------------------------------
    def add(self, rows: list[list]) -> None:
        """Rows from a data plane (`EndpointCounter.take`), counted in the current hour."""
        now = self.clock()
        hour = bucket(now, HOUR)
        dst = self.pending.get(hour)
        if dst is None:
            dst = self.pending[hour] = {}
        for method, template, route, backend, requests, errors, latency in rows:
            ep = self._admit(hour, (method, template))
            add_stats(dst, (ep[0], ep[1], route, backend), requests, errors, latency)

    def _admit(self, hour: int, ep: tuple[str, str]) -> tuple[str, str]:
        """The open buckets' bound: past 2 x max_templates endpoints, new ones are `other`."""
        limit = 2 * self.spec.max_templates
        out = ep
        for grain, start in ((HOUR, hour), (DAY, bucket(hour, DAY))):
            seen = self._open.get((grain, start))
            if seen is None:  # once per bucket: what it holds already (e.g. before a restart)
                seen = self._open[(grain, start)] = self.store.endpoints(grain, start)
            if ep not in seen:
                if len(seen) >= limit:
                    out = OTHER
                else:
                    seen.add(ep)
        if out is OTHER:
            self.folded += 1
        return out

    def _take_shadow(self) -> None:
        if self.shadow_totals is None:
            return
        now_counts = self.shadow_totals()
        if not self.spec.enabled:  # off: nothing is recorded (what was stays readable)
            self._shadow_seen = dict(now_counts)
            return
        hour = bucket(self.clock(), HOUR)
        for (route, result), n in now_counts.items():
            delta = n - self._shadow_seen.get((route, result), 0)
            if delta <= 0:
                continue
            self._shadow_seen[(route, result)] = n
            counts = self.pending_shadow.setdefault(hour, {}).setdefault(route, [0, 0, 0])
            counts[0] += delta
            if result == "error":
                counts[2] += delta
            elif result != "match":
                counts[1] += delta

    # -- to the store -------------------------------------------------------------------------
    async def flush(self) -> None:
        async with self._lock:
            self._take_shadow()
            pending, self.pending = self.pending, {}
            shadow, self.pending_shadow = self.pending_shadow, {}
            try:
                await asyncio.to_thread(self._write, pending, shadow, self.clock())
            except Exception:
                log.exception("inventory rollups not written; kept in memory for the next try")
                self._restore(pending, shadow)

    def flush_now(self) -> None:
        """The same, synchronously (at stop, when no loop may run it)."""
        self._take_shadow()
        pending, self.pending = self.pending, {}
        shadow, self.pending_shadow = self.pending_shadow, {}
        self._write(pending, shadow, self.clock())

    def _restore(self, pending: dict[int, dict[Key, Stats]],
                 shadow: dict[int, dict[str, list[int]]]) -> None:
        for hour, rows in pending.items():
            dst = self.pending.setdefault(hour, {})
            for key, s in rows.items():
                add_stats(dst, key, s[0], s[1], s[2])
        for hour, routes in shadow.items():
            for route, counts in routes.items():
                c = self.pending_shadow.setdefault(hour, {}).setdefault(route, [0, 0, 0])
                for i in range(3):
                    c[i] += counts[i]

    def _write(self, pending: dict[int, dict[Key, Stats]],
               shadow: dict[int, dict[str, list[int]]], now: float) -> None:
        store = self.store
        for hour in sorted(set(pending) | set(shadow)):
            rows = pending.get(hour, {})
            routes = shadow.get(hour, {})
            store.add(HOUR, hour, rows, routes)
            store.add(DAY, bucket(hour, DAY), rows, routes)
        self._close_buckets(now)

    def _close_buckets(self, now: float) -> None:
        """Compact buckets that ended since the last time, and drop what is past retention."""
        store = self.store
        keep = self.spec.max_templates
        for grain in GRAINS:
            current = bucket(now, grain)
            done = int(store.get_meta(f"compacted.{grain}") or 0)
            if done >= current - grain:
                continue
            horizon = current - (HOURLY_DAYS if grain == HOUR else self.spec.retention_days) * DAY
            for start in sorted({s for s, _, _ in store.read(grain, max(done + grain, horizon),
                                                            current)}):
                folded = store.compact(grain, start, keep)
                if folded:
                    log.info("inventory bucket compacted", grain=grain, start=start,
                             folded=folded)
            store.set_meta(f"compacted.{grain}", str(current - grain))
            store.prune(grain, horizon)
        for key in [k for k in self._open if k[1] < bucket(now, k[0])]:
            del self._open[key]

    # -- reads ----------------------------------------------------------------------------------
    async def read(self, since: float, until: float | None = None) -> Traffic:
        """Every bucket from `since` (hourly when the hours are still kept, else daily: the
        window then starts at the day's start) to `until` (now), plus what waits to be
        written."""
        async with self._lock:
            self._take_shadow()
            pending = {h: {k: [s[0], s[1], dict(s[2])] for k, s in rows.items()}
                       for h, rows in self.pending.items()}
            shadow = {h: {r: list(c) for r, c in routes.items()}
                      for h, routes in self.pending_shadow.items()}
            return await asyncio.to_thread(self._read, since, until, pending, shadow)

    def read_now(self, since: float, until: float | None = None) -> Traffic:
        """The same, synchronously (tests, tools; not while the loop adds rows)."""
        self._take_shadow()
        return self._read(since, until, self.pending, self.pending_shadow)

    def _read(self, since: float, until: float | None, pending: dict[int, dict[Key, Stats]],
              pending_shadow: dict[int, dict[str, list[int]]]) -> Traffic:
        now = self.clock()
        end = now if until is None else until
        grain = HOUR if since >= now - HOURLY_DAYS * DAY else DAY
        start = bucket(since, grain)
        stop = None if until is None else bucket(until, grain) + grain
        out = Traffic(float(start), end, grain, first=self.store.first())
        out.rows = self.store.read(grain, start, stop)
        out.shadow = self.store.read_shadow(grain, start, stop)
        for hour, rows in pending.items():
            b = bucket(hour, grain)
            if b >= start and (stop is None or b < stop):
                out.rows += [(b, k, s) for k, s in rows.items()]
        for hour, routes in pending_shadow.items():
            b = bucket(hour, grain)
            if b >= start and (stop is None or b < stop):
                out.shadow += [(b, r, c) for r, c in routes.items()]
        return out

    # -- lifetime --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        async with self._lock:
            try:
                self.flush_now()
            except Exception:
                log.exception("inventory rollups not written at stop")
            self.store.close()

