"""The access log: the one log line written per request, cheaply.

It skips structlog's processor chain: the data plane hands over a tuple, lines are rendered in
batches just after the responses of an event-loop iteration have been written (never while a
client waits, and never hundreds at once in the periodic flush: that stall showed in the p99
latency). Each such batch goes into a 64 KiB buffer of our own on the stream's file descriptor
(a `write(2)` when it fills, like nginx's `access_log ... buffer=64k`, not one per line:
PYTHONUNBUFFERED, as in the Docker image, makes sys.stdout write through), so only that buffer
is held, not 200 ms of lines; the flush loop empties it every ~200 ms, as do shutdown (SIGTERM
drains, then flushes) and `atexit`. Its lines have the same shape as every other structlog JSON
line (`event`, `level`, `logger`, `process`, `timestamp`, fields; see `proxy.config.logsetup`).
`sample` keeps a fraction of lines at high rates (errors are always kept).

The fields of a data-plane line (docs/contract.md, "Access log", is the reference):
request_id, route, backend, upstream, method, path (canonical, without the query), query (as
received, without `?`; null when the target had none), status, duration_ms (request head to
the end of the response), upstream_ms (request head to the response head of the upstream that
answered; null when none did), bytes_in / bytes_out (request / response body bytes, as read
from the client and relayed from the upstream: 0 for an answer strangler made itself), client
(the TCP peer's address), user_agent (null when absent), fallback. All of them are values the
data plane holds anyway; the per-request cost is appending them to a tuple.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import re
import select
import stat
import sys
import time
import weakref
from json.encoder import encode_basestring_ascii as _q
from typing import IO, Any

from proxy.config import logsetup
from proxy.dataplane.exchange import DEFAULT_ROUTE, LineState, render_lines

WRITE_BUFFER = 64 * 1024  # bytes of rendered lines held before a write(2)
PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # a pipe write up to this size is never split


# The data plane's access fields in the order it builds them; such a dict is rendered by one
# %-format (strings escaped by json's own C escaper: the same bytes as json.dumps, ~2.5x faster).
_ACCESS_KEYS = ("request_id", "route", "backend", "upstream", "method", "path", "status",
                "duration_ms", "fallback", "event", "level", "timestamp")
_ACCESS_LINE = (
    '{"request_id":%s,"route":%s,"backend":%s,"upstream":%s,"method":%s,"path":%s,"status":%d,'
    '"duration_ms":%r,"fallback":%s,"event":"access","level":"info","timestamp":%s}\n'
)


# The line of `AccessLog.request` (duration_ms and upstream_ms with 3 decimals), in four
# variants (query and upstream_ms present or null) so that one %-format renders it; the part
# from "event" on is filled in once per AccessLog (it names the process).
LOGGER = "strangler.access"


def _request_lines(process: str) -> tuple[str, str, str, str]:
    """(query, upstream_ms) both present / query null / upstream_ms null / both null."""
    tail = (f',"event":"access","level":"info","logger":"{LOGGER}","process":'
            f'{_q(process)},"timestamp":"').replace("%", "%%")
    head = '{"request_id":%s,%s,"path":%s,"query":'
    out = []
    for query in ("%s", "null"):
        for upstream in ("%.3f", "null"):
            out.append(f'{head}{query},"status":%d,"duration_ms":%.3f,"upstream_ms":{upstream},'
                       f'"bytes_in":%d,"bytes_out":%d,%s,"fallback":%s{tail}%s.%06dZ"}}\n')
    return out[0], out[2], out[1], out[3]


_CONVERSION = re.compile(rb"(%%|%s|%d|%\.3f|%06d)")


def _literals(line: bytes) -> tuple[bytes, ...]:
    """A %-format line as the literal bytes between its fields (the compiled Exchange writes the
    fields between them itself)."""
    out, lit = [], b""
    for i, part in enumerate(_CONVERSION.split(line)):
        if i % 2 == 0:
            lit += part
        elif part == b"%%":
            lit += b"%"
        else:
            out.append(lit)
            lit = b""
    out.append(lit)
    return tuple(out)


def _exchange_lines(lines: tuple[str, ...]) -> tuple[bytes, ...]:
    """The exchange's lines (Exchange.access_line): the request id and the path are put in
    quotes by the template."""
    return tuple(line.replace('{"request_id":%s,', '{"request_id":"%s",', 1)
                 .replace(',"path":%s,', ',"path":"%s",', 1)
                 .encode("ascii", "backslashreplace") for line in lines)


def _json_line(fields: dict) -> str:
    if tuple(fields) == _ACCESS_KEYS:
        f = fields
        status, ms, fb = f["status"], f["duration_ms"], f["fallback"]
        if type(status) is int and type(ms) is float and type(fb) is bool:
            try:
                return _ACCESS_LINE % (
                    _q(f["request_id"]), _q(f["route"]), _q(f["backend"]), _q(f["upstream"]),
                    _q(f["method"]), _q(f["path"]), status, ms, "true" if fb else "false",
                    _q(f["timestamp"]),
                )
            except TypeError:  # a field that is not a str: the general renderer below
                pass
    return json.dumps(fields, separators=(",", ":")) + "\n"


_LOGS: weakref.WeakSet[AccessLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """An exit by an exception (not SIGKILL) still writes the lines of what was served."""
    for log in list(_LOGS):
        log.flush()


class _LineWriter:
    """Rendered lines for one file descriptor: held until WRITE_BUFFER bytes (or a flush), then
    written by os.write in pieces of at most `limit` bytes that each end at a line's end, so
    that processes sharing the descriptor (workers on one stdout) never split each other's
    lines: a regular file serializes whole writes, a pipe only those up to PIPE_BUF."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= WRITE_BUFFER:
            self.flush()

    def flush(self) -> None:
        buf = self.buf
        start, end, limit = 0, len(buf), self.limit
        view = memoryview(buf)
        try:
            while start < end:
                stop = end
                if end - start > limit:
                    stop = buf.rfind(b"\n", start, start + limit) + 1
                    if stop <= start:  # one line longer than `limit`: it goes out whole
                        stop = buf.find(b"\n", start + limit) + 1 or end
                start += os.write(self.fd, view[start:stop])
        except OSError:  # a closed or broken stdout must not stop serving: lines dropped
            start = end
        finally:
            view.release()
            del buf[:start]


def _line_writer(stream: IO[str], shared: bool) -> _LineWriter | None:
    """A writer on `stream`'s file descriptor, or None when it has none (StringIO: lines are
    written to the stream itself)."""
    try:
        fd = stream.fileno()
        stream.flush()  # what the stream already holds comes first
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    pipe = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    return _LineWriter(fd, PIPE_BUF if shared and pipe else WRITE_BUFFER)


class AccessLog:
    """Buffered access lines: out when 64 KiB are rendered, at `flush` (the ~200 ms loop),
    and, outside an event loop, every 512 entries.

    `__call__(fields)` takes a dict; the data plane uses `request(...)`, which only appends a
    tuple (same bytes as `__call__` would produce; the quoted forms of route, backend, upstream
    and method names are cached). Inside an event loop the tuples appended during one loop
    iteration are rendered together by one `call_soon` callback, which runs after that
    iteration's I/O callbacks, i.e. after the responses went out; outside a loop they are
    rendered at flush."""

    def __init__(self, stream: IO[str] | None = None, sample: float = 1.0,
                 fmt: str = "json", shared: bool = False, process: str | None = None) -> None:
        """`shared`: other processes write to the same stream (workers on one stdout).
        `process`: the name in each line (default: this process's, from logsetup)."""
        self.stream = stream or sys.stdout
        self.process = process if process is not None else logsetup.process_name()
        self._lines = _request_lines(self.process)
        blines = _exchange_lines(self._lines)
        # the same two lines without a query, as literals (the compiled Exchange writes them)
        literals = (_literals(blines[1]), _literals(blines[3]))
        # What Exchange.access_line reads (templates, caches, clock; typed when compiled) and,
        # for Exchange.finish, `buf` (rendered lines (str), data plane tuples and finished
        # exchanges, in order), `scheduled` (a render is scheduled) and `sample_all`.
        self.line = LineState(blines, literals, max(sum(map(len, x)) for x in literals),
                              fmt != "console", sample >= 1.0)
        self.sample = sample
        self.fmt = fmt
        self._out = _line_writer(self.stream, shared)
        self._encoding = getattr(self.stream, "encoding", None) or "utf-8"
        self._dirty = False  # something written since the last flush
        self._rand = random.random
        self._clock = time.time
        self.line.wall = time.time() - time.monotonic()  # wall clock - monotonic, per batch
        self._prefix = ""
        self._quoted: dict[tuple, str] = {}
        self._call_soon: Any = None  # the running loop's call_soon, found on first use
        _LOGS.add(self)

    def _timestamp(self, now: float) -> str:
        """ISO 8601 in UTC like structlog's TimeStamper; strftime once a second, not per line."""
        second = int(now)
        line = self.line
        if second != line.second:
            line.second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            line.prefix_b = self._prefix.encode()
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"

    def __call__(self, fields: dict) -> None:
        if self.sample < 1.0 and fields.get("status", 0) < 500 and self._rand() >= self.sample:
            return
        fields["event"] = "access"
        fields["level"] = "info"
        fields["logger"] = LOGGER
        fields["process"] = self.process
        fields["timestamp"] = self._timestamp(time.time())
        if self.fmt == "console":
            pinned = fields.get("override")  # a pinned (QA) request: proxy.dataplane.overrides
            self.line.buf.append(
                f"{fields['status']} {fields['method']} {fields['path']} -> {fields['route']}"
                f"/{fields['backend']} {fields['duration_ms']}ms id={fields['request_id']}"
                + (f" override={pinned}\n" if pinned else "\n")
            )
        else:
            self.line.buf.append(_json_line(fields))
        if len(self.line.buf) >= 512:
            self.flush()

    def request(self, request_id: str, route: str, backend: str, upstream: str, method: bytes,
                path: bytes, status: int, seconds: float, fallback: bool,
                query: bytes | None = None, upstream_seconds: float = -1.0, bytes_in: int = 0,
                bytes_out: int = 0, client: str = "", user_agent: bytes | None = None) -> None:
        """One proxied request (the data plane's line); rendered after the response went out.
        `upstream_seconds` < 0: no upstream answered."""
        if self.sample < 1.0 and status < 500 and self._rand() >= self.sample:
            return
        buf = self.line.buf
        buf.append((request_id, route, backend, upstream, method, path, status, seconds,
                    fallback, self._clock(), query, upstream_seconds, bytes_in, bytes_out,
                    client, user_agent))
        if len(buf) >= 512:
            self.flush()
        elif not self.line.scheduled:
            self._schedule_render()

    def exchange(self, ex: Any) -> None:
        """One proxied request: the data plane's exchange itself (proxy.dataplane.exchange), its
        fields read when the line is rendered, after the response went out (no tuple, no clock
        read per request: `ex.t_end` is the monotonic time it finished, made wall-clock time
        at rendering). The exchange is done: nothing changes it any more."""
        if self.sample < 1.0 and ex.status < 500 and self._rand() >= self.sample:
            return
        buf = self.line.buf
        buf.append(ex)
        if len(buf) >= 512:
            self.flush()
        elif not self.line.scheduled:
            self._schedule_render()

    def _schedule_render(self) -> None:
        self.line.scheduled = True  # until the next render (call_soon's, or the flush's)
        call_soon = self._call_soon
        if call_soon is None:
            try:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            except RuntimeError:  # no loop (tests, tools): rendered at flush
                return
        call_soon(self._render_pending)

    def _render_pending(self) -> None:
        """Render what was appended since the last call into the write buffer."""
        self.line.scheduled = False
        buf = self.line.buf
        if not buf:
            return
        self.line.buf = []
        # monotonic -> wall clock for the exchanges' end times: two clock reads per batch
        self.line.wall = time.time() - time.monotonic()
        # An exchange's line is rendered as bytes (ASCII: every string in it is JSON-escaped),
        # the other entries as str, then encoded (exchange.render_lines: compiled)
        data = render_lines(self, buf, self._encoding)
        self._dirty = True
        try:
            if self._out is not None:
                self._out.write(data)
            else:
                self.stream.write(data.decode(self._encoding))
        except (OSError, ValueError):  # a closed or broken stdout must not stop serving
            pass

    def _names(self, route: str, backend: str, upstream: str, method: bytes) -> str:
        """The quoted route/backend/upstream/method part of a line (few distinct values)."""
        key = (route, backend, upstream, method)
        part = self._quoted.get(key)
        if part is None:
            part = (f'"route":{_q(route)},"backend":{_q(backend)},"upstream":{_q(upstream)},'
                    f'"method":{_q(method.decode("latin-1"))}')
            if len(self._quoted) < 4096:
                self._quoted[key] = part
        return part

    def _who(self, client: str, user_agent: bytes | None) -> str:
        """The quoted client/user_agent part of a line (cached: clients and agents repeat)."""
        key = (client, user_agent)
        part = self._quoted.get(key)
        if part is None:
            agent = _q(user_agent.decode("latin-1")) if user_agent is not None else "null"
            part = f'"client":{_q(client)},"user_agent":{agent}'
            if len(self._quoted) < 4096:
                self._quoted[key] = part
        return part

    def render_exchange(self, ex: Any) -> bytes:
        """The line of an exchange with a query string, or in the console format; the usual
        line is rendered by `Exchange.access_line` (compiled with the data plane)."""
        route = ex.route
        t0, t_head, t_end = ex.t0, ex.t_head, ex.t_end
        return self._render((ex.request_id, route.name if route is not None else DEFAULT_ROUTE,
                             ex.backend, ex.pool.name, ex.method, ex.path, ex.status, t_end - t0,
                             ex.target_failed, t_end + self.line.wall, ex.query,
                             t_head - t0 if t_head else -1.0, ex.req_body_size, ex.resp_size,
                             ex.conn.peer, ex.user_agent), '"' + ex.request_id + '"').encode(
                                 self._encoding, "backslashreplace")

    def _cache_b(self, key: tuple, part: str) -> bytes:
        data = part.encode()
        quoted = self.line.quoted_b
        if len(quoted) < 4096:
            quoted[key] = data
        return data

    def _render(self, entry: tuple, rid_q: str | None = None) -> str:
        """`rid_q`: the request id already quoted."""
        (rid, route, backend, upstream, method, path, status, seconds, fallback, now, query,
         up_seconds, bytes_in, bytes_out, client, user_agent) = entry
        if self.fmt == "console" or type(rid) is not str or type(route) is not str:
            fields = {"request_id": rid, "route": route, "backend": backend,
                      "upstream": upstream, "method": method.decode("latin-1"),
                      "path": path.decode("latin-1"),
                      "query": query.decode("latin-1") if query is not None else None,
                      "status": status, "duration_ms": round(seconds * 1000, 3),
                      "upstream_ms": round(up_seconds * 1000, 3) if up_seconds >= 0 else None,
                      "bytes_in": bytes_in, "bytes_out": bytes_out, "client": client,
                      "user_agent": user_agent.decode("latin-1") if user_agent else None,
                      "fallback": fallback}
            if self.fmt == "console":
                target = fields["path"] + (f"?{fields['query']}" if query is not None else "")
                return (f"{status} {fields['method']} {target} -> {route}/{backend} "
                        f"{fields['duration_ms']}ms {bytes_out}B {client} id={rid}\n")
            fields.update(event="access", level="info", logger=LOGGER, process=self.process,
                          timestamp=self._timestamp(now))
            return _json_line(fields)
        second = int(now)
        if second != self.line.second:
            self._timestamp(now)
        who = self._quoted.get((client, user_agent)) or self._who(client, user_agent)
        names = self._quoted.get((route, backend, upstream, method)) or \
            self._names(route, backend, upstream, method)
        fb = "true" if fallback else "false"
        micro = (now - second) * 1e6
        both, no_query, no_upstream, neither = self._lines
        if rid_q is None:
            rid_q = _q(rid)
        if query is None:
            if up_seconds >= 0:
                return no_query % (rid_q, names, _q(path.decode("latin-1")), status,
                                   seconds * 1000, up_seconds * 1000, bytes_in, bytes_out, who,
                                   fb, self._prefix, micro)
            return neither % (rid_q, names, _q(path.decode("latin-1")), status, seconds * 1000,
                              bytes_in, bytes_out, who, fb, self._prefix, micro)
        q = _q(query.decode("latin-1"))
        if up_seconds >= 0:
            return both % (rid_q, names, _q(path.decode("latin-1")), q, status, seconds * 1000,
                           up_seconds * 1000, bytes_in, bytes_out, who, fb, self._prefix, micro)
        return no_upstream % (rid_q, names, _q(path.decode("latin-1")), q, status,
                              seconds * 1000, bytes_in, bytes_out, who, fb, self._prefix, micro)

    def flush(self) -> None:
        self._render_pending()
        if self._dirty:
            self._dirty = False
            try:
                (self._out or self.stream).flush()
            except (OSError, ValueError):
                pass
