"""Answers the contract words exactly (found by a contract audit), through a real proxy and the
real CLI:

- `reset-evidence` on a group (its name or a member's) answers as the group, like `rollback` and
  `resume`: `name` and `route` the group's, `group`, `routes`, `weight`, `state`, `members`;
  its audit entry has each member's previous and new step.
- `gate` on a rolled-back route: the first reason still says since when and why the evidence
  counts, then that the route is rolled back.
- `gate` while a promotion waits for a second person: `approval` is the pending request (and
  `gate` still exits 0 for promote: only `promote` exits 6).
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli

GROUPED = TWO_UPSTREAMS + """
    routes:
      - name: cart-read
        match: {{path_prefix: /cart, methods: [GET]}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
        promotion: {{guardrail: {{enabled: false}}}}
      - name: cart-write
        match: {{path_prefix: /cart/items, methods: [POST]}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
        promotion: {{guardrail: {{enabled: false}}}}
      - name: accounts
        match: {{path_prefix: /accounts}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
        promotion: {{guardrail: {{enabled: false}}}}
    groups:
      cart:
        routes: [cart-read, cart-write]
"""

TOKENS = {"ALICE_TOKEN": "alice-5d1f0c2a", "BOB_TOKEN": "bob-8e3b7a41"}

APPROVAL = """
    version: 1
    listen: 127.0.0.1:{port}
    admin:
      listen: "127.0.0.1:{admin}"
      tokens:
        - {{name: alice, role: admin, token_env: ALICE_TOKEN}}
        - {{name: bob, role: admin, token_env: BOB_TOKEN}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: accounts
        match: {{path_prefix: /accounts}}
        legacy: monolith
        target: svc
        weight: 20
        shadow: false
        promotion:
          steps: [5, 20, 25, 50, 100]
          min_requests: 20
          max_error_rate_increase: 0.5
          max_p99_ratio: null
          approval: {{from_weight: 25, expires: 1h}}
          guardrail: {{enabled: false}}
"""


@pytest.fixture
async def grouped(upstreams, inproc_proxy):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    return await inproc_proxy(routes_yaml(GROUPED, port=free_port(), admin=free_port(),
                                          mono=mono.port, svc=svc.port))


async def _routes(admin: str, token: str | None = None) -> dict[str, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(admin + "/admin/routes") as r:
            assert r.status == 200
            return {v["name"]: v for v in (await r.json())["routes"]}


@pytest.mark.parametrize("named", ["cart", "cart-write"])
async def test_reset_evidence_on_a_group_answers_as_the_group(grouped, named):
    env = {"STRANGLER_ADMIN_URL": grouped.admin}
    before = await _routes(grouped.admin)
    code, out, err = await run_cli("reset-evidence", named, "--reason", "g", "--json", env=env)
    assert code == 0, err
    body = json.loads(out)
    after = await _routes(grouped.admin)
    assert (body["name"], body["route"], body["group"], body["routes"]) == (
        "cart", "cart", "cart", ["cart-read", "cart-write"])
    assert (body["weight"], body["state"]) == (5, "active")
    assert [m["name"] for m in body["members"]] == ["cart-read", "cart-write"]
    # every member was judged afresh, and the answer shows each one's new step
    for m in body["members"]:
        assert m["step"]["id"] == after[m["name"]]["step"]["id"]
        assert m["step"]["id"] != before[m["name"]]["step"]["id"]
        assert m["step"]["reason"] == "reset-evidence by " + body["audit"]["actor"] + ": g"
    assert body["audit"]["route"] == "cart"
    assert body["audit"]["routes"] == ["cart-read", "cart-write"]
    # the audit trail has every member's previous and new step, not one member's
    members = body["audit"]["evidence"]["members"]
    assert sorted(members) == ["cart-read", "cart-write"]
    for m, steps in members.items():
        assert steps["previous_step"]["step"] == before[m]["step"]["id"]
        assert steps["step"]["id"] == after[m]["step"]["id"]
    assert after["accounts"]["step"] == before["accounts"]["step"]  # not in the group

    code, out, err = await run_cli("reset-evidence", named, "--reason", "again", env=env)
    assert code == 0, err
    after = await _routes(grouped.admin)
    assert out.splitlines()[0] == (
        f"cart: evidence reset: new steps begin now (cart-read step "
        f"{after['cart-read']['step']['id']}, cart-write step "
        f"{after['cart-write']['step']['id']}): weight 5%, state active")


async def test_reset_evidence_on_a_route_still_answers_as_the_route(grouped):
    env = {"STRANGLER_ADMIN_URL": grouped.admin}
    code, out, err = await run_cli("reset-evidence", "accounts", "--reason", "r", "--json",
                                   env=env)
    assert code == 0, err
    body = json.loads(out)
    assert (body["name"], body["route"], body["state"]) == ("accounts", "accounts", "active")
    assert "members" not in body and body["group"] is None
    assert body["to"]["id"] == body["step"]["id"] != body["from"]["step"]
    code, out, err = await run_cli("reset-evidence", "accounts", "--reason", "r2", env=env)
    step = (await _routes(grouped.admin))["accounts"]["step"]["id"]
    assert code == 0 and out.startswith(f"accounts: evidence reset: step {step} begins now"), err


async def test_gate_on_a_rolled_back_route_says_first_since_when_the_evidence_counts(grouped):
    env = {"STRANGLER_ADMIN_URL": grouped.admin}
    code, _, err = await run_cli("rollback", "accounts", "--reason", "t", env=env)
    assert code == 0, err
    code, out, err = await run_cli("gate", "accounts", "--json", env=env)
    assert code == 4, (out, err)
    body = json.loads(out)
    step = (await _routes(grouped.admin))["accounts"]["step"]
    assert body["decision"] == "hold" and body["step"] == step["id"]
    first, *rest = body["reasons"]
    assert first.startswith("Evidence since ")
    assert f"at step {step['id']}: rollback (manual) by " in first
    assert rest == ["route 'accounts' is rolled back; `strangler resume accounts` before "
                    "promoting it"]
    assert body["evidence"]["since"] == step["started"]


@pytest.fixture
async def approvals(upstreams, inproc_proxy, monkeypatch):
    for k, v in TOKENS.items():
        monkeypatch.setenv(k, v)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    return await inproc_proxy(routes_yaml(APPROVAL, port=free_port(), admin=free_port(),
                                          mono=mono.port, svc=svc.port))


async def _traffic(url: str, n: int = 200) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"{url}/accounts/{i}") as r:
                await r.read()


async def test_gate_shows_the_request_a_waiting_promotion_waits_for(approvals):
    p = approvals

    async def cli(who: str, *args: str) -> tuple[int, str, str]:
        return await run_cli(*args, "--admin", p.admin, "--token", TOKENS[f"{who}_TOKEN"])

    await _traffic(p.url)
    code, out, err = await cli("ALICE", "gate", "accounts", "--json")
    body = json.loads(out)
    # the gate says promote to 25 (needs approval), but nobody asked yet: nothing pending
    assert (code, body["decision"], body["to_weight"], body["approval"]) == (
        0, "promote", 25, None), body["reasons"]
    code, out, err = await cli("ALICE", "promote", "accounts")
    assert code == 6, (out, err)
    pending = (await _routes(p.admin, TOKENS["ALICE_TOKEN"]))["accounts"]["approval"]
    assert pending is not None

    code, out, err = await cli("BOB", "gate", "accounts", "--json")
    assert code == 0, (out, err)  # a read: still exit 0 for promote (6 is promote's)
    body = json.loads(out)
    assert (body["decision"], body["from_weight"], body["to_weight"], body["acted"]) == (
        "promote", 20, 25, False)
    approval = body["approval"]
    assert approval is not None
    for key in ("id", "kind", "from_weight", "to_weight", "requested_by", "requested_at",
                "expires_at"):
        assert approval[key] == pending[key], key
    assert (approval["kind"], approval["requested_by"], approval["state"]) == (
        "promote", "alice", "pending")
    assert 0 < approval["expires_in_seconds"] <= 3600
    code, out, _ = await cli("BOB", "gate", "accounts")
    assert code == 0 and "accounts: promote 20% -> 25% (awaiting approval)" in out
    assert "asked by alice" in out
    # the read changed nothing: the same request waits, the weight is 20
    view = (await _routes(p.admin, TOKENS["BOB_TOKEN"]))["accounts"]
    assert view["weight"] == 20 and view["approval"]["id"] == pending["id"]

    code, out, err = await cli("BOB", "approve", "accounts", "--reason", "ok")
    assert code == 0, (out, err)
    await _traffic(p.url)
    code, out, err = await cli("BOB", "gate", "accounts", "--json")
    body = json.loads(out)
    # the next promotion (25 -> 50) needs approval too, but waits for none yet
    assert (code, body["decision"], body["to_weight"], body["approval"]) == (
        0, "promote", 50, None), err
