"""structlog set-up: JSON lines by default, `console` for humans; a cheap access log.

Everything goes through one renderer: structlog loggers, and the stdlib `logging` records of
libraries (aiohttp, asyncio, the Unleash SDK) and `warnings`, via structlog's ProcessorFormatter
on the root logger, so no line on stderr is in another format.

The access log is the one log written per request, so it skips structlog's processor chain:
the data plane hands over a tuple, lines are rendered in batches just after the responses of an
event-loop iteration have been written (never while a client waits, and never hundreds at once
in the periodic flush: that stall showed in the p99 latency), and the flush loop writes them out
every ~200 ms. Its lines have the same shape as every other structlog JSON line (`event`, `level`,
`timestamp`, fields). `sample` keeps a fraction of lines at high rates (errors are always kept).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from json.encoder import encode_basestring_ascii as _q
from typing import IO, Any

import structlog


def configure(fmt: str = "json", level: str = "info", stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    logging.captureWarnings(True)


# The data plane's access fields in the order it builds them; such a dict is rendered by one
# %-format (strings escaped by json's own C escaper: the same bytes as json.dumps, ~2.5x faster).
_ACCESS_KEYS = ("request_id", "route", "backend", "upstream", "method", "path", "status",
                "duration_ms", "fallback", "event", "level", "timestamp")
_ACCESS_LINE = (
    '{"request_id":%s,"route":%s,"backend":%s,"upstream":%s,"method":%s,"path":%s,"status":%d,'
    '"duration_ms":%r,"fallback":%s,"event":"access","level":"info","timestamp":%s}\n'
)


# The same line for `AccessLog.request` (duration_ms always with 3 decimals).
_REQUEST_LINE = (
    '{"request_id":%s,%s,"path":%s,"status":%d,"duration_ms":%.3f,"fallback":%s,'
    '"event":"access","level":"info","timestamp":"%s.%06dZ"}\n'
)


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


class AccessLog:
    """Buffered access lines, written by `flush` (the ~200 ms loop) or every 512 entries.

    `__call__(fields)` takes a dict; the data plane uses `request(...)`, which only appends a
    tuple (same bytes as `__call__` would produce; the quoted forms of route, backend, upstream
    and method names are cached). Inside an event loop the tuples appended during one loop
    iteration are rendered together by one `call_soon` callback, which runs after that
    iteration's I/O callbacks, i.e. after the responses went out; outside a loop they are
    rendered at flush."""

    def __init__(self, stream: IO[str] | None = None, sample: float = 1.0,
                 fmt: str = "json") -> None:
        self.stream = stream or sys.stdout
        self.sample = sample
        self.fmt = fmt
        self.buf: list[Any] = []  # rendered lines (str) and data plane tuples, in order
        self._rand = random.random
        self._clock = time.time
        self._second = -1
        self._prefix = ""
        self._quoted: dict[tuple, str] = {}
        self._rendered = 0  # buf[:_rendered] holds no tuples
        self._render_scheduled = False
        self._call_soon: Any = None  # the running loop's call_soon, found on first use

    def _timestamp(self, now: float) -> str:
        """ISO 8601 in UTC like structlog's TimeStamper; strftime once a second, not per line."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"

    def __call__(self, fields: dict) -> None:
        if self.sample < 1.0 and fields.get("status", 0) < 500 and self._rand() >= self.sample:
            return
        fields["event"] = "access"
        fields["level"] = "info"
        fields["timestamp"] = self._timestamp(time.time())
        if self.fmt == "console":
            pinned = fields.get("override")  # a pinned (QA) request: proxy.overrides
            self.buf.append(
                f"{fields['status']} {fields['method']} {fields['path']} -> {fields['route']}"
                f"/{fields['backend']} {fields['duration_ms']}ms id={fields['request_id']}"
                + (f" override={pinned}\n" if pinned else "\n")
            )
        else:
            self.buf.append(_json_line(fields))
        if len(self.buf) >= 512:
            self.flush()

    def request(self, request_id: str, route: str, backend: str, upstream: str, method: bytes,
                path: bytes, status: int, seconds: float, fallback: bool) -> None:
        """One proxied request (the data plane's line); rendered at flush time."""
        if self.sample < 1.0 and status < 500 and self._rand() >= self.sample:
            return
        buf = self.buf
        buf.append((request_id, route, backend, upstream, method, path, status, seconds,
                    fallback, self._clock()))
        if len(buf) >= 512:
            self.flush()
        elif not self._render_scheduled:
            self._schedule_render()

    def _schedule_render(self) -> None:
        call_soon = self._call_soon
        if call_soon is None:
            try:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            except RuntimeError:  # no loop (tests, tools): rendered at flush
                return
        self._render_scheduled = True
        call_soon(self._render_pending)

    def _render_pending(self) -> None:
        """Render the tuples appended since the last call (the lines stay buffered)."""
        self._render_scheduled = False
        buf = self.buf
        start = self._rendered
        if start < len(buf):
            render = self._render
            buf[start:] = [x if type(x) is str else render(x) for x in buf[start:]]
            self._rendered = len(buf)

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

    def _render(self, entry: tuple) -> str:
        rid, route, backend, upstream, method, path, status, seconds, fallback, now = entry
        if self.fmt == "console" or type(rid) is not str or type(route) is not str:
            fields = {"request_id": rid, "route": route, "backend": backend,
                      "upstream": upstream, "method": method.decode("latin-1"),
                      "path": path.decode("latin-1"), "status": status,
                      "duration_ms": round(seconds * 1000, 3), "fallback": fallback}
            if self.fmt == "console":
                return (f"{status} {fields['method']} {fields['path']} -> {route}/{backend} "
                        f"{fields['duration_ms']}ms id={rid}\n")
            fields.update(event="access", level="info", timestamp=self._timestamp(now))
            return _json_line(fields)
        second = int(now)
        if second != self._second:
            self._timestamp(now)
        return _REQUEST_LINE % (
            _q(rid), self._names(route, backend, upstream, method), _q(path.decode("latin-1")),
            status, seconds * 1000, "true" if fallback else "false", self._prefix,
            (now - second) * 1e6,
        )

    def flush(self) -> None:
        if self.buf:
            self._render_pending()
            buf, self.buf = self.buf, []
            self._rendered = 0
            data = "".join(buf)
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                pass
