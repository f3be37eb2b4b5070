"""Issue 23, point 6: four eyes on promotion, with named credentials.

A real `strangler serve` with `admin.tokens` (secrets from the environment) and
`promotion.approval`: the actor comes from the token, never from a name the client sends; a
promotion (or a weight) at or above `from_weight` waits for another named admin's approval;
the requester cannot approve it; an approval expires; a rollback never waits.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.support import free_port, routes_yaml, run_cli, wait_for

TOKENS = {"ALICE_TOKEN": "alice-7c1e0b5f", "BOB_TOKEN": "bob-93a8d2e6",
          "CAROL_TOKEN": "carol-4f6b1a90"}

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin:
      listen: "127.0.0.1:{admin}"
      tokens:
        - {{name: alice, role: admin, token_env: ALICE_TOKEN}}
        - {{name: bob, role: admin, token_env: BOB_TOKEN}}
        - {{name: carol, role: read, token_env: CAROL_TOKEN}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: payments
        match: {{path_prefix: /api/v1/payments}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
        promotion:
          min_requests: 20
          max_error_rate_increase: 0.5
          max_p99_ratio: null
          approval: {{from_weight: 25, expires: {expires}}}
          guardrail: {{enabled: false}}
"""


async def as_(who: str, proxy, *args: str, code: int | None = None) -> tuple[int, str, str]:
    token = TOKENS.get(f"{who.upper()}_TOKEN", who)
    result = await run_cli(*args, "--admin", proxy.admin, "--token", token)
    if code is not None:
        assert result[0] == code, (args, result)
    return result


async def traffic(proxy, n: int = 200) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"{proxy.url}/api/v1/payments/{i}") as r:
                await r.read()
    await asyncio.sleep(0.5)


async def view(proxy) -> dict:
    headers = {"Authorization": f"Bearer {TOKENS['CAROL_TOKEN']}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.get(proxy.admin + "/admin/routes/payments") as r:
            assert r.status == 200
            return await r.json()


@pytest.fixture
async def proxy(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    receiver = await upstreams("receiver", handler=hook)
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, expires="1h")
    text += f'notify:\n  - url: "http://127.0.0.1:{receiver.port}/hook"\n'
    p = await proxy_process(text, env=TOKENS)
    p.text = text
    p.received = received
    return p


async def test_a_promotion_to_25_needs_another_named_admin(proxy):
    await as_("alice", proxy, "set-weight", "payments", "20", "--reason", "ramp", code=0)
    await traffic(proxy)
    # alice asks (claiming to be someone else changes nothing: the token names her)
    code, out, err = await as_("alice", proxy, "promote", "payments", "--actor", "mallory")
    assert code == 6, (out, err)
    assert "promote 20% -> 25% (awaiting approval)" in out
    assert "asked by alice" in out
    assert (await view(proxy))["weight"] == 20
    pending = (await view(proxy))["approval"]
    assert (pending["requested_by"], pending["to_weight"], pending["kind"]) == (
        "alice", 25, "promote")
    code, status, _ = await as_("carol", proxy, "status")
    assert "payments: awaiting approval: promote 20% -> 25% asked by alice" in status
    # and the people who approve hear of it
    await wait_for(lambda: [b for b in proxy.received if b["event"] == "approval_requested"])
    (asked,) = [b for b in proxy.received if b["event"] == "approval_requested"]
    assert (asked["actor"], asked["from_weight"], asked["to_weight"]) == ("alice", 20, 25)
    assert "strangler approve payments" in asked["reason"]

    # Bad input: the requester approves her own request.
    code, out, err = await as_("alice", proxy, "approve", "payments", "--reason", "lgtm")
    assert code == 1 and "four eyes: alice asked for this change and cannot approve it" in err
    # a read token, and an unknown token, cannot approve at all
    await as_("carol", proxy, "approve", "payments", "--reason", "x", code=3)
    code, _, err = await as_("nobody-token", proxy, "approve", "payments", "--reason", "x")
    assert code == 3 and "invalid token" in err
    assert (await view(proxy))["weight"] == 20  # nothing changed

    code, out, err = await as_("bob", proxy, "approve", "payments", "--reason", "reviewed")
    assert code == 0, (out, err)
    assert (await view(proxy))["weight"] == 25 and (await view(proxy))["approval"] is None
    code, out, _ = await as_("carol", proxy, "history", "payments", "--json")
    entries = json.loads(out)["entries"]
    promote, approve, asked = entries[0], entries[1], entries[2]
    assert (asked["action"], asked["actor"]) == ("approval_requested", "alice")
    assert (approve["action"], approve["actor"], approve["reason"]) == (
        "approve", "bob", "reviewed")
    assert (promote["action"], promote["actor"], promote["from"], promote["to"]) == (
        "promote", "bob", 20, 25)
    assert promote["approval"]["requested_by"] == "alice"
    assert promote["approval"]["approved_by"] == "bob"
    assert all(e["actor"] != "mallory" for e in entries)

    # A weight set by hand at or above 25 waits too; a rollback never does.
    code, out, _ = await as_("bob", proxy, "set-weight", "payments", "50", "--reason", "ramp")
    assert code == 6 and "awaiting approval: set_weight 25% -> 50% asked by bob" in out
    await as_("alice", proxy, "approve", "payments", "--reason", "ok", code=0)
    assert (await view(proxy))["weight"] == 50
    await as_("alice", proxy, "rollback", "payments", "--reason", "incident", code=0)
    assert (await view(proxy))["state"] == "rolled_back"
    code, out, _ = await as_("carol", proxy, "history", "--verify")
    assert code == 0 and "chain intact" in out


async def test_an_expired_approval_is_refused_and_nothing_changes(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await proxy_process(routes_yaml(
        ROUTES, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port,
        expires="1s"), env=TOKENS)
    await as_("alice", proxy, "set-weight", "payments", "20", "--reason", "ramp", code=0)
    await traffic(proxy)
    await as_("alice", proxy, "promote", "payments", code=6)
    await asyncio.sleep(1.5)
    code, _, err = await as_("bob", proxy, "approve", "payments", "--reason", "late")
    assert code == 1 and "expired" in err and "asks again" in err
    assert (await view(proxy))["weight"] == 20
    code, out, _ = await as_("carol", proxy, "history", "payments", "--json")
    assert json.loads(out)["entries"][0]["action"] == "approval_expired"
    # Nothing left to approve now.
    code, _, err = await as_("bob", proxy, "approve", "payments", "--reason", "again")
    assert code == 1 and "nothing to approve" in err


async def test_named_tokens_replace_the_anonymous_ones(proxy):
    env = {"STRANGLER_ADMIN_TOKEN": "anonymous-admin"}
    code, _, err = await run_cli("status", "--admin", proxy.admin, "--token",
                                 "anonymous-admin", env=env)
    assert code == 3 and "invalid token" in err


async def test_serve_refuses_a_token_whose_variable_is_unset(upstreams, tmp_path):
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=free_port(),
                       svc=free_port(), expires="1h")
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    env = {k: v for k, v in TOKENS.items() if k != "BOB_TOKEN"}
    code, _, err = await run_cli("serve", "-c", str(path), env=env, timeout=30)
    assert code == 2 and "bob's token_env BOB_TOKEN is not set" in err
    assert "bob-93a8d2e6" not in err


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("approval: {from_weight: 25, expires: 1h}",
     "approval: {from_weight: 25, approvers: [bob, dave]}",
     "routes[0].promotion.approval.approvers[1]: unknown token name 'dave'; admin.tokens has: "
     "alice, bob, carol"),
    ("approval: {from_weight: 25, expires: 1h}",
     "approval: {from_weight: 25, approvers: [carol]}",
     "approvers[0]: token 'carol' has role read: an approver needs role admin"),
    ("    - {name: bob, role: admin, token_env: BOB_TOKEN}\n"
     "    - {name: carol, role: read, token_env: CAROL_TOKEN}\n",
     "    - {name: alice, role: admin, token_env: BOB_TOKEN}\n",
     "admin.tokens[1].name: duplicate name 'alice' (first at line 7)"),
    ("  tokens:\n    - {name: alice, role: admin, token_env: ALICE_TOKEN}\n"
     "    - {name: bob, role: admin, token_env: BOB_TOKEN}\n"
     "    - {name: carol, role: read, token_env: CAROL_TOKEN}\n", "",
     "routes[0].promotion.approval: approval needs named admin credentials in admin.tokens"),
    ("      min_requests: 20\n", "      min_requests: 20\n      max_hold: {requests: 500}\n",
     "routes[0].promotion.max_hold.requests: 500 is below the sample floor "
     "min_latency_samples = 1000"),
])
async def test_bad_approval_and_token_config_is_refused_with_file_line_and_path(
        tmp_path, old: str, new: str, problem: str) -> None:
    text = routes_yaml(ROUTES, port=1, admin=2, mono=3, svc=4, expires="1h")
    assert old in text, old
    path = tmp_path / "routes.yaml"
    path.write_text(text.replace(old, new))
    code, _, err = await run_cli("validate", "-c", str(path))
    assert code == 2 and f"{path}:" in err and problem in err, err
