"""The traffic inventory's rollups: every data plane's endpoint rows, added up per hour and per
UTC day across workers, kept in a store for a retention and read back for the inventory,
migration progress and retirement checks (proxy.control.migration).

Rows arrive from the data planes every ~200 ms (`add`, on the event loop, never any I/O with a
shared store) and wait in memory; every flush interval (the store's: 10 s for the state_dir
file, 2 s for the shared database) and at stop they are added into the store's hour and day
buckets (`flush`, in a thread), every bucket of a flush in one transaction. A read (`read`) is
the store plus what waits here, so nothing is counted twice or missed while a flush runs (both
hold one lock; a read that waits on a stuck write gives up after READ_WAIT seconds). A SIGKILL
loses at most one flush interval.

When the store cannot be written (a shared store down or slow) the rows keep waiting here and are
written when it is back, at most `waiting_limit()` rows (hour x endpoint x route x backend):
beyond it the oldest hours are dropped and counted (`dropped`: their requests and shadow
comparisons). A flush whose COMMIT got no answer may or may not have been applied: it is kept
apart, unchanged, and sent again with the same batch number before anything else; the store
applies a batch at most once.

Bounds: an open bucket admits at most 2 x `max_templates` endpoints (first come; later ones are
added to `other`); when a bucket closes it is compacted to its `max_templates` busiest endpoints
plus `other` (again after any late write into it). Hourly buckets are kept HOURLY_DAYS days,
daily ones `retention_days`.

Shadow comparison counts per route (for retirement: reverse shadow must be clean) are taken from
the aggregator's totals at each flush and kept the same way.

The storage is behind `RollupStore`: one implementation per module (`rollup_sqlite`: a SQLite
file in state_dir, one replica; `rollup_pg`: the fleet's PostgreSQL store, shared by every
replica), chosen by `proxy.control.stores.open_rollups`.
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
FLUSH_INTERVAL = 10.0  # the state_dir file's; a store may set its own (`flush_interval`)
MAX_WAITING_ROWS = 50_000  # rows waiting for the store (at least 4 x max_templates)
READ_WAIT = 10.0  # seconds a read waits for a write in progress before it gives up
STOP_WAIT = 5.0  # seconds the last write at stop may take

Key = tuple[str, str, str, str]  # method, template, route, backend
Stats = list  # [requests, errors, {latency bucket: count}]
# One bucket's row: (bucket start, key, stats)
Row = tuple[int, Key, Stats]
# One bucket to write: (grain, start, rows, shadow counts per route)
Bucket = tuple[int, int, dict[Key, Stats], dict[str, list[int]]]


class CommitUnknown(OSError):
    """The store may or may not have applied a write (its COMMIT got no answer)."""


class RollupsUnavailable(OSError):
    """A read cannot be answered now (the store is down, or a write to it is stuck)."""


def bucket(t: float, grain: int) -> int:
    return int(t // grain) * grain


def window(select: str, grain: int, since: int, until: int | None, mark: str = "?"
           ) -> tuple[str, tuple[int, ...]]:
    """`select` limited to the buckets of `grain` with since <= start (< until), and its
    arguments (`mark`: the driver's placeholder)."""
    sql = f"{select} WHERE grain = {mark} AND start >= {mark}"
    if until is None:
        return sql, (grain, since)
    return f"{sql} AND start < {mark}", (grain, since, until)


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


def add_counts(dst: dict[str, list[int]], route: str, counts: list[int]) -> None:
    c = dst.setdefault(route, [0, 0, 0])
    for i in range(3):
        c[i] += counts[i]


class RollupStore(Protocol):
    """Where rollups live. Buckets are (grain seconds, start epoch seconds). Optional
    attributes: `flush_interval` (seconds), `shared` (True: every replica writes it), and
    `status()` ({"up", "error"?})."""

    def write(self, buckets: list[Bucket], batch: int) -> None:
        """Add the counts into the buckets (creating rows as needed), all in one transaction.
        `batch` numbers this store object's writes: a batch sent again (after CommitUnknown)
        is applied at most once. Raises CommitUnknown when the commit's outcome is unknown."""

    def read(self, grain: int, since: int, until: int | None = None) -> list[Row]:
        """Rows of buckets with since <= start (< until)."""

    def read_shadow(self, grain: int, since: int, until: int | None = None
                    ) -> list[tuple[int, str, list[int]]]:
        """(start, route, [compared, mismatched, errors]) of the buckets."""

    def starts(self, grain: int, since: int, until: int) -> list[int]:
        """The starts of the buckets that have rows, since <= start < until."""

    def endpoints(self, grain: int, start: int) -> set[tuple[str, str]]:
        """The (method, template) pairs a bucket has (read on the event loop: a store that
        cannot answer without waiting answers an empty set)."""

    def compact(self, grain: int, start: int, keep: int) -> int:
        """Keep the bucket's `keep` busiest endpoints, fold the rest into `other`; how many
        endpoints were folded."""

    def prune(self, grain: int, before: int) -> int:
        """Delete buckets that start before `before`; how many rows went."""

    def mark_started(self, t: float) -> None:
        """Records begin at `t` unless the store already has earlier ones."""

    def first(self) -> float | None:
        """When the earliest kept data begins (bucket start), None when empty."""

    def identity(self) -> str:
        """Which store this is: `local` (one replica's file) or `postgres:<id>` (shared)."""

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
    store: str = "local"  # RollupStore.identity()

    def totals(self) -> dict[Key, Stats]:
        out: dict[Key, Stats] = {}
        for _, key, s in self.rows:
            add_stats(out, key, s[0], s[1], s[2])
        return out


def _buckets(pending: dict[int, dict[Key, Stats]],
             shadow: dict[int, dict[str, list[int]]]) -> list[Bucket]:
    """The hour and day buckets that waiting rows go into, in key order."""
    out: dict[tuple[int, int], tuple[dict[Key, Stats], dict[str, list[int]]]] = {}
    for hour in set(pending) | set(shadow):
        for grain, start in ((HOUR, hour), (DAY, bucket(hour, DAY))):
            rows, routes = out.setdefault((grain, start), ({}, {}))
            for key, s in pending.get(hour, {}).items():
                add_stats(rows, key, s[0], s[1], s[2])
            for route, counts in shadow.get(hour, {}).items():
                add_counts(routes, route, counts)
    return [(g, st, rows, routes) for (g, st), (rows, routes) in sorted(out.items())]


class Rollups:
    def __init__(self, store: RollupStore, spec: InventorySpec,
                 shadow_totals: Callable[[], dict[tuple[str, str], int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.spec = spec
        self.clock = clock
        self.shadow_totals = shadow_totals
        self.interval = float(getattr(store, "flush_interval", FLUSH_INTERVAL))
        self._shadow_seen: dict[tuple[str, str], int] = dict(shadow_totals() if shadow_totals
                                                               else {})
        # hour start -> key -> stats, waiting for the next flush
        self.pending: dict[int, dict[Key, Stats]] = {}
        self.pending_shadow: dict[int, dict[str, list[int]]] = {}
        self._waiting = 0  # rows in pending and pending_shadow
        self._in_doubt: tuple[int, list[Bucket]] | None = None  # (batch, buckets)
        self._batch = 0
        self._open: dict[tuple[int, int], set[tuple[str, str]]] = {}  # bucket -> endpoints
        self._hour = 0  # the hour the last rows were added in
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.folded = 0  # rows added to `other` by the open-bucket bound
        self.dropped = {"requests": 0, "comparisons": 0}  # lost past the waiting bound
        self.write_error: str | None = None  # why the last write failed (None: it did not)
        self._started: float | None = clock()  # not yet recorded in the store
        self._mark_started()

    def _mark_started(self) -> None:
        """Record when counting began; a store that cannot take it now gets it with the next
        write (serve starts on an unwritable state_dir: the rollback file is what matters)."""
        if self._started is None:
            return
        try:
            self.store.mark_started(self._started)
        except Exception as exc:
            self.write_error = str(exc) or type(exc).__name__
            return
        self._started = None

    def configure(self, spec: InventorySpec) -> None:
        self.spec = spec

    # -- from the data planes ---------------------------------------------------------------
    def add(self, rows: list[list]) -> None:
        """Rows from a data plane (`EndpointCounter.take`), counted in the current hour."""
        now = self.clock()
        hour = bucket(now, HOUR)
        if hour != self._hour:
            self._hour = hour
            for key in [k for k in self._open if k[1] < bucket(now, k[0])]:
                del self._open[key]  # closed buckets admit no more by name
        dst = self.pending.get(hour)
        if dst is None:
            dst = self.pending[hour] = {}
        before = len(dst)
        for method, template, route, backend, requests, errors, latency in rows:
            ep = self._admit(hour, (method, template))
            add_stats(dst, (ep[0], ep[1], route, backend), requests, errors, latency)
        self._waiting += len(dst) - before
        if self._waiting > self.waiting_limit():
            self._drop_oldest()

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
            routes = self.pending_shadow.setdefault(hour, {})
            if route not in routes:
                self._waiting += 1
            counts = routes.setdefault(route, [0, 0, 0])
            counts[0] += delta
            if result == "error":
                counts[2] += delta
            elif result != "match":
                counts[1] += delta

    # -- the waiting bound ------------------------------------------------------------------------
    def waiting_limit(self) -> int:
        return max(MAX_WAITING_ROWS, 4 * self.spec.max_templates)

    def waiting(self) -> int:
        """Rows not in the store yet (a write in doubt included)."""
        doubt = sum(len(b[2]) + len(b[3]) for b in self._in_doubt[1]) if self._in_doubt else 0
        return self._waiting + doubt

    def _drop_oldest(self) -> None:
        """Past the bound: drop the oldest hours' rows, counted (the store is away too long)."""
        limit = self.waiting_limit()
        lost = {"requests": 0, "comparisons": 0}
        for hour in sorted(set(self.pending) | set(self.pending_shadow)):
            if self._waiting <= limit:
                break
            rows = self.pending.pop(hour, {})
            routes = self.pending_shadow.pop(hour, {})
            lost["requests"] += sum(s[0] for s in rows.values())
            lost["comparisons"] += sum(c[0] for c in routes.values())
            self._waiting -= len(rows) + len(routes)
        for k, n in lost.items():
            self.dropped[k] += n
        log.error("inventory rollups dropped: the store has not taken them and more than "
                  f"{limit} rows wait", requests=lost["requests"],
                  comparisons=lost["comparisons"], error=self.write_error)

    def _take(self) -> tuple[dict[int, dict[Key, Stats]], dict[int, dict[str, list[int]]]]:
        self._take_shadow()
        pending, self.pending = self.pending, {}
        shadow, self.pending_shadow = self.pending_shadow, {}
        self._waiting = 0
        return pending, shadow

    def _restore(self, pending: dict[int, dict[Key, Stats]],
                 shadow: dict[int, dict[str, list[int]]]) -> None:
        for hour, rows in pending.items():
            dst = self.pending.setdefault(hour, {})
            for key, s in rows.items():
                add_stats(dst, key, s[0], s[1], s[2])
        for hour, routes in shadow.items():
            dst_shadow = self.pending_shadow.setdefault(hour, {})
            for route, counts in routes.items():
                add_counts(dst_shadow, route, counts)
        self._waiting = sum(len(r) for r in self.pending.values()) + \
            sum(len(r) for r in self.pending_shadow.values())
        if self._waiting > self.waiting_limit():
            self._drop_oldest()

    # -- to the store -------------------------------------------------------------------------
    async def flush(self) -> None:
        async with self._lock:
            pending, shadow = self._take()
            try:
                written = await asyncio.to_thread(self._send, pending, shadow)
            except Exception as exc:
                self._failed(exc, pending, shadow)
                return
            self._recovered()
            await asyncio.to_thread(self._maintain, written, self.clock())

    def flush_now(self) -> None:
        """The same, synchronously (tests, tools; not while the loop adds rows). Raises what
        the store raised (the rows wait for the next flush)."""
        pending, shadow = self._take()
        try:
            written = self._send(pending, shadow)
        except Exception as exc:
            self._failed(exc, pending, shadow)
            raise
        self._recovered()
        self._maintain(written, self.clock())

    def _send(self, pending: dict[int, dict[Key, Stats]],
              shadow: dict[int, dict[str, list[int]]]) -> list[tuple[int, int]]:
        """Write a batch in doubt (first), then these rows; the buckets written."""
        self._mark_started()
        if self._in_doubt is not None:
            batch, buckets = self._in_doubt
            try:
                self.store.write(buckets, batch)
            except CommitUnknown as exc:  # still unknown: these rows wait, it stays in doubt
                raise OSError(str(exc)) from None
            self._in_doubt = None
        buckets = _buckets(pending, shadow)
        if not buckets:
            return []
        self._batch += 1
        try:
            self.store.write(buckets, self._batch)
        except CommitUnknown:
            self._in_doubt = (self._batch, buckets)
            raise
        return [(grain, start) for grain, start, _, _ in buckets]

    def _failed(self, exc: Exception, pending: dict[int, dict[Key, Stats]],
                shadow: dict[int, dict[str, list[int]]]) -> None:
        if not isinstance(exc, CommitUnknown):  # not applied: the rows wait for the next try
            self._restore(pending, shadow)
        first = self.write_error is None
        self.write_error = str(exc) or type(exc).__name__
        if first:
            log.warning("inventory rollups not written; they wait in memory for the store",
                        error=self.write_error, rows_waiting=self.waiting(),
                        in_doubt=self._in_doubt is not None)

    def _recovered(self) -> None:
        if self.write_error is not None:
            log.info("inventory rollups written again", was=self.write_error)
            self.write_error = None

    def _maintain(self, written: list[tuple[int, int]], now: float) -> None:
        """Compaction and retention; a failure is logged and tried again at the next flush
        (the counts are written already)."""
        try:
            keep = self.spec.max_templates
            for grain, start in written:
                if start + grain <= bucket(now, grain):  # a late write into a closed bucket
                    self.store.compact(grain, start, keep)
            self._close_buckets(now)
        except Exception as exc:
            log.warning("inventory rollups: compaction or pruning failed; tried again at the "
                        "next flush", error=str(exc) or type(exc).__name__)

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
            for start in store.starts(grain, max(done + grain, horizon), current):
                folded = store.compact(grain, start, keep)
                if folded:
                    log.info("inventory bucket compacted", grain=grain, start=start,
                             folded=folded)
            store.set_meta(f"compacted.{grain}", str(current - grain))
            store.prune(grain, horizon)

    def status(self) -> dict:
        """For /readyz and the metrics: can the store be written, what waits, what was lost."""
        store_status = getattr(self.store, "status", None)
        out = dict(store_status()) if store_status is not None else {"up": True}
        if self.write_error is not None:
            out.update(up=False, error=self.write_error)
        out.update(rows_waiting=self.waiting(), dropped=dict(self.dropped),
                   in_doubt=self._in_doubt is not None)
        return out

    # -- reads ----------------------------------------------------------------------------------
    async def read(self, since: float, until: float | None = None) -> Traffic:
        """Every bucket from `since` (hourly when the hours are still kept, else daily: the
        window then starts at the day's start) to `until` (now), plus what waits to be
        written. RollupsUnavailable when a write holds the store longer than READ_WAIT."""
        try:
            await asyncio.wait_for(self._lock.acquire(), READ_WAIT)
        except TimeoutError:
            raise RollupsUnavailable(
                f"the inventory's store has not finished a write for {READ_WAIT:g} s "
                f"({self.write_error or 'it is slow'}); try again") from None
        try:
            self._take_shadow()
            pending = {h: {k: [s[0], s[1], dict(s[2])] for k, s in rows.items()}
                       for h, rows in self.pending.items()}
            shadow = {h: {r: list(c) for r, c in routes.items()}
                      for h, routes in self.pending_shadow.items()}
            return await asyncio.to_thread(self._read, since, until, pending, shadow)
        finally:
            self._lock.release()

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
        out = Traffic(float(start), end, grain, first=self.store.first(),
                      store=self.store.identity())
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
            await asyncio.sleep(self.interval)
            await self.flush()

    async def stop(self) -> None:
        """The last write (bounded by STOP_WAIT: a store that does not answer loses what
        waits, logged with its size), then the store is closed."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        async with self._lock:
            pending, shadow = self._take()
            requests = sum(s[0] for rows in pending.values() for s in rows.values())
            try:
                await asyncio.wait_for(asyncio.to_thread(self._send, pending, shadow),
                                       STOP_WAIT)
            except TimeoutError:
                log.error(f"inventory rollups not written at stop: the store did not answer "
                          f"within {STOP_WAIT:g} s", requests=requests)
                return  # the write still holds the connection: leave it to the exit
            except Exception as exc:
                log.error("inventory rollups not written at stop", requests=requests,
                          error=str(exc) or type(exc).__name__,
                          in_doubt=self._in_doubt is not None)
            self.store.close()
