"""Shadow mirroring: copy served requests to the other side and compare the answers.

The data plane calls `wants()` when a request's head is routed (cheap: no allocation) and
`offer()` once the client's response is complete. `offer()` never blocks and never raises: past
`CONCURRENCY` mirrors in flight, up to `QUEUE_MAX` wait in a backlog; beyond that a mirror is
dropped and counted `queue_full`.

A mirror is a `_Job` with one leg (the other side) or two (plus the route's noise upstream, a
second copy of legacy). Each leg is the response sink of one pooled upstream connection of the
data plane's own kind (httptools; separate pools, so mirrors never take the primary's
connections), driven by plain callbacks: no task, future or timer per mirror (one sweeper checks
deadlines). The mirror's request head is the primary's, byte for byte, plus
`X-Strangler-Shadow: 1`. When both answers are byte-identical (status, compared headers, body)
the result is a match without decoding anything; otherwise the pair's bytes go to the comparer
process (`proxy.dataplane.comparer_link`, `shadow.comparer`), which decodes, diffs, cancels
noise, redacts and stores off this event loop. Nothing here can change or delay what the client
receives.

The shadow budget is checked in `wants()`, before anything is mirrored: the route's
`shadow.max_rate` and the proxy-wide `shadow_budget.max_rate` (token buckets, mirrors per
second; the proxy-wide one is split evenly across workers), and whether the comparer is keeping
up. What is shed is counted in `strangler_shadow_skipped_total` (`rate_limited`, `budget`,
`comparer_busy`), never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import replace
from typing import Any

import structlog

from proxy.config.spec import SAFE_METHODS, Config, RouteSpec, UpstreamSpec
from proxy.dataplane import basics
from proxy.dataplane.basics import H_REQUEST_ID
from proxy.dataplane.comparer_link import ComparerLink
from proxy.dataplane.headers import header_pairs
from proxy.dataplane.pipeline import PipelinedConnection, PipelineLeg, PipelinePool
from proxy.dataplane.recorder import Recorder, ShadowSlot
from proxy.dataplane.table import CompiledRoute, RouteTable
from proxy.dataplane.tasks import cancel_tasks
from proxy.dataplane.tls import TlsStore
from proxy.dataplane.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamReset,
    UpstreamTimeout,
)
from shadow.sqldb import locator as store_locator

try:  # compiled (setup.py): _picked is a C scan
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False
if _COMPILED:
    from cython.cimports.cpython.bytes import PyBytes_AS_STRING, PyBytes_FromStringAndSize
    from cython.cimports.libc.string import memchr, memcmp, memcpy

log = structlog.get_logger("strangler.shadow")

QUEUE_MAX = 1024  # mirrors waiting for one of the CONCURRENCY slots
MAX_SAMPLES_PER_ROUTE = 200  # diff store: newest samples kept per route (plus first per field)
RETENTION_DAYS = 7.0
CONCURRENCY = 256  # mirrors in flight per data plane (pipelined: up to 8 per connection)
CONNECTIONS = 32  # pipelined connections per upstream
SWEEP_INTERVAL = 0.1  # how often mirror deadlines are checked
FAILING_LOG_EVERY = 60.0  # seconds between "still failing" lines of a route's mirrors
_SAFE = frozenset(m.encode() for m in SAFE_METHODS)
# W3C trace context: a mirror never carries the client's, so the target's traces never show
# shadow calls inside the client's trace as if the client had made them.
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_SKIP_REQUEST_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"x-strangler-shadow",
                                   b"host"}) | _TRACE_HEADERS
_SHADOW_HEADER = b"x-strangler-shadow: 1\r\n"
_SHADOW_HEADER_END = _SHADOW_HEADER + b"\r\n"
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def _traced(headers) -> bool:  # (name, value) pairs
    """The request carries W3C trace context (which a mirror must not copy)."""
    for pair in headers:
        name = pair[0]
        if (len(name) == 10 or len(name) == 11) and name.lower() in _TRACE_HEADERS:
            return True
    return False


class TokenBucket:
    """Mirrors per second, with a burst of one second's worth (at least 1)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.stamp = 0.0

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class _Compiled:
    """A route's shadow settings as the hot path reads them (made at table build)."""

    __slots__ = ("bucket", "header_list", "header_names", "legacy", "max_body", "methods",
                 "noise", "pipeline", "reverse", "sample", "slot", "target", "unsafe_allowed")

    def __init__(self, spec: RouteSpec) -> None:
        sh = spec.shadow
        names = {h.lower().encode("latin-1") for h in sh.compare.headers}
        names.add(b"content-encoding")
        self.methods = frozenset(m.encode() for m in sh.methods)
        self.unsafe_allowed = sh.allow_unsafe
        self.sample = sh.sample if sh.enabled else 0.0
        self.reverse = sh.reverse
        self.max_body = sh.max_body
        self.header_names = frozenset(names)  # the compared headers: the byte-identical check
        self.header_list = tuple(sorted(names))  # the same, for the primary's header lines
        self.pipeline = sh.pipeline  # GET mirrors may go over pipelined connections
        # shadow.max_rate; None: no per-route limit
        self.bucket = TokenBucket(sh.max_rate) if sh.max_rate is not None else None
        self.legacy = spec.legacy  # the upstreams a mirror goes to
        self.target = spec.target
        self.noise = sh.compare.noise_upstream or None
        self.slot: ShadowSlot | None = None  # the recorder's counts of the route's last step


def _slot(recorder: Recorder, job: _Job) -> ShadowSlot:
    """The recorder's ShadowSlot of `job`'s route and step, kept on the route's _Compiled."""
    c: _Compiled = job.compiled
    s = c.slot
    if s is None or s.step != job.step:
        s = c.slot = recorder.shadow_slot(job.route, job.step)
    return s


class _Job:
    """One mirrored request: what the client got, and its legs (other side, noise copy)."""

    __slots__ = ("body", "compiled", "host", "legs", "method", "pending", "primary_body",
                 "primary_lines", "primary_seconds", "primary_status", "req_headers",
                 "request_id", "route", "served_by_target", "step", "target", "trace")

    def __init__(self) -> None:
        self.legs: list[_Leg] = []
        self.pending = 0


class _Leg(PipelineLeg):
    """One mirrored request on one upstream, and the sink of the connection carrying it:
    keeps status, headers and up to `limit` bytes of body (then stops: the connection is
    dropped rather than read to the end). `attempt`, `done`, `head` and `sent_at` are
    PipelineLeg's."""

    is_tunnel = False
    wbuf = None

    __slots__ = ("behind", "chunks", "conn", "deadline", "error", "got_bytes", "headers", "job",
                 "limit", "mirror", "pipe", "pool", "seconds", "size", "span", "started",
                 "status", "truncated")

    def __init__(self, mirror: Mirror, job: _Job, pool: UpstreamPool, head: bytes,
                 limit: int, pipe: PipelinePool | None = None) -> None:
        self.mirror = mirror
        self.job = job
        self.pool = pool
        self.pipe = pipe  # set while this leg goes (or went) over a pipelined connection
        self.head = head
        self.limit = limit
        self.conn: Any = None
        self.sent_at = 0.0
        self.got_bytes = False
        self.attempt = 0
        self.deadline = 0.0
        self.done = False
        self.error: BaseException | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        # Paired latency: from the request's write to the end of its answer (time.monotonic;
        # the loop's clock may be coarse), and whether it was pipelined behind another request
        # (then its time includes that one's: not paired).
        self.started = 0.0
        self.seconds = 0.0
        self.behind = False
        # a sampled primary's mirror: (tracer, (trace id, span id, start), primary ids)
        self.span: tuple | None = None

    # -- sending ----------------------------------------------------------------------------
    def start(self) -> None:
        pipe = self.pipe
        if pipe is not None:
            pipe.submit(self)  # then on_written(), when a pipelined connection takes it
            return
        conn = self.pool.acquire_nowait()
        if conn is not None:
            self.send(conn)
        else:
            self.mirror.spawn(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool.acquire()
        except (UpstreamError, OSError) as exc:
            self.finish(exc)
            return
        if self.done:
            self.pool.release(conn)
            return
        self.send(conn)

    # (C-typed parameters unannotated: mirror.pxd and pipeline.pxd type them)
    def on_written(self, conn: PipelinedConnection, now) -> None:
        """Written on a pipelined connection: the deadline starts now."""
        self.conn = conn
        self.sent_at = now
        self.started = basics.monotonic()
        self.behind = bool(conn.waiting)
        self.deadline = now + self.pipe.timeout  # type: ignore[union-attr]
        self.mirror.in_flight.add(self)

    def send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.started = basics.monotonic()
        self.behind = False
        mirror = self.mirror
        self.deadline = mirror.now() + self.pool.timeout
        mirror.in_flight.add(self)
        job = self.job
        conn.send(self, self.head, job.method == b"HEAD")
        if job.body:
            conn.transport.write(job.body)  # type: ignore[union-attr]

    # -- the sink interface (called by UpstreamConnection) -----------------------------------
    def on_upstream_head(self, status: int, reason: bytes, lines: list, special: list,
                         chunked: bool, length: int | None, named: object) -> None:
        self.got_bytes = True
        self.status = status
        # (lower-cased name, value) of every header: those forwarded as they came, then the
        # others (upstream.ResponseSink: x-request-id is in both)
        self.headers = header_pairs(lines)
        self.headers += [(n.lower(), v) for code, n, v in special if code != H_REQUEST_ID]

    def on_pipelined_head(self, status, headers: list) -> None:
        """The head of an answer on a pipelined connection, as (lower-cased name, value)."""
        self.got_bytes = True
        self.status = status
        self.headers = headers

    def on_upstream_body(self, data: bytes) -> None:
        if self.truncated or self.done:
            return
        room = self.limit - self.size
        if len(data) > room:
            self.chunks.append(data[:room])
            self.size = self.limit
            self.truncated = True
            # A plain connection is dropped rather than read to the end; a pipelined one
            # reads on (the rest of this body is ignored) for the requests behind this one.
            self._release(self.pipe is not None)
            self.finish(None)
            return
        self.chunks.append(data)
        self.size += len(data)

    def on_upstream_done(self, reusable: bool) -> None:
        if self.done:
            return
        self._release(reusable)
        self.finish(None)

    def on_upstream_lost(self, exc) -> None:  # an UpstreamError
        if self.done:
            return
        conn, self.conn = self.conn, None
        self.mirror.in_flight.discard(self)
        if self.pipe is not None:
            retry = not self.got_bytes  # the connection went before this request's answer
        else:
            retry = conn is not None and conn.reused and not conn.got_bytes
        if self.attempt == 0 and isinstance(exc, UpstreamReset) and retry:
            # The upstream had closed this idle pooled (or pipelined) connection: once more,
            # on a fresh one (a retried pipelined leg goes alone on its connection).
            self.attempt = 1
            self.got_bytes = False
            self.status, self.headers, self.chunks, self.size = 0, [], [], 0
            self.start()
            return
        self.finish(exc)

    def flush_out(self) -> None:
        return None

    def upstream_pause_writing(self) -> None:
        return None

    def upstream_resume_writing(self) -> None:
        return None

    # -- ending -----------------------------------------------------------------------------
    def time_out(self) -> None:
        if self.done:
            return
        conn = self.conn
        if self.pipe is not None and conn is not None and conn.waiting and \
                conn.waiting[0] is not self:
            return  # behind the oldest request: retried when that one's time-out drops the line
        self._release(False)
        self.finish(UpstreamTimeout(f"{self.pool.spec.name} did not answer the mirror in "
                                    f"{self.pool.spec.timeout:g}s"))

    def _release(self, reusable: bool) -> None:
        conn, self.conn = self.conn, None
        self.mirror.in_flight.discard(self)
        if conn is None:
            return
        if self.pipe is not None:
            if not reusable:  # timed out: the answers behind it cannot be told apart
                self.pipe.broken(conn)
            return
        if reusable and not self.truncated:
            self.pool.release(conn)
        else:
            self.pool.discard(conn)

    def finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self.seconds = basics.monotonic() - self.started
        if self.span is not None:
            tracer, span, primary = self.span
            job = self.job
            tracer.shadow_end(span, primary, job.route, self.pool.name, job.method, self.status,
                              type(error).__name__ if error is not None else None)
        job = self.job
        job.pending -= 1
        if job.pending == 0:
            self.mirror.job_done(job)

    def raw(self) -> tuple:
        """The answer as the comparer takes it: (status, headers, body, truncated)."""
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return (self.status, self.headers, body, self.truncated)


def _shadow_head(head: bytes) -> bytes:
    """`head[:-2] + _SHADOW_HEADER_END`: a request head with the shadow header as its last
    line. Compiled, one new object and two copies (a slice and a sum make two objects)."""
    if not _COMPILED:
        return head[:-2] + _SHADOW_HEADER_END
    end = _SHADOW_HEADER_END
    n = len(head) - 2
    k = len(end)
    out = PyBytes_FromStringAndSize(cython.NULL, n + k)
    p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(head), n)
    memcpy(p + n, PyBytes_AS_STRING(end), k)
    return out


def _new_leg(mirror: Mirror, job: _Job, pool: UpstreamPool, head: bytes, limit,
             pipe: PipelinePool | None) -> _Leg:
    """`_Leg(mirror, job, pool, head, limit, pipe)`. Compiled, without the call protocol and
    its argument parsing: the type's tp_new zeroes the C fields and sets the others to None,
    then the ones whose start is neither are set here (tests/test_mirror_leg.py checks that
    both give the same leg)."""
    if not _COMPILED:
        return _Leg(mirror, job, pool, head, limit, pipe)
    leg = _Leg.__new__(_Leg)
    leg.mirror = mirror
    leg.job = job
    leg.pool = pool
    leg.pipe = pipe
    leg.head = head
    leg.limit = limit
    leg.headers = []
    leg.chunks = []
    return leg


class Mirror:
    def __init__(self, config: Config, recorder: Recorder, rand: Any = random.random, *,
                 workers: int = 1, log_format: str = "json", log_level: str = "info") -> None:
        self.config = config
        self.recorder = recorder
        self.rand = rand
        self.workers = max(1, workers)
        budget = config.shadow_budget
        self.link = ComparerLink(recorder, budget.max_pending, log_format, log_level,
                                 budget.comparer_nice)
        self.budget: TokenBucket | None = None
        self.budget_rate: float | None = None
        self.backlog: deque[_Job] = deque()
        self.running = 0  # jobs started and not yet done
        self.noise_down: set[str] = set()  # routes whose noise twin failed its last mirror
        self.failing: dict[str, list] = {}  # route -> [failures not logged, last line's time]
        self.in_flight: set[_Leg] = set()  # legs on a connection, for the deadline sweep
        self.pools: dict[str, UpstreamPool] = {}
        self.pipes: dict[str, PipelinePool] = {}
        self._specs: dict[str, UpstreamSpec] = {}  # as configured, before the CONNECTIONS cap
        self._live: dict[str, tuple[UpstreamPool, PipelinePool]] = {}  # _pools_for's answers
        # TLS contexts (https upstreams, noise twins): the data plane's, so that mirrors share
        # its credentials, rotation and sessions (proxy.serve.app hands it over)
        self.tls = TlsStore()
        self.tasks: set[asyncio.Task] = set()
        self._compiled: dict[tuple[str, RouteSpec], _Compiled] = {}
        self._sweeper: asyncio.Task | None = None
        # stop() waiting for the mirrors running and queued to end (a future only then: an
        # Event cleared and set per mirror cost two Python calls each)
        self._drained: asyncio.Future | None = None
        self.now: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time
        self._sweeper = loop.create_task(self._sweep())
        await self.link.start()

    async def flush(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until every pair handed to the comparer is compared and stored."""
        return await self.link.flush(timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish queued mirrors for up to `timeout`, then drop the rest (logged); then let the
        comparer finish and store what it was given."""
        if self.running or self.backlog:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained, timeout)
            self._drained = None
        left = len(self.backlog) + self.running
        if left:
            log.warning("shadow mirrors dropped at shutdown", count=left)
        self.backlog.clear()
        await cancel_tasks(self._sweeper, self.tasks)
        for leg in list(self.in_flight):
            leg._release(False)
        for pool in self.pools.values():
            pool.close()
        for pipe in self.pipes.values():
            pipe.close()
        await self.link.stop(max(timeout, 5.0))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _sweep(self) -> None:
        """One timer for every mirror in flight (a timer handle per mirror costs more)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.now()
            for leg in [leg for leg in self.in_flight if leg.deadline < now]:
                leg.time_out()

    # -- compile at table build ----------------------------------------------------------
    def prepare(self, table: RouteTable) -> None:
        config = self.config = table.config
        fresh: dict[tuple[str, RouteSpec], _Compiled] = {}
        for route in table.routes:
            spec = route.spec
            key = (spec.name, spec)
            compiled = self._compiled.get(key)
            if compiled is None:
                compiled = _Compiled(spec)
            fresh[key] = compiled
            route.extra["shadow"] = compiled
        self._compiled = fresh
        rate = config.shadow_budget.max_rate
        rate = rate / self.workers if rate is not None else None
        if rate != self.budget_rate:
            self.budget_rate = rate
            self.budget = TokenBucket(rate) if rate is not None else None
        self.link.configure((
            "config", store_locator(config), MAX_SAMPLES_PER_ROUTE,
            RETENTION_DAYS, {r.name: r.shadow.compare for r in config.routes},
        ))
        ups = config.upstreams
        for name in [n for n, spec in self._specs.items() if ups.get(n) != spec]:
            self._close_pools(name)

    def _pools_for(self, name: str) -> tuple[UpstreamPool, PipelinePool]:
        """The plain and the pipelined pool of an upstream (made on first use; `prepare` closes
        them when its spec changed, and the next mirror makes new ones). Both hold at most
        CONNECTIONS connections: mirrors never take more of the upstream than that, whatever
        its max_connections."""
        live = self._live.get(name)
        if live is not None:
            return live
        spec = self.config.upstreams[name]
        old = self._specs.get(name)
        if old is not spec:
            if old is not None and old == spec:
                self._specs[name] = spec
            else:
                self._close_pools(name)
                capped = replace(spec, max_connections=min(spec.max_connections, CONNECTIONS))
                self.pools[name] = UpstreamPool(capped, self.tls)
                self.pipes[name] = PipelinePool(capped, CONNECTIONS, tls=self.tls)
                self._specs[name] = spec
        live = self._live[name] = (self.pools[name], self.pipes[name])
        return live

    def _close_pools(self, name: str) -> None:
        self._live.pop(name, None)
        self._specs.pop(name, None)
        pool = self.pools.pop(name, None)
        if pool is not None:
            pool.close()
        pipe = self.pipes.pop(name, None)
        if pipe is not None:
            pipe.close()

    # -- hot path (called by the data plane) ---------------------------------------------
    def wants(self, route: CompiledRoute, method: bytes, served_by_target: bool) -> bool:
        c: _Compiled | None = route.extra.get("shadow")
        if c is None or c.sample <= 0.0:
            return False
        if served_by_target and not c.reverse:
            return False
        if method not in _SAFE and not c.unsafe_allowed:
            self.recorder.shadow_skipped(route.name, "unsafe_method")
            return False
        if method not in c.methods:
            return False
        if served_by_target and method not in _SAFE:
            return False  # reverse shadow never sends side effects to legacy
        if c.sample < 1.0 and self.rand() >= c.sample:
            self.recorder.shadow_skipped(route.name, "sampled_out")
            return False
        now = self.now()
        bucket = c.bucket
        if bucket is not None and not bucket.take(now):
            self.recorder.shadow_skipped(route.name, "rate_limited")
            return False
        budget = self.budget
        if budget is not None and not budget.take(now):
            self.recorder.shadow_skipped(route.name, "budget")
            return False
        link = self.link
        t = link.transport  # link.busy(), without a Python frame per request
        if t is None or t.is_closing() or t.get_write_buffer_size() >= link.max_pending:
            self.recorder.shadow_skipped(route.name, "comparer_busy")
            return False
        return True

    def offer(self, ex: Any) -> None:
        try:
            self._offer(ex)
        except Exception:
            log.exception("shadow offer failed")

    def _offer(self, ex: Any) -> None:
        route: CompiledRoute = ex.route
        c: _Compiled = route.extra["shadow"]
        if ex.resp_body is None:
            self.recorder.shadow_skipped(route.name, "body_too_large")
            return
        if ex.body_mode and ex.replay is None:
            self.recorder.shadow_skipped(route.name, "body_too_large")
            return
        if self.running >= CONCURRENCY and len(self.backlog) >= QUEUE_MAX:
            self.recorder.shadow_skipped(route.name, "queue_full")
            return
        body = b"".join(ex.replay) if ex.body_mode and ex.replay else b""
        if len(body) > c.max_body:
            self.recorder.shadow_skipped(route.name, "body_too_large")
            return
        served_by_target = ex.backend == "target"
        job = _Job.__new__(_Job)  # compiled: no __init__ call; every field is set below
        job.route = route.name
        job.step = ex.step
        job.served_by_target = served_by_target
        job.compiled = c
        job.method = ex.method
        job.target = target = ex.path if ex.query is None else ex.path + b"?" + ex.query
        job.body = body
        job.req_headers = ex.req_headers
        job.request_id = ex.rid  # bytes: decoded only for a log line (a property call)
        job.primary_status = ex.status
        job.primary_lines = ex.resp_lines or []
        # Paired latency: each side from the write of its request upstream to the last byte of
        # its answer (a fallback's primary from the write of the legacy retry).
        job.primary_seconds = basics.monotonic() - ex.shadow_sent
        chunks = ex.resp_body
        job.primary_body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # The primary's request head as sent, when it can serve as the mirror's: no body
        # framing to redo, no trace context to drop, and the other upstream has the same base
        # path and Host.
        trace = ex.trace  # sampled: each leg is a span of a new trace, linked to the primary
        same_head = ex.head if not ex.body_mode and ex.method in _NO_BODY_METHODS and \
            trace is None and not _traced(ex.req_headers) else None
        primary = ex.pool
        job.host = ex.req_host
        job.trace = trace
        other = c.legacy if served_by_target else c.target
        legs = [self._leg(job, other, target, c.max_body, same_head, primary)]
        noise_name = c.noise
        if noise_name:
            legs.append(self._leg(job, noise_name, target, c.max_body, same_head, primary))
        job.legs = legs
        job.pending = len(legs)
        if self.running < CONCURRENCY:
            self._run(job)
        else:
            self.backlog.append(job)

    def _leg(self, job: _Job, upstream: str, target: bytes, limit, same_head: bytes | None,
             primary: UpstreamPool) -> _Leg:
        pool, pipe = self._pools_for(upstream)
        if job.method != b"GET" or job.body or not job.compiled.pipeline:
            pipe = None  # HEAD answers cannot be framed in a pipeline; bodies are not repeated
        if same_head and pool.base_path == primary.base_path and \
                pool.host_header == primary.host_header:
            return _new_leg(self, job, pool, _shadow_head(same_head), limit, pipe)
        parts = [job.method, b" ", pool.base_path, target, b" HTTP/1.1\r\n"]
        host = pool.host_header or job.host
        if host is not None:
            parts += (b"host: ", host, b"\r\n")
        span = None
        trace = job.trace
        if trace is not None:
            trace_id, span_id, start, line = trace.tracer.shadow_start(trace)
            parts.append(line)
            span = (trace.tracer, (trace_id, span_id, start), (trace.trace_id, trace.span_id))
        skip = _SKIP_REQUEST_HEADERS
        for name, value in job.req_headers:
            if name.lower() not in skip:
                parts += (name, b": ", value, b"\r\n")
        parts.append(_SHADOW_HEADER)
        if job.body or job.method not in _NO_BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(job.body))
        parts.append(b"\r\n")
        leg = _new_leg(self, job, pool, b"".join(parts), limit, pipe)
        leg.span = span
        return leg

    def _run(self, job: _Job) -> None:
        self.running += 1
        for leg in job.legs:
            leg.start()

    # -- results --------------------------------------------------------------------------
    def job_done(self, job: _Job) -> None:
        """Every leg of `job` has answered, failed or timed out (called from callbacks)."""
        try:
            self._result(job)
        except Exception:
            log.exception("shadow job failed", route=job.route)
            self._error(job)
        job.legs = []  # job <-> leg is a cycle: break it, so refcounting frees both now
        self._next()

    def _next(self) -> None:
        """A job ended: start waiting ones while there is room."""
        self.running -= 1
        backlog = self.backlog
        while backlog and self.running < CONCURRENCY:
            self._run(backlog.popleft())
        drained = self._drained
        if not self.running and not backlog and drained is not None and not drained.done():
            drained.set_result(None)

    def _result(self, job: _Job) -> None:
        """Count a byte-identical pair here; hand any other to the comparer process."""
        mirrored = job.legs[0]
        if mirrored.error is not None:
            side = "legacy" if job.served_by_target else "target"
            self._error(job, side, getattr(mirrored.error, "kind", "connect"))
            self._mirror_failed(job, mirrored)
            return
        if job.route in self.failing:
            self._mirror_back(job.route, mirrored)
        if not mirrored.truncated and not mirrored.behind:  # timed on its own, to its end
            mine = mirrored.seconds - job.primary_seconds
            _slot(self.recorder, job).pair(-mine if job.served_by_target else mine)
        if len(job.legs) == 1 and _identical(job, mirrored):
            _slot(self.recorder, job).match()
            self.link.count(job.route, job.step, "match")
            return
        noise = None
        if len(job.legs) > 1:
            if job.legs[1].error is None:
                noise = job.legs[1].raw()
            if (job.legs[1].error is not None) != (job.route in self.noise_down):
                self._noise_changed(job.route, job.legs[1])
        frame = ("pair", job.route, job.step, job.served_by_target, job.method, job.target,
                 job.req_headers, job.body,
                 (job.primary_status, header_pairs(job.primary_lines), job.primary_body, False),
                 mirrored.raw(), noise)
        if not self.link.submit(frame):
            self.recorder.shadow_skipped(job.route, "comparer_busy")

    def _error(self, job: _Job, side: str | None = None, kind: str | None = None) -> None:
        """The other side did not answer (or the job failed): an error for the gate (by side
        and kind when known) and for the diff store."""
        if side is None:
            self.recorder.shadow_result(job.route, job.step, "error")
        else:
            self.recorder.shadow_error(job.route, job.step, side, kind or "connect")
        self.link.count(job.route, job.step, "error")

    def _mirror_failed(self, job: _Job, leg: _Leg) -> None:
        """One log line when a route's mirrors start failing (with the request id it copied),
        then one a minute with the count; every failure is counted in the metrics."""
        now = self.now()
        state = self.failing.get(job.route)
        if state is None:
            self.failing[job.route] = [0, now]
            log.warning("shadow requests failing", upstream=leg.pool.name,
                        error=type(leg.error).__name__,
                        request_id=job.request_id.decode() if job.request_id else None,
                        route=job.route)
            return
        state[0] += 1
        if now - state[1] >= FAILING_LOG_EVERY:
            log.warning("shadow requests still failing", upstream=leg.pool.name,
                        error=type(leg.error).__name__, failed_since_last_line=state[0],
                        route=job.route)
            state[0], state[1] = 0, now

    def _mirror_back(self, route: str, leg: _Leg) -> None:
        failed = self.failing.pop(route)[0]
        log.info("shadow requests answering again", upstream=leg.pool.name, route=route,
                 failed_since_last_line=failed)

    def _noise_changed(self, route: str, leg: _Leg) -> None:
        """One log line when a route's noise twin stops answering, one when it is back."""
        if leg.error is not None:
            self.noise_down.add(route)
            log.warning("noise upstream unreachable: comparisons run without noise cancellation",
                        route=route, upstream=leg.pool.name, error=type(leg.error).__name__)
        else:
            self.noise_down.discard(route)
            log.info("noise upstream answering again", route=route, upstream=leg.pool.name)


def _identical(job: _Job, leg: _Leg) -> bool:
    """Status, compared headers and body byte for byte the same: a match, whatever the
    comparison rules (they can only forgive differences)."""
    if leg.truncated or leg.status != job.primary_status:
        return False
    body = leg.chunks[0] if len(leg.chunks) == 1 else b"".join(leg.chunks)
    if body != job.primary_body:
        return False
    c: _Compiled = job.compiled
    # Same names in another order only sends the pair to the full comparison.
    return _same_picked(leg.headers, c.header_list, c.header_names,
                        _picked(job.primary_lines, c.header_list))


def _same_picked(headers: list, names: tuple, name_set: frozenset, picked: list) -> bool:
    """`picked` (what `_picked` gives: (name, stripped value), `name` the object of `names`) is
    the (name, stripped value) of each pair of `headers` (lower-cased names) whose name is one
    of `names` (`name_set`: the same), in order. Compiled, compared in place: no tuple, no
    stripped copy and no hash per header."""
    if not _COMPILED:
        return picked == [(n, v.strip()) for n, v in headers if n in name_set]
    k = 0
    m = len(picked)
    for pair in headers:
        n = pair[0]
        size = len(n)
        p = PyBytes_AS_STRING(n)
        for name in names:
            if len(name) == size and memcmp(p, PyBytes_AS_STRING(name), size) == 0:
                break
        else:
            continue
        if k == m:
            return False  # more compared headers than the primary's
        want = picked[k]
        if want[0] is not name:
            return False
        value = pair[1]
        v = PyBytes_AS_STRING(value)
        b = 0
        e = len(value)
        while b < e and _blank(v[b]):
            b += 1
        while e > b and _blank(v[e - 1]):
            e -= 1
        other = want[1]
        if len(other) != e - b or memcmp(v + b, PyBytes_AS_STRING(other), e - b) != 0:
            return False
        k += 1
    return k == m


def _picked(lines: list, names: tuple) -> list:
    """(name, value without the blanks around it) of each header line in `lines` whose name,
    lower-cased, is one of `names` (lower-case), in order. `lines`: pieces whose concatenation
    is whole header lines, each ending with CRLF (the forwarded head, accepted by llhttp).
    Compiled, one C scan of the lines: no bytes object made for a line it does not pick."""
    if not _COMPILED:
        return [(n, v.strip()) for n, v in header_pairs(lines) if n in names]
    data = lines[0] if len(lines) == 1 else b"".join(lines)
    out = []
    n = len(data)
    p = PyBytes_AS_STRING(data)
    i = 0
    while i < n:
        at = memchr(p + i, 10, n - i)
        end = n if at == cython.NULL else cython.cast(cython.p_char, at) - p - 1  # its CR
        at = memchr(p + i, 58, end - i) if end > i else cython.NULL
        if at != cython.NULL:
            colon = cython.cast(cython.p_char, at) - p
            for name in names:
                k = len(name)
                if k == colon - i and _same_lower(p + i, name, k):
                    v = colon + 1
                    e = end
                    while v < e and _blank(p[v]):
                        v += 1
                    while e > v and _blank(p[e - 1]):
                        e -= 1
                    out.append((name, PyBytes_FromStringAndSize(p + v, e - v)))
                    break
        i = end + 2
    return out


def _same_lower(p, name, k):  # C types: mirror.pxd
    """Compiled only: the `k` bytes at `p`, ASCII letters lower-cased, are `name`."""
    q = PyBytes_AS_STRING(name)
    for j in range(k):
        c = p[j]
        if 65 <= c <= 90:
            c += 32
        if c != q[j]:
            return False
    return True


def _blank(c):  # C types: mirror.pxd
    """What bytes.strip() strips: space, tab, LF, VT, FF, CR."""
    return c == 32 or 9 <= c <= 13
