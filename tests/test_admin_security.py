"""Security of the admin side, against `strangler serve` as it is run and the CLI as it is typed.

- the tokens are never logged, stored or echoed: every endpoint and every CLI command is used
  with them (and with wrong ones), then every file the proxy wrote and every line it printed is
  searched for them;
- tokens are compared by `hmac.compare_digest`, against every configured token, and a wrong
  token is a 401 whatever its length or bytes;
- `serve` refuses a non-loopback admin listener without STRANGLER_ADMIN_TOKEN (exit 2, naming
  the variable) and accepts it with one;
- every mutation writes exactly one audit entry (actor, reason, before/after); reads and refused
  calls write none.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from proxy.api import auth
from proxy.api.auth import AuthError, Caller, Tokens
from tests.rawhttp import parse_responses, raw_request
from tests.support import STRANGLER, free_port, routes_yaml, run_cli, wait_for

ADMIN = "adm-sec-9f3c1e77b2d84a06"
READ = "rd-sec-41b7e0c5d9a2f318"
TOKENS = {"STRANGLER_ADMIN_TOKEN": ADMIN, "STRANGLER_READ_TOKEN": READ}

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "{admin_host}:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0}}
      - name: orders
        match: {{path_prefix: /api/v1/orders}}
        legacy: monolith
        target: svc
        weight: 10
        shadow: false
        promotion: {{min_requests: 100, guardrail: {{enabled: false}}}}
      - name: cart
        match: {{path_prefix: /api/v1/cart}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
    """


def config(mono: int, svc: int, admin_host: str = "127.0.0.1", admin: int = 0) -> str:
    return routes_yaml(ROUTES, port=free_port(), admin=admin or free_port(),
                       admin_host=admin_host, mono=mono, svc=svc)


def cli_env(p, token: str | None = None) -> dict[str, str]:
    """The CLI's environment: the admin URL, and the token only when given (else none)."""
    return {"STRANGLER_ADMIN_URL": p.admin, "STRANGLER_ADMIN_TOKEN": token or "",
            "STRANGLER_READ_TOKEN": ""}


async def call(s: aiohttp.ClientSession, p, method: str, path: str, token: str | None = None,
               body: dict | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with s.request(method, p.admin + path, json=body, headers=headers) as r:
        return r.status, await r.text()


# -- tokens are never logged or stored ------------------------------------------------------------
def files_under(directory: Path) -> list[Path]:
    return [f for f in directory.rglob("*") if f.is_file()]


async def test_tokens_never_logged_stored_or_echoed(upstreams, proxy_process, tmp_path):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port), env=TOKENS)
    outputs: list[str] = []  # everything the CLI and the API answered
    wrong = [ADMIN + "x", ADMIN[:-1], ADMIN[:-1] + "0", READ.upper(), "Bearer " + ADMIN]
    async with aiohttp.ClientSession() as s:
        # Data plane: the token sent by a client through a shadowed route with differences
        # (legacy and target answer differently), so the diff store records samples.
        for i in range(30):
            async with s.get(p.url + f"/api/v1/balance/{i}",
                             headers={"Authorization": f"Bearer {ADMIN}",
                                      "Cookie": f"session={READ}",
                                      "X-Api-Key": ADMIN}) as r:
                assert r.status == 200
                outputs.append(await r.text())

        async def sampled() -> bool:
            status, text = await call(s, p, "GET", "/admin/routes/balance/diffs", READ)
            return status == 200 and json.loads(text)["compared"] >= 30

        await wait_for(sampled, timeout=15)

        # Every endpoint, with the admin token, the read token and wrong tokens.
        reads = ["/healthz", "/readyz", "/metrics", "/", "/admin/routes", "/admin/routes/balance",
                 "/admin/routes/balance/gate", "/admin/routes/balance/diffs",
                 "/admin/routes/balance/diffs/export?format=hurl",
                 "/admin/routes/balance/diffs/export?format=pytest",
                 "/admin/routes/balance/series?since=0", "/admin/history",
                 "/admin/history/verify"]
        for path in reads:
            for token in (ADMIN, READ, *wrong):
                status, text = await call(s, p, "GET", path, token)
                assert status in (200, 401), (path, status, text)
                outputs.append(text)
        mutations = [("PUT", "/admin/routes/orders/weight", {"weight": 20, "reason": "sec"}),
                     ("POST", "/admin/routes/balance/promote", {}),
                     ("POST", "/admin/routes/orders/rollback", {"reason": "sec"}),
                     ("POST", "/admin/routes/orders/resume", {"reason": "sec"}),
                     ("POST", "/admin/rollback", {"reason": "sec all"}),
                     ("POST", "/admin/routes/balance/resume", {"reason": "sec"}),
                     ("POST", "/admin/routes/orders/resume", {"reason": "sec"}),
                     ("POST", "/admin/reload", {"reason": "sec"})]
        for method, path, body in mutations:
            for token in (READ, *wrong):
                status, text = await call(s, p, method, path, token, body)
                assert status in (401, 403), (path, token, status)
                outputs.append(text)
            status, text = await call(s, p, method, path, ADMIN, body)
            assert status == 200, (path, text)
            outputs.append(text)

    # The CLI, with the token as an argument and from the environment.
    export = tmp_path / "exported"
    commands = [
        ("status",), ("status", "--json"),
        ("set-weight", "orders", "15", "--reason", "cli"),
        ("gate", "balance"), ("gate", "balance", "--json"),
        ("promote", "balance", "--json"),
        ("diffs", "balance", "--limit", "5"), ("diffs", "balance", "--json"),
        ("diffs", "balance", "--export", "hurl", str(export) + ".hurl"),
        ("diffs", "balance", "--export", "pytest", str(export) + "_test.py"),
        ("rollback", "orders", "--reason", "cli"), ("resume", "orders", "--reason", "cli"),
        ("rollback", "--all", "--reason", "cli all"),
        ("resume", "orders", "--reason", "cli"), ("resume", "balance", "--reason", "cli"),
        ("history",), ("history", "--json"), ("history", "--verify"),
    ]
    for i, args in enumerate(commands):
        if i % 2:
            code, out, err = await run_cli(*args, "--token", ADMIN, env=cli_env(p))
        else:
            code, out, err = await run_cli(*args, env=cli_env(p, ADMIN))
        assert code in (0, 4), (args, out, err)  # 4: the gate holds (not enough evidence)
        outputs += [out, err]
    for token in wrong:
        code, out, err = await run_cli("set-weight", "orders", "1", "--reason", "no",
                                       "--token", token, env=cli_env(p))
        assert code == 3 and "401" in err, err
        outputs += [out, err]
    code, out, err = await run_cli("rollback", "orders", "--reason", "read", env=cli_env(p, READ))
    assert code == 3 and "403" in err, err
    outputs += [out, err]

    p.signal(signal.SIGHUP)
    await wait_for(lambda: p.stderr_path.read_text().count('"config reloaded"') >= 2, timeout=10)
    assert await p.stop() == 0

    written = files_under(p.dir) + list(tmp_path.glob("exported*"))
    names = {f.name for f in written}
    assert {"audit.log", "state.json", "diffs.sqlite3", "stdout.log", "stderr.log"} <= names, names
    assert any(f.name.endswith(".hurl") for f in written)
    for f in written:
        data = f.read_bytes()
        for token in (ADMIN, READ):
            assert token.encode() not in data, f"{token[:6]}... found in {f}"
    for text in outputs:
        for token in (ADMIN, READ):
            assert token not in text
    assert p.stderr_path.stat().st_size > 0 and p.stdout_path.stat().st_size > 0


# -- constant-time comparison -----------------------------------------------------------------
def test_compare_digest_decides_and_sees_every_token(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    tokens = Tokens(ADMIN, READ)
    # The admin token matches first; the read token is still compared (no early exit).
    assert tokens.identify(f"Bearer {ADMIN}") == Caller("admin", True)
    assert calls == [(ADMIN.encode(), ADMIN.encode()), (ADMIN.encode(), READ.encode())]
    calls.clear()
    with pytest.raises(AuthError) as exc:
        tokens.identify("Bearer " + "z" * len(ADMIN))
    assert exc.value.status == 401 and len(calls) == 2

    # compare_digest is what decides: when it says no, the right token is refused...
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: False)
    with pytest.raises(AuthError):
        tokens.identify(f"Bearer {ADMIN}")
    # ...and when it says yes, anything passes: no other comparison stands beside it.
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: True)
    assert tokens.identify("Bearer anything").role == "admin"


async def test_wrong_tokens_of_any_length_or_bytes_are_401(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port), env=TOKENS)
    same_length = [ADMIN[:-1] + ("0" if ADMIN[-1] != "0" else "1"),
                   ("b" if ADMIN[0] != "b" else "c") + ADMIN[1:], "x" * len(ADMIN),
                   READ[: len(ADMIN)].ljust(len(ADMIN), "r")]
    other_length = ["", "a", ADMIN[:-1], ADMIN + "0", ADMIN * 2, ADMIN[:8], "x" * 4096]
    async with aiohttp.ClientSession() as s:
        for token in same_length + other_length:
            assert len(token) != len(ADMIN) or token != ADMIN
            for method, path in (("GET", "/admin/routes"),
                                 ("PUT", "/admin/routes/orders/weight")):
                status, text = await call(s, p, method, path, token,
                                          {"weight": 1, "reason": "x"})
                assert status == 401, (token, path, status, text)
                error = json.loads(text)["error"]
                assert error == "invalid token" or error.startswith("missing bearer token")
                if len(token) >= 6:
                    assert token not in text
        # Other schemes and shapes of the header.
        for header in (f"Basic {ADMIN}", f"Token {ADMIN}", ADMIN, f"Bearer{ADMIN}", "Bearer "):
            async with s.get(p.admin + "/admin/routes",
                             headers={"Authorization": header}) as r:
                assert r.status == 401, header
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await call(s, p, "GET", "/admin/routes", ADMIN))[0] == 200
        assert (await call(s, p, "GET", "/admin/routes", f" {ADMIN} "))[0] == 200
    # Bytes no client library sends: non-ASCII and invalid UTF-8 in the header.
    for value in ("Bearer t\u00f6k\u00e9n".encode(), b"Bearer \xff\xfe" + ADMIN.encode()[2:],
                  b"Bearer " + ADMIN.encode() + b"\x80"):
        data, _ = await raw_request(
            p.admin_port,
            b"GET /admin/routes HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: " + value + b"\r\n\r\n")
        (resp,) = parse_responses(data)
        assert resp.status == 401, (value, resp.status, resp.body)
    assert await p.stop() == 0


# -- a non-loopback admin listener needs a token ----------------------------------------------
async def serve_exit(config_path: Path, env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("STRANGLER_ADMIN_TOKEN", "STRANGLER_READ_TOKEN")}
    proc = await asyncio.create_subprocess_exec(
        STRANGLER, "serve", "-c", str(config_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**base, **env}, cwd=str(config_path.parent))
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("serve started instead of refusing") from None
    return proc.returncode, out.decode() + err.decode()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("env", [{}, {"STRANGLER_ADMIN_TOKEN": ""},
                                 {"STRANGLER_READ_TOKEN": READ}],
                         ids=["no-token", "empty-token", "read-token-only"])
async def test_serve_refuses_a_non_loopback_admin_without_a_token(tmp_path, env):
    admin = free_port()
    path = tmp_path / "routes.yaml"
    path.write_text(config(free_port(), free_port(), admin_host="0.0.0.0", admin=admin))
    code, text = await serve_exit(path, env)
    assert code == 2, text
    assert "STRANGLER_ADMIN_TOKEN" in text and "0.0.0.0" in text and "refusing" in text
    assert port_is_free(admin)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


async def test_serve_accepts_a_non_loopback_admin_with_a_token(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port, admin_host="0.0.0.0"),
                            env={"STRANGLER_ADMIN_TOKEN": ADMIN})
    async with aiohttp.ClientSession() as s:
        assert (await call(s, p, "GET", "/readyz"))[0] == 200
        assert (await call(s, p, "GET", "/admin/routes"))[0] == 401
        assert (await call(s, p, "GET", "/admin/routes", ADMIN))[0] == 200
    assert await p.stop() == 0


async def test_loopback_admin_without_a_token_starts(upstreams, proxy_process, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port, admin_host="127.0.0.1"))
    async with aiohttp.ClientSession() as s:
        assert (await call(s, p, "GET", "/admin/routes"))[0] == 200
    assert await p.stop() == 0


# -- every mutation is audited exactly once -----------------------------------------------------
def audit_lines(p) -> list[dict]:
    path = p.dir / "state" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def test_every_mutation_writes_exactly_one_audit_entry(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await proxy_process(config(mono.port, svc.port), env=TOKENS)
    seen = len(audit_lines(p))
    actor = "alice (admin token)"

    async def cli(*args: str, token: str = ADMIN, code: int = 0) -> str:
        rc, out, err = await run_cli(*args, "--actor", "alice", env=cli_env(p, token))
        assert rc == code, (args, out, err)
        return out

    def new_entries() -> list[dict]:
        nonlocal seen
        lines = audit_lines(p)
        out, seen = lines[seen:], len(lines)
        return out

    await cli("set-weight", "orders", "25", "--reason", "canary 25")
    (e,) = new_entries()
    assert (e["action"], e["route"], e["from"], e["to"], e["reason"], e["actor"]) == (
        "set_weight", "orders", 10, 25, "canary 25", actor)

    await cli("promote", "cart")  # 0 -> the first step
    (e,) = new_entries()
    assert (e["action"], e["route"], e["from"], e["to"], e["actor"]) == (
        "promote", "cart", 0, 1, actor)
    assert e["reason"].startswith("promotion gate:") and e["evidence"]["decision"] == "promote"

    await cli("rollback", "orders", "--reason", "errors up")
    (e,) = new_entries()
    assert (e["action"], e["route"], e["from"], e["to"], e["reason"], e["actor"],
            e["trigger"], e["all"]) == ("rollback", "orders", 25, 0, "errors up", actor,
                                        "manual", False)

    await cli("resume", "orders", "--reason", "fixed")
    (e,) = new_entries()
    assert (e["action"], e["route"], e["from"], e["to"], e["reason"], e["actor"]) == (
        "resume", "orders", "rolled_back", "active", "fixed", actor)

    await cli("rollback", "--all", "--reason", "incident 42")
    entries = new_entries()  # one per route, each marked as part of a rollback of all
    assert sorted((e["route"], e["from"], e["all"]) for e in entries) == [
        ("balance", 0, True), ("cart", 1, True), ("orders", 0, True)]
    assert {(e["action"], e["reason"], e["actor"]) for e in entries} == {
        ("rollback", "incident 42", actor)}

    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {ADMIN}", "X-Strangler-Actor": "bob"}
        async with s.post(p.admin + "/admin/reload", json={"reason": "gitops sync"},
                          headers=headers) as r:
            assert r.status == 200
    (e,) = new_entries()
    assert (e["action"], e["reason"], e["actor"], e["generation"]) == (
        "reload", "gitops sync", "bob (admin token)", 2)
    assert e["from"] == {"balance": 0, "orders": 0, "cart": 0} and e["to"] == e["from"]

    p.signal(signal.SIGHUP)
    await wait_for(lambda: len(audit_lines(p)) > seen, timeout=10)
    (e,) = new_entries()
    assert (e["action"], e["reason"], e["actor"], e["generation"]) == (
        "reload", "SIGHUP", "system", 3)

    # Reads, and every refused change, write nothing.
    for args in (("status",), ("gate", "balance"), ("history",), ("diffs", "balance"),
                 ("history", "--verify")):
        await cli(*args, code=4 if args[0] == "gate" else 0)
    await cli("set-weight", "orders", "5", "--reason", "read token", token=READ, code=3)
    await cli("set-weight", "orders", "5", "--reason", "wrong token", token=ADMIN + "x", code=3)
    await cli("set-weight", "orders", "5", "--reason", "frozen", code=1)  # 409: rolled back
    await cli("promote", "orders", code=1)  # 409: rolled back
    await cli("resume", "nosuch", "--reason", "x", code=2)  # 404
    await cli("set-weight", "orders", "101", "--reason", "x", code=2)  # 400
    assert new_entries() == []

    # The promotion gate acting on a failing target: one rollback, trigger gate.
    await cli("resume", "orders", "--reason", "retry")
    await cli("set-weight", "orders", "50", "--reason", "ramp")
    assert [e["action"] for e in new_entries()] == ["resume", "set_weight"]
    await svc.stop()
    async with aiohttp.ClientSession() as s:
        for i in range(300):
            async with s.get(p.url + f"/api/v1/orders/{i}") as r:
                assert r.status == 200  # fallback to legacy
    await asyncio.sleep(0.5)  # the data plane's counters reach the gate every 0.2 s
    out = await cli("promote", "orders", "--json", code=1)
    assert json.loads(out)["decision"] == "fail"
    (e,) = new_entries()
    assert (e["action"], e["route"], e["from"], e["to"], e["trigger"], e["actor"]) == (
        "rollback", "orders", 50, 0, "gate", actor)
    assert e["reason"].startswith("promotion gate failed:")

    code, out, err = await run_cli("history", "--verify", env=cli_env(p, READ))
    assert code == 0, out + err
    assert await p.stop() == 0
