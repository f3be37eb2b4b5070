"""Issue 25.5: OpenTelemetry tracing over OTLP/HTTP.

No collector binary can be installed here, so spans are received by `FakeCollector`: a real
HTTP server on 127.0.0.1 that decodes each request body with the official opentelemetry-proto
definitions (`ExportTraceServiceRequest`), exactly as a collector's OTLP/HTTP receiver would.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import servers
from bench.hotpath import RESPONSE, build
from proxy.config.spec import TracingSpec
from proxy.dataplane.tracing import Tracer, parse_traceparent
from tests.support import free_port, routes_yaml, wait_for

CLIENT_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class FakeCollector:
    """An OTLP/HTTP receiver (fake: no collector can run here) decoding with opentelemetry-proto."""

    def __init__(self) -> None:
        self.spans: list = []
        self.resources: list[dict] = []
        self.content_types: list[str] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.append(request.headers.get("content-type", ""))
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        for rs in msg.resource_spans:
            self.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> FakeCollector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def named(self, name: str) -> list:
        return [s for s in self.spans if s.name == name]


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


CONFIG = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    tracing: {{otlp_endpoint: "{collector}", sample_ratio: {ratio}, service_name: edge,
              timeout: 1s, max_queue: {max_queue}}}
    routes:
      - name: balance
        match: {{path_prefix: /balance}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: {shadow}
"""


def config(mono, svc, collector: str, ratio: float = 1.0, weight: float = 0,
           shadow: str = "false", max_queue: int = 8192) -> str:
    return routes_yaml(CONFIG, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, collector=collector, ratio=ratio, weight=weight,
                       shadow=shadow, max_queue=max_queue)


async def get(url: str, headers: dict | None = None) -> int:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        await r.read()
        return r.status


@pytest.fixture
async def collector():
    c = await FakeCollector().start()
    yield c
    await c.stop()


async def test_server_and_client_spans_with_w3c_context_in_and_out(inproc_proxy, upstreams,
                                                                   collector):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await inproc_proxy(config(mono, svc, f"http://127.0.0.1:{collector.port}"))
    assert await get(proxy.url + "/balance/1") == 200  # a root: the proxy starts the trace
    assert await get(proxy.url + "/balance/2", {"traceparent": CLIENT_TP,
                                                "tracestate": "vendor=x"}) == 200
    await wait_for(lambda: len(collector.spans) == 4)
    assert collector.content_types[0] == "application/x-protobuf"
    assert collector.resources[0]["service.name"] == "edge"
    servers = collector.named("GET balance")
    clients = collector.named("monolith")
    assert len(servers) == 2 and len(clients) == 2
    root, child = servers
    assert root.kind == 2 and root.parent_span_id == b""  # SERVER
    a = attrs(root)
    assert a["strangler.route"] == "balance" and a["strangler.backend"] == "legacy"
    assert a["strangler.upstream"] == "monolith" and a["http.response.status_code"] == 200
    assert a["strangler.weight"] == 0.0 and "strangler.step" in a
    assert a["strangler.fallback"] is False and a["url.path"] == "/balance/1"
    # the upstream's parent is the proxy's CLIENT span, in the same trace
    sent = parse_traceparent(mono.seen[0].headers["traceparent"].encode())
    assert sent is not None
    assert sent[0] == root.trace_id and clients[0].span_id == sent[1]
    assert clients[0].parent_span_id == root.span_id and clients[0].kind == 3
    # a sampled caller's trace continues through the proxy
    assert child.trace_id.hex() == CLIENT_TP[3:35]
    assert child.parent_span_id.hex() == CLIENT_TP[36:52]
    sent = mono.seen[1].headers["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TP[3:35]}-") and sent.endswith("-01")
    assert sent[36:52] == clients[1].span_id.hex()
    assert mono.seen[1].headers["tracestate"] == "vendor=x"


async def test_unsampled_requests_pass_their_context_untouched(inproc_proxy, upstreams,
                                                               collector):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await inproc_proxy(config(mono, svc, f"http://127.0.0.1:{collector.port}",
                                      ratio=0.0))
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    assert await get(proxy.url + "/balance/1", {"traceparent": unsampled}) == 200
    assert await get(proxy.url + "/balance/2") == 200
    await asyncio.sleep(1.5)  # past an export interval
    assert collector.spans == []
    assert mono.seen[0].headers["traceparent"] == unsampled
    assert "traceparent" not in mono.seen[1].headers


async def test_fallback_is_a_second_client_span_and_an_attribute(inproc_proxy, upstreams,
                                                                 collector):
    mono = await upstreams("monolith")
    svc = await upstreams("svc", status=503)
    proxy = await inproc_proxy(config(mono, svc, f"http://127.0.0.1:{collector.port}",
                                      weight=100))
    assert await get(proxy.url + "/balance/1") == 200
    await wait_for(lambda: len(collector.spans) == 3)
    server = collector.named("GET balance")[0]
    assert attrs(server)["strangler.fallback"] is True
    assert attrs(server)["strangler.backend"] == "legacy"
    target = collector.named("svc")[0]
    assert attrs(target)["http.response.status_code"] == 503 and target.status.code == 2
    assert collector.named("monolith")[0].parent_span_id == server.span_id


async def test_shadow_mirror_is_its_own_trace_linked_to_the_primary(inproc_proxy, upstreams,
                                                                    collector):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await inproc_proxy(config(mono, svc, f"http://127.0.0.1:{collector.port}",
                                      shadow="{sample: 1.0, max_rate: unlimited}"))
    assert await get(proxy.url + "/balance/1", {"traceparent": CLIENT_TP}) == 200
    await wait_for(lambda: svc.count(shadow=True) == 1)
    await wait_for(lambda: collector.named("shadow GET balance"))
    shadow = collector.named("shadow GET balance")[0]
    server = collector.named("GET balance")[0]
    assert attrs(shadow)["strangler.shadow"] is True
    assert attrs(shadow)["strangler.upstream"] == "svc"
    assert shadow.trace_id != server.trace_id  # not inside the client's trace
    assert [(link.trace_id, link.span_id) for link in shadow.links] == [
        (server.trace_id, server.span_id)]
    mirrored = svc.seen[0].headers["traceparent"]
    assert mirrored == f"00-{shadow.trace_id.hex()}-{shadow.span_id.hex()}-01"


async def test_dead_and_hung_collectors_cost_only_a_counter(inproc_proxy, upstreams, capsys):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    dead = await inproc_proxy(config(mono, svc, f"http://127.0.0.1:{free_port()}"))
    hung_sock = socket.socket()
    hung_sock.bind(("127.0.0.1", 0))
    hung_sock.listen(64)  # accepts, never answers
    try:
        hung = await inproc_proxy(config(mono, svc,
                                         f"http://127.0.0.1:{hung_sock.getsockname()[1]}",
                                         max_queue=16))
        for proxy in (dead, hung):
            started = time.monotonic()
            for i in range(40):
                assert await get(f"{proxy.url}/balance/{i}") == 200
            assert time.monotonic() - started < 5  # nobody waits for the collector

        def counted(proxy, result: str) -> int:
            proxy.server.flush()
            return proxy.runtime.agg.traces.get((result,), 0)

        await wait_for(lambda: counted(dead, "export_failed") == 80, timeout=10)
        await wait_for(lambda: counted(hung, "queue_full") > 0, timeout=10)
        await wait_for(lambda: counted(hung, "export_failed") > 0, timeout=10)
        assert counted(hung, "exported") == 0
        async with aiohttp.ClientSession() as s, s.get(hung.admin + "/metrics") as r:
            text = await r.text()
        assert 'strangler_trace_spans_total{result="queue_full"}' in text
        logged = [line for line in capsys.readouterr().out.splitlines()
                  if "span export failing" in line]
        assert len(logged) == 2  # once per exporter, not per batch
    finally:
        hung_sock.close()


async def test_no_span_work_for_unsampled_requests() -> None:
    emitted: list = []
    clock_reads: list = []
    spec = TracingSpec(otlp_endpoint="http://127.0.0.1:1", sample_ratio=0.01)
    draws = iter([0.5, 0.005])
    tracer = Tracer(spec, emitted.append, rand=lambda: next(draws),
                    clock=lambda: clock_reads.append(1) or 1)
    assert tracer.sample({}) is None
    assert tracer.sample({b"traceparent": CLIENT_TP[:-2].encode() + b"00"}) is None
    assert clock_reads == [] and emitted == []
    assert tracer.sample({}) is not None  # 0.005 < 0.01


async def test_access_log_carries_the_trace_id(proxy_process, upstreams, collector):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await proxy_process(config(mono, svc, f"http://127.0.0.1:{collector.port}"))
    unsampled = CLIENT_TP[:-2] + "00"  # the caller decided: not traced
    assert await get(proxy.url + "/balance/0", {"traceparent": unsampled}) == 200
    assert await get(proxy.url + "/balance/1", {"traceparent": CLIENT_TP}) == 200
    assert await get(proxy.url + "/balance/2?x=1", {"traceparent": CLIENT_TP}) == 200
    await proxy.stop()
    text = proxy.stdout_path.read_text()
    lines = [json.loads(x) for x in text.splitlines() if '"access"' in x]
    plain, traced, queried = lines[-3:]
    assert "trace_id" not in plain
    assert traced["trace_id"] == queried["trace_id"] == CLIENT_TP[3:35]
    # A sampled request's line is the same line with its trace id: the same keys in the same
    # order (the usual renderer and the general one, for a query string, agree)
    keys = list(plain)
    assert list(traced) == list(queried) == [
        *keys[:keys.index("fallback") + 1], "trace_id", *keys[keys.index("fallback") + 1:]]
    assert (traced["path"], queried["query"]) == ("/balance/1", "x=1")
    assert collector.named("GET balance")  # flushed at SIGTERM


def test_the_data_plane_samples_each_root_request_on_one_draw():
    """The data plane draws against sample_ratio once per request without `traceparent` and
    calls the tracer only for those that came out sampled (no call per unsampled request);
    which requests are traced is exactly the draws under the ratio, as Tracer.sample decides
    alone. A request carrying `traceparent` is decided by its flag, with no draw."""
    _, plane = build(10, access_log=True)
    conn = next(iter(plane.connections))
    path = servers.bench_paths(10)[0].encode()
    root = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path
    child = b"GET %s HTTP/1.1\r\nHost: h\r\ntraceparent: %s\r\n\r\n" % (
        path, CLIENT_TP.encode())
    spans: list = []
    plane.use_tracer(Tracer(TracingSpec(otlp_endpoint="http://127.0.0.1:1", sample_ratio=0.25),
                            spans.append, rand=random.Random(7).random))
    reference = random.Random(7)  # the same draws, one per root request
    expected, traced = [], []
    for i in range(2000):
        with_parent = i % 10 == 0  # its sampled flag decides
        conn.data_received(child if with_parent else root)
        traced.append(conn.cur.trace is not None)
        expected.append(True if with_parent else reference.random() < 0.25)
        next(up for pool in plane.pools.values() for up in pool.live
             if up.sink is not None).data_received(RESPONSE)
    assert traced == expected
    assert 600 < sum(traced) < 800  # the 200 children, and ~25% of the 1,800 others
    assert len(spans) == 2 * sum(traced)  # a SERVER and a CLIENT span each
