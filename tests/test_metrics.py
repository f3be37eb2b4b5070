"""/metrics of a running `strangler serve`, parsed with prometheus-client's own parser and checked
against the traffic the test sent: requests, latency histogram, shadow results and skips,
upstream errors, weight and rollback gauges, gate decisions — with one process and with two
workers."""

from __future__ import annotations

import math

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, routes_yaml, wait_for

pytestmark = pytest.mark.slow

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
      gone: {{url: "http://127.0.0.1:{dead}", connect_timeout: 1s}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
        shadow:
          sample: 1.0
          reverse: true
      - name: broken
        match: {{path_prefix: /api/v1/broken}}
        legacy: gone
        target: svc
        weight: 0
        shadow: false
"""

Samples = dict[tuple[str, frozenset], float]


def _handler(currency: str):
    async def handler(request: web.Request) -> web.Response:
        differs = request.path.endswith("/diff")
        return web.json_response({"balance": 1, "currency": currency if differs else "EUR"})

    return handler


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def scrape(proxy) -> Samples:
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.admin + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            return parse(await r.text())


async def start(upstreams, proxy_process, args: tuple[str, ...] = ()):
    mono = await upstreams("monolith", handler=_handler("EUR"))
    svc = await upstreams("svc", handler=_handler("USD"))
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, dead=free_port())
    return await proxy_process(text, args=args, env={"STRANGLER_ADMIN_TOKEN": "metrics-tok"})


async def send(proxy, same: int, diff: int, deletes: int, broken: int) -> None:
    # A new connection per request: with --workers, the kernel spreads them over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for path, n, method, status in (("/api/v1/balance/same", same, "GET", 200),
                                        ("/api/v1/balance/diff", diff, "GET", 200),
                                        ("/api/v1/balance/same", deletes, "DELETE", 200),
                                        ("/api/v1/broken/1", broken, "GET", 502)):
            for _ in range(n):
                async with s.request(method, proxy.url + path) as r:
                    assert r.status == status
                    await r.read()


async def test_metrics_match_the_traffic_sent(upstreams, proxy_process):
    proxy = await start(upstreams, proxy_process)
    before = await scrape(proxy)
    # Every series exists at 0 before the first request, so increase() sees the first one.
    for labels in ({"route": "balance", "backend": "target", "code": "200"},
                   {"route": "broken", "backend": "legacy", "code": "502"}):
        assert before[("strangler_requests_total", frozenset(labels.items()))] == 0
    assert before[("strangler_shadow_comparisons_total",
                   frozenset({"route": "balance", "result": "mismatch"}.items()))] == 0
    assert before[("strangler_upstream_errors_total",
                   frozenset({"upstream": "gone", "kind": "connect"}.items()))] == 0
    assert total(before, "strangler_request_duration_seconds_count", route="balance") == 0

    await send(proxy, same=40, diff=25, deletes=5, broken=6)

    async def settled():
        m = await scrape(proxy)
        done = total(m, "strangler_shadow_comparisons_total", route="balance") >= 65
        return m if done and total(m, "strangler_requests_total") >= 76 else None

    m = await wait_for(settled, timeout=15)

    # Requests by route, backend and code; balance is split 50/50 between the two backends.
    assert total(m, "strangler_requests_total", route="balance") == 70
    assert total(m, "strangler_requests_total", route="balance", code="200") == 70
    legacy = total(m, "strangler_requests_total", route="balance", backend="legacy")
    target = total(m, "strangler_requests_total", route="balance", backend="target")
    assert legacy + target == 70 and legacy > 0 and target > 0
    assert total(m, "strangler_requests_total", route="broken", backend="legacy", code="502") == 6
    assert total(m, "strangler_requests_total") == 76

    # Latency histogram: one observation per request, cumulative buckets, sub-ms resolution.
    for backend, n in (("legacy", legacy), ("target", target)):
        assert total(m, "strangler_request_duration_seconds_count", route="balance",
                     backend=backend) == n
        buckets = sorted(
            (float(dict(ls)["le"]), v) for (name, ls), v in m.items()
            if name == "strangler_request_duration_seconds_bucket"
            and ("route", "balance") in ls and ("backend", backend) in ls
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1] == (math.inf, n)
        bounds = [le for le, _ in buckets]
        assert sum(1 for le in bounds if le < 0.001) >= 8, bounds  # resolution below 1 ms
        assert 0.0001 in bounds and 0.001 > bounds[0] and max(b for b in bounds if b < 1e9) >= 30
        assert 0 < total(m, "strangler_request_duration_seconds_sum", route="balance",
                         backend=backend) < n * 1.0

    # Shadow: every GET compared once (forward or reverse), DELETEs skipped as unsafe.
    assert total(m, "strangler_shadow_comparisons_total", route="balance", result="match") == 40
    assert total(m, "strangler_shadow_comparisons_total", route="balance",
                 result="mismatch") == 25
    assert total(m, "strangler_shadow_comparisons_total", route="balance", result="error") == 0
    assert total(m, "strangler_shadow_skipped_total", route="balance",
                 reason="unsafe_method") == 5

    # The dead upstream: one connect error per request.
    assert total(m, "strangler_upstream_errors_total", upstream="gone", kind="connect") == 6
    assert total(m, "strangler_upstream_errors_total", upstream="svc") == 0

    # Gauges, gate decisions and rollbacks follow the admin API.
    assert total(m, "strangler_route_weight", route="balance") == 50
    assert total(m, "strangler_route_rolled_back", route="balance") == 0
    headers = {"Authorization": "Bearer metrics-tok"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(proxy.admin + "/admin/routes/balance/gate") as r:
            decision = (await r.json())["decision"]
        async with s.post(proxy.admin + "/admin/routes/balance/rollback",
                          json={"reason": "metrics test"}) as r:
            assert r.status == 200
    m = await scrape(proxy)
    # GET .../gate is a read: an evaluation, never a decision
    assert total(m, "strangler_gate_decisions_total", route="balance") == 0
    assert total(m, "strangler_gate_evaluations_total", route="balance") == 1
    assert total(m, "strangler_gate_evaluations_total", route="balance", decision=decision) == 1
    assert total(m, "strangler_route_weight", route="balance") == 0
    assert total(m, "strangler_route_rolled_back", route="balance") == 1
    assert total(m, "strangler_rollbacks_total", route="balance", trigger="manual") == 1
    assert total(m, "strangler_rollbacks_total", route="balance", trigger="gate") == 0
    assert total(m, "strangler_rollbacks_total", route="balance", trigger="guardrail") == 0
    assert await proxy.stop() == 0


async def test_metrics_cover_every_worker(upstreams, proxy_process):
    proxy = await start(upstreams, proxy_process, args=("--workers", "2"))
    await send(proxy, same=120, diff=30, deletes=10, broken=8)

    async def settled():
        m = await scrape(proxy)
        done = total(m, "strangler_shadow_comparisons_total", route="balance") >= 150
        return m if done and total(m, "strangler_requests_total") >= 168 else None

    m = await wait_for(settled, timeout=20)
    assert total(m, "strangler_requests_total", route="balance") == 160
    assert total(m, "strangler_requests_total", route="broken", code="502") == 8
    assert total(m, "strangler_request_duration_seconds_count", route="balance") == 160
    assert total(m, "strangler_shadow_comparisons_total", route="balance", result="match") == 120
    assert total(m, "strangler_shadow_comparisons_total", route="balance",
                 result="mismatch") == 30
    assert total(m, "strangler_shadow_skipped_total", route="balance",
                 reason="unsafe_method") == 10
    assert total(m, "strangler_upstream_errors_total", upstream="gone", kind="connect") == 8
    assert total(m, "strangler_route_weight", route="balance") == 50
    assert await proxy.stop() == 0
