"""The proxy started the way a user starts it splits traffic between two real upstreams."""

from __future__ import annotations

import aiohttp

from tests.support import free_port, routes_yaml


async def test_serve_splits_and_reports_metrics(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("balance-svc")
    proxy = await proxy_process(routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          balance-svc: {{url: "http://127.0.0.1:{svc}"}}
        default_upstream: monolith
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: balance-svc
            weight: 50
            shadow: false
        """, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port))
    served = {"monolith": 0, "balance-svc": 0}
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(proxy.url + "/api/v1/balance/7") as r:
                assert r.status == 200
                served[(await r.json())["served_by"]] += 1
        async with s.get(proxy.url + "/elsewhere") as r:
            assert (await r.json())["served_by"] == "monolith"
        async with s.get(proxy.admin + "/metrics") as r:
            text = await r.text()
    # 200 draws at 50%: outside 60..140 has probability < 1e-8.
    assert 60 <= served["balance-svc"] <= 140
    assert 'strangler_requests_total{backend="target",code="200",route="balance"}' in text
    assert await proxy.stop() == 0
