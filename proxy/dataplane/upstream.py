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
if _COMPILED:
    from cython.cimports.cpython.bytes import PyBytes_AS_STRING, PyBytes_FromStringAndSize
    from cython.cimports.libc.string import memchr, memcmp
# The header codes read for framing: 1 to 3 (basics.header_code); the others are hop-by-hop or
# x-request-id (never forwarded: the answer carries the request's own id)
H_CONTENT_LENGTH = basics.H_CONTENT_LENGTH
H_TRANSFER_ENCODING = basics.H_TRANSFER_ENCODING
H_CONNECTION = basics.H_CONNECTION
_FRAMING = 3
_code_of_lower = basics.code_of_lower
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


def scan_head(data: bytes, lines: list, special: list) -> bytes | None:
    """Read a response head from the raw bytes it came in, when it starts `data` and is in the
    strict form (every line ends with CRLF, no bare CR or LF, no folded line, no blank in a
    name, a status line `HTTP/1.x ddd[ reason]`): the reason phrase, with the header lines to
    forward appended to `lines` as slices of `data` (a run of consecutive lines is one slice),
    and (code, name, value) of the others (x-request-id among them) to `special` (value without its
    leading blanks, as llhttp gives it). None when the head is in any other form: then the
    caller reads it with `read_head` (header by header, as llhttp's callbacks give it).

    Only called once llhttp has accepted the head: this finds where its lines are, it does not
    validate them. Every check below sends the unusual head to `read_head` rather than reading
    it in a second way."""
    if not _COMPILED:
        return _scan_head_py(data, lines, special)
    n = len(data)
    p = PyBytes_AS_STRING(data)
    if n < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or p[8] != 32:
        return None
    if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
        return None
    if p[12] == 13:
        reason = b""
        i = 12
    elif p[12] == 32 and p[13] != 32 and p[13] != 9:
        at = memchr(p + 13, 13, n - 13)
        if at == cython.NULL:
            return None
        i = cython.cast(cython.p_char, at) - p
        if memchr(p + 13, 10, i - 13) != cython.NULL:
            return None
        reason = PyBytes_FromStringAndSize(p + 13, i - 13)
    else:
        return None
    if i + 1 >= n or p[i + 1] != 10:
        return None
    i += 2  # the first header line
    run = -1  # where the current run of forwarded lines starts
    while True:
        if i + 1 >= n:
            return None  # no blank line: llhttp read this head differently
        c = p[i]
        if c == 13:
            if p[i + 1] != 10:
                return None
            break
        if c == 32 or c == 9:
            return None  # a folded line
        at = memchr(p + i, 10, n - i)
        if at == cython.NULL:
            return None
        cr = cython.cast(cython.p_char, at) - p - 1
        if p[cr] != 13 or memchr(p + i, 13, cr - i) != cython.NULL:
            return None
        at = memchr(p + i, 58, cr - i)
        if at == cython.NULL:
            return None
        colon = cython.cast(cython.p_char, at) - p
        if colon == i or p[colon - 1] == 32 or p[colon - 1] == 9:
            return None  # (llhttp refuses any other blank in a name: not a token character)
        code = basics.code_at(p + i, colon - i)
        if code == 0:
            if run < 0:
                run = i
        elif run >= 0:
            lines.append(PyBytes_FromStringAndSize(p + run, i - run))
            run = -1
        if code != 0:
            v = colon + 1
            while v < cr and (p[v] == 32 or p[v] == 9):
                v += 1
            special.append((code, PyBytes_FromStringAndSize(p + i, colon - i),
                            PyBytes_FromStringAndSize(p + v, cr - v)))
        i = cr + 2
    if run >= 0:
        lines.append(PyBytes_FromStringAndSize(p + run, i - run))
    return reason


def _scan_head_py(data: bytes, lines: list, special: list) -> bytes | None:
    """`scan_head` without the compiler: the same rules, by bytes methods."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    rows = data[:end + 2].split(b"\r\n")  # the status line, each header line, b""
    status = rows[0]
    if (len(status) < 12 or not status.startswith(b"HTTP/1.") or status[8] != 32
            or not status[9:12].isdigit()):
        return None
    if len(status) == 12:
        reason = b""
    elif status[12] == 32 and status[13:14] not in (b" ", b"\t"):
        reason = status[13:]
    else:
        return None
    if b"\n" in status or b"\r" in status:
        return None
    i = len(status) + 2
    run = -1
    for row in rows[1:-1]:
        if b"\n" in row or b"\r" in row or row[:1] in (b" ", b"\t"):
            return None
        name, colon, value = row.partition(b":")
        if not colon or not name or name[-1] in (32, 9):
            return None
        code = _code_of_lower(name.lower())
        if code == 0:
            if run < 0:
                run = i
        elif run >= 0:
            lines.append(data[run:i])
            run = -1
        if code != 0:
            special.append((code, name, value.lstrip(b" \t")))
        i += len(row) + 2
    if run >= 0:
        lines.append(data[run:i])
    return reason


class _HeadRead(Exception):
    """Raised from `_HeadReader`'s callback: the final response head is read."""


class _HeadLines:
    """A head read header by header, as llhttp's callbacks give it (`read_head`; and, without
    the compiler, every head): the reason, the lines to forward in four pieces each, and the
    special headers (ResponseSink.on_upstream_head)."""

    __slots__ = ("lines", "reason", "special")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.special: list[tuple[int, bytes, bytes]] = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        reason = self.reason  # mostly one piece: no concatenation
        self.reason = reason + status if reason else status

    def on_header(self, name: bytes, value: bytes) -> None:
        # compiled, a C call (no lower-cased copy, no hash); pure, header_code's own form
        code = basics.header_code(name) if _COMPILED else _code_of_lower(name.lower())
        if code == 0:  # forwarded as it came, in its place
            lines = self.lines  # the header line's pieces: joined once, with the whole head
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
            return
        self.special.append((code, name, value))

    def take(self) -> tuple[bytes, list, list]:
        """(reason, lines, special), handed over; empty again for the next head."""
        got = self.reason, self.lines, self.special
        self.lines = []
        self.special = []
        self.reason = b""
        return got


class _HeadReader(_HeadLines):
    """`read_head`'s parser: stops at the final head."""

    __slots__ = ("parser",)

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: not forwarded
            self.take()
            return
        raise _HeadRead


def read_head(raw: bytes) -> tuple[bytes, list, list]:
    """The final response head in `raw` (a response's bytes from its first, interim responses
    included), read header by header: (reason, lines, special) as `scan_head` gives them, with
    each forwarded header line in four pieces: name, b": ", value, b"\r\n"."""
    reader = _HeadReader()
    try:
        reader.parser.feed_data(raw)
    except httptools.HttpParserError as exc:
        if isinstance(exc.__context__, _HeadRead):
            return reader.reason, reader.lines, reader.special
        raise UpstreamBadResponse(f"invalid response: {exc}") from None
    raise UpstreamBadResponse("response head not read again")  # cannot happen: llhttp read it


class _HeadDone(Exception):
    """Raised from the parser callback to end a HEAD response at its head."""


class _Callbacks:
    """An upstream connection's parser callbacks. Compiled, no on_status and no on_header (no
    Python call and no two bytes objects per header: `scan_head` reads the head from its
    bytes); without the compiler, those two go to the connection's `_HeadLines`."""

    __slots__ = ("on_body", "on_header", "on_headers_complete", "on_message_begin",
                 "on_message_complete", "on_status")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.on_message_begin = conn.on_message_begin
        self.on_headers_complete = conn.on_headers_complete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete
        if not _COMPILED:
            self.on_status = conn._head.on_status
            self.on_header = conn._head.on_header


class ResponseSink(Protocol):
    wbuf: list[bytes] | None  # response bytes held until the end of the current read

    def on_upstream_head(
        self, status: int, reason: bytes, lines: list, special: list,
        chunked: bool, length: int | None, named: frozenset[bytes] | None,
    ) -> None:
        """The head, in two parts. `lines`: the headers forwarded as they came (those
        `basics.header_code` gives 0), in order, as pieces whose concatenation
        is their header lines: slices of the upstream's bytes (`scan_head`), or four pieces per
        line, name, b": ", value, b"\r\n" (`read_head`; always so when `named` is not None).
        `special`: (code, name, value) of the others (framing and hop-by-hop), and of
        x-request-id (also in `lines`). `named`: what a Connection header names besides the
        hop-by-hop headers and those it may not drop (lower-cased; dropped too), or None."""
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
        "_first",
        "_head",
        "_head_bytes",
        "_head_keep_alive",
        "_in_body",
        "_interims",
        "_length",
        "_more",
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
        # Without the compiler, the head comes header by header (on_status, on_header): a
        # Python loop over its bytes costs more than llhttp's callbacks
        self._head = _HeadLines()
        self._bind_parser()
        self.sink: Any = None
        # The sink when it is the data plane's Exchange (set by Exchange.attach; None for a
        # mirror's leg): compiled, the calls below are C calls to it rather than method lookups.
        self.ex: Any = None
        self.head_only = False
        self.got_bytes = False
        self.reused = False
        # The reads of the current response until its final head ends: `_first`, then `_more`
        # (None until a second read). The head is read from them: `scan_head`, or `read_head`.
        # `_first` is None between responses: a message that begins then is bytes the upstream
        # sent after its response (on_message_begin).
        self._first: bytes | None = None
        self._more: list[bytes] | None = None
        self._interims = 0  # interim (1xx) responses ended in the current response's reads
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
        if not self._in_body:  # (part of) the response's head: kept until it is read
            if self._first is None:
                self._first = data
            elif self._more is None:
                self._more = [data]
            else:
                self._more.append(data)
        if ex is not None:  # this read's time stamps: one clock read (DataPlane.clock)
            ex.plane.tick = ex.plane.now()
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
        finally:
            if ex is not None:
                ex.plane.tick = 0.0

    def _bind_parser(self) -> None:
        """A new parser, and its methods each response calls bound once (as the transport's are
        per connection)."""
        self.parser = parser = httptools.HttpResponseParser(_Callbacks(self))
        self.p_feed = parser.feed_data
        self.p_status = parser.get_status_code
        self.p_keep_alive = parser.should_keep_alive

    def _head_in_progress(self, n: int) -> None:
        """A read ended inside the response head (httptools keeps an unfinished header line
        whole): past the upstream's `max_header_bytes` the response is refused (502)."""
        self._head_bytes += n
        if self._head_bytes > self.pool.max_head:
            sink, self.sink = self.sink, None
            self.transport.close()  # type: ignore[union-attr]
            sink.on_upstream_lost(UpstreamBadResponse(
                f"response head larger than {self.pool.max_head} bytes"))

    def _head_cap(self, raw: bytes) -> None:
        """Refuse (502) a response whose head, from its first byte (interim responses included)
        to the final head's blank line, is over the upstream's `max_header_bytes`."""
        size = len(raw)  # when the head is not in the strict form: all of it counts
        end = -4
        for _ in range(self._interims + 1):  # 1xx responses have no body: heads end to end
            end = raw.find(b"\r\n\r\n", end + 4)
            if end < 0:
                break
        else:
            size = end + 4
        if size > self.pool.max_head:
            raise UpstreamBadResponse(f"response head larger than {self.pool.max_head} bytes")

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

    # -- httptools callbacks (through _Callbacks) -------------------------------------------
    # Compiled, no on_status and no on_header (a Python call and two bytes objects per header):
    # the head is read from the bytes it came in once llhttp has accepted it (on_headers_complete).

    def on_message_begin(self) -> None:
        if self._first is None:
            # A message in the bytes after the last response (the same read, or one that began
            # before the current request was sent): never taken as the next request's answer.
            raise UpstreamBadResponse("bytes after the end of a response")

    def on_headers_complete(self) -> None:
        self._status = status = self.p_status()
        if not _COMPILED:  # the head came header by header; handed over (interim: dropped)
            reason, lines, special = self._head.take()
        if 100 <= status < 200 and status != 101:
            self._interims += 1
            return  # interim responses are not forwarded
        if status == 101 and (self.sink is None or not self.sink.is_tunnel):
            raise UpstreamBadResponse("101 Switching Protocols to a request that did not upgrade")
        first, more = self._first, self._more
        self._first = None
        self._more = None
        raw = first if more is None else first + b"".join(more)  # the response's bytes so far
        if self._head_bytes + len(first if more is None else more[-1]) > self.pool.max_head:
            # the reads so far pass the cap: does the head itself? (a read that ends inside
            # the head is counted by _head_in_progress; one that holds all of it, here)
            self._head_cap(raw)
        # Compiled, the head from its bytes when it is all in the response's first read and
        # starts it (no interim response before it); else, or when a Connection header names
        # others to drop, header by header (read_head).
        scanned = False
        if not _COMPILED:
            pass
        elif more is None and not self._interims and _INJECTION is None:
            lines = []
            special = []
            reason = scan_head(raw, lines, special)
            scanned = reason is not None
            if not scanned:
                reason, lines, special = read_head(raw)
        else:
            reason, lines, special = read_head(raw)
        self._interims = 0
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
        if named is not None and scanned:
            # the sink drops the named headers line by line: not from runs of lines
            reason, lines, special = read_head(raw)
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
        self._first = None
        self._more = None
        self._interims = 0
        if not _COMPILED:
            lines = self._head  # fresh since the last head, unless one was cut off
            if lines.lines or lines.special or lines.reason:
                lines.take()
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
        self.max_head = spec.max_header_bytes  # a C integer too
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
