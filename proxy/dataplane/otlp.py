"""The span exporter: batches over OTLP/HTTP (protobuf, the official opentelemetry-proto
definitions), off the request path.

Finished spans (proxy.dataplane.tracing) wait in a bounded list; one task sends them in batches
of up to `BATCH` every `INTERVAL` (sooner when a batch is full), one request at a time, each
bounded by `tracing.timeout`. A collector that is down, refuses or hangs costs the proxy a
counter (`strangler_trace_spans_total{result="export_failed"|"queue_full"}`) and one log line
when exporting starts failing (and one when it works again): spans are dropped, never queued
without bound, and no request ever waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from proxy.config.spec import TracingSpec
from proxy.dataplane.tracing import Span

__all__ = ["BATCH", "OtlpExporter", "encode"]

BATCH = 512
INTERVAL = 1.0
_log = structlog.get_logger("strangler.tracing")


# Attributes whose value is new in almost every span: added to the span as they are. Any other
# (route, backend, method, status, upstream, step...) repeats, and its encoded bytes are kept
# (up to _CACHE_MAX of them, by key, type and value: True and 1 are equal) and appended to the
# span in one merge: building a KeyValue from Python costs more than the rest of the span.
_UNIQUE = frozenset({"url.path", "strangler.request_id"})
_CACHE_MAX = 4096
_encoded: dict[tuple, bytes] = {}


def encode(spans: list[Span], service: str) -> bytes:
    """An ExportTraceServiceRequest with `spans` under one resource (service.name)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource = resource_spans.resource.attributes
    _attr(resource, "service.name", service)
    _attr(resource, "telemetry.sdk.name", "strangler")
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "strangler"
    out = scope_spans.spans
    for trace_id, span_id, parent, name, kind, start, end, attrs, links, error in spans:
        span = out.add(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                       kind=kind, start_time_unix_nano=start, end_time_unix_nano=end)
        add = span.attributes
        known = []
        for key, value in attrs:
            if key in _UNIQUE:
                _attr(add, key, value)
                continue
            cached = _encoded.get((key, type(value), value))
            if cached is None:
                cached = _attribute_field(key, value)
                if cached is None:  # the cache is full: this one as it is
                    _attr(add, key, value)
                    continue
            known.append(cached)
        if known:
            span.MergeFromString(b"".join(known))
        for link_trace, link_span in links:
            span.links.add(trace_id=link_trace, span_id=link_span)
        if error is not None:
            span.status.code = 2  # STATUS_CODE_ERROR
            span.status.message = error
    return request.SerializeToString()


def _attribute_field(key: str, value: Any) -> bytes | None:
    """The attribute as a Span's encoded `attributes` field, kept for the next span; None
    when the cache is full."""
    if len(_encoded) >= _CACHE_MAX:
        return None
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

    one = SpanMessage()
    _attr(one.attributes, key, value)
    data = _encoded[(key, type(value), value)] = one.SerializeToString()
    return data


def _attr(attributes: Any, key: str, value: Any) -> None:
    v = attributes.add(key=key).value
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    else:
        v.string_value = str(value)


class OtlpExporter:
    """Batches spans to `{otlp_endpoint}/v1/traces`; `count(result, n)` records outcomes
    (exported, export_failed, queue_full)."""

    def __init__(self, spec: TracingSpec, count: Callable[[str, int], None]) -> None:
        self.spec = spec
        self.url = spec.otlp_endpoint.rstrip("/") + "/v1/traces"
        self.count = count
        self.queue: list[Span] = []
        self.failing = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        # header values from the environment (never logged); a missing one is refused at start
        self.headers = {"content-type": "application/x-protobuf",
                        **{name: os.environ.get(var, "") for name, var in spec.headers}}

    def add(self, span: Span) -> None:
        """A finished span (hot path of sampled requests: an append)."""
        queue = self.queue
        if len(queue) >= self.spec.max_queue:
            self.count("queue_full", 1)
            return
        queue.append(span)
        if len(queue) == BATCH and self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), INTERVAL)
            self._wake.clear()
            while self.queue:
                await self._send_batch()

    async def _send_batch(self) -> None:
        batch = self.queue[:BATCH]
        del self.queue[:BATCH]
        try:
            body = encode(batch, self.spec.service_name)
            ok, why = await self._post(body)
        except asyncio.CancelledError:
            self.count("export_failed", len(batch))
            raise
        except Exception as exc:  # an exporter bug must not end the task
            ok, why = False, f"{type(exc).__name__}: {exc}"
        self.count("exported" if ok else "export_failed", len(batch))
        if ok and self.failing:
            self.failing = False
            _log.info("span export works again", endpoint=self.url)
        elif not ok and not self.failing:
            self.failing = True
            _log.warning("span export failing: spans are dropped (counted in "
                         "strangler_trace_spans_total)", endpoint=self.url, error=why)

    async def _post(self, body: bytes) -> tuple[bool, str]:
        if self._session is None:
            connector = None
            if self.spec.tls is not None:
                from proxy.config.tls import client_context

                connector = aiohttp.TCPConnector(ssl=client_context(self.spec.tls))
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.spec.timeout))
        try:
            tls = self.spec.tls
            async with self._session.post(
                    self.url, data=body, headers=self.headers,
                    server_hostname=tls.server_name if tls is not None else None) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True, ""
                return False, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (bounded by `timeout`), then close."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout)
        if self.queue:
            self.count("export_failed", len(self.queue))
            self.queue.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drain(self) -> None:
        while self.queue:
            await self._send_batch()
