"""The gate reading Prometheus decides as the in-process gate does, over two real replicas.

Two `strangler serve` processes share upstreams; a real Prometheus (Debian package, started by
scripts/prometheus-dev) scrapes both every second. The evidence Prometheus gives for the route
must add up to both replicas' local evidence, and the decision must be the same.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import aiohttp
import aiohttp.web
import pytest

from proxy.config.spec import PromotionSpec
from shadow.evidence import BackendEvidence, Evidence
from shadow.gate import decide
from shadow.promql import PrometheusSource
from tests.support import REPO, TWO_UPSTREAMS, free_port, routes_yaml

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

ROUTES = TWO_UPSTREAMS + """
    gate: {{metrics: local, url: "http://127.0.0.1:{prom}"}}
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
        shadow: {{sample: 1.0}}
        promotion: {{min_requests: 200, min_comparisons: 200, max_mismatch_rate: 0.03,
                     max_error_rate_increase: 0.05, max_p99_ratio: null}}
"""


@pytest.fixture
def prometheus_dir(tmp_path):
    if shutil.which("prometheus") is None and not (REPO / "scripts").exists():
        pytest.skip("prometheus not installed")
    d = tmp_path / "prom"
    yield d
    subprocess.run([str(REPO / "scripts/prometheus-dev"), "stop", str(d)], check=False)


async def _local_evidence(admin: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(admin + "/admin/routes/balance/gate") as r:
        assert r.status == 200
        return await r.json()


async def test_prometheus_evidence_covers_both_replicas(upstreams, proxy_process,
                                                        prometheus_dir):
    async def same_answer(request):
        return aiohttp.web.json_response({"balance": 100, "currency": "EUR"})

    mono = await upstreams("monolith", handler=same_answer)
    svc = await upstreams("svc", handler=same_answer)
    prom_port = free_port()
    replicas = []
    for i in range(2):
        replicas.append(await proxy_process(routes_yaml(
            ROUTES, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port,
            prom=prom_port), name=f"replica{i}"))
    targets = [f"127.0.0.1:{r.admin_port}" for r in replicas]
    await asyncio.to_thread(
        subprocess.run, [str(REPO / "scripts/prometheus-dev"), "start", str(prometheus_dir),
                         str(prom_port), *targets], check=True, timeout=60)
    source = PrometheusSource(f"http://127.0.0.1:{prom_port}")
    started = time.time()
    try:
        # Wait until Prometheus has scraped both replicas (series exist at 0 from the start).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = await source.query('sum(up{job="strangler"})')
            if up == 2:
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("Prometheus never scraped both replicas")
        async with aiohttp.ClientSession() as s:

            async def load(replica, n):
                for i in range(n):
                    async with s.get(f"{replica.url}/api/v1/balance/{i}") as r:
                        assert r.status == 200
                        await r.read()

            # Warm up until Prometheus has seen every series once: increase() starts counting
            # from a series' first sample.
            await asyncio.gather(*(load(r, 20) for r in replicas))
            q = 'count(strangler_requests_total{route="balance"})'
            while time.monotonic() < deadline and (await source.query(q) or 0) < 4:
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)
            await asyncio.gather(*(load(r, 400) for r in replicas for _ in range(2)))
        await asyncio.sleep(3.5)  # mirrors land, every replica is scraped again
        local = [await _local_evidence(r.admin) for r in replicas]
        window = time.time() - started + 5
        prom_ev = await source.evidence("balance", 50.0, window, True)
    finally:
        await source.close()

    def total(key: str, backend: str) -> int:
        return sum(d["evidence"][backend][key] for d in local)

    lt, ll = total("requests", "target"), total("requests", "legacy")
    assert lt + ll == 1640
    compared = sum(d["evidence"]["shadow"]["compared"] for d in local)
    # increase() extrapolates each series by up to half a scrape interval at both ends of its
    # samples (measured here: up to ~15% over a ~8 s window) and misses the warm-up; the shares
    # are what the decision rests on, and they agree closely.
    assert abs(prom_ev.target.requests - lt) <= 0.25 * lt, (prom_ev, lt)
    assert abs(prom_ev.legacy.requests - ll) <= 0.25 * ll, (prom_ev, ll)
    assert abs(prom_ev.compared - compared) <= 0.25 * compared, (prom_ev, compared)
    prom_share = prom_ev.target.requests / (prom_ev.target.requests + prom_ev.legacy.requests)
    assert abs(prom_share - lt / (lt + ll)) < 0.06
    policy = PromotionSpec(min_requests=200, min_comparisons=200, max_mismatch_rate=0.03,
                           max_error_rate_increase=0.05, max_p99_ratio=None)
    summed = Evidence(
        route="balance", weight=50.0,
        legacy=BackendEvidence(ll, 0, prom_ev.legacy.latency),
        target=BackendEvidence(lt, 0, prom_ev.target.latency),
        compared=compared, mismatched=0, shadow_enabled=True)
    assert decide(prom_ev, policy).decision == decide(summed, policy).decision == "promote"
