"""One request/response on a client connection (`Exchange`), from its parsed head to the log line.

Flow, `Exchange.read_head`'s phases first: the request line is vetted -> the headers are sorted
in one pass and the body's framing read -> canonical path -> request id -> route lookup on the
current table generation -> split or override pin -> shadow decision -> the upstream request's
headers; then the head is re-serialised to a pooled upstream connection, the body streamed with
flow control both ways, the response re-framed to the client, and stats, access log and shadow
offer written at the end. Nothing here allocates per route or compiles anything; the table did
that at load.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

import httptools
import structlog

from proxy.config.paths import BadPath, canonical_path, suspect
from proxy.dataplane import basics
from proxy.dataplane.basics import (
    CONTINUE,
    DEFAULT_ROUTE,
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_UPGRADE,
    MARKS,
    REASONS,
    Reject,
    error_body,
    new_request_id,
)
from proxy.dataplane.headers import (
    FORWARDED_HEADERS,
    HOP_BY_HOP,
    HOST_CACHE,
    NEVER_DROPPED_BY_CONNECTION,
    TOKEN_CACHE,
    connection_tokens,
    valid_host,
)
from proxy.dataplane.inventory import EndpointCounter, InventorySlot
from proxy.dataplane.overrides import INVALID, TARGET
from proxy.dataplane.recorder import Recorder, RecorderSlot
from proxy.dataplane.resend import IDEMPOTENT_METHODS, Failure, may_resend, repeatable
from proxy.dataplane.split import BUCKETS
from proxy.dataplane.table import CompiledRoute, cookie_value
from proxy.dataplane.upstream import UpstreamPool
from proxy.dataplane.upstream_errors import (
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTlsError,
)

_REPLAY_LIMIT = 64 * 1024
# (reason, status line) last made for each status code (llhttp reads three digits): a list
# indexed by the code, not a dict lookup per response
_STATUS_LINES: list[tuple[bytes, bytes] | None] = [None] * 1000
# A longer reason is not kept: an upstream's 60 KB reasons, one per status code, would hold
# ~60 MB here for the process's life
_REASON_CACHED = 64
_VALID_REQUEST_ID = basics.VALID_REQUEST_ID
# Connection tokens that need no extra filtering: hop-by-hop (dropped anyway) or never dropped.
_CONN_KEEP = HOP_BY_HOP | NEVER_DROPPED_BY_CONNECTION
_NO_TOKENS: frozenset[bytes] = frozenset()
_ZERO = ord("0")
_SLASH = ord("/")
_QMARK = ord("?")
_QUOTE = ord('"')  # a byte value: `bytes in bytes` is ten times slower (server.on_header)
_log = structlog.get_logger("strangler.dataplane")

try:  # compiled (setup.py): `cython.compiled` is True and `_plain_path` a C loop
    import cython

    _C_LOOP = cython.compiled
except ImportError:  # the .py file without Cython installed
    _C_LOOP = False
if _C_LOOP:  # the compiled access line (Exchange._c_line) and heads (_join)
    from cython.cimports.cpython.bytes import (
        PyBytes_AS_STRING,
        PyBytes_FromStringAndSize,
        PyBytes_GET_SIZE,
    )
    from cython.cimports.libc.string import memchr, memcmp, memcpy
# A head of at most this many pieces (~30 header lines) waits at the end of the read for a small
# body to join it in one copy; a longer one is joined at once (never thousands of buffers for
# writev when an upstream sends thousands of short headers)
_HEAD_PIECES = 128
_LINE_MAX = 4096  # a longer access line (long path or user agent) is formatted by Python


def _put(buf, p, literal, value):  # C types: exchange.pxd
    """Compiled only: `literal` then `value` (bytes, never None) at `buf[p:]`; the position
    after them. Inline, without a None check or an error return (the access line writes
    eighteen pieces)."""
    n = PyBytes_GET_SIZE(literal)
    memcpy(buf + p, PyBytes_AS_STRING(literal), n)
    p += n
    n = PyBytes_GET_SIZE(value)
    memcpy(buf + p, PyBytes_AS_STRING(value), n)
    return p + n


def _join(parts: list) -> bytes:
    """Compiled only: `b"".join(parts)` for a list of bytes, each copied by memcpy into the one
    bytes object made for them (bytes.join takes a buffer of each part: ~100 instructions a
    part, a head has 20 to 30)."""
    return _join_after(b"", parts)


def _join_after(first: bytes, parts: list) -> bytes:
    """Compiled only: `first + b"".join(parts)`, written by memcpy into the one bytes object."""
    n = _size(first, parts)
    if n < 0:
        return first + b"".join(parts)
    return _fill(first, parts, n)


def _join_upto(parts: list, limit) -> bytes | None:  # limit: Py_ssize_t (exchange.pxd)
    """Compiled only: `b"".join(parts)` if that is at most `limit` bytes, else None."""
    n = _size(b"", parts)
    if n < 0 or n > limit:
        return None
    return _fill(b"", parts, n)


def _size(first: bytes, parts: list):  # -> Py_ssize_t (exchange.pxd)
    """Compiled only: the length of `first` and `parts` joined; -1 if a part is not bytes."""
    n = len(first)
    for item in parts:
        if type(item) is not bytes:
            return -1
        n += len(cython.cast(bytes, item))
    return n


def _fill(first: bytes, parts: list, n) -> bytes:  # n: Py_ssize_t (exchange.pxd)
    """Compiled only: `first` and `parts` (all bytes, `n` bytes in all) in one new object."""
    out = PyBytes_FromStringAndSize(cython.NULL, n)
    buf = PyBytes_AS_STRING(out)
    p = _copy(buf, 0, first)
    for item in parts:
        p = _copy(buf, p, cython.cast(bytes, item))
    return out


def _join_head(method: bytes, target: bytes, headers: list) -> bytes | None:
    """Compiled only: the request head `method target HTTP/1.1`, then a line `name: value` for
    each (name, value) of `headers`, then the blank line; written by memcpy into the one bytes
    object (no list of pieces built first). None for any other kind of item (the caller's
    general path then joins the pieces)."""
    n = len(method) + len(target) + 12  # the space, and " HTTP/1.1\r\n"
    for item in headers:
        if type(item) is not tuple or len(cython.cast(tuple, item)) != 2:
            return None
        name = cython.cast(tuple, item)[0]
        value = cython.cast(tuple, item)[1]
        if type(name) is not bytes or type(value) is not bytes:
            return None
        n += len(cython.cast(bytes, name)) + len(cython.cast(bytes, value)) + 4
    out = PyBytes_FromStringAndSize(cython.NULL, n + 2)
    buf = PyBytes_AS_STRING(out)
    p = _copy(buf, 0, method)
    buf[p] = 32
    p = _copy(buf, p + 1, target)
    memcpy(buf + p, b" HTTP/1.1\r\n", 11)
    p += 11
    for item in headers:
        p = _copy(buf, p, cython.cast(tuple, item)[0])
        buf[p] = 58
        buf[p + 1] = 32
        p = _copy(buf, p + 2, cython.cast(tuple, item)[1])
        buf[p] = 13
        buf[p + 1] = 10
        p += 2
    buf[p] = 13
    buf[p + 1] = 10
    return out


def _copy(buf, p, value):  # C types: exchange.pxd
    """Compiled only: `value` (bytes, never None) at `buf[p:]`; the position after it."""
    n = PyBytes_GET_SIZE(value)
    memcpy(buf + p, PyBytes_AS_STRING(value), n)
    return p + n


def _put_int(buf, p, v, width):  # C types: exchange.pxd
    """Compiled only: `v` (>= 0) in decimal, zero-padded to `width` digits, at `buf[p:]`
    (at most 20 digits whatever `v` is: the buffer is never overrun)."""
    digits = cython.declare(cython.char[24])
    n = 0
    while True:
        digits[n] = 48 + v % 10
        v //= 10
        n += 1
        if (v == 0 and n >= width) or n >= 20:
            break
    while n:
        n -= 1
        buf[p] = digits[n]
        p += 1
    return p


def _put_ms(buf, p, us):  # C types: exchange.pxd
    """Compiled only: microseconds `us` as milliseconds with three decimals (%.3f)."""
    p = _put_int(buf, p, us // 1000, 1)
    buf[p] = 46  # "."
    return _put_int(buf, p + 1, us % 1000, 3)


def _plain_path(path: bytes) -> bool:
    """`proxy.config.paths.suspect(path) is None`, one byte at a time: no %, backslash, control
    character or space, no `//` or `/.`. Only the compiled module calls it (a C loop over the
    bytes, ~100 instructions against the regex's ~4,400); the pure path keeps the regex, which is
    cheaper there than a Python loop."""
    prev = 0
    for c in path:
        if c <= 0x20 or c == 0x25 or c == 0x5C or c == 0x7F:
            return False
        if prev == 0x2F and (c == 0x2F or c == 0x2E):
            return False
        prev = c
    return True


def _json_plain(path: bytes) -> bool:
    """Compiled only: `path.isascii() and b'"' not in path` (a C loop; those are two method
    calls): whether a canonical path goes into a JSON string as it is."""
    for c in path:
        if c > 0x7F or c == 0x22:
            return False
    return True


def _line_version(start: bytes | None) -> str | None:
    """Compiled only: the version of a request whose head starts at `start`'s first byte
    (None: not known so), "1.1" or "1.0" read off its request line, which llhttp has accepted:
    it ends at the first LF, which llhttp wants right after a CR right after the version (it
    refuses CR or LF before). Anything else (0.9, 2.0, a line not in this read): None, and
    httptools says (its get_http_version formats a str: ~2,300 instructions)."""
    if start is None:
        return None
    buf = cython.cast(cython.p_char, start)
    lf = cython.cast(cython.p_char, memchr(buf, 10, len(start)))
    if lf == cython.NULL or lf - buf < 10 or lf[-1] != 13:
        return None
    if memcmp(lf - 10, cython.cast(cython.p_char, b" HTTP/1."), 8) != 0:
        return None
    minor = lf[-2]
    return "1.1" if minor == 49 else "1.0" if minor == 48 else None


def with_host(parts: list[bytes], headers: list[tuple[bytes, bytes]], host: bytes) -> None:
    """`headers` into `parts` with `host` as the Host (the upstream's `host_header`), where the
    client's was, or first when the request had none (HTTP/1.0)."""
    seen = False
    for name, value in headers:
        if not seen and name.lower() == b"host":
            seen = True
            value = host
        parts += (name, b": ", value, b"\r\n")
    if not seen:
        parts[4:4] = (b"Host: ", host, b"\r\n")


_HASH = ord("#")


def render_lines(log: Any, buf: list, enc: str) -> bytes:
    """An access log batch (proxy.dataplane.access_log.AccessLog._render_pending) as bytes:
    a finished exchange's line by `Exchange.access_line` (compiled, a C call: no method lookup
    per line), a rendered line (str) encoded, a data plane tuple rendered by the log."""
    out = []
    state = log.line  # read once per batch, not per line
    for x in buf:
        if type(x) is Exchange:
            out.append(cython.cast(Exchange, x).access_line(log, state) if _C_LOOP
                       else x.access_line(log, state))
        elif type(x) is str:
            out.append(x.encode(enc, "backslashreplace"))
        elif type(x) is tuple:
            out.append(log._render(x).encode(enc, "backslashreplace"))
        else:
            out.append(x.access_line(log))
    return _join(out) if _C_LOOP else b"".join(out)


class LineState:
    """What `Exchange.access_line` reads from its access log (proxy.dataplane.access_log, which
    owns it and keeps `wall`, `second` and `prefix_b` current): typed fields when compiled.
    `blines`: the exchange's line templates; `literals`: the two without a query as the literal
    bytes between fields, `literals_len` the longer's length; `quoted_b`: the quoted
    route/backend/upstream/method and client/agent parts; `json`: not the console format.
    `buf`, `scheduled`, `sample_all`: the log's pending entries, whether their rendering is
    scheduled, and whether every request is logged (`Exchange.finish` appends to `buf` itself
    when nothing else is to do, as AccessLog.exchange would)."""

    __slots__ = ("blines", "buf", "json", "literals", "literals_len", "prefix_b", "quoted_b",
                 "sample_all", "scheduled", "second", "wall")

    def __init__(self, blines: tuple, literals: tuple, literals_len: int, json: bool,
                 sample_all: bool = True) -> None:
        self.buf: list[Any] = []
        self.scheduled = False
        self.sample_all = sample_all
        self.blines = blines
        self.literals = literals
        self.literals_len = literals_len
        self.json = json
        self.quoted_b: dict[tuple, bytes] = {}
        self.prefix_b = b""
        self.second = -1
        self.wall = 0.0


class ShadowHook:
    """What the data plane needs from shadowing; `None` on the plane means no shadowing."""

    def wants(self, route: CompiledRoute, method: bytes, served_by_target: bool) -> bool:
        raise NotImplementedError

    def offer(self, exchange: Exchange) -> None:
        raise NotImplementedError


def _route_slot(route: CompiledRoute, recorder: Recorder, step, backend: str) -> RecorderSlot:
    """The recorder's slot for a request of `route` at `step`: the one the route keeps for the
    backend, or a new one from the recorder when the step changed since (issue 29: no key built
    and looked up per request). `step` has no annotation: compiled, it is a C integer."""
    if backend == "target":
        slot = route.rec_target
        if slot is None or slot.step != step or slot.recorder is not recorder:
            slot = route.rec_target = recorder.slot(route.name, step, backend)
        return slot
    if backend == "legacy":
        slot = route.rec_legacy
        if slot is None or slot.step != step or slot.recorder is not recorder:
            slot = route.rec_legacy = recorder.slot(route.name, step, backend)
        return slot
    return recorder.slot(route.name, step, backend)


def _inventory_slot(route: CompiledRoute, inventory: EndpointCounter,
                    backend: str) -> InventorySlot:
    """The inventory's slot for a request of `route`: the one the route keeps for the backend,
    or the counter's (issue 29: no key built and looked up per request)."""
    if backend == "target":
        slot = route.inv_target
        if slot is None or slot.counter is not inventory:
            slot = route.inv_target = inventory.slot(route.name, backend)
        return slot
    if backend == "legacy":
        slot = route.inv_legacy
        if slot is None or slot.counter is not inventory:
            slot = route.inv_legacy = inventory.slot(route.name, backend)
        return slot
    return inventory.slot(route.name, backend)


class Exchange:
    """One request/response on a client connection.

    `conn` is the `ClientConnection` (proxy.dataplane.server) that parsed it, typed `Any` here
    because that module imports this one."""

    __slots__ = (
        "backend",
        "blame",
        "body_done_at",
        "body_mode",
        "client_done",
        "client_wait",
        "conn",
        "declared_length",
        "discarding",
        "done",
        "expect_continue",
        "head",
        "head_deadline",
        "head_only",
        "is_tunnel",
        "keep_alive",
        "last_body_at",
        "method",
        "override",
        "path",
        "pending",
        "plane",
        "pool",
        "query",
        "read_mark",
        "read_seen",
        "replay",
        "replay_size",
        "req_body_size",
        "req_headers",
        "req_host",
        "resendable",
        "resp_body",
        "resp_chunked",
        "resp_lines",
        "resp_size",
        "response_started",
        "retried",
        "rid",
        "route",
        "shadow_sent",
        "shadow_wanted",
        "stale_retried",
        "status",
        "step",
        "sticky_key",
        "t0",
        "t_end",
        "t_head",
        "target_failed",
        "trace",
        "tunnel_pending",
        "up",
        "up_paused_at",
        "user_agent",
        "version_10",
        "wbuf",
    )

    def __init__(self) -> None:
        self.up = None
        # Body chunks not yet sent upstream (None once attached), and those kept for a resend or
        # a mirror (None: not kept). `()` until a first chunk: most requests have no body.
        self.pending: list[bytes] | tuple | None = ()
        self.replay: list[bytes] | tuple | None = ()
        self.replay_size = 0
        self.req_body_size = 0
        self.req_host: bytes | None = None  # the Host the client sent (`_framing`), if any
        self.client_done = False
        self.response_started = False
        self.resp_chunked = False
        self.resp_body: list[bytes] | None = None
        self.resp_size = 0
        # read_timeout: the response size at the last sweep and when it last grew (0.0: not
        # watched yet)
        self.read_seen = 0
        self.read_mark = 0.0
        # shadowed: the forwarded header lines as pieces (headers.header_pairs reads them)
        self.resp_lines: list[bytes] | None = None
        self.status = 0
        self.retried = False  # fallback to legacy used
        self.stale_retried = False  # resent once after a dead pooled connection
        self.target_failed = False
        self.discarding = False
        self.done = False
        self.expect_continue = False  # a 100 Continue owed when its pipelined turn comes
        self.head_deadline = 0.0
        self.head = b""
        self.tunnel_pending = b""
        self.last_body_at = 0.0
        # Time on the client's side, kept out of the backend's latency: when the request body
        # was complete (0.0: no body), and how long the response waited for a slow reader.
        self.body_done_at = 0.0
        self.client_wait = 0.0
        self.up_paused_at = 0.0  # the upstream stopped taking the request body (back-pressure)
        # Counted under this backend instead of `backend` (the client or the proxy caused it).
        self.blame: str | None = None
        self.declared_length: int | None = None
        self.is_tunnel = False
        self.override: str | None = None  # set when a trusted request pinned its backend
        self.trace: Any = None  # proxy.dataplane.tracing.Trace when this request is sampled
        self.t_head = 0.0  # when the answering upstream's response head arrived (access log)
        # Response bytes held until the end of the current upstream read, so a head and the body
        # that arrived with it leave in one write (None: nothing held, write through).
        self.wbuf: list[bytes] | None = None

    # -- head ----------------------------------------------------------------------------
    def read_head(self, conn: Any, method: bytes, url: bytes, raw: list) -> None:
        """This new exchange from a parsed request head, one phase at a time in the request's
        order; any phase may refuse the request with `Reject`."""
        ex = self
        ex._request_line(conn, method)
        hdict: dict[bytes, bytes] = {}
        conn_tokens = ex._headers(raw, hdict)
        ex.user_agent = hdict.get(b"user-agent")  # for the access log
        ex._target(url, hdict)
        # Before routing: a request refused further on (a bad override pin) has used up its id.
        ex._take_request_id(hdict)
        plane = ex.plane
        tracer = plane.tracer
        if tracer is not None:  # None (no span work at all) unless sampled
            if b"traceparent" in hdict:
                ex.trace = tracer.sample(hdict)  # the caller's flag decides
            elif plane.trace_ratio >= 1.0 or (
                    basics.draw() if plane.trace_c_rand else plane.trace_rand()
            ) < plane.trace_ratio:
                ex.trace = tracer.sample(hdict, True)  # drawn here: no call for the others
        route = ex._route(method, hdict)
        if route is not None:
            to_target = ex._choose_backend(route, method, hdict, conn_tokens)
            ex._want_shadow(route, method, hdict, to_target)  # after the split's random draw
        ex._upstream_request(route, method, hdict)

    def _request_line(self, conn: Any, method: bytes) -> None:
        """Method and HTTP version: only 1.0 and 1.1, no CONNECT (or PRI)."""
        plane = conn.plane
        self.conn = conn
        self.plane = plane
        self.t0 = plane.clock()
        self.method = method
        self.head_only = method == b"HEAD"
        version = _line_version(conn.head_start) if _C_LOOP else None
        conn.head_start = None
        if version is None:
            version = conn.parser.get_http_version()  # formats a str: ~2,300 instructions
        self.version_10 = version == "1.0"
        self.keep_alive = conn.p_keep_alive()
        if version != "1.1" and version != "1.0":
            raise Reject(505, "http_version", "only HTTP/1.0 and HTTP/1.1 are supported")
        if method == b"CONNECT" or method == b"PRI":
            # A reverse proxy opens no tunnels on request; llhttp would treat CONNECT as one.
            raise Reject(405, "method_not_allowed", "CONNECT is not supported")

    def _headers(self, raw: list, hdict: dict) -> frozenset:
        """Header hygiene: fill `hdict` (lower-case name -> last value), set `req_headers` to
        the headers to forward, then the body's framing. Returns the Connection header's tokens.

        One pass: lower-case each name once, collect what routing and framing need, and keep
        the headers to forward (hop-by-hop and untrusted forwarding headers are dropped here;
        the rare headers a Connection list names are dropped after the loop)."""
        out: list[tuple[bytes, bytes]] = []
        conn_tokens: frozenset[bytes] = _NO_TOKENS
        conn = self.conn
        trusted = conn.peer_trusted
        special = self.plane.req_special
        te = cl = host = xff = cookie = None
        for header in raw:
            name, value = header
            lname = name.lower()
            hdict[lname] = value
            if lname not in special:
                if lname.startswith(b"proxy"):  # Proxy-* (and httpoxy's Proxy): hop-by-hop
                    continue
                out.append(header)
                continue
            if lname == b"cookie":  # forwarded as it came; repeated ones read as one list
                if cookie is not None:  # (an HTTP/2 front end's cookie crumbs, RFC 9113 8.2.3)
                    hdict[lname] = value = cookie + b"; " + value
                cookie = value
                out.append(header)
            elif lname == b"connection":
                found = TOKEN_CACHE.get(value)  # no call when cached
                conn_tokens = conn_tokens | (connection_tokens(value) if found is None else found)
            elif lname == b"content-length":
                if cl is not None and cl != value:
                    raise Reject(400, "ambiguous_framing", "conflicting Content-Length headers")
                cl = value
            elif lname == b"transfer-encoding":
                if te is not None:
                    raise Reject(400, "ambiguous_framing", "repeated Transfer-Encoding")
                te = value
            elif lname == b"host":
                if host is not None:
                    raise Reject(400, "bad_request", "repeated Host header")
                if value != conn.host_ok:  # else this connection's last valid Host, again
                    ok = HOST_CACHE.get(value)  # valid_host's cache: no call when cached
                    if not (valid_host(value) if ok is None else ok):
                        raise Reject(400, "bad_host", "Host must be a host name or address "
                                     "and an optional port")
                    conn.host_ok = value
                host = value
                out.append(header)
            elif lname == b"x-forwarded-for":
                if xff is not None:  # repeated: one list, in order (RFC 9110 §5.3)
                    hdict[lname] = value = xff + b", " + value
                xff = value
            elif lname in HOP_BY_HOP or lname == b"x-request-id":
                pass
            elif lname in MARKS:  # X-Strangler-Shadow, -Reconcile
                if trusted:  # a strangler in front of this one: its mirror, forwarded as one
                    out.append(header)
                else:  # a client's own: not forwarded, and the request is mirrored as any other
                    del hdict[lname]
            elif trusted and lname in FORWARDED_HEADERS:
                out.append(header)  # x-forwarded-proto, -host, forwarded from a trusted peer
            # else: an override pin or secret header, consumed here and never forwarded
        if conn_tokens and not conn_tokens <= _CONN_KEEP:
            drop = conn_tokens - _CONN_KEEP
            out = [h for h in out if h[0].lower() not in drop]
        self.req_headers = out
        self._framing(te, cl, host)
        return conn_tokens

    def _framing(self, te: bytes | None, cl: bytes | None, host: bytes | None) -> None:
        """The request body's framing (`body_mode`: 0 none, 1 Content-Length, 2 chunked), and
        the Host an HTTP/1.1 request must carry."""
        if te is not None and cl is not None:
            raise Reject(400, "ambiguous_framing", "Content-Length with Transfer-Encoding")
        if te is not None:
            if self.version_10:
                raise Reject(400, "ambiguous_framing", "Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != b"chunked":
                raise Reject(501, "unsupported_transfer_encoding", "only chunked is supported")
            self.body_mode = 2
        elif cl is not None:
            if not cl.isdigit():
                raise Reject(400, "ambiguous_framing", "invalid Content-Length")
            self.declared_length = int(cl)
            self.body_mode = 1 if self.declared_length > 0 else 0
            if self.declared_length > self.plane.limits.max_body:
                raise Reject(413, "body_too_large", "request body exceeds the configured limit")
        else:
            self.body_mode = 0
        if host is None and not self.version_10:
            raise Reject(400, "bad_request", "missing Host header")
        self.req_host = host
        if self.body_mode:
            self.last_body_at = self.t0  # the body-idle clock runs from the head

    def _target(self, url: bytes, hdict: dict) -> None:
        """Request target -> canonical `path` and raw `query`: origin-form, or absolute-form
        whose authority must match Host."""
        if not url or url[0] != _SLASH:  # a byte value: no one-byte slice made
            if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
                parsed = httptools.parse_url(url)
                authority = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
                host = self.req_host  # at most one: `_headers` refuses a repeated Host
                if host is not None and authority.lower() != host.lower():
                    raise Reject(400, "bad_request", "absolute-form target disagrees with Host")
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            else:
                raise Reject(400, "bad_request", "request target must be origin-form")
        if (basics.find_byte(url, _HASH) >= 0) if _C_LOOP else _HASH in url:
            raise Reject(400, "bad_request", "fragment in request target")
        if _C_LOOP:  # memchr: no tuple, no empty parts
            q = basics.find_byte(url, _QMARK)
            if q < 0:
                path, query = url, None
            else:
                path, query = url[:q], url[q + 1:]
        else:
            path, sep, query = url.partition(b"?")
            if not sep:
                query = None
        if path and path[0] == _SLASH and (
                _plain_path(path) if _C_LOOP else suspect(path) is None):
            # canonical already (the usual path)
            self.path = path
        else:
            try:
                self.path = canonical_path(path)
            except BadPath as exc:
                raise Reject(400, "bad_path", str(exc)) from None
        self.query = query

    def _take_request_id(self, hdict: dict) -> None:
        """The client's X-Request-Id when well-formed, else a new one from the counter."""
        rid = hdict.get(b"x-request-id")
        if rid and _VALID_REQUEST_ID(rid) is not None:
            self.rid = rid
        else:
            self.rid = new_request_id.next_b()

    @property
    def request_id(self) -> str:
        """The request id as text (logs, error bodies, spans); `rid` is the bytes it travels as,
        the only form the request path needs."""
        rid = self.rid
        return rid.decode() if rid is not None else None  # type: ignore[return-value]

    def _route(self, method: bytes, hdict: dict) -> CompiledRoute | None:
        """Match on the table generation current at this moment. No route: legacy's default
        pool, no split and no shadow."""
        plane = self.plane
        table = plane.table
        route = table.match(method, self.path, hdict) if table is not None else None
        self.route = route
        if route is None:
            self.step = 0
            self.sticky_key = None
            self.backend = "legacy"
            self.pool = plane.default_pool
            self.shadow_wanted = False
        return route

    def _choose_backend(self, route: CompiledRoute, method: bytes, hdict: dict,
                        conn_tokens: frozenset) -> bool:
        """The split (or a trusted override pin) picks the side, True for target; and whether
        the request opens a WebSocket tunnel."""
        plane = self.plane
        state = route.state
        self.step = state.step
        key: bytes | None = None
        if route.sticky_header is not None:
            key = hdict.get(route.sticky_header)
        elif route.sticky_cookie is not None:
            cookie = hdict.get(b"cookie")
            key = cookie_value(cookie, route.sticky_cookie) if cookie else None
        self.sticky_key = key
        bp = state.weight_bp
        if bp <= 0:
            to_target = False
        elif bp >= BUCKETS:
            to_target = True
        elif key:  # split.choose_target, inlined: a call less per request
            to_target = route.hasher.bucket(key) < bp
        else:
            draw: cython.double = basics.draw() if plane.c_rand else plane.rand()
            to_target = draw * BUCKETS < bp
        pin = route.override
        if pin is not None and pin in hdict:
            to_target = self._pin(route, hdict[pin], hdict, to_target)
        self.backend = "target" if to_target else "legacy"
        self.pool = plane.pools[route.target if to_target else route.legacy]
        self.is_tunnel = (
            route.websocket
            and method == b"GET"
            and b"upgrade" in conn_tokens
            and hdict.get(b"upgrade", b"").strip().lower() == b"websocket"
        )
        return to_target

    def _want_shadow(self, route: CompiledRoute, method: bytes, hdict: dict,
                     to_target: bool) -> None:
        """Whether to offer this exchange for shadow comparison once it is done."""
        shadow = self.plane.shadow
        self.shadow_wanted = (
            shadow is not None
            and not self.is_tunnel
            and b"x-strangler-shadow" not in hdict
            and self.override is None  # QA traffic: a comparison would be gate evidence
            and shadow.wants(route, method, to_target)
        )

    def _upstream_request(self, route: CompiledRoute | None, method: bytes,
                          hdict: dict) -> None:
        """What goes upstream besides the client's headers: whether the body is kept for a
        replay, the forwarding headers, the re-stated framing; and a 100 Continue if asked."""
        # GET first: one bytes comparison, where the set's lookup compares the method with an
        # equal object of another module (~250 instructions)
        self.resendable = resendable = method == b"GET" or method in IDEMPOTENT_METHODS or (
            repeatable(route, method, hdict))
        if self.body_mode and not (resendable or self.shadow_wanted):
            self.replay = None  # never sent again (proxy.dataplane.resend), never mirrored
        conn = self.conn
        out = self.req_headers
        host = self.req_host  # at most one: `_headers` refuses a repeated Host
        if conn.peer_trusted:
            xff = conn.peer_b
            if b"x-forwarded-for" in hdict:
                xff = hdict[b"x-forwarded-for"] + b", " + xff
            out.append((b"x-forwarded-for", xff))
            if b"x-forwarded-proto" not in hdict:
                out.append(self.plane.xfp)
            if host is not None and b"x-forwarded-host" not in hdict:
                out.append((b"x-forwarded-host", host))
        else:
            out.append(conn.xff)
            out.append(self.plane.xfp)
            if host is not None:
                out.append((b"x-forwarded-host", host))
        out.append((b"x-request-id", self.rid))
        if self.is_tunnel:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", b"websocket"))
        if self.body_mode == 1:
            # Every Content-Length the client sent has this value (`_headers` refuses others).
            out.append((b"content-length", hdict[b"content-length"]))
        elif self.body_mode == 2:
            out.append((b"transfer-encoding", b"chunked"))
        expect = hdict.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.body_mode:
            if conn.cur is not None:
                self.expect_continue = True  # pipelined: not before the earlier answers
            elif conn.transport:
                conn.transport.write(CONTINUE)

    def _pin(self, route: CompiledRoute, value: bytes, hdict: dict[bytes, bytes],
             to_target: bool) -> bool:
        """The side a request carrying the route's override header goes to
        (proxy.dataplane.overrides): its pin when the requester is trusted, else the split's
        choice."""
        policy = self.plane.overrides
        if policy is None:
            return to_target
        pin = policy.decide(self.conn, route, value, hdict, self.plane.recorder)
        if pin is None:
            return to_target
        if pin is INVALID:
            name = (route.override or b"").decode()
            raise Reject(400, "bad_override", f"{name} must be legacy or target")
        self.override = pin
        return pin is TARGET

    def upstream_head(self) -> bytes:
        pool = self.pool
        base = pool.base_path
        target = base + self.path if base else self.path
        if self.query is not None:
            target += b"?" + self.query
        host = pool.host_header
        trace = self.trace
        if _C_LOOP and host is None and trace is None:  # the client's Host, as received
            head = _join_head(self.method, target, self.req_headers)
            if head is not None:
                return head
        parts = [self.method, b" ", target, b" HTTP/1.1\r\n"]
        headers = self.req_headers
        if trace is not None:  # this attempt's CLIENT span is the upstream's parent
            headers = [h for h in headers if h[0].lower() != b"traceparent"]
            spec = pool.spec
            parts.append(trace.tracer.client_start(trace, pool.name, spec.host, spec.port))
        if host is None:
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
        else:
            with_host(parts, headers, host)
        parts.append(b"\r\n")
        return _join(parts) if _C_LOOP else b"".join(parts)

    # -- request side --------------------------------------------------------------------
    def start(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        conn = self.pool.acquire_nowait()
        if conn is not None:
            self.attach(conn)
        else:
            self.plane.spawn(self._connect(self.pool))

    async def _connect(self, pool: UpstreamPool) -> None:
        try:
            conn = await pool.acquire()
        except UpstreamError as exc:
            if not self.done:
                self.upstream_failed(exc, pool, "unsent")
            return
        if self.done or pool is not self.pool:
            pool.release(conn)
            return
        self.attach(conn)

    def attach(self, up: Any) -> None:
        self.up = up
        if self.client_done:  # else from on_client_done, once the request is whole upstream
            self.head_deadline = self.plane.clock() + self.pool.timeout
        head = self.upstream_head()
        if self.shadow_wanted:
            self.head = head  # the mirror sends the same bytes (plus its marker header)
            self.shadow_sent = self.plane.now()  # paired latency: from the write, as mirrors
        self.up_paused_at = 0.0
        up.send(self, head, self.head_only)
        up.ex = self  # its calls back to this exchange are C calls (compiled)
        pending = self.pending
        self.pending = None
        t = up.transport
        if pending:
            for chunk in pending:
                self._write_body(t, chunk)
            # Read the client again, unless these writes filled the upstream's buffer.
            if self.conn.transport is not None and not self.conn.queue and not self.up_paused_at:
                self.conn.transport.resume_reading()
        elif self.replay and (self.retried or self.stale_retried):
            for chunk in self.replay:
                self._write_body(t, chunk)
        if self.client_done and self.body_mode == 2:
            t.write(b"0\r\n\r\n")
        if self.is_tunnel and self.tunnel_pending:
            t.write(self.tunnel_pending)
            self.tunnel_pending = b""

    def _write_body(self, t: Any, chunk: bytes) -> None:
        if self.body_mode == 2:
            t.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            t.write(chunk)

    def on_client_body(self, chunk: bytes) -> None:
        self.req_body_size += len(chunk)
        self.last_body_at = self.plane.clock()
        if self.req_body_size > self.plane.limits.max_body:
            raise Reject(413, "body_too_large", "request body exceeds the configured limit")
        replay = self.replay
        if replay is not None:
            self.replay_size += len(chunk)
            if self.replay_size <= _REPLAY_LIMIT or (
                self.shadow_wanted and self.replay_size <= self.route.spec.shadow.max_body
            ):
                if not replay:
                    self.replay = replay = []
                replay.append(chunk)
            else:
                self.replay = None
        pending = self.pending
        if pending is not None:
            if not pending:
                self.pending = pending = []
            pending.append(chunk)
            if len(pending) > 16 and self.conn.transport is not None:
                self.conn.transport.pause_reading()  # resumed by attach via flow control
        elif self.up is not None and self.up.transport is not None and not self.done:
            self._write_body(self.up.transport, chunk)

    def on_client_done(self) -> None:
        self.client_done = True
        if self.done:
            return
        if self.last_body_at:
            self.last_body_at = 0.0
            self.body_done_at = self.plane.now()
        if self.up is not None and self.pending is None:
            # The whole request is upstream now: the response timeout starts here, so a slow
            # upload is never the upstream's timeout.
            if self.body_mode == 2:
                self.up.transport.write(b"0\r\n\r\n")
            if self.status == 0:  # no response head yet
                sent: cython.double = self.body_done_at if self.body_done_at else self.plane.now()
                self.head_deadline = sent + self.pool.timeout

    # -- WebSocket tunnel (after a 101 the connection carries opaque bytes both ways) -------
    def tunnel_from_client(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
        elif not self.done:
            self.tunnel_pending += data  # before the upstream connection exists: sent by attach

    def tunnel_from_upstream(self, data: bytes) -> None:
        t = self.conn.transport
        if t is not None:
            t.write(data)

    def tunnel_upstream_gone(self) -> None:
        self.up = None
        t = self.conn.transport
        if t is not None:
            t.close()  # flushes what the upstream sent last (its close frame)
        self.finish()

    def tunnel_client_gone(self) -> None:
        up, self.up = self.up, None
        if up is not None and up.transport is not None:
            up.sink = None
            up.transport.close()
        self.finish(aborted=True)

    # -- response side -------------------------------------------------------------------
    def on_upstream_head(
        self, status: cython.int, reason: bytes, lines: list, special: list,
        chunked: bool, length: Any, named: frozenset | None,
    ) -> None:
        """The response head (proxy.dataplane.upstream.ResponseSink): the header lines to forward
        as they came, and the others; `length`: its Content-Length, an int, or None."""
        self.head_deadline = 0.0
        self.t_head = self.plane.clock()
        if status >= 500 and may_resend(self, "status", status):
            self.discarding = True
            self.status = status
            return
        self.status = status
        conn = self.conn
        if conn.transport is None or conn.t_is_closing():
            return
        known = _STATUS_LINES[status] if 0 <= status < 1000 else None
        if known is not None and known[0] == reason:
            line = known[1]
        else:
            line = b"HTTP/1.1 %d %s\r\n" % (status, reason.replace(b"\r", b"").replace(b"\n", b""))
            if 0 <= status < 1000 and len(reason) <= _REASON_CACHED:
                _STATUS_LINES[status] = (reason, line)  # at most one entry per status code
        if named is None:
            out = lines  # every header line as it came: the upstream's list, handed over
        else:  # rare: headers a Connection header names are dropped too
            out = []
            for i in range(0, len(lines), 4):
                if lines[i].lower() not in named:
                    out += lines[i:i + 4]
        cl = None  # the upstream's Content-Length digits (equal to `length`), as it sent them
        code: cython.Py_ssize_t
        for code, _, value in special:
            if code == H_CONTENT_LENGTH:
                cl = value
        if self.shadow_wanted:  # the header lines forwarded: read only if the mirror needs
            self.resp_lines = out[:]  # them (a byte-identical answer compares two of them)
        # The request's id, the one passed upstream and logged, never the upstream's own
        out.append(b"x-request-id: ")
        out.append(self.rid)
        out.append(b"\r\n")
        tunnel101 = self.is_tunnel and status == 101
        if tunnel101:
            for code, name, value in special:
                if code == H_UPGRADE or code == H_CONNECTION:
                    out += (name, b": ", value, b"\r\n")
            out.append(b"\r\n")
            self.response_started = True
            conn.transport.write(line + b"".join(out))
            return
        if length is not None:
            if cl is not None and (cl[0] != _ZERO or len(cl) == 1):  # no leading zero
                out.append(b"content-length: ")  # the digits as sent: no number formatted
                out.append(cl)
                out.append(b"\r\n")
            else:
                out.append(b"content-length: %d\r\n" % length)
        elif self.head_only or status in (204, 304):
            pass
        elif self.version_10:
            self.keep_alive = False
        else:
            self.resp_chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive or (conn.closing and conn.last_answer()) or self.plane.draining:
            self.keep_alive = False
            out.append(b"connection: close\r\n")
        elif self.version_10:
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.response_started = True
        if self.shadow_wanted:
            self.resp_body = []
        # flushed by flush_out() at the end of this upstream read
        if _C_LOOP and length is not None and length <= 4096 and len(out) <= _HEAD_PIECES:
            out.insert(0, line)  # the head's pieces: a small body joins them in one copy
            self.wbuf = out
        else:
            self.wbuf = [_join_after(line, out) if _C_LOOP else line + b"".join(out)]

    def on_upstream_body(self, data: bytes) -> None:
        self.resp_size += len(data)
        if self.discarding:
            return
        buf = self.wbuf
        if buf is not None:
            if self.resp_chunked:
                buf += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                buf.append(data)
        else:
            t = self.conn.transport
            if t is None:
                return
            if self.resp_chunked:
                t.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                t.write(data)
        body = self.resp_body
        if body is not None:
            if self.resp_size <= self.route.spec.shadow.max_body:
                body.append(data)
            else:
                self.resp_body = None
                self.plane.recorder.shadow_skipped(self.route.name, "body_too_large")
                self.shadow_wanted = False

    def on_upstream_done(self, reusable: bool) -> None:
        up, self.up = self.up, None
        if up is not None:
            if reusable and not self.is_tunnel:
                if self.conn.write_paused and up.transport is not None:
                    # Paused for this slow client; the next exchange on it must read again.
                    up.transport.resume_reading()
                self.pool.release(up)
            else:
                self.pool.discard(up)
        if self.discarding:
            self.discarding = False
            self._record(self.status, self.backend)
            self._fallback("5xx")
            return
        if self.resp_chunked:
            if self.wbuf is not None:
                self.wbuf.append(b"0\r\n\r\n")
            elif self.conn.transport is not None:
                self.conn.transport.write(b"0\r\n\r\n")
        self.finish()

    def flush_out(self) -> None:
        """Write what this upstream read produced for the client: one syscall (writev)."""
        buf = self.wbuf
        if buf is None:
            return
        self.wbuf = None
        conn = self.conn
        t = conn.transport
        if t is not None and not conn.t_is_closing():
            if len(buf) == 1:
                conn.t_write(buf[0])
                return
            # one buffer: cheaper than writev's per-call set-up when small
            if _C_LOOP:
                joined = _join_upto(buf, 8192)
            else:
                joined = buf[0] + buf[1] if len(buf) == 2 and len(buf[1]) <= 4096 else None
            if joined is not None:
                conn.t_write(joined)
            else:
                t.writelines(buf)

    def on_upstream_lost(self, exc: UpstreamError) -> None:
        up, self.up = self.up, None
        if up is not None:
            self.pool.forget(up)
        stale = up is not None and up.reused and not up.got_bytes
        self.upstream_failed(exc, self.pool, "stale" if stale else "reset")

    def upstream_failed(self, exc: UpstreamError, pool: UpstreamPool, failure: Failure) -> None:
        if self.done:
            return
        self.head_deadline = 0.0
        trace = self.trace
        if trace is not None:
            trace.tracer.client_end(trace, 0, exc.kind)
        if self.response_started and not self.discarding:
            # Mid-body failure: the client must see a truncated response, never a clean one.
            # Counted as the 502/504 it is, unless the answer had been held back for a slow
            # reader (an upstream may give up on a client that does not read).
            self.plane.recorder.upstream_error(pool.spec.name, exc.kind)
            timeout = isinstance(exc, UpstreamTimeout)
            self.status = 504 if timeout else 502
            if not timeout and (self.client_wait or self.conn.write_paused):
                self.blame = "proxy"
            self.keep_alive = False
            if self.conn.transport is not None:
                self.conn.transport.abort()
            self.finish(aborted=True)
            return
        if failure == "stale":
            if may_resend(self, "stale"):
                # A pooled keep-alive connection the upstream had closed: sent once more on a
                # fresh one. Not the fallback: a target that is really down still falls back.
                self.stale_retried = True
                self.pending = None
                self.dispatch()
                return
            failure = "reset"
        busy = isinstance(exc, UpstreamBusy)
        if busy:
            # The proxy's own connection cap, not evidence against the upstream: counted with
            # backend `proxy` (slow uploads could fill it on purpose).
            self.blame = "proxy"
        else:
            self.plane.recorder.upstream_error(pool.spec.name, exc.kind)
        if self.discarding or may_resend(self, failure, "connect" if busy else exc.kind):
            self.discarding = False
            if not busy:
                self._record(504 if isinstance(exc, UpstreamTimeout) else 502, self.backend)
            self.blame = None
            self._fallback(exc.kind, keep_pending=failure == "unsent")
            return
        if busy:
            self.respond_error(503, "upstream_busy", str(exc))
        elif isinstance(exc, UpstreamTlsError):
            self.respond_error(502, "upstream_tls", str(exc))
        elif isinstance(exc, UpstreamTimeout):
            self.respond_error(504, "upstream_timeout", str(exc))
        else:
            self.respond_error(502, "upstream_unavailable", str(exc))

    def _fallback(self, reason: str, keep_pending: bool = False) -> None:
        """Send the request to legacy instead (once); the target's failure has been recorded
        already, and the fallback is counted (strangler_fallbacks_total; `reason` the target's
        error kind, `busy` when its connection pool was full, or 5xx). `keep_pending`: nothing
        reached the target, so the body received so far is still waiting in `pending` and the
        rest streams after it."""
        route = self.route
        self.plane.recorder.fallback(route.name, self.step, reason)
        trace = self.trace
        if trace is not None:  # the target's 5xx, discarded
            trace.tracer.client_end(trace, self.status, None)
        self.target_failed = True
        self.retried = True
        self.backend = "legacy"
        self.pool = self.plane.pools[route.spec.legacy]
        self.t0 = self.plane.now()
        if not keep_pending:
            self.pending = None
        self.dispatch()

    def _record(self, status: int, backend: str) -> None:
        route = self.route
        self.plane.recorder.request(
            route.name if route is not None else DEFAULT_ROUTE,
            self.step,
            backend,
            status,
            self.plane.now() - self.t0,
        )

    def respond_error(self, status: int, code: str, message: str) -> None:
        self.status = status
        t = self.conn.transport
        if t is not None and not t.is_closing() and not self.response_started:
            body = error_body(status, code, message, self.request_id)
            close = (not self.keep_alive or (self.conn.closing and self.conn.last_answer())
                     or not self.client_done)
            if close:
                self.keep_alive = False
            t.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"x-request-id: %s\r\n%s\r\n%s"
                % (
                    status,
                    REASONS[status],
                    len(body),
                    self.rid,
                    b"connection: close\r\n" if close else b"",
                    body,
                )
            )
            self.response_started = True
        self.finish()

    def check_deadlines(self, now: float) -> None:
        if self.head_deadline and now > self.head_deadline and not self.done:
            self.head_deadline = 0.0
            up, self.up = self.up, None
            if up is not None:
                self.pool.discard(up)
            self.upstream_failed(
                UpstreamTimeout(f"{self.pool.spec.name} sent no response headers within "
                                f"{self.pool.spec.timeout:g}s"),
                self.pool, "timeout",
            )
        elif self.last_body_at and not self.client_done:
            self._check_body_flow(now)
        if self.status and self.up is not None and not self.done and not self.is_tunnel:
            self._check_response_flow(now)

    def _check_response_flow(self, now: float) -> None:
        """read_timeout: the upstream must keep sending its answer. The clock stands still while
        the proxy itself stopped reading it for a slow client."""
        if self.resp_size != self.read_seen or self.conn.write_paused or not self.read_mark:
            self.read_seen = self.resp_size
            self.read_mark = now
            return
        spec = self.pool.spec
        if now - self.read_mark <= spec.read_timeout:
            return
        _log.warning("upstream read timeout: the response stalled, the client connection is "
                     "cut", upstream=spec.name, request_id=self.request_id,
                     route=self.route.name if self.route is not None else DEFAULT_ROUTE,
                     status=self.status, bytes=self.resp_size, read_timeout=spec.read_timeout)
        up, self.up = self.up, None
        self.pool.discard(up)
        self.upstream_failed(UpstreamTimeout(
            f"{spec.name} sent nothing for {spec.read_timeout:g}s in the middle of its response"),
            self.pool, "timeout")

    def _check_body_flow(self, now: float) -> None:
        """While the request body arrives: a client that stalls gets 408 (its own fault, counted
        with backend `proxy`); while the proxy itself holds the client back (the upstream is not
        taking the body, or no connection yet) the client's clock stands still, and an upstream
        that takes nothing for its `timeout` has timed out."""
        t = self.conn.transport
        if t is not None and not t.is_reading():
            self.last_body_at = now
            paused = self.up_paused_at
            if paused and now - paused > self.pool.spec.timeout and self.up is not None:
                self.up_paused_at = 0.0
                up, self.up = self.up, None
                self.pool.discard(up)
                self.upstream_failed(
                    UpstreamTimeout(f"{self.pool.spec.name} took no request body for "
                                    f"{self.pool.spec.timeout:g}s"), self.pool, "timeout")
        elif now - self.last_body_at > self.plane.limits.body_idle_timeout:
            self.conn.reject(408, "request_timeout", "request body stalled", self.request_id)

    def finish(self, aborted: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self.wbuf is not None:
            if aborted:
                self.wbuf = None
            else:
                self.flush_out()
        plane = self.plane
        route = self.route
        route_name = route.name if route is not None else DEFAULT_ROUTE
        now = plane.clock()
        duration = now - self.t0
        pinned = self.override
        if pinned is None:
            seconds = (self._backend_seconds(now) if self.body_done_at or self.client_wait
                       or self.conn.write_paused else duration)
            backend = self.blame or self.backend
            if route is not None:
                _route_slot(route, plane.recorder, self.step, backend).add(self.status, seconds)
            else:
                plane.recorder.request(route_name, self.step, backend, self.status, seconds)
            inventory = plane.inventory  # proxy.dataplane.inventory; None when it is off
            if inventory is not None:
                if route is not None:
                    _inventory_slot(route, inventory, backend).count(self.method, self.path,
                                                                     self.status, seconds)
                else:
                    inventory.count(self.method, self.path, route_name, backend, self.status,
                                    seconds)
        else:  # QA traffic: counted apart, never gate or guardrail evidence
            plane.recorder.override_request(route_name, self.backend, self.status)
        log = plane.log_exchange
        trace = self.trace
        if trace is not None:
            trace.tracer.finish(self)
        line = plane.log_line
        # A sampled request's line is rendered like any other (access_line appends its trace
        # id), unless it takes the general renderer (a query string, the console format)
        if log is not None and pinned is None and (trace is None or (
                self.query is None and line is not None and line.json)):
            self.t_end = now
            if line is not None and line.scheduled and line.sample_all and len(line.buf) < 511:
                line.buf.append(self)  # AccessLog.exchange's usual case, without a call
            else:
                log(self)  # AccessLog.exchange: the line is rendered from this exchange later
        elif plane.access_log is not None:
            upstream_s = self.t_head - self.t0 if self.t_head else -1.0
            query, agent = self.query, self.user_agent
            fields = {
                "request_id": self.request_id,
                "route": route_name,
                "backend": self.backend,
                "upstream": self.pool.name,
                "method": self.method.decode("latin-1"),
                "path": self.path.decode("latin-1"),
                "query": query.decode("latin-1") if query is not None else None,
                "status": self.status,
                "duration_ms": round(duration * 1000, 3),
                "upstream_ms": round(upstream_s * 1000, 3) if upstream_s >= 0 else None,
                "bytes_in": self.req_body_size,
                "bytes_out": self.resp_size,
                "client": self.conn.peer,
                "user_agent": agent.decode("latin-1") if agent is not None else None,
                "fallback": self.target_failed,
            }
            if pinned is not None:
                fields["override"] = pinned
            if trace is not None:
                fields["trace_id"] = trace.trace_hex.decode()
            plane.access_log(fields)
        if self.shadow_wanted and not aborted and plane.shadow is not None:
            plane.shadow.offer(self)
        self.resp_body = None
        self.conn.exchange_finished(self, now)

    def access_line(self, log: Any, state: LineState | None = None) -> bytes:
        """This exchange's access-log line, as bytes, rendered by `log`'s templates and caches
        (proxy.dataplane.access_log.AccessLog, which calls it for each finished exchange of a
        batch). It lives here so that the compiled data plane reads the exchange's fields as C
        values. The request id needs no JSON escaping (one of ours, or a client's that matched
        [A-Za-z0-9_.:-]{1,128}), nor does a path of printable ASCII without `"` or `\\` (the
        usual one). `state`: `log.line`, when the caller has it."""
        if state is None:
            state = log.line
        query = self.query
        if query is not None or not state.json:
            return log.render_exchange(self)
        route = self.route
        route_name = route.name if route is not None else DEFAULT_ROUTE
        t0 = self.t0
        t_head = self.t_head
        t_end = self.t_end
        now = t_end + state.wall
        second = int(now)
        if second != state.second:
            log._timestamp(now)
        quoted = state.quoted_b
        conn = self.conn
        agent = self.user_agent
        who = conn.log_who  # the connection's last client/agent part: agents repeat
        last = conn.log_agent
        if who is None or not (agent is last or (agent is not None and last is not None
                                                  and agent == last)):
            client = conn.peer
            who = quoted.get((client, agent))
            if who is None:
                who = log._cache_b((client, agent), log._who(client, agent))
            conn.log_who = who
            conn.log_agent = agent
        backend = self.backend
        upstream = self.pool.name
        method = self.method
        names = conn.log_names  # the connection's last route/backend/upstream/method part
        if names is None or not (route_name is conn.log_route and backend is conn.log_backend
                                 and upstream is conn.log_upstream and method == conn.log_method):
            names = quoted.get((route_name, backend, upstream, method))
            if names is None:
                names = log._cache_b((route_name, backend, upstream, method),
                                     log._names(route_name, backend, upstream, method))
            conn.log_names = names
            conn.log_route = route_name
            conn.log_backend = backend
            conn.log_upstream = upstream
            conn.log_method = method
        path = self.path
        # A canonical path (proxy.config.paths) holds no control character, space or backslash:
        # ASCII without '"' goes into the JSON string as it is (the template has the quotes).
        if not (_json_plain(path) if _C_LOOP else path.isascii() and _QUOTE not in path):
            path = _json_string(path.decode("latin-1"))[1:-1].encode()
        fallback = b"true" if self.target_failed else b"false"
        trace = self.trace
        if trace is not None:  # the key the general renderer puts after "fallback"
            fallback = fallback + b',"trace_id":"' + trace.trace_hex + b'"'
        if _C_LOOP:
            line = self._c_line(state.literals[0 if t_head else 1], names, path, who,
                                fallback, state.prefix_b, now - second, state.literals_len)
            if line is not None:
                return line
        if t_head:
            return state.blines[1] % (self.rid, names, path, self.status, (t_end - t0) * 1000,
                                      (t_head - t0) * 1000, self.req_body_size, self.resp_size,
                                      who, fallback, state.prefix_b, (now - second) * 1e6)
        return state.blines[3] % (self.rid, names, path, self.status, (t_end - t0) * 1000,
                                  self.req_body_size, self.resp_size, who, fallback,
                                  state.prefix_b, (now - second) * 1e6)

    def _c_line(self, literals: tuple, names: bytes, path: bytes, who: bytes,
                fallback: bytes, prefix: bytes, fraction: float,
                fixed) -> bytes | None:  # fixed: Py_ssize_t (exchange.pxd)
        """`access_line`'s line written by C into a buffer: the template's `literals` and the
        fields between them, the numbers by `_put_int` (compiled only; Python's %-format makes
        an object of each number first, and C's snprintf parses its format each time). None
        when it would not fit in `_LINE_MAX` bytes (a long path or user agent)."""
        buf = cython.declare(cython.char[4096])
        rid: bytes = self.rid
        if fixed + len(rid) + len(names) + len(path) + len(who) + len(fallback) + 256 > \
                _LINE_MAX:
            return None
        t0: cython.double = self.t0
        took: cython.longlong = cython.cast(cython.longlong, (self.t_end - t0) * 1e6 + 0.5)
        head: cython.longlong = cython.cast(cython.longlong, (self.t_head - t0) * 1e6 + 0.5)
        if took < 0 or head < 0 or self.status < 0 or self.req_body_size < 0 or (
                self.resp_size < 0 or not 0.0 <= fraction < 1.0):
            return None  # never so; Python's format says it rather than a digit loop
        p: cython.Py_ssize_t = _put(buf, 0, literals[0], rid)
        p = _put(buf, p, literals[1], names)
        p = _put(buf, p, literals[2], path)
        p = _put_int(buf, _put(buf, p, literals[3], b""), self.status, 1)
        p = _put_ms(buf, _put(buf, p, literals[4], b""), took)
        i: cython.Py_ssize_t = 5
        if self.t_head:
            p = _put_ms(buf, _put(buf, p, literals[5], b""), head)
            i = 6
        p = _put_int(buf, _put(buf, p, literals[i], b""), self.req_body_size, 1)
        p = _put_int(buf, _put(buf, p, literals[i + 1], b""), self.resp_size, 1)
        p = _put(buf, p, literals[i + 2], who)
        p = _put(buf, p, literals[i + 3], fallback)
        p = _put(buf, p, literals[i + 4], prefix)
        p = _put_int(buf, _put(buf, p, literals[i + 5], b""),
                     cython.cast(cython.longlong, fraction * 1e6), 6)
        p = _put(buf, p, literals[i + 6], b"")
        return buf[:p]

    def _backend_seconds(self, now: float) -> float:
        """The backend's share of the exchange, the latency its evidence records: from the
        request's last body byte (or its head) to the end of the answer, less the time the
        answer waited for a slow reader."""
        start = self.body_done_at if self.body_done_at > self.t0 else self.t0
        wait = self.client_wait
        conn = self.conn
        if conn.write_paused and conn.write_paused_at > start:
            wait += now - conn.write_paused_at
        return max(0.0, now - start - wait)

    def client_gone(self, status: int = 499) -> None:
        """The client closed its connection first (499), or took nothing of the answer for
        `limits.send_timeout` (408; the caller aborted its connection): counted with backend
        `proxy`, never as the backend's evidence (a client chooses when to leave). The upstream
        connection is closed, never pooled mid-answer."""
        if self.done:
            return
        up, self.up = self.up, None
        if up is not None:
            self.pool.discard(up)
        self.status = status
        self.blame = "proxy"
        self.shadow_wanted = False
        self.finish(aborted=True)

    def abandon(self) -> None:
        """The connection refused this request mid-way: drop the upstream side, no response."""
        if self.done:
            return
        self.done = True
        up, self.up = self.up, None
        if up is not None:
            self.pool.discard(up)

    # -- flow control from the upstream connection ---------------------------------------
    def upstream_pause_writing(self) -> None:
        self.up_paused_at = self.plane.now()
        t = self.conn.transport
        if t is not None:
            t.pause_reading()

    def upstream_resume_writing(self) -> None:
        self.up_paused_at = 0.0
        t = self.conn.transport
        if t is not None and not self.conn.queue:
            t.resume_reading()
