"""The control commands as an operator or a CI job runs them: output, --json, exit codes."""

from __future__ import annotations

import json
import re
import time

import aiohttp
import pytest

from tests.support import free_port, routes_yaml, run_cli, wait_for

ADMIN = "cli-admin-token-5d1e"
READ = "cli-read-token-88a0"

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
      broken: {{url: "http://127.0.0.1:{broken}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
      - name: orders
        match: {{path_prefix: /api/v1/orders}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0}}
      - name: cart
        match: {{path_prefix: /api/v1/cart}}
        legacy: monolith
        target: broken
        weight: 50
        shadow: false
        promotion:
          auto_rollback: true
          guardrail: {{enabled: false}}
    """


@pytest.fixture
async def proxy(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("STRANGLER_READ_TOKEN", READ)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    broken = await upstreams("broken", status=500)
    return await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                          mono=mono.port, svc=svc.port, broken=broken.port))


def env(proxy, token: str | None = ADMIN) -> dict[str, str]:
    out = {"STRANGLER_ADMIN_URL": proxy.admin, "STRANGLER_ADMIN_TOKEN": token or ""}
    return out


async def test_status_table_and_json(proxy):
    code, out, err = await run_cli("status", env=env(proxy, READ))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ROUTE", "WEIGHT", "STATE"]
    assert [ln.split()[:3] for ln in lines[1:4]] == [
        ["balance", "5%", "active"], ["orders", "0%", "active"], ["cart", "50%", "active"]]
    code, out, _ = await run_cli("status", "--json", env=env(proxy, READ))
    assert code == 0
    data = json.loads(out)  # exactly one JSON object
    assert [r["name"] for r in data["routes"]] == ["balance", "orders", "cart"]


async def test_set_weight_rollback_resume_round_trip(proxy):
    rt = proxy.runtime
    code, out, err = await run_cli("set-weight", "balance", "12.5", "--reason", "canary",
                                   "--actor", "carol", env=env(proxy))
    assert code == 0, err
    assert "5% -> 12.5%" in out and "carol (admin token)" in out
    assert rt.effective("balance") == 12.5
    code, out, err = await run_cli("rollback", "balance", "--reason", "p99 up", "--json",
                                   env=env(proxy))
    assert code == 0, err
    body = json.loads(out)
    assert (body["state"], body["weight"], body["durable"]) == ("rolled_back", 0, True)
    code, _, err = await run_cli("set-weight", "balance", "50", "--reason", "x", env=env(proxy))
    assert code == 1
    assert "rolled back" in err and "resume" in err
    assert rt.effective("balance") == 0
    code, out, err = await run_cli("resume", "balance", "--reason", "fixed", env=env(proxy))
    assert code == 0, err
    assert "state active" in out and rt.effective("balance") == 0
    code, out, _ = await run_cli("history", "balance", env=env(proxy, READ))
    assert code == 0
    assert " resume " in out.splitlines()[1]  # newest first
    code, out, _ = await run_cli("history", "balance", "--json", env=env(proxy, READ))
    entries = json.loads(out)["entries"]
    assert [e["action"] for e in entries] == ["resume", "rollback", "set_weight"]
    assert [e["reason"] for e in entries] == ["fixed", "p99 up", "canary"]


async def test_rollback_all(proxy):
    code, out, err = await run_cli("rollback", "--all", "--reason", "incident 42",
                                   env=env(proxy))
    assert code == 0, err
    assert out.count("rolled back, 100% to legacy") == 3
    assert all(proxy.runtime.rolled_back(n) for n in ("balance", "orders", "cart"))


async def test_usage_errors_exit_2(proxy):
    code, _, err = await run_cli("set-weight", "nope", "10", "--reason", "x", env=env(proxy))
    assert code == 2
    assert "unknown route 'nope'" in err and "balance" in err
    code, out, _ = await run_cli("gate", "nope", "--json", env=env(proxy))
    assert code == 2 and json.loads(out)["error"] == "unknown route 'nope'"
    code, _, err = await run_cli("set-weight", "balance", "101", "--reason", "x",
                                 env=env(proxy))
    assert code == 2
    code, _, err = await run_cli("set-weight", "balance", "10", env=env(proxy))
    assert code == 2 and "--reason" in err
    code, _, err = await run_cli("rollback", "--reason", "x", env=env(proxy))
    assert code == 2
    assert proxy.runtime.effective("balance") == 5


@pytest.mark.parametrize("name", ["nosuch/../../../admin/rollback#", "..", "x?y=1",
                                  "x#frag", "balance/../orders"])
async def test_a_route_name_that_would_change_the_url_is_refused_unsent(proxy, name):
    """The route went into the admin URL as typed: `rollback 'nosuch/../../../admin/rollback#'`
    was `POST /admin/rollback`, every route rolled back, exit 0 (found by a contract audit).
    A name no route can have is refused before anything is sent: exit 2, nothing changed."""
    _, out, _ = await run_cli("history", "--json", env=env(proxy, READ))
    before = len(json.loads(out)["entries"])
    for args in (("rollback", name, "--reason", "x"), ("set-weight", name, "5", "--reason", "x"),
                 ("resume", name, "--reason", "x"), ("reset-evidence", name, "--reason", "x"),
                 ("gate", name), ("promote", name), ("approve", name, "--reason", "x")):
        code, _, err = await run_cli(*args, env=env(proxy))
        assert code == 2 and f"no route or group named {name!r}" in err, (args, code, err)
    assert not any(proxy.runtime.rolled_back(n) for n in ("balance", "orders", "cart"))
    assert proxy.runtime.effective("balance") == 5
    code, out, _ = await run_cli("history", "--json", env=env(proxy, READ))
    assert code == 0 and len(json.loads(out)["entries"]) == before


@pytest.mark.parametrize("url", ["http://[::1", "notaurl", "ftp://127.0.0.1/"])
async def test_a_malformed_admin_url_is_a_usage_error(url):
    """`--admin 'http://[::1'` was a traceback and exit 1; `notaurl` was exit 3 (unreachable)."""
    code, out, err = await run_cli("status", "--admin", url)
    assert code == 2 and f"--admin {url!r}" in err and "Traceback" not in out + err, err


async def test_unreachable_or_refused_admin_exits_3(proxy):
    closed = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_cli("status", "--admin", closed)
    assert code == 3 and f"admin API at {closed} unreachable" in err
    code, _, err = await run_cli("rollback", "balance", "--reason", "x",
                                 env=env(proxy, "wrong-token-3c9f"))
    assert code == 3 and "refused the token (401)" in err
    assert "wrong-token-3c9f" not in err  # tokens are never echoed
    code, _, err = await run_cli("rollback", "balance", "--reason", "x", env=env(proxy, READ))
    assert code == 3 and "(403)" in err and "read-only" in err
    assert not proxy.runtime.rolled_back("balance")


async def test_gate_and_promote_exit_codes(proxy):
    rt = proxy.runtime
    # orders shadows but has seen nothing: hold (4), nothing changes
    code, out, _ = await run_cli("gate", "orders", "--json", env=env(proxy, READ))
    assert code == 4
    data = json.loads(out)
    assert data["decision"] == "hold" and data["reasons"]
    for key in ("route", "from_weight", "to_weight", "evidence"):
        assert key in data
    started = time.monotonic()
    code, _, err = await run_cli("promote", "orders", "--wait", "1s", "--interval", "250ms",
                                 env=env(proxy))
    assert code == 4 and time.monotonic() - started >= 1.0
    assert "hold" in err and rt.effective("orders") == 0
    # balance without shadowing at 5%: hold until target has min_requests; gate changes nothing
    code, out, _ = await run_cli("gate", "balance", env=env(proxy, READ))
    assert code == 4 and out.startswith("balance: hold at 5%")
    # cart: target answers 500 to everything -> fail (1), and promote rolls it back
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(proxy.url + "/api/v1/cart") as r:
                await r.read()
    proxy.server.flush()
    code, out, _ = await run_cli("gate", "cart", env=env(proxy, READ))
    assert code == 1 and out.startswith("cart: fail at 50%")
    assert not rt.rolled_back("cart")
    code, out, _ = await run_cli("promote", "cart", env=env(proxy))
    assert code == 1 and "rolled back" in out
    assert rt.rolled_back("cart")


async def test_promote_steps_up(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                       mono=mono.port, svc=svc.port, broken=svc.port))
    code, out, err = await run_cli("set-weight", "balance", "0", "--reason", "restart ramp",
                                   env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, err
    code, out, err = await run_cli("promote", "balance", "--json",
                                   env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, err
    data = json.loads(out)
    assert (data["decision"], data["from_weight"], data["to_weight"]) == ("promote", 0, 1)
    assert data["acted"] is True and p.runtime.effective("balance") == 1


async def test_history_verify_and_diffs(proxy):
    await run_cli("set-weight", "balance", "7", "--reason", "a", env=env(proxy))
    code, out, _ = await run_cli("history", "--verify", env=env(proxy, READ))
    assert code == 0 and "chain intact" in out
    code, out, _ = await run_cli("diffs", "orders", "--limit", "5", env=env(proxy, READ))
    assert code == 0 and out.startswith("orders: ")
    code, out, _ = await run_cli("diffs", "orders", "--json", env=env(proxy, READ))
    body = json.loads(out)
    assert {"route", "compared", "mismatched", "fields", "samples"} <= set(body)


async def test_diffs_show_field_counts_and_export_regression_tests(proxy, tmp_path):
    # orders is at 0% with shadowing on: every GET is mirrored to svc, whose answer says
    # `served_by: svc` where the monolith says `monolith`.
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.get(f"{proxy.url}/api/v1/orders/{i}") as r:
                assert (await r.json())["served_by"] == "monolith"

        async def compared() -> bool:
            async with s.get(proxy.admin + "/admin/routes/orders/diffs",
                             headers={"Authorization": f"Bearer {READ}"}) as r:
                return (await r.json())["compared"] >= 30

        await wait_for(compared, timeout=10)
    code, out, err = await run_cli("diffs", "orders", "--json", env=env(proxy, READ))
    assert code == 0, err
    body = json.loads(out)
    assert body["mismatched"] >= 30
    top = body["fields"][0]
    assert (top["path"], top["kind"]) == ("$.served_by", "value")
    assert top["count"] >= 30 and body["samples"]
    code, out, _ = await run_cli("diffs", "orders", "--limit", "3", env=env(proxy, READ))
    assert code == 0 and "$.served_by" in out and "recent samples" in out
    dest = tmp_path / "orders.hurl"
    code, out, err = await run_cli("diffs", "orders", "--export", "hurl", str(dest),
                                   env=env(proxy, READ))
    assert code == 0, err
    assert "wrote" in out and "GET " in dest.read_text()


async def test_history_text_shows_what_each_change_stood_on(proxy):
    # The gate rolls cart back on its evidence (target answers 500); an operator resets
    # balance's evidence. The text table must show both, not only --json.
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(proxy.url + "/api/v1/cart") as r:
                await r.read()
    proxy.server.flush()
    code, _, _ = await run_cli("promote", "cart", env=env(proxy))
    assert code == 1 and proxy.runtime.rolled_back("cart")
    before = proxy.runtime.state.route("balance").step
    code, _, err = await run_cli("reset-evidence", "balance", "--reason", "fixed",
                                 env=env(proxy))
    assert code == 0, err
    after = proxy.runtime.state.route("balance").step
    code, out, err = await run_cli("history", env=env(proxy, READ))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[-1] == "EVIDENCE"
    rollback = next(ln for ln in lines if " rollback " in ln and " cart " in ln)
    m = re.search(r"fail: target (\d+) req 100\.00% err p99 [\d.]+ms; legacy (\d+) req "
                  r"0\.00% err p99 [\d.]+ms; (\d+) fell back to legacy; p99 x[\d.]+$", rollback)
    assert m is not None, rollback
    target, legacy, fell_back = map(int, m.groups())
    # every request target failed was answered by legacy instead
    assert target == fell_back > 0 and legacy == 200
    reset = next(ln for ln in lines if " reset_evidence " in ln)
    assert reset.endswith(f"step {before} -> {after}"), reset
