"""Keep-alive connection pools to upstreams, on asyncio protocols with httptools' C parser.

An `UpstreamConnection` carries one exchange at a time (no pipelining towards upstreams) and
reports the response to its current `sink` (the data plane's exchange) through plain method
calls: `on_upstream_head`, `on_upstream_body`, `on_upstream_done`, `on_upstream_lost`.

An https upstream's connections are TLS (`proxy.dataplane.tls`): the handshake is part of the
connect and bounded by `connect_timeout`; a pooled connection made with credentials that have
since been rotated is not used again once its exchange ends.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any, Protocol

import httptools

from proxy.config.spec import UpstreamSpec
from proxy.dataplane import basics
from proxy.dataplane.headers import (
    HEADER_INJECTION,
    HOP_BY_HOP,
    NEVER_DROPPED_BY_CONNECTION,
    connection_tokens,
    parser_refuses_injection,
)
from proxy.dataplane.tls import ClientCredentials, TlsStore
from proxy.dataplane.upstream_errors import (  # noqa: F401 - re-exported
    UpstreamBadResponse,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsError,
)

try:  # compiled (setup.py): basics.digits_value is a C loop
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False
# The header codes read for framing: 1 to 3 (basics.header_code); the others are hop-by-hop or
# x-request-id
H_CONTENT_LENGTH = basics.H_CONTENT_LENGTH
H_TRANSFER_ENCODING = basics.H_TRANSFER_ENCODING
H_CONNECTION = basics.H_CONNECTION
H_REQUEST_ID = basics.H_REQUEST_ID
_FRAMING = 3
_HEADER_CODES_GET = basics.HEADER_CODES.get
assert (H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_CONNECTION) == (1, 2, 3)
# CR, LF or NUL in an upstream header value is refused (502) by httptools' own parser; only
# where it lets them through are values searched here (see parser_refuses_injection).
_INJECTION = None if parser_refuses_injection() else HEADER_INJECTION


# The last Connection value read, and what it names to drop: upstreams send the same one (most
# often "keep-alive") on every response, and a bytes comparison is cheaper than hashing it anew.
_CONN_VALUE = b""
_CONN_DROPS: frozenset[bytes] | None = None
_CONN_KEEP = HOP_BY_HOP | NEVER_DROPPED_BY_CONNECTION  # never to drop again


def connection_drops(value: bytes) -> frozenset[bytes] | None:
    """The names a response's Connection header value lists that are not dropped anyway (not
    hop-by-hop) and may be (not framing or x-request-id): lower-cased, or None when there are
    none."""
    global _CONN_VALUE, _CONN_DROPS
    if value == _CONN_VALUE:
        return _CONN_DROPS
    drops = connection_tokens(value) - _CONN_KEEP
    _CONN_VALUE = value
    _CONN_DROPS = drops = drops if drops else None
    return drops


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """No Nagle delay on a request or response written in pieces (uvloop sets it already)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _HeadDone(Exception):
    """Raised from the parser callback to end a HEAD response at its head."""


class ResponseSink(Protocol):
    wbuf: list[bytes] | None  # response bytes held until the end of the current read

    def on_upstream_head(
        self, status: int, reason: bytes, lines: list, special: list,
        chunked: bool, length: int | None, named: frozenset[bytes] | None,
    ) -> None:
        """The head, in two parts. `lines`: the headers forwarded as they came (those
        `basics.header_code` gives 0, and x-request-id), in order, as the pieces of each header
        line: name, b": ", value, b"\r\n". `special`: (code, name, value) of the others
        (framing and hop-by-hop), and of x-request-id (also in `lines`). `named`: what a
        Connection header names besides the hop-by-hop headers and those it may not drop
        (lower-cased; dropped too), or None."""
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_done(self, reusable: bool) -> None: ...
    def on_upstream_lost(self, exc: UpstreamError) -> None: ...
    def flush_out(self) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection:
    """An asyncio protocol for one upstream connection (duck-typed, not an `asyncio.Protocol`
    subclass, so that it can be compiled to an extension type: upstream.pxd)."""

    __slots__ = (
        "_chunked",
        "_head_bytes",
        "_head_keep_alive",
        "_in_body",
        "_length",
        "_lines",
        "_reason",
        "_special",
        "_status",
        "ex",
        "fresh",
        "got_bytes",
        "head_only",
        "p_feed",
        "p_keep_alive",
        "p_status",
        "parser",
        "pool",
        "reused",
        "sink",
        "t_is_closing",
        "t_write",
        "tls_gen",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._bind_parser()
        self.sink: Any = None
        # The sink when it is the data plane's Exchange (set by Exchange.attach; None for a
        # mirror's leg): compiled, the calls below are C calls to it rather than method lookups.
        self.ex: Any = None
        self.head_only = False
        self.got_bytes = False
        self.reused = False
        # The head being read (ResponseSink.on_upstream_head): header lines to forward, and the
        # headers the data plane acts on
        self._lines: list[bytes] = []
        self._special: list[tuple[int, bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._chunked = False
        self._length: int | None = None
        self._in_body = False
        self._head_bytes = 0  # bytes read while the response head is unfinished
        self._head_keep_alive = False
        self.tunnel: Any = None  # the exchange after a 101: bytes pass through unparsed
        # The transport's methods the request path calls, bound once (connection_made): compiled
        # code looks a method up by name at each call (Python's bytecode caches it; Cython's
        # calls do not), which costs about as much as the call itself
        self.t_write: Any = None
        self.t_is_closing: Any = None
        self.tls_gen = 0  # the generation of the TLS credentials it was made with
        self.fresh = False  # TLS: its session is not yet offered to the next connections

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.t_write = transport.write  # type: ignore[attr-defined]
        self.t_is_closing = transport.is_closing
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.tunnel is not None:
            self.tunnel.tunnel_from_upstream(data)
            return
        if self.sink is None:  # bytes while idle: the upstream is confused; drop the connection
            self.transport.close()  # type: ignore[union-attr]
            return
        sink = self.sink
        ex = self.ex  # read before parsing: the response's end clears it
        try:
            self.p_feed(data)
        except httptools.HttpParserUpgrade as exc:
            sink = self.sink
            if sink is not None and sink.is_tunnel and self.parser.get_status_code() == 101:
                self.tunnel = sink
                rest = data[exc.args[0]:] if exc.args else b""
                if rest:
                    sink.tunnel_from_upstream(rest)
                return
            self.sink = None
            self.transport.close()  # type: ignore[union-attr]
            if sink is not None:
                sink.on_upstream_lost(UpstreamBadResponse("unexpected protocol switch"))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadDone):
                # A HEAD response ends with its head whatever its Content-Length says; llhttp
                # cannot be told, so parsing was stopped there. A fresh parser reads the next one.
                self.parser = httptools.HttpResponseParser(self)
                self._bind_parser()
                self._in_body = False
                sink, self.sink = self.sink, None
                if sink is not None:
                    sink.on_upstream_done(self._head_keep_alive)
                return
            sink, self.sink = self.sink, None
            self.transport.close()  # type: ignore[union-attr]
            if sink is not None:
                sink.on_upstream_lost(UpstreamBadResponse(f"invalid response: {exc}"))
        else:
            # What this read produced for the client (head and body) leaves in one write.
            if ex is sink:
                if ex.wbuf is not None:
                    ex.flush_out()
            elif sink.wbuf is not None:
                sink.flush_out()
            if self.sink is not None and not self._in_body:
                self._head_in_progress(len(data))

    def _bind_parser(self) -> None:
        """The parser's methods each response calls, bound once per parser (as the transport's
        are per connection)."""
        parser = self.parser
        self.p_feed = parser.feed_data
        self.p_status = parser.get_status_code
        self.p_keep_alive = parser.should_keep_alive

    def _head_in_progress(self, n: int) -> None:
        """A read ended inside the response head (httptools keeps an unfinished header line
        whole): past the upstream's `max_header_bytes` the response is refused (502)."""
        self._head_bytes += n
        if self._head_bytes > self.pool.spec.max_header_bytes:
            sink, self.sink = self.sink, None
            self.transport.close()  # type: ignore[union-attr]
            sink.on_upstream_lost(UpstreamBadResponse(
                f"response head larger than {self.pool.spec.max_header_bytes} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            self.sink = None
            tunnel.tunnel_upstream_gone()
            return
        sink, self.sink = self.sink, None
        if sink is not None:
            # A close-delimited body ends with the connection: that is a complete response.
            if self._awaiting_close_delimited():
                sink.on_upstream_done(False)
            elif isinstance(exc, ssl.SSLError):
                sink.on_upstream_lost(UpstreamTlsError(self.pool.tls_failed(exc)))
            else:
                sink.on_upstream_lost(UpstreamReset("upstream closed the connection"))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # -- httptools callbacks ---------------------------------------------------------------
    # No on_message_begin (one callback less per response): `on_headers_complete` starts the
    # next message's header list and reason.

    def on_status(self, status: bytes) -> None:
        reason = self._reason  # mostly one piece: no concatenation
        self._reason = reason + status if reason else status

    def on_header(self, name: bytes, value: bytes) -> None:
        # compiled, a C call (no lower-cased copy, no hash); pure, header_code's own form
        code: cython.Py_ssize_t
        code = basics.header_code(name) if _COMPILED else _HEADER_CODES_GET(name.lower(), 0)
        if code == 0 or code == H_REQUEST_ID:  # forwarded as it came, in its place
            lines = self._lines  # the header line's pieces: joined once, with the whole head
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
            if code == 0:
                return
        self._special.append((code, name, value))

    def on_headers_complete(self) -> None:
        self._status = status = self.p_status()
        lines, special, reason = self._lines, self._special, self._reason
        self._lines = []  # handed over: the exchange writes the head from it
        self._special = []
        self._reason = b""
        if 100 <= status < 200 and status != 101:
            return  # interim responses are not forwarded
        if status == 101 and (self.sink is None or not self.sink.is_tunnel):
            raise UpstreamBadResponse("101 Switching Protocols to a request that did not upgrade")
        chunked = False
        length: int | None = None
        named: frozenset[bytes] | None = None
        if _INJECTION is not None:
            for value in lines[2::4] + [v for _, _, v in special]:
                if _INJECTION(value) is not None:
                    raise UpstreamBadResponse("control character in an upstream header")
        code: cython.Py_ssize_t
        for code, _, value in special:
            if code > _FRAMING:
                continue
            if code == H_TRANSFER_ENCODING:
                if chunked or value.strip().lower() != b"chunked":
                    raise UpstreamBadResponse("unsupported Transfer-Encoding from upstream")
                chunked = True
            elif code == H_CONTENT_LENGTH:
                n = basics.digits_value(value) if _COMPILED else -1  # C: no int() call
                if n < 0:
                    if not value.isdigit():
                        raise UpstreamBadResponse("invalid Content-Length from upstream")
                    n = int(value)
                if length is not None and length != n:
                    raise UpstreamBadResponse("conflicting Content-Length from upstream")
                length = n
            else:
                drops = connection_drops(value)
                if drops is not None:
                    named = drops if named is None else named | drops
        if chunked and length is not None:
            raise UpstreamBadResponse("Content-Length with Transfer-Encoding from upstream")
        self._chunked = chunked
        self._length = length
        self._in_body = True
        sink = self.sink
        if sink is None:
            return
        ex = self.ex
        if ex is sink:
            ex.on_upstream_head(status, reason, lines, special, chunked, length, named)
        else:
            sink.on_upstream_head(status, reason, lines, special, chunked, length, named)
        if self.head_only and status not in (204, 304):
            # llhttp would wait for a body that never comes after a HEAD; stop it here.
            self._head_keep_alive = self.parser.get_http_version() == "1.1" and not any(
                code == H_CONNECTION and b"close" in v.lower() for code, _, v in special
            )
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            ex = self.ex
            if ex is sink:
                ex.on_upstream_body(body)
            else:
                sink.on_upstream_body(body)

    def on_message_complete(self) -> None:
        status = self._status  # this message's, from on_headers_complete
        if 100 <= status < 200 and (status != 101 or (self.sink is not None
                                                       and self.sink.is_tunnel)):
            return  # interim response, or a 101 that turns this connection into a tunnel
        self._in_body = False
        sink, self.sink = self.sink, None
        ex, self.ex = self.ex, None
        if sink is not None:
            if ex is sink:
                ex.on_upstream_done(self.p_keep_alive())
            else:
                sink.on_upstream_done(self.p_keep_alive())

    # -- helpers ---------------------------------------------------------------------------
    def _awaiting_close_delimited(self) -> bool:
        return self._in_body and not self._chunked and self._length is None

    def send(self, sink: Any, head: bytes, head_only: bool) -> None:
        self.sink = sink
        self.ex = None
        self.head_only = head_only
        self.got_bytes = False
        # Fresh since the last head (on_headers_complete took them): new only if one was cut off
        if self._lines:
            self._lines = []
        if self._special:
            self._special = []
        self._reason = b""
        self._length = None
        self._chunked = False
        self._in_body = False
        self._head_bytes = 0
        self.t_write(head)


def host_header_value(spec: UpstreamSpec) -> bytes | None:
    """The Host sent to `spec`'s upstream instead of the client's (None: the client's)."""
    if spec.host_header == "client":
        return None
    if spec.host_header != "upstream":
        return spec.host_header.encode()
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    default = 443 if spec.scheme == "https" else 80
    return (host if spec.port == default else f"{host}:{spec.port}").encode()


class TlsDial:
    """How a pool opens TLS connections: the credentials (None until they load), SNI, and the
    store that logs failures."""

    __slots__ = ("creds", "name", "server_hostname", "spec", "store")

    def __init__(self, spec: UpstreamSpec, store: TlsStore) -> None:
        assert spec.tls is not None
        self.spec = spec
        self.name = spec.name
        self.store = store
        self.server_hostname = spec.tls.server_name or spec.host
        self.creds: ClientCredentials | None = store.client(spec.name, spec.tls)

    def context(self) -> ssl.SSLContext:
        """The current context (UpstreamTlsError when the files could not be loaded)."""
        creds = self.creds
        if creds is None:
            creds = self.creds = self.store.client(self.name, self.spec.tls)  # type: ignore
            if creds is None:
                raise UpstreamTlsError(f"the TLS files of {self.name} cannot be loaded (see the "
                                       "log)")
        return creds.ctx

    def failed(self, exc: BaseException) -> str:
        return f"TLS to {self.name}: {self.store.failures.failed(self.name, exc)}"


def dial_kwargs(dial: TlsDial | None, timeout: float) -> dict[str, Any]:
    """create_connection's TLS arguments (none for plain http)."""
    if dial is None:
        return {}
    return {"ssl": dial.context(), "server_hostname": dial.server_hostname,
            "ssl_handshake_timeout": timeout}


def dial_error(dial: TlsDial | None, exc: OSError) -> UpstreamError | None:
    """A connect that failed in the TLS handshake, as the error to report (None: not TLS)."""
    if dial is None:
        return None
    if isinstance(exc, ssl.SSLError | ConnectionResetError):
        return UpstreamTlsError(dial.failed(exc))
    return None


class UpstreamPool:
    """Pooled keep-alive connections to one upstream, capped at `max_connections`."""

    def __init__(self, spec: UpstreamSpec, tls: TlsStore | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.timeout = spec.timeout  # the request path reads it as a C double (upstream.pxd)
        self.base_path = spec.base_path.encode()  # prefixed to every forwarded path
        self.host_header = host_header_value(spec)
        self.idle: list[UpstreamConnection] = []
        self.total = 0
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.closed = False
        self.live: set[UpstreamConnection] = set()
        self.dial = TlsDial(spec, tls or TlsStore()) if spec.tls is not None else None

    def acquire_nowait(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.t_is_closing():
                if self.dial is not None and self._retired(conn):
                    continue
                conn.reused = True
                return conn
        return None

    def _retired(self, conn: UpstreamConnection) -> bool:
        """Made with credentials that were rotated since: closed instead of reused."""
        creds = self.dial.creds  # type: ignore[union-attr]
        if creds is None or conn.tls_gen == creds.generation:
            return False
        conn.sink = None
        conn.transport.close()  # type: ignore[union-attr]
        return True

    def tls_failed(self, exc: BaseException) -> str:
        return self.dial.failed(exc) if self.dial is not None else str(exc)

    async def acquire(self) -> UpstreamConnection:
        conn = self.acquire_nowait()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        if self.total >= self.spec.max_connections:
            fut: asyncio.Future[UpstreamConnection | None] = loop.create_future()
            self.waiters.append(fut)
            try:
                got = await asyncio.wait_for(fut, self.spec.timeout)
            except TimeoutError:
                raise UpstreamBusy(f"no free connection to {self.spec.name} within "
                                   f"{self.spec.timeout:g}s (max_connections "
                                   f"{self.spec.max_connections})") from None
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)
            if got is not None:
                got.reused = True
                return got
        self.total += 1
        dial = self.dial
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(self), self.spec.host, self.spec.port,
                    **dial_kwargs(dial, self.spec.connect_timeout),
                ),
                self.spec.connect_timeout,
            )
        except TimeoutError:
            self.total -= 1
            self._wake()
            raise UpstreamConnectError(
                f"connect to {self.spec.name} timed out after {self.spec.connect_timeout:g}s"
                + (" (TCP and TLS handshake)" if dial is not None else "")
            ) from None
        except OSError as exc:
            self.total -= 1
            self._wake()
            raise dial_error(dial, exc) or UpstreamConnectError(
                f"connect to {self.spec.name} failed: {exc.strerror or exc}"
            ) from None
        except UpstreamTlsError:
            self.total -= 1
            self._wake()
            raise
        if dial is not None:
            creds = dial.creds
            conn.tls_gen = creds.generation if creds is not None else 0
            conn.fresh = True
            dial.store.failures.ok(self.name)
        self.live.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        t = conn.transport
        if self.closed or t is None or conn.t_is_closing():
            self.discard(conn)
            return
        if self.dial is not None:
            if conn.fresh:
                conn.fresh = False
                if self.dial.creds is not None:
                    self.dial.creds.keep_session(t)
            if self._retired(conn):
                return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.sink = None
            conn.transport.abort()
        else:
            self.forget(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.live:
            self.live.discard(conn)
            self.total -= 1
            if conn in self.idle:
                self.idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        # A slot freed up: let one waiter open a new connection.
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()
