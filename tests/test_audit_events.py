"""Issue 23, points 2 and 3: every effective change is in the audit log, and reads are reads.

A real `strangler serve`: its start and stop (with the file's hash and the version), a weight
that routes.yaml changed while it was stopped, reloads with what they changed; `gate` and the
dashboard's fetches never count as decisions and say what promote *would* do.
"""

from __future__ import annotations

import hashlib
import json

import aiohttp

from proxy import __version__
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: accounts
        match: {{path_prefix: /api/v1/accounts}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: false
        promotion: {{min_requests: 20, max_p99_ratio: null, max_error_rate_increase: 0.5,
                     guardrail: {{enabled: false}}}}
"""


async def history(proxy, *args: str) -> list[dict]:
    code, out, err = await run_cli("history", *args, "--json", "--admin", proxy.admin)
    assert code == 0, err
    return json.loads(out)["entries"]


async def scrape(proxy) -> str:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/metrics") as r:
        return await r.text()


async def test_start_stop_and_a_weight_changed_while_stopped_are_audited(upstreams,
                                                                        proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    ports = dict(port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port)
    proxy = await proxy_process(routes_yaml(ROUTES, weight=0, **ports))
    first = await history(proxy)
    assert [e["action"] for e in first] == ["serve_started"]
    started = first[0]
    text = proxy.config.read_text()
    assert started["evidence"]["config_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert started["evidence"]["version"] == __version__
    assert started["evidence"]["previous_config_hash"] is None
    assert started["evidence"]["routes"]["accounts"]["weight"] == 0
    assert f"strangler {__version__} started" in started["reason"]
    assert await proxy.stop() == 0

    # With the proxy stopped, the file's weight for accounts goes 0 -> 1.
    proxy.config.write_text(routes_yaml(ROUTES, weight=1, **ports))
    await proxy.start()
    entries = await history(proxy)
    assert [e["action"] for e in entries[:4]] == ["weight_from_file", "serve_started",
                                                  "serve_stopped", "serve_started"]
    moved, restarted, stopped = entries[0], entries[1], entries[2]
    assert (moved["route"], moved["from"], moved["to"], moved["actor"]) == (
        "accounts", 0, 1, "system")
    assert "routes.yaml sets accounts to 1%" in moved["reason"]
    new_hash = hashlib.sha256(proxy.config.read_bytes()).hexdigest()
    assert restarted["evidence"]["config_hash"] == new_hash
    assert restarted["evidence"]["previous_config_hash"] == started["evidence"]["config_hash"]
    assert "routes.yaml changed since the last run" in restarted["reason"]
    assert restarted["evidence"]["routes"]["accounts"]["reason"].startswith(
        "restart; weight 0% -> 1% (routes.yaml changed while stopped)")
    assert stopped["evidence"]["config_hash"] == started["evidence"]["config_hash"]
    assert stopped["evidence"]["uptime_seconds"] >= 0
    # The history shows it as a weight change on the route, and the chain verifies.
    assert [e["action"] for e in await history(proxy, "accounts")] == ["weight_from_file"]
    code, out, _ = await run_cli("history", "--verify", "--admin", proxy.admin)
    assert code == 0 and "4 entries, chain intact" in out


async def test_gate_is_a_read_promote_is_a_decision(upstreams, inproc_proxy):
    mono = await upstreams("monolith")
    svc = await upstreams("svc", status=503)  # every target answer is an error
    proxy = await inproc_proxy(routes_yaml(ROUTES, weight=50, port=free_port(),
                                           admin=free_port(), mono=mono.port, svc=svc.port))
    async with aiohttp.ClientSession() as s:
        for i in range(200):
            async with s.get(f"{proxy.url}/api/v1/accounts/{i}") as r:
                assert r.status == 200  # fallback to legacy
    proxy.server.flush()
    for _ in range(3):
        code, out, _ = await run_cli("gate", "accounts", "--admin", proxy.admin)
        assert code == 1, out
        assert "would roll back" in out and "rolling back" not in out
    metrics = await scrape(proxy)
    assert 'strangler_gate_decisions_total{decision="fail",route="accounts"} 0.0' in metrics
    assert 'strangler_gate_evaluations_total{decision="fail",route="accounts"} 3.0' in metrics
    view = proxy.runtime.route_view("accounts")
    assert view["last_decision"] is None  # a read is not a decision
    assert view["state"] == "active"

    code, out, _ = await run_cli("promote", "accounts", "--admin", proxy.admin)
    assert code == 1 and "Gate failed at 50%: rolling back to legacy" in out
    metrics = await scrape(proxy)
    assert 'strangler_gate_decisions_total{decision="fail",route="accounts"} 1.0' in metrics
    assert 'strangler_rollbacks_total{route="accounts",trigger="gate"} 1.0' in metrics
    # The decision belonged to the step it judged; the rollback began a new one.
    view = proxy.runtime.route_view("accounts")
    assert view["last_decision"] is None
    assert view["step"]["reason"].startswith("rollback (gate) by ")
