"""The admin API's answers (contract §4): route objects, mutations, refusals, reload, health."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: false
      - name: orders
        match: {{path_prefix: /api/v1/orders}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
    """


@pytest.fixture
async def proxy(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                       mono=mono.port, svc=svc.port, weight=5))
    p.ports = {"mono": mono.port, "svc": svc.port}
    return p


async def _req(method: str, url: str, body: dict | None = None,
               headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body, headers=headers) as r:
            return r.status, await r.json()


async def _served(url: str, n: int) -> dict[str, int]:
    out: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url) as r:
                assert r.status == 200
                who = (await r.json())["served_by"]
                out[who] = out.get(who, 0) + 1
    return out


async def test_route_objects_have_the_contract_fields(proxy):
    status, body = await _req("GET", proxy.admin + "/admin/routes")
    assert status == 200
    assert [r["name"] for r in body["routes"]] == ["balance", "orders"]
    status, route = await _req("GET", proxy.admin + "/admin/routes/balance")
    assert status == 200
    for key in ("name", "weight", "file_weight", "state", "legacy", "target", "stats"):
        assert key in route
    assert (route["weight"], route["file_weight"], route["state"]) == (5, 5, "active")
    assert (route["legacy"], route["target"]) == ("monolith", "svc")


async def test_set_weight_moves_traffic_and_is_audited_with_the_actor(proxy):
    status, body = await _req("PUT", proxy.admin + "/admin/routes/balance/weight",
                              {"weight": 100, "reason": "cut over"},
                              {"X-Strangler-Actor": "alice"})
    assert status == 200, body
    assert (body["name"], body["weight"], body["state"]) == ("balance", 100, "active")
    assert (body["from"], body["to"], body["durable"], body["warning"]) == (5, 100, True, None)
    assert body["audit"]["actor"] == "alice (no token)"
    assert body["audit"]["reason"] == "cut over"
    assert await _served(proxy.url + "/api/v1/balance/1", 20) == {"svc": 20}
    _, hist = await _req("GET", proxy.admin + "/admin/history?route=balance")
    assert [e["action"] for e in hist["entries"]] == ["set_weight"]


@pytest.mark.parametrize("body, field", [
    ({"weight": 10}, "reason"),
    ({"weight": 10, "reason": "   "}, "reason"),
    ({"reason": "x"}, "weight"),
    ({"weight": "ten", "reason": "x"}, "weight"),
    ({"weight": True, "reason": "x"}, "weight"),
])
async def test_bad_input_is_400_naming_the_field(proxy, body, field):
    status, err = await _req("PUT", proxy.admin + "/admin/routes/balance/weight", body)
    assert status == 400
    assert err["detail"]["field"] == field
    assert proxy.runtime.effective("balance") == 5


@pytest.mark.parametrize("weight", [-1, 100.5, 12.345])
async def test_weight_out_of_range_is_400(proxy, weight):
    status, err = await _req("PUT", proxy.admin + "/admin/routes/balance/weight",
                             {"weight": weight, "reason": "x"})
    assert status == 400 and "weight" in err["error"]


async def test_body_must_be_a_json_object(proxy):
    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.admin + "/admin/routes/balance/rollback", data=b"{not json",
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert "JSON" in (await r.json())["error"]
    status, _ = await _req("POST", proxy.admin + "/admin/routes/balance/rollback", [1])
    assert status == 400
    assert not proxy.runtime.rolled_back("balance")


@pytest.mark.parametrize("method, path", [
    ("GET", "/admin/routes/nope"),
    ("PUT", "/admin/routes/nope/weight"),
    ("POST", "/admin/routes/nope/rollback"),
    ("POST", "/admin/routes/nope/resume"),
    ("GET", "/admin/routes/nope/gate"),
    ("POST", "/admin/routes/nope/promote"),
    ("GET", "/admin/routes/nope/diffs"),
])
async def test_unknown_route_is_404_listing_the_known_ones(proxy, method, path):
    status, err = await _req(method, proxy.admin + path, {"weight": 1, "reason": "x"})
    assert status == 404
    assert err["error"] == "unknown route 'nope'"
    assert err["detail"]["routes"] == ["balance", "orders"]


async def test_rollback_freezes_until_resume(proxy):
    base = proxy.admin + "/admin/routes/balance"
    status, body = await _req("POST", base + "/rollback", {"reason": "errors up"})
    assert status == 200
    assert (body["weight"], body["state"], body["durable"]) == (0, "rolled_back", True)
    assert body["audit"]["action"] == "rollback"
    status, err = await _req("PUT", base + "/weight", {"weight": 50, "reason": "x"})
    assert status == 409 and "resume" in err["error"]
    status, err = await _req("POST", base + "/promote", {})
    assert status == 409
    status, body = await _req("POST", base + "/resume", {"reason": "fixed"})
    assert status == 200
    assert (body["weight"], body["state"]) == (0, "active")
    status, err = await _req("POST", base + "/resume", {"reason": "again"})
    assert status == 409 and "not rolled back" in err["error"]


async def test_rollback_all_rolls_back_every_route_in_one_call(proxy):
    status, body = await _req("POST", proxy.admin + "/admin/rollback", {"reason": "incident"})
    assert status == 200
    assert body["rolled_back"] == ["balance", "orders"]
    assert body["durable"] is True
    assert {r["name"]: r["state"] for r in body["routes"]} == {
        "balance": "rolled_back", "orders": "rolled_back"}
    rollbacks = [e for e in proxy.runtime.audit.entries() if e["action"] == "rollback"]
    assert len(rollbacks) == 2 and all(e["all"] for e in rollbacks)


async def test_gate_changes_nothing_and_promote_acts(proxy):
    base = proxy.admin + "/admin/routes/orders"
    status, body = await _req("GET", base + "/gate")
    assert status == 200
    for key in ("route", "decision", "from_weight", "to_weight", "reasons", "evidence"):
        assert key in body
    # weight 0 with shadowing off: nothing to wait for, the first step is 1%
    assert (body["decision"], body["from_weight"], body["to_weight"]) == ("promote", 0, 1)
    assert body["acted"] is False and proxy.runtime.effective("orders") == 0
    status, body = await _req("POST", base + "/promote")
    assert status == 200
    assert body["acted"] is True and body["weight"] == 1
    assert proxy.runtime.effective("orders") == 1
    entry = proxy.runtime.audit.entries("orders")[0]
    assert entry["action"] == "promote" and entry["evidence"]["decision"] == "promote"
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.admin + "/metrics") as r:
            metrics = await r.text()
    # the GET is an evaluation only; the POST is a decision too
    assert 'strangler_gate_decisions_total{decision="promote",route="orders"} 1.0' in metrics
    assert 'strangler_gate_evaluations_total{decision="promote",route="orders"} 2.0' in metrics
    assert 'strangler_route_weight{route="orders"} 1.0' in metrics


async def test_diffs_without_a_store_is_the_contract_object_with_zero_counts(proxy):
    status, body = await _req("GET", proxy.admin + "/admin/routes/balance/diffs?limit=5")
    assert status == 200
    assert {k: body[k] for k in ("route", "compared", "mismatched", "fields", "samples")} == {
        "route": "balance", "compared": 0, "mismatched": 0, "fields": [], "samples": []}
    status, _ = await _req("GET", proxy.admin + "/admin/routes/balance/diffs?limit=x")
    assert status == 400


async def test_reload_answers_generation_or_the_errors(proxy):
    status, body = await _req("POST", proxy.admin + "/admin/reload")
    assert (status, body["generation"]) == (200, 2)
    good = proxy.path.read_text()
    proxy.path.write_text(good.replace("weight: 5", "weight: 500"))
    status, body = await _req("POST", proxy.admin + "/admin/reload", {"reason": "typo"})
    assert status == 400
    assert body["errors"] and any("weight" in e for e in body["errors"])
    assert body["detail"]["errors"] == body["errors"]
    assert proxy.runtime.generation == 2 and proxy.runtime.effective("balance") == 5
    proxy.path.write_text(good.replace("weight: 5", "weight: 50"))
    status, body = await _req("POST", proxy.admin + "/admin/reload")
    assert (status, body["generation"]) == (200, 3)
    assert proxy.runtime.effective("balance") == 50


async def test_health_readiness_and_errors_are_json(proxy, monkeypatch):
    assert await _req("GET", proxy.admin + "/healthz") == (200, {"status": "ok"})
    status, body = await _req("GET", proxy.admin + "/readyz")
    assert status == 200 and body["status"] == "ready"
    proxy.server.ready = False
    status, body = await _req("GET", proxy.admin + "/readyz")
    assert status == 503 and body["status"] == "starting"
    proxy.server.ready = True
    monkeypatch.setattr(type(proxy.server), "degraded", property(
        lambda self: {"flags": "unleash unreachable, serving last known weights"}))
    status, body = await _req("GET", proxy.admin + "/readyz")
    assert status == 200 and body["degraded"]["flags"].startswith("unleash")
    status, body = await _req("GET", proxy.admin + "/admin/nothing")
    assert status == 404 and body["error"] == "not found"
    status, body = await _req("DELETE", proxy.admin + "/admin/routes/balance")
    assert status == 405 and "GET" in body["detail"]["allowed"]


async def test_history_is_newest_first_and_limited(proxy):
    for w in (10, 20, 30):
        await _req("PUT", proxy.admin + "/admin/routes/balance/weight",
                   {"weight": w, "reason": f"step {w}"})
    await _req("POST", proxy.admin + "/admin/routes/orders/rollback", {"reason": "o"})
    _, body = await _req("GET", proxy.admin + "/admin/history?limit=2")
    assert [(e["route"], e["to"]) for e in body["entries"]] == [("orders", 0), ("balance", 30)]
    _, body = await _req("GET", proxy.admin + "/admin/history?route=balance")
    assert [e["reason"] for e in body["entries"]] == ["step 30", "step 20", "step 10"]
    _, body = await _req("GET", proxy.admin + "/admin/history/verify")
    assert body["ok"] is True and body["entries"] == 5  # serve_started, then the four
