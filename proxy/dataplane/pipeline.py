"""HTTP/1.1 pipelining for shadow mirrors: fewer syscalls per mirrored request.

A mirror costs the proxy a write and a read on the target's socket, which on a saturated core
is most of what it costs. Mirrors started in one event-loop iteration are therefore written
together: `PipelinePool.submit` queues a leg, and at the end of the iteration (`call_soon`) the
queued heads are written in batches of up to `depth` requests, each batch to an idle connection
of the pool (or a new one) in one `write`. The responses come back in order on each connection
and often in one read.

Only GET mirrors without a body are pipelined (HEAD responses cannot be framed in a pipeline,
and nothing with side effects is). Pipelining is used only while the upstream is fast: every
pool starts at depth 1 (one request per connection, as without pipelining) and goes to `depth`
once the smoothed per-response service time is under `FAST_SERVICE`; a slow upstream stays at
depth 1, so no mirror waits behind another's slow answer. A batch is written only to an idle
connection. A connection that breaks takes its unanswered requests with it: each leg retries
once, alone on a connection. When the oldest request of a pipeline times out, it is an error, the
ones behind it are retried, and the pool stops pipelining for `COOL_OFF` seconds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import httptools

from proxy.config.spec import UpstreamSpec
from proxy.dataplane import basics
from proxy.dataplane.basics import H_CONTENT_LENGTH, H_TRANSFER_ENCODING
from proxy.dataplane.tls import TlsStore
from proxy.dataplane.upstream import (
    TlsDial,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReset,
    UpstreamTlsError,
    dial_error,
    dial_kwargs,
    set_nodelay,
)

DEPTH = 8  # requests outstanding per connection while pipelining
FAST_SERVICE = 0.005  # seconds per response under which the upstream counts as fast
START_SERVICE = 1.0  # the estimate before any response: not fast
ALPHA = 0.2  # weight of the newest response in the smoothed service time
COOL_OFF = 30.0  # seconds without pipelining after a pipelined connection failed

try:  # compiled (setup.py): a header name is lower-cased by a C loop
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False
if _COMPILED:
    from cython.cimports.cpython.bytes import PyBytes_AS_STRING, PyBytes_FromStringAndSize
INTERIM_MIN = len(b"HTTP/1.1 100\r\n\r\n")  # the fewest bytes of an interim head llhttp takes


class PipelineLeg:
    """What a pipelined connection reads and calls on each request it carries (mirror's `_Leg`
    is one, and sets these fields). Compiled, a C base type: those reads and calls are C, not
    Python attribute lookups (pipeline.pxd). `head`: the request as written; `attempt`: 1 for
    a retry, which goes alone on its connection; `done`: answered, failed or timed out, not
    (re)sent; `sent_at`: the loop's time when written."""

    __slots__ = ("attempt", "done", "head", "sent_at")

    # (C-typed parameters unannotated: pipeline.pxd types them)
    def on_written(self, conn: PipelinedConnection, now) -> None:
        raise NotImplementedError

    def on_pipelined_head(self, status, headers: list) -> None:
        raise NotImplementedError

    def on_upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_upstream_done(self, reusable) -> None:
        raise NotImplementedError

    def on_upstream_lost(self, exc) -> None:
        raise NotImplementedError


class PipelinedConnection:
    """One keep-alive connection carrying requests back to back; `waiting` is the legs whose
    responses are due, oldest first. A leg is a response sink (see proxy.dataplane.upstream)
    whose head comes to `on_pipelined_head` as (lower-cased name, value) pairs: what the
    comparison takes, built as llhttp reads each header. An asyncio protocol by its methods
    (no base class: compiled, it is a C type)."""

    __slots__ = ("_close_delimited", "_framed", "_head_lines", "_head_span", "_headers",
                 "_heads_read", "_in_head", "closed", "fresh", "last_done", "parser", "pool",
                 "tls_gen", "transport", "unsent", "waiting")

    def __init__(self, pool: PipelinePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiting: deque[PipelineLeg] = deque()
        self.unsent: list[bytes] = []  # heads written once connected
        self.closed = False
        self.last_done = 0.0
        self.tls_gen = 0  # TLS: the credentials' generation it was made with
        self.fresh = False  # TLS: its session not yet offered to the next connections
        # the head being read: (lower-cased name, value) of each header, as llhttp gives them
        self._headers: list[tuple[bytes, bytes]] = []
        self._close_delimited = False
        self._framed = False  # the current response has Content-Length or Transfer-Encoding
        # The upstream's `max_header_bytes` holds here as for the primary (a hostile target
        # could otherwise grow a head until the mirror's timeout). Counted two ways, each at
        # most the head's size: its complete header lines, and the reads that fell wholly
        # inside it (httptools keeps an unfinished line whole). `_in_head`: the next bytes
        # are a head; `_heads_read`: heads completed so far, to tell a read that a head spans.
        self._head_lines = 0
        self._head_span = 0
        self._in_head = True
        self._heads_read = 0

    def send(self, legs: list, now: float) -> None:
        heads = []
        for leg in legs:
            leg.on_written(self, now)
            self.waiting.append(leg)
            heads.append(leg.head)
        if self.transport is None:
            self.unsent += heads
        else:
            self.transport.write(b"".join(heads))

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        if self.unsent:
            heads, self.unsent = self.unsent, []
            self.transport.write(b"".join(heads))

    def data_received(self, data: bytes) -> None:
        if not self.waiting:  # bytes nobody asked for: the upstream is confused
            self.abort()
            return
        inside = self._in_head
        heads = self._heads_read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.fail(cause if isinstance(cause, UpstreamError)
                      else UpstreamBadResponse(f"invalid response: {exc}"))
            return
        except httptools.HttpParserError as exc:
            self.fail(UpstreamBadResponse(f"invalid response: {exc}"))
            return
        if inside and self._in_head and heads == self._heads_read:  # all of it in one head
            self._head_span += len(data)
            if self._head_span > self.pool.max_head:
                self.fail(self._too_large())

    def _too_large(self) -> UpstreamBadResponse:
        return UpstreamBadResponse(f"response head larger than {self.pool.max_head} bytes")

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:  # a mirror's head is small: nothing to hold back
        return None

    def resume_writing(self) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.forget(self)
        waiting, self.waiting = self.waiting, deque()
        if waiting and self._close_delimited:
            leg: PipelineLeg = waiting.popleft()
            leg.on_upstream_done(False)  # its body ended with the connection
        error: UpstreamError = UpstreamReset("upstream closed a pipelined connection")
        if waiting and isinstance(exc, ssl.SSLError) and self.pool.dial is not None:
            error = UpstreamTlsError(self.pool.dial.failed(exc))
        for leg in waiting:
            leg.on_upstream_lost(error)

    # -- httptools callbacks ----------------------------------------------------------------
    # No on_status: a mirror's answer is compared without its reason phrase.
    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_lines += len(name) + len(value) + 4
        if self._head_lines > self.pool.max_head:
            raise self._too_large()
        code = basics.header_code(name)
        if code == H_CONTENT_LENGTH or code == H_TRANSFER_ENCODING:
            self._framed = True
        self._headers.append((_lower(name), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self._headers
        self._headers = []
        self._heads_read += 1
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamBadResponse("101 Switching Protocols to a mirror")
            # an interim head has no header lines to count, but its status line and blank
            # line count too: endless bare `100 Continue`s would otherwise never reach the cap
            self._head_lines += INTERIM_MIN
            if self._head_lines > self.pool.max_head:
                raise self._too_large()
            return
        self._close_delimited = not self._framed and status not in (204, 304)
        self._framed = False
        self._in_head = False  # an interim head counts towards the final one's cap, as upstream
        self._head_lines = 0
        self._head_span = 0
        leg: PipelineLeg = self.waiting[0]
        leg.on_pipelined_head(status, headers)

    def on_body(self, body: bytes) -> None:
        leg: PipelineLeg = self.waiting[0]
        leg.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return
        self._in_head = True
        leg: PipelineLeg = self.waiting.popleft()
        if self.fresh:
            self.fresh = False
            self.pool.keep_session(self)
        now = self.pool.now()
        self.pool.served(now - max(leg.sent_at, self.last_done))
        self.last_done = now
        leg.on_upstream_done(True)
        if not self.parser.should_keep_alive():
            self.abort()  # what is still waiting is retried by its legs
        elif self.pool.queue and not self.waiting:
            self.pool.wake()

    # -- ending -----------------------------------------------------------------------------
    def fail(self, exc: Exception) -> None:
        """A broken response: its leg fails, the connection goes (the rest retry)."""
        if self.waiting:
            leg: PipelineLeg = self.waiting.popleft()
            leg.on_upstream_lost(exc)
        self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class PipelinePool:
    """Connections to one upstream for pipelined mirrors (at most `max_connections`)."""

    __slots__ = ("_call_soon", "closed", "conns", "dial", "max_connections", "max_depth",
                 "max_head", "name", "no_pipelining_until", "now", "queue", "scheduled",
                 "service", "spec", "tasks", "timeout")

    def __init__(self, spec: UpstreamSpec, max_connections: int, depth: int = DEPTH,
                 tls: TlsStore | None = None) -> None:
        self.spec = spec
        self.dial = TlsDial(spec, tls or TlsStore()) if spec.tls is not None else None
        self.name = spec.name
        self.max_head = spec.max_header_bytes
        self.timeout = spec.timeout  # a leg's deadline after its write (seconds)
        self.max_connections = min(max_connections, spec.max_connections)
        self.max_depth = depth
        self.conns: list[PipelinedConnection] = []
        self.queue: list[PipelineLeg] = []
        self.scheduled = False
        self.service = START_SERVICE
        self.no_pipelining_until = 0.0
        self.closed = False
        self.tasks: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()
        self.now = loop.time
        self._call_soon = loop.call_soon

    def depth(self) -> int:
        if self.service < FAST_SERVICE and self.now() >= self.no_pipelining_until:
            return self.max_depth
        return 1

    def served(self, seconds: float) -> None:
        self.service += ALPHA * (seconds - self.service)

    def submit(self, leg: PipelineLeg) -> None:
        self.queue.append(leg)
        self.wake()

    def wake(self) -> None:
        """Room may have freed up for queued legs: dispatch at the end of this iteration."""
        if not self.scheduled:
            self.scheduled = True
            self._call_soon(self._dispatch)

    def _batches(self, legs: list) -> list:
        """Consecutive legs, `depth()` to a batch; a retried leg goes alone."""
        depth = self.depth()
        out: list[list[PipelineLeg]] = []
        batch: list[PipelineLeg] = []
        for leg in legs:
            if leg.done:
                continue
            if leg.attempt:
                out.append([leg])
                continue
            batch.append(leg)
            if len(batch) >= depth:
                out.append(batch)
                batch = []
        if batch:
            out.append(batch)
        return out

    def _dispatch(self) -> None:
        self.scheduled = False
        legs, self.queue = self.queue, []
        if self.closed:
            for leg in legs:
                leg.on_upstream_lost(UpstreamReset("mirror pool closed"))
            return
        batches = self._batches(legs)
        now = self.now()
        i, n = 0, len(batches)
        # A batch goes only to an idle connection, never behind requests already out there: a
        # server that dropped part of a pipeline would otherwise answer later requests in their
        # place, and answers would be compared with the wrong requests.
        for conn in list(self.conns):
            if i >= n:
                return
            if not conn.closed and not conn.waiting and not self._retired(conn):
                conn.send(batches[i], now)
                i += 1
        while i < n and len(self.conns) < self.max_connections:
            conn = PipelinedConnection(self)
            self.conns.append(conn)
            conn.send(batches[i], now)
            i += 1
            task = asyncio.get_running_loop().create_task(self._connect(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        for batch in batches[i:]:  # every connection busy: wait for answers (they call wake)
            self.queue += batch

    def _retired(self, conn: PipelinedConnection) -> bool:
        """TLS credentials rotated since `conn` was made: it carries no new batch."""
        creds = self.dial.creds if self.dial is not None else None
        if creds is None or conn.tls_gen == creds.generation:
            return False
        conn.abort()
        return True

    def keep_session(self, conn: PipelinedConnection) -> None:
        creds = self.dial.creds if self.dial is not None else None
        if creds is not None and conn.transport is not None:
            creds.keep_session(conn.transport)

    async def _connect(self, conn: PipelinedConnection) -> None:
        loop = asyncio.get_running_loop()
        dial = self.dial
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.spec.host, self.spec.port,
                                       **dial_kwargs(dial, self.spec.connect_timeout)),
                self.spec.connect_timeout,
            )
        except (OSError, TimeoutError, UpstreamTlsError) as exc:
            self.forget(conn)
            conn.closed = True
            waiting, conn.waiting = conn.waiting, deque()
            error = exc if isinstance(exc, UpstreamTlsError) else (
                dial_error(dial, exc) if isinstance(exc, OSError) else None) or \
                UpstreamConnectError(f"connect to {self.name} failed: "
                                     f"{getattr(exc, 'strerror', None) or exc or 'timeout'}")
            for leg in waiting:
                leg.on_upstream_lost(error)
            return
        if dial is not None:
            conn.tls_gen = dial.creds.generation if dial.creds is not None else 0
            conn.fresh = True
            dial.store.failures.ok(self.name)

    def broken(self, conn: Any) -> None:  # a PipelinedConnection (the tests pass a stand-in)
        """A pipelined request timed out: drop the connection (the requests behind it are
        retried by their legs), pipeline no more for a while."""
        if len(conn.waiting) > 1:
            self.no_pipelining_until = self.now() + COOL_OFF
        conn.abort()

    def forget(self, conn: PipelinedConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            if self.queue and not self.closed:
                self.wake()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self.tasks):
            task.cancel()


def _lower(name: bytes) -> bytes:
    """`name.lower()` (ASCII). Compiled, a C loop: no method lookup and call per header."""
    if not _COMPILED:
        return name.lower()
    n = len(name)
    p = PyBytes_AS_STRING(name)
    i = 0
    while i < n and not (65 <= p[i] <= 90):
        i += 1
    if i == n:
        return name  # already lower-case: the same object
    out = PyBytes_FromStringAndSize(cython.NULL, n)
    q = PyBytes_AS_STRING(out)
    for j in range(n):
        c = p[j]
        q[j] = c + 32 if 65 <= c <= 90 else c
    return out
