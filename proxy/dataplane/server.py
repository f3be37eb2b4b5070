"""The request path's front: an asyncio protocol per client connection, httptools' C parser.

`DataPlane` holds what a worker serves with (the current table generation, upstream pools,
limits) and its listeners; `ClientConnection` parses requests off one client socket and hands
each parsed head to an `Exchange` (proxy.dataplane.exchange), which does the rest: route, split,
forward, answer, log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import random
import socket
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httptools
import structlog

from proxy.config.spec import Config, LimitsSpec, TracingSpec
from proxy.dataplane import basics
from proxy.dataplane.basics import (
    CONTINUE,
    DEFAULT_ROUTE,
    REASONS,
    REQ_SPECIAL,
    XFP_HTTP,
    Reject,
    error_body,
    new_request_id,
)
from proxy.dataplane.exchange import Exchange, LineState
from proxy.dataplane.inventory import EndpointCounter
from proxy.dataplane.overrides import OverridePolicy
from proxy.dataplane.recorder import Recorder
from proxy.dataplane.table import RouteTable
from proxy.dataplane.tasks import cancel_tasks
from proxy.dataplane.tls import ServerCredentials, TlsStore
from proxy.dataplane.tracing import Tracer
from proxy.dataplane.upstream import UpstreamPool

# Only the Exchange class comes from proxy.dataplane.exchange: compiled, the two modules cimport
# each other's types, and that module's body may not have run yet when this one's runs (the
# names both use are in proxy.dataplane.basics).
if TYPE_CHECKING:
    from proxy.dataplane.exchange import ShadowHook

GC_GEN0_THRESHOLD = 20_000
TLS_CHECK_EVERY = 10  # sweeps (1 s) between looks at the certificate files
_XFP_HTTPS = (b"x-forwarded-proto", b"https")
_LINGER_RESET = struct.pack("ii", 1, 0)
try:  # compiled (setup.py): byte searches are memchr calls (basics.find_byte)
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False
_UNDERSCORE = ord("_")
# llhttp's errors for a version that is not 0.9, 1.x or 2.0 (those reach Exchange's 505)
_OTHER_VERSION = frozenset({"Invalid HTTP version", "Expected dot"})
_NUL = 0
_TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # a TCP socket's unacknowledged bytes

_log = structlog.get_logger("strangler.dataplane")

try:  # compiled (setup.py): DataPlane.now reads the clock in C
    import cython

    _C_CLOCK = cython.compiled
except ImportError:  # the .py file without Cython installed
    _C_CLOCK = False
if _C_CLOCK:
    from cython.cimports.posix.time import CLOCK_MONOTONIC, clock_gettime, timespec


class DataPlane:
    def __init__(
        self,
        recorder: Recorder,
        access_log: Callable[[dict], None] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.recorder = recorder
        self.access_log = access_log
        # AccessLog.exchange takes the finished exchange itself (no dict, no tuple per request);
        # any other callable gets the dict.
        self.log_exchange: Callable[[Exchange], None] | None = getattr(access_log, "exchange",
                                                                      None)
        # The AccessLog's LineState (None for any other callable): Exchange.finish appends to
        # its buffer itself in the usual case.
        line = getattr(access_log, "line", None)
        self.log_line = line if isinstance(line, LineState) else None
        self.rand = rand
        # Compiled, random.random's draws come from basics.draw (no Python call per request);
        # any other `rand` (a test's, a seeded one) is called as given
        self.c_rand = _COMPILED and rand is random.random
        self.table: RouteTable | None = None
        self.config: Config | None = None
        self._set_limits(LimitsSpec())
        self.pools: dict[str, UpstreamPool] = {}
        self.default_pool: UpstreamPool | None = None
        self.trusted: tuple[Any, ...] = ()
        self.overrides: OverridePolicy | None = None
        # Request headers `Exchange.read_head` does not forward as they came: REQ_SPECIAL plus the
        # override (pin and secret) headers of the current config, which are never forwarded.
        self.req_special: frozenset[bytes] = REQ_SPECIAL
        self.connections: set[ClientConnection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.draining = False
        self.shadow: ShadowHook | None = None
        # The traffic inventory's counters (taken by the flush loop); `inventory` is the same
        # object while `inventory.enabled` is on, else None (Exchange.finish reads it).
        self.endpoints = EndpointCounter()
        self.inventory: EndpointCounter | None = self.endpoints
        self._sweeper: asyncio.Task | None = None
        self.tls = TlsStore()  # client contexts of the upstream pools (the mirror's too)
        self.listener_tls: ServerCredentials | None = None
        self.xfp = XFP_HTTP  # X-Forwarded-Proto; https on a TLS listener
        # The time a read began (`clock`), set while a connection's data_received runs, else 0
        self.tick = 0.0
        if not _C_CLOCK:  # the .py files: the clock itself, not a method around it
            setattr(self, "now", time.monotonic)  # noqa: B010 (compiled: `now` is a C method)
            setattr(self, "clock", time.monotonic)  # noqa: B010
        self.tracer: Tracer | None = None  # `tracing:`; None: no span work at all
        # its sample_ratio and draw, read by every request without traceparent (C fields)
        self.trace_ratio = 0.0
        self.trace_rand: Any = None
        self.trace_c_rand = False  # the tracer's draw is random.random's: basics.draw instead
        self._exporter: Any = None  # proxy.dataplane.otlp.OtlpExporter of `tracer`

    def now(self) -> float:
        """The data plane's clock: time.monotonic's (compiled: C's clock_gettime on the same
        clock, CLOCK_MONOTONIC, without a Python call; a request reads it about five times)."""
        if _C_CLOCK:
            ts = cython.declare(timespec)
            clock_gettime(CLOCK_MONOTONIC, cython.address(ts))
            return ts.tv_sec + ts.tv_nsec * 1e-9
        return time.monotonic()

    def clock(self) -> float:
        """`now`, as read when the current read began (`tick`) while a connection's
        data_received runs: the request path's five or so time stamps of one read cost one
        clock read (issue 29), and the requests of one read get its time. Outside a read (a
        timer, a drain callback), the clock itself."""
        t = self.tick
        return t if t != 0.0 else self.now()

    # -- configuration -------------------------------------------------------------------
    def _set_limits(self, limits: LimitsSpec) -> None:
        """`limits`, and the ones every request reads as plain numbers (compiled: C fields)."""
        self.limits = limits
        self.idle_timeout = max(limits.header_timeout, 60.0)  # keep-alive idle
        self.header_timeout = limits.header_timeout
        self.max_request_line = limits.max_request_line
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers

    def install(self, table: RouteTable) -> None:
        """Swap in a new table generation; in-flight exchanges keep the routes they matched."""
        config = table.config
        old = self.pools
        pools: dict[str, UpstreamPool] = {}
        for name, spec in config.upstreams.items():
            pool = old.get(name)
            pools[name] = pool if pool is not None and pool.spec == spec else UpstreamPool(
                spec, self.tls)
        for name, pool in old.items():
            if pools.get(name) is not pool:
                pool.close()
        self.tls.keep_only({(n, s.tls) for n, s in config.upstreams.items() if s.tls})
        self.tls.refresh()  # a reload re-reads the certificate files
        if self.listener_tls is not None and config.tls is not None:
            try:
                self.listener_tls.update(config.tls)
            except Exception as exc:  # validated; only a race with a rotation gets here
                _log.error("tls files cannot be loaded; the listener keeps its certificate",
                           error=str(exc))
        elif self.servers and (config.tls is None) != (self.listener_tls is None):
            _log.warning("tls on the proxy listener was turned on or off: that takes a restart",
                         listen=str(config.listen))
        self.pools = pools
        self.default_pool = pools[config.default_upstream]
        self._set_limits(config.limits)
        self.trusted = config.trusted_proxies
        policy = OverridePolicy(config)
        if policy.missing_secret:
            _log.warning("overrides.secret_env is not set: the secret header trusts nobody",
                        secret_env=policy.missing_secret)
        self.overrides = policy if policy.strip or policy.nets else None
        self.req_special = REQ_SPECIAL | policy.strip
        self.endpoints.configure(config.inventory)
        self.inventory = self.endpoints if config.inventory.enabled else None
        self._install_tracing(config.tracing)
        self.config = config
        self.table = table  # one assignment: the new generation is live

    def _install_tracing(self, spec: TracingSpec | None) -> None:
        """A tracer (and its exporter) for `spec`; kept when a reload left it unchanged."""
        old = self.tracer
        if old is not None and old.spec == spec:
            return
        exporter, self._exporter = self._exporter, None
        self.use_tracer(None)
        if exporter is not None:
            self.spawn(exporter.stop())  # what the old one holds is still sent
        if spec is None:
            return
        from proxy.dataplane.otlp import OtlpExporter

        self._exporter = OtlpExporter(spec, self.recorder.trace_spans)
        self._exporter.start()
        self.use_tracer(Tracer(spec, self._exporter.add, rand=self.rand))
        _log.info("tracing on", endpoint=spec.otlp_endpoint, sample_ratio=spec.sample_ratio)

    def use_tracer(self, tracer: Tracer | None) -> None:
        self.tracer = tracer
        self.trace_ratio = tracer.ratio if tracer is not None else 0.0
        self.trace_rand = tracer.rand if tracer is not None else None
        self.trace_c_rand = _COMPILED and tracer is not None and tracer.rand is random.random

    # -- lifetime ------------------------------------------------------------------------
    async def listen(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        tls: dict[str, Any] = {}
        if config is not None and config.tls is not None:
            if self.listener_tls is None:
                self.listener_tls = ServerCredentials(config.tls, "listener")
            self.xfp = _XFP_HTTPS
            # A client that never finishes its handshake gets the time a head gets.
            tls = {"ssl": self.listener_tls.listener,
                   "ssl_handshake_timeout": self.limits.header_timeout}
        server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_port=reuse_port, backlog=2048,
            **tls)
        self.servers.append(server)
        if not self.servers[1:]:
            # Startup objects (config, tables, modules) move out of the collector's sight, and
            # young collections run less often: each request allocates a few dozen objects.
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def bound_port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _sweep(self) -> None:
        """One timer for every connection: header, body-idle, keep-alive and upstream timeouts;
        and, once a second, whether certificate files changed (rotation without a restart)."""
        ticks = 0
        while True:
            await asyncio.sleep(0.1)
            now = self.now()
            for conn in list(self.connections):
                conn.check_deadlines(now)
            ticks += 1
            if ticks >= TLS_CHECK_EVERY:
                ticks = 0
                self.refresh_tls()

    def refresh_tls(self) -> None:
        """Certificate files changed on disk: new connections use them (never raises)."""
        try:
            self.tls.refresh()
            if self.listener_tls is not None:
                self.listener_tls.refresh()
        except Exception:
            _log.exception("checking the TLS files failed")

    async def drain(self, timeout: float) -> int:
        """Stop accepting, finish in-flight exchanges up to `timeout`; returns how many were cut."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.now() + timeout
        while self.connections and self.now() < deadline:
            await asyncio.sleep(0.05)
        cut = len(self.connections)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await cancel_tasks(self._sweeper, self.tasks)
        if self._exporter is not None:
            await self._exporter.stop()  # queued spans get 2 s
        for pool in self.pools.values():
            pool.close()
        return cut


def unacked(transport: asyncio.BaseTransport) -> int:
    """Bytes written to a TCP socket that its peer has not acknowledged yet (0 where the
    platform does not tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None or _TIOCOUTQ is None:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), _TIOCOUTQ, bytes(4)), sys.byteorder)
    except (OSError, ValueError):
        return 0


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Close with a reset (SO_LINGER 0): the kernel drops what it still holds for a peer that
    does not read at once, instead of keeping it in FIN_WAIT1 for minutes (nginx's
    `reset_timedout_connection`)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class ClientConnection:
    """An asyncio protocol for one client connection (duck-typed, not an `asyncio.Protocol`
    subclass, so that it can be compiled to an extension type: server.pxd)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.parser = httptools.HttpRequestParser(self)
        # The parser's methods each request calls, bound once (as the transport's below)
        self.p_feed = self.parser.feed_data
        self.p_method = self.parser.get_method
        self.p_keep_alive = self.parser.should_keep_alive
        self.transport: asyncio.Transport | None = None
        # The transport's methods the request path calls, bound once (connection_made): compiled
        # code looks a method up by name at each call (Python's bytecode caches it; Cython's
        # calls do not), which costs about as much as the call itself
        self.t_write: Any = None
        self.t_is_closing: Any = None
        self.t_resume_reading: Any = None
        self.peer = ""
        self.peer_b = b""
        self.xff: tuple[bytes, bytes] = (b"x-forwarded-for", b"")
        self.peer_trusted = False
        self.override_peer: tuple[Any, bool] | None = None  # (policy, peer in its cidrs)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hbytes = 0
        # The read being parsed, and `_fresh` until a message ends in it: a message that
        # begins while it holds is at the read's first byte, and `head_start` is that read
        # (Exchange._request_line finds the request line's version there, not by a call).
        self._data = b""
        self._fresh = False
        self.head_start: bytes | None = None
        # The last Host value found valid on this connection (Exchange._headers): a client
        # sends the same one on every request, and one comparison replaces a cache lookup.
        self.host_ok: bytes | None = None
        # The access line's quoted client and user agent for the agent last seen here
        # (Exchange.access_line): one comparison instead of a cache lookup per line.
        self.log_agent: bytes | None = None
        self.log_who: bytes | None = None
        # and its last route/backend/upstream/method part, and what it was made of
        self.log_names: bytes | None = None
        self.log_route: str | None = None
        self.log_backend: str | None = None
        self.log_upstream: str | None = None
        self.log_method: bytes | None = None
        # Bytes of the header line httptools holds unfinished (-1: the head began in the
        # current read), so that a line without end is refused at the limit, not buffered.
        self.line_run = 0
        self.cur: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        # A refusal of a request pipelined behind the one in flight, answered in its turn:
        # (status, code, message, request id, route name).
        self.refusal: tuple[int, str, str, str | None, str, tuple] | None = None
        self.closing = False
        self.upgraded = False  # parser stopped at an Upgrade; close after this exchange
        self.tunnel: Any = None
        # deadlines (monotonic seconds); 0 = none
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self.in_headers = False
        self.write_paused = False
        self.write_paused_at = 0.0  # when the client stopped keeping up with the response
        # send_timeout, while writing is paused: the bytes still owed to the client at the last
        # sweep (-1: not looked at since the pause), and when the client last took some.
        self.send_seen = -1
        self.send_mark = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.t_write = transport.write  # type: ignore[attr-defined]
        self.t_is_closing = transport.is_closing
        self.t_resume_reading = transport.resume_reading  # type: ignore[attr-defined]
        plane = self.plane
        plane.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.peer_b = self.peer.encode()
        self.xff = (b"x-forwarded-for", self.peer_b)
        if plane.trusted and self.peer:
            try:
                ip = ipaddress.ip_address(self.peer)
                self.peer_trusted = any(ip in net for net in plane.trusted)
            except ValueError:
                self.peer_trusted = False
        self.idle_deadline = plane.now() + plane.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self.closing and (self.cur is None or self.refusal is not None):
            return
        self._data = data
        self._fresh = True
        plane = self.plane
        plane.tick = plane.now()
        try:
            self.p_feed(data)
            self._data = b""
            if self.in_headers:
                self._head_in_progress(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data, exc)
        except Reject as exc:
            self.reject(exc.status, exc.code, exc.message)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Reject):
                self.reject(cause.status, cause.code, cause.message)
            else:
                self.reject(400, "bad_request", "malformed request")
        except httptools.HttpParserInvalidMethodError:
            self.reject(400, "bad_request", "invalid method")
        except httptools.HttpParserInvalidURLError:
            self.reject(400, "bad_request", "invalid request target")
        except httptools.HttpParserError as exc:
            msg = str(exc)
            if "Content-Length" in msg and "Transfer-Encoding" in msg:
                self.reject(400, "ambiguous_framing", "Content-Length with Transfer-Encoding")
            elif msg in _OTHER_VERSION:  # llhttp knows 0.9, 1.x and 2.0 only (HTTP/1.2, /3.0)
                self.reject(505, "http_version", "only HTTP/1.0 and HTTP/1.1 are supported")
            else:
                self.reject(400, "bad_request", f"malformed request: {msg}")
        finally:
            plane.tick = 0.0

    def eof_received(self) -> bool | None:
        # Half-close from the client: keep sending the response in flight, then close.
        if self.cur is None:
            return None
        self.closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.plane.connections.discard(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.tunnel_client_gone()
        ex = self.cur
        self.cur = None
        if ex is not None:
            ex.client_gone()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.plane.now()
        self.send_seen = -1  # the sweeper watches the client's progress from here on
        ex = self.cur
        if ex is not None and ex.up is not None and ex.up.transport is not None:
            ex.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.cur
        if ex is not None:
            # The time the answer waited for this client is not the backend's latency.
            ex.client_wait += self.plane.now() - max(self.write_paused_at, ex.t0)
            if ex.up is not None and ex.up.transport is not None:
                ex.up.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.head_start = self._data if self._fresh else None
        self._fresh = False
        self._url = b""
        self._headers = []
        self._hbytes = 0
        self.line_run = -1
        self.in_headers = True
        self.idle_deadline = 0.0
        self.header_deadline = self.plane.clock() + self.plane.header_timeout

    def on_url(self, url: bytes) -> None:
        have = self._url  # mostly one piece: no concatenation
        self._url = url = have + url if have else url
        if len(url) > self.plane.max_request_line:
            raise Reject(414, "uri_too_long", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        plane = self.plane
        if self._hbytes > plane.max_header_bytes or len(self._headers) >= plane.max_headers:
            raise Reject(431, "headers_too_large", "request headers too large")
        # Byte values, not b"_": `bytes in bytes` tries the needle as an integer first and
        # clears the TypeError, ten times the cost of an integer's memchr (CPython 3.11-3.13).
        if (basics.find_byte(name, _UNDERSCORE) >= 0) if _COMPILED else _UNDERSCORE in name:
            raise Reject(400, "bad_header", "underscore in a header name")
        if (basics.find_byte(value, _NUL) >= 0) if _COMPILED else _NUL in value:
            raise Reject(400, "bad_header", "NUL in a header value")
        self._headers.append((name, value))

    def _head_in_progress(self, data: bytes) -> None:
        """A read ended inside a request head: count the unfinished line httptools keeps (it
        reports a header only once its line is complete), and refuse the head once it passes
        `max_request_line + max_header_bytes`. A read in which a head begins after the end of
        the previous request is not counted (its bytes are not all the head's), so at most one
        read more is held; a head that begins the read is counted from its first byte."""
        run = self.line_run
        if run < 0 and self.head_start is data:
            run = 0
        if run >= 0:
            # A line that ends this read is not reported yet either (llhttp waits for the
            # next line's first byte): only a newline before the last byte ends what is counted.
            nl = data.rfind(b"\n", 0, len(data) - 1)
            run = run + len(data) if nl < 0 else len(data) - nl - 1
            plane = self.plane
            if self._hbytes + run > plane.max_request_line + plane.max_header_bytes:
                raise Reject(431, "headers_too_large", "request headers too large")
            self.line_run = run
        else:
            self.line_run = 0

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.header_deadline = 0.0
        ex = Exchange()
        method = self.p_method()  # a new bytes object each time
        if method == b"GET":
            method = b"GET"  # one object for the usual method: hashed once, then by identity
        ex.read_head(self, method, self._url, self._headers)
        self.parsing = ex
        if self.cur is None:
            self.cur = ex
            ex.dispatch()
        else:
            self.queue.append(ex)
            if self.transport is not None:
                self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.on_client_body(body)

    def on_message_complete(self) -> None:
        self._fresh = False  # a next message in this read does not begin at its first byte
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.on_client_done()

    # -- exchange bookkeeping ------------------------------------------------------------
    def exchange_finished(self, ex: Exchange, now: float) -> None:
        if self.cur is not ex:
            return
        self.cur = None
        t = self.transport
        if t is None or self.t_is_closing():
            return
        if not ex.keep_alive or self.upgraded or self.plane.draining:
            if self.parsing is None or self.parsing is ex:
                t.close()
                return
        if self.queue:  # pipelined requests, in order (also after the client's half-close)
            nxt = self.queue.popleft()
            self.cur = nxt
            if not self.queue and self.refusal is None:
                t.resume_reading()
                if self.in_headers:  # a head held in the socket: its clock starts now
                    self.header_deadline = now + self.plane.header_timeout
            if nxt.expect_continue:
                t.write(CONTINUE)  # its turn has come
            if nxt.last_body_at:
                nxt.last_body_at = now  # its body was held back while it waited its turn
            nxt.dispatch()
            return
        if self.refusal is not None:
            self._refuse(*self.refusal)
            return
        if self.closing and (self.parsing is None or self.parsing is ex):
            t.close()
            return
        self.t_resume_reading()  # if paused by this exchange's back-pressure (else a no-op)
        self.idle_deadline = now + self.plane.idle_timeout

    def last_answer(self) -> bool:
        """On a closing connection: whether the answer in flight is the last one (no pipelined
        request or refusal is owed after it)."""
        return not self.queue and self.refusal is None

    def reject(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        """Refuse the request being read (or the one in flight, whose body stalled) and close
        the connection. A request pipelined behind the one in flight is refused in its own
        turn: the requests before it are answered first (`exchange_finished`)."""
        t = self.transport
        self.closing = True
        if t is None or t.is_closing() or self.refusal is not None:
            return
        cur = self.cur
        refused = self.parsing  # the exchange whose body was being read, if any
        route = refused.route.name if refused is not None and refused.route else DEFAULT_ROUTE
        if refused is not None:
            if request_id is None:
                request_id = refused.request_id
            what = (refused.method, refused.path, refused.user_agent)
        else:
            if request_id is None:  # the client's own id, if the head got that far
                request_id = self._client_request_id()
            what = self._head_so_far()
        if cur is not None and refused is not cur:
            if refused is not None and refused in self.queue:  # a queued body: never sent
                self.queue.remove(refused)
                self.parsing = None
                refused.abandon()
            self.refusal = (status, code, message, request_id, route, what)
            self.header_deadline = 0.0
            t.pause_reading()
            return
        if cur is not None and cur.response_started:
            t.close()
            return
        self._refuse(status, code, message, request_id, route, what)
        if cur is not None:
            cur.abandon()

    def _refuse(self, status: int, code: str, message: str, request_id: str | None,
                route: str, what: tuple = (b"", b"", None)) -> None:
        """Answer a refusal and close: counted, and logged (backend `proxy`) as any request."""
        t = self.transport
        if t is None or t.is_closing():
            return
        rid = request_id or new_request_id()
        body = error_body(status, code, message, rid)
        t.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\nconnection: close\r\n\r\n%s"
            % (status, REASONS.get(status, b"Error"), len(body), rid.encode(), body)
        )
        t.close()
        plane = self.plane
        plane.recorder.request(route, 0, "proxy", status, 0.0)
        log = plane.access_log
        if log is not None and hasattr(log, "request"):
            method, path, agent = what
            log.request(rid, route, "proxy", "", method, path, status, 0.0, False,
                        client=self.peer, user_agent=agent)

    def _client_request_id(self) -> str | None:
        """The X-Request-Id of the head being read, when it got that far and is well-formed
        (as `Exchange` takes it): a refusal answers with the client's id."""
        for name, value in self._headers:
            if len(name) == 12 and name.lower() == b"x-request-id":
                return value.decode() if basics.VALID_REQUEST_ID(value) is not None else None
        return None

    def _head_so_far(self) -> tuple[bytes, bytes, bytes | None]:
        """(method, path, user agent) of a head refused while being read, as far as it was
        read: the path without its query, cut at 256 bytes (a 414's target is not logged
        whole)."""
        try:
            method = self.p_method() or b""
        except Exception:  # httptools: no request line read yet
            method = b""
        url = self._url
        q = url.find(b"?")
        path = (url if q < 0 else url[:q])[:256]
        agent = None
        for name, value in self._headers:
            if len(name) == 10 and name.lower() == b"user-agent":
                agent = value
        return method, path, agent

    def check_deadlines(self, now: float) -> None:
        if self.write_paused and self._send_stalled(now):
            return
        # While a queued request waits its turn, reading is paused: a head begun meanwhile
        # is held in the socket by us, not by the client (its clock restarts on resume).
        if self.header_deadline and now > self.header_deadline and self.in_headers \
                and not self.queue:
            self.reject(408, "request_timeout", "request headers not received in time")
            return
        if self.idle_deadline and now > self.idle_deadline and self.cur is None:
            if self.transport is not None:
                self.transport.close()
            return
        ex = self.cur
        if ex is not None:
            ex.check_deadlines(now)

    def _send_stalled(self, now: float) -> bool:
        """limits.send_timeout, looked at by the sweeper while writing is paused (nothing per
        request, no timer per pause): the client must keep taking bytes. Progress is what is
        still owed to it shrinking: the transport's buffer plus what the kernel holds unacked,
        so a reader taking a little at a time counts even while the kernel's send buffer is too
        full for the transport to write. Returns True when the connection was cut."""
        t = self.transport
        if t is None:
            return False
        owed = t.get_write_buffer_size() + unacked(t)
        seen = self.send_seen
        self.send_seen = owed
        if seen < 0:
            self.send_mark = self.write_paused_at
        elif owed < seen:
            self.send_mark = now
        elif now - self.send_mark > self.plane.limits.send_timeout:
            self._send_timed_out(t, owed)
            return True
        return False

    def _send_timed_out(self, t: asyncio.Transport, owed: int) -> None:
        """The client took nothing for send_timeout: its connection is aborted, the upstream
        connection of the answer in flight closed (never pooled mid-answer), that request
        counted as a 408 with backend `proxy` and logged (Exchange.client_gone)."""
        ex = self.cur
        route = ex.route if ex is not None else None
        _log.warning("client send timeout: the client took nothing of its answer, its "
                     "connection is cut", client=self.peer,
                     request_id=ex.request_id if ex is not None else None,
                     route=route.name if route is not None else None, owed_bytes=owed,
                     send_timeout=self.plane.limits.send_timeout)
        reset_on_close(t)
        t.abort()  # first: the exchange's end must not go on to a pipelined request
        if ex is not None:
            ex.client_gone(408)

    def drain(self) -> None:
        self.closing = True
        if self.cur is None and not self.in_headers and self.transport is not None:
            self.transport.close()

    def _on_upgrade(self, data: bytes, exc: httptools.HttpParserUpgrade) -> None:
        self.upgraded = True
        ex = self.parsing or self.cur
        offset = exc.args[0] if exc.args else len(data)
        rest = data[offset:]
        if ex is not None and ex.is_tunnel and not ex.done:
            # From here on the client's bytes are WebSocket frames for the upstream, not HTTP.
            self.tunnel = ex
            if rest:
                ex.tunnel_from_client(rest)
        # A non-tunnelled upgrade request is answered as a plain request; the connection closes
        # after it because the parser stops at the upgrade.
        if ex is not None and not ex.client_done:
            ex.on_client_done()
