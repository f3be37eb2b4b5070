"""Shadow mirroring: copy served requests to the other side and compare the answers.

The data plane calls `wants()` when a request's head is routed (cheap: no allocation) and
`offer()` once the client's response is complete. `offer()` never blocks and never raises: a
full queue drops the mirror and counts `queue_full`. A fixed pool of worker tasks sends the
copies (`X-Strangler-Shadow: 1`) over keep-alive pools of the data plane's own upstream
connections (httptools; separate pools, so mirrors never take the primary's connections),
compares with the route's `Comparator` (compiled when the table is built), cancels noise, and
records the result in the stats and the diff store. Nothing here can change or delay what the
client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

import structlog
import structlog.contextvars

from proxy.recorder import Recorder
from proxy.spec import SAFE_METHODS, Config, RouteSpec, UpstreamSpec
from proxy.table import CompiledRoute, RouteTable
from proxy.upstream import UpstreamError, UpstreamPool, UpstreamReset, UpstreamTimeout
from shadow.diff import Comparator
from shadow.model import Comparison, Exchange, RequestRecord
from shadow.noise import NoiseModel
from shadow.store import DiffStore

log = structlog.get_logger("strangler.shadow")

QUEUE_MAX = 1024
CONCURRENCY = 32
LARGE_BODY = 32 * 1024  # compare bodies above this size off the event loop
_SAFE = frozenset(m.encode() for m in SAFE_METHODS)
_SKIP_REQUEST_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"x-strangler-shadow"})


@dataclass(slots=True)
class _Compiled:
    methods: frozenset[bytes]
    unsafe_allowed: bool
    sample: float
    reverse: bool
    comparator: Comparator
    max_body: int


@dataclass(slots=True)
class _Job:
    route: str
    step: int
    served_by_target: bool
    legacy: UpstreamSpec
    target: UpstreamSpec
    noise: UpstreamSpec | None
    request: RequestRecord
    primary: Exchange
    compiled: _Compiled
    request_id: str = ""
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()


class _Collect:
    """Response sink for a mirrored request: keeps status, headers and up to `limit` bytes of
    body (then stops: the connection is dropped rather than read to the end)."""

    is_tunnel = False
    wbuf = None

    __slots__ = ("body", "done", "headers", "limit", "size", "status", "truncated")

    def __init__(self, limit: int) -> None:
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.limit = limit
        self.status = 0
        self.headers: tuple[tuple[str, str], ...] = ()
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False

    def on_upstream_head(self, status: int, reason: bytes, headers: list, chunked: bool,
                         length: int | None, tokens: object) -> None:
        self.status = status
        self.headers = tuple((ln.decode("latin-1"), v.decode("latin-1")) for ln, _, v in headers)

    def on_upstream_body(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.limit - self.size
        if len(data) > room:
            self.body.append(data[:room])
            self.size = self.limit
            self.truncated = True
            if not self.done.done():
                self.done.set_result(False)
            return
        self.body.append(data)
        self.size += len(data)

    def on_upstream_done(self, reusable: bool) -> None:
        if not self.done.done():
            self.done.set_result(reusable)

    def on_upstream_lost(self, exc: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def time_out(self) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamTimeout("mirror timed out"))

    def flush_out(self) -> None:
        return None

    def upstream_pause_writing(self) -> None:
        return None

    def upstream_resume_writing(self) -> None:
        return None


class Mirror:
    def __init__(self, config: Config, recorder: Recorder, store: DiffStore | None = None,
                 rand: Any = random.random) -> None:
        self.config = config
        self.recorder = recorder
        self.store = store or DiffStore(config.state_dir / "diffs.sqlite3")
        self.rand = rand
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.noise: dict[str, NoiseModel] = {}
        self.workers: list[asyncio.Task] = []
        self.pools: dict[str, UpstreamPool] = {}
        self._compiled: dict[tuple[str, RouteSpec], _Compiled] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self._worker()) for _ in range(CONCURRENCY)]

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish queued mirrors for up to `timeout`, then cancel the rest (logged)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)
        if self.queue.qsize():
            log.warning("shadow mirrors dropped at shutdown", count=self.queue.qsize())
        for w in self.workers:
            w.cancel()
        for w in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        for pool in self.pools.values():
            pool.close()
        await asyncio.to_thread(self.store.close)

    # -- compile at table build ----------------------------------------------------------
    def prepare(self, table: RouteTable) -> None:
        self.config = table.config
        fresh: dict[tuple[str, RouteSpec], _Compiled] = {}
        for route in table.routes:
            spec = route.spec
            key = (spec.name, spec)
            compiled = self._compiled.get(key)
            if compiled is None:
                sh = spec.shadow
                compiled = _Compiled(
                    methods=frozenset(m.encode() for m in sh.methods),
                    unsafe_allowed=sh.allow_unsafe,
                    sample=sh.sample if sh.enabled else 0.0,
                    reverse=sh.reverse,
                    comparator=Comparator(sh.compare),
                    max_body=sh.max_body,
                )
            fresh[key] = compiled
            route.extra["shadow"] = compiled
            self.noise.setdefault(spec.name, NoiseModel())
        self._compiled = fresh
        pools: dict[str, UpstreamPool] = {}
        for name, spec in table.config.upstreams.items():
            pool = self.pools.get(name)
            pools[name] = pool if pool is not None and pool.spec == spec else UpstreamPool(spec)
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.close()
        self.pools = pools

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
        if self.queue.full():
            self.recorder.shadow_skipped(route.name, "queue_full")
            return
        body = b"".join(ex.replay) if ex.body_mode and ex.replay else b""
        if len(body) > c.max_body:
            self.recorder.shadow_skipped(route.name, "body_too_large")
            return
        path = ex.path.decode("latin-1")
        if ex.query is not None:
            path += "?" + ex.query.decode("latin-1")
        headers = tuple(
            (n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in ex.req_headers
        )
        request = RequestRecord(ex.method.decode("latin-1"), path, headers, body)
        primary = Exchange(
            ex.status,
            tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in ex.resp_headers),
            b"".join(ex.resp_body),
        )
        spec = route.spec
        ups = self.config.upstreams
        noise_name = spec.shadow.compare.noise_upstream
        self.queue.put_nowait(
            _Job(
                route=route.name,
                step=ex.step,
                served_by_target=ex.backend == "target",
                legacy=ups[spec.legacy],
                target=ups[spec.target],
                noise=ups.get(noise_name) if noise_name else None,
                request=request,
                primary=primary,
                compiled=c,
                request_id=ex.request_id,
                raw_headers=tuple(ex.req_headers),
            )
        )

    # -- workers -------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                # Every log line of this mirror carries the request id it copies (each worker
                # task has its own context, so binding per job needs no unbinding).
                structlog.contextvars.bind_contextvars(request_id=job.request_id,
                                                       route=job.route)
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow job failed", route=job.route)
                self.recorder.shadow_result(job.route, job.step, "error")
            finally:
                self.queue.task_done()

    async def _send(self, upstream: UpstreamSpec, job: _Job) -> Exchange:
        """One mirrored request on a pooled connection; a dead pooled connection is retried
        once on a fresh one."""
        pool = self.pools.get(upstream.name)
        if pool is None or (pool.spec is not upstream and pool.spec != upstream):
            if pool is not None:
                pool.close()
            pool = self.pools[upstream.name] = UpstreamPool(upstream)
        req = job.request
        body = req.body
        parts = [req.method.encode(), b" ", pool.base_path, req.path.encode("latin-1"),
                 b" HTTP/1.1\r\n"]
        for name, value in job.raw_headers:
            if name.lower() not in _SKIP_REQUEST_HEADERS:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"x-strangler-shadow: 1\r\n")
        if body or req.method not in ("GET", "HEAD", "OPTIONS"):
            parts.append(b"content-length: %d\r\n" % len(body))
        parts.append(b"\r\n")
        head = b"".join(parts)
        for attempt in (0, 1):
            conn = await pool.acquire()
            sink = _Collect(job.compiled.max_body)
            conn.send(sink, head, req.method == "HEAD")
            if body:
                conn.transport.write(body)
            # One timer handle instead of wait_for's task machinery: this runs per mirror.
            timer = asyncio.get_running_loop().call_later(upstream.timeout, sink.time_out)
            try:
                reusable = await sink.done
            except UpstreamTimeout:
                pool.discard(conn)
                raise UpstreamTimeout(f"{upstream.name} did not answer the mirror in "
                                      f"{upstream.timeout:g}s") from None
            except UpstreamReset:
                if attempt == 0 and conn.reused and not conn.got_bytes:
                    continue  # the upstream had closed this idle connection: once more
                raise
            finally:
                timer.cancel()
            if reusable and not sink.truncated:
                pool.release(conn)
            else:
                pool.discard(conn)
            return Exchange(sink.status, sink.headers, b"".join(sink.body), sink.truncated)
        raise UpstreamReset("unreachable")  # pragma: no cover - the loop always returns

    async def _run(self, job: _Job) -> None:
        other = job.legacy if job.served_by_target else job.target
        noise_up = job.noise  # a second copy of legacy, in both directions
        if noise_up is None:
            try:
                results: list[Any] = [await self._send(other, job)]
            except (UpstreamError, OSError) as exc:
                results = [exc]
        else:
            results = await asyncio.gather(self._send(other, job), self._send(noise_up, job),
                                           return_exceptions=True)
        mirrored = results[0]
        if isinstance(mirrored, BaseException):
            self.recorder.shadow_result(job.route, job.step, "error")
            log.info("shadow request failed", upstream=other.name,
                     error=type(mirrored).__name__)
            return
        if job.served_by_target:
            legacy_ex, target_ex = mirrored, job.primary
        else:
            legacy_ex, target_ex = job.primary, mirrored
        noise_ex = results[1] if len(results) > 1 else None
        if isinstance(noise_ex, BaseException):
            noise_ex = None
        comparison = await self._compare(job, legacy_ex, target_ex, noise_ex)
        self.recorder.shadow_result(job.route, job.step, comparison.result)
        self.store.record(job.route, job.step, job.request, legacy_ex, target_ex, comparison,
                          job.compiled.comparator.redactor)

    async def _compare(self, job: _Job, legacy: Exchange, target: Exchange,
                       noise: Exchange | None) -> Comparison:
        comparator = job.compiled.comparator

        def work() -> Comparison:
            primary = comparator.compare(legacy, target)
            noise_cmp = comparator.compare(legacy, noise) if noise is not None else None
            return self.noise[job.route].observe(primary, noise_cmp)

        if len(legacy.body) + len(target.body) > LARGE_BODY:
            return await asyncio.to_thread(work)
        return work()

    def likely_noise(self, route: str) -> Any:
        model = self.noise.get(route)
        return model.likely_noise if model is not None else None
