"""OpenTelemetry tracing of the request path: W3C trace context in and out, spans as records.

Off unless routes.yaml has `tracing:`. Sampling is decided once, at the request's head
(`Tracer.sample`): a valid incoming `traceparent` decides (sampled flag set: traced; clear:
not), otherwise one draw against `sample_ratio`. An unsampled request gets no span work at
all: no ids, no clock reads, its `traceparent` forwarded untouched.

A sampled request gets a `Trace`: a SERVER span for the proxy hop (route, backend, upstream,
weight, step, pin, fallback, status) and a CLIENT span per upstream attempt (a fallback to
legacy is a second one), whose id goes upstream in `traceparent`. A shadow mirror of a sampled
request is a new trace whose CLIENT span is marked `strangler.shadow=true` and linked to the
primary's server span, so the target's traces tell shadow calls from real ones (a mirror never
carries the client's trace context, sampled or not: proxy.dataplane.mirror).

Finished spans are plain tuples handed to the exporter (proxy.dataplane.otlp), which batches
and sends them off the request path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from proxy.config.spec import TracingSpec

__all__ = ["CLIENT", "SERVER", "Span", "Trace", "Tracer", "parse_traceparent"]

SERVER, CLIENT = 2, 3  # OTLP SpanKind
_HEX = frozenset(b"0123456789abcdef")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

# (trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, links, error):
# ids as bytes (16, 8, 8 or b""), attributes ((key, str | int | float | bool), ...), links
# ((trace_id, span_id), ...), error: a message or None.
Span = tuple[bytes, bytes, bytes, str, int, int, int, tuple, tuple, str | None]


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent id, sampled) of a W3C `traceparent` (version 00, or a later version
    read as 00); None when it is not valid (then it is as if there were none)."""
    value = value.strip()
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version, trace, parent, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if version == b"ff" or (version == b"00" and len(value) != 55) or (
            len(value) > 55 and value[55:56] != b"-"):
        return None
    if not (set(version + trace + parent + flags) <= _HEX):
        return None
    if trace == _ZERO_TRACE or parent == _ZERO_SPAN:
        return None
    return bytes.fromhex(trace.decode()), bytes.fromhex(parent.decode()), bool(
        int(flags, 16) & 1)


class Trace:
    """A sampled request's trace state, kept on its exchange."""

    __slots__ = ("client", "parent", "span_id", "start", "trace_hex", "trace_id", "tracer")

    def __init__(self, tracer: Tracer, trace_id: bytes, span_id: bytes, parent: bytes,
                 start: int) -> None:
        self.tracer = tracer  # the one that sampled it (a reload may install another)
        self.trace_id = trace_id
        self.trace_hex = trace_id.hex().encode()
        self.span_id = span_id
        self.parent = parent
        self.start = start
        # the upstream attempt in progress: [span id, start ns, upstream, host, port] or None
        self.client: list[Any] | None = None


class Tracer:
    """Sampling, span ids and span records for one data plane; `emit` takes finished spans
    (the exporter's `add`)."""

    def __init__(self, spec: TracingSpec, emit: Callable[[Span], None],
                 rand: Callable[[], float] = random.random,
                 ids: Callable[[int], int] = random.getrandbits,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.spec = spec
        self.ratio = spec.sample_ratio
        self.emit = emit
        self.rand = rand
        self.ids = ids
        self.clock = clock

    # -- at the request's head (hot path) ------------------------------------------------
    def sample(self, hdict: dict[bytes, bytes], drawn: bool = False) -> Trace | None:
        """`drawn`: the caller has drawn against `ratio` for a request without `traceparent`,
        and it came out sampled (the data plane does, so that an unsampled request costs no
        call)."""
        tp = hdict.get(b"traceparent")
        if tp is not None:
            parsed = parse_traceparent(tp)
            if parsed is not None:
                trace_id, parent, sampled = parsed
                if not sampled:
                    return None  # the caller decided: forwarded untouched, no span work
                return Trace(self, trace_id, self._span_id(), parent, self.clock())
        if not drawn and self.ratio < 1.0 and self.rand() >= self.ratio:
            return None
        return Trace(self, self._trace_id(), self._span_id(), b"", self.clock())

    def _trace_id(self) -> bytes:
        return (self.ids(128) or 1).to_bytes(16, "big")

    def _span_id(self) -> bytes:
        return (self.ids(64) or 1).to_bytes(8, "big")

    # -- upstream attempts -----------------------------------------------------------------
    def client_start(self, trace: Trace, upstream: str, host: str, port: int) -> bytes:
        """Open a CLIENT span for an upstream attempt; the `traceparent` header line it sends."""
        if trace.client is not None:
            self.client_end(trace, 0, "abandoned")
        span_id = self._span_id()
        trace.client = [span_id, self.clock(), upstream, host, port]
        return b"traceparent: 00-%s-%s-01\r\n" % (trace.trace_hex, span_id.hex().encode())

    def client_end(self, trace: Trace, status: int, error: str | None) -> None:
        client = trace.client
        if client is None:
            return
        trace.client = None
        span_id, start, upstream, host, port = client
        attrs: tuple = (("strangler.upstream", upstream), ("server.address", host),
                        ("server.port", port))
        if status:
            attrs += (("http.response.status_code", status),)
        if error is None and status >= 500:
            error = f"HTTP {status}"
        if error is not None:
            attrs += (("error.type", error),)
        self.emit((trace.trace_id, span_id, trace.span_id, upstream, CLIENT, start,
                   self.clock(), attrs, (), error))

    # -- the end of the exchange -----------------------------------------------------------
    def finish(self, ex: Any) -> None:
        """The SERVER span of a finished exchange (and its last CLIENT span)."""
        trace: Trace = ex.trace
        status = ex.status
        if trace.client is not None:
            self.client_end(trace, status if ex.blame is None else 0,
                            "client_gone" if status == 499 else None)
        route = ex.route
        name = route.name if route is not None else "_default"
        attrs: tuple = (
            ("http.request.method", ex.method.decode("latin-1")),
            ("url.path", ex.path.decode("latin-1")),
            ("http.response.status_code", status),
            ("strangler.route", name),
            ("strangler.backend", ex.backend),
            ("strangler.upstream", ex.pool.name),
            ("strangler.request_id", ex.request_id),
            ("strangler.fallback", bool(ex.target_failed)),
        )
        if route is not None:
            attrs += (("strangler.weight", route.state.weight_bp / 100),
                      ("strangler.step", ex.step))
        if ex.override is not None:
            attrs += (("strangler.pin", ex.override),)
        error = f"HTTP {status}" if status >= 500 else None
        self.emit((trace.trace_id, trace.span_id, trace.parent,
                   f"{ex.method.decode('latin-1')} {name}", SERVER, trace.start, self.clock(),
                   attrs, (), error))

    # -- shadow mirrors --------------------------------------------------------------------
    def shadow_start(self, primary: Trace) -> tuple[bytes, bytes, int, bytes]:
        """A mirror's own trace: (trace id, span id, start, `traceparent` header line)."""
        trace_id, span_id = self._trace_id(), self._span_id()
        line = b"traceparent: 00-%s-%s-01\r\n" % (trace_id.hex().encode(),
                                                 span_id.hex().encode())
        return trace_id, span_id, self.clock(), line

    def shadow_end(self, span: tuple[bytes, bytes, int], primary: tuple[bytes, bytes],
                   route: str, upstream: str, method: bytes, status: int,
                   error: str | None) -> None:
        trace_id, span_id, start = span
        attrs: tuple = (("strangler.shadow", True), ("strangler.route", route),
                        ("strangler.upstream", upstream),
                        ("http.request.method", method.decode("latin-1")))
        if status:
            attrs += (("http.response.status_code", status),)
        if error is not None:
            attrs += (("error.type", error),)
        self.emit((trace_id, span_id, b"", f"shadow {method.decode('latin-1')} {route}", CLIENT,
                   start, self.clock(), attrs, (primary,), error))
