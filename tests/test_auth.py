"""Admin API tokens: every endpoint x no token / read token / admin token."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.api.auth import AuthError, Caller, Tokens, actor_name
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml

ADMIN = "admin-secret-7f3a"
READ = "read-secret-91bc"

OPEN = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/")]
READS = [
    ("GET", "/admin/routes"),
    ("GET", "/admin/routes/balance"),
    ("GET", "/admin/routes/balance/gate"),
    ("GET", "/admin/routes/balance/diffs"),
    ("GET", "/admin/history"),
    ("GET", "/admin/history?route=balance&limit=5"),
    ("GET", "/admin/history/verify"),
]
MUTATIONS = [
    ("PUT", "/admin/routes/balance/weight", {"weight": 10, "reason": "auth test"}),
    ("POST", "/admin/routes/balance/promote", {}),
    ("POST", "/admin/routes/balance/rollback", {"reason": "auth test"}),
    ("POST", "/admin/rollback", {"reason": "auth test"}),
    ("POST", "/admin/routes/balance/resume", {"reason": "auth test"}),
    ("POST", "/admin/reload", {}),
]


def config(mono: int, svc: int) -> str:
    return routes_yaml(TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
    """, port=free_port(), admin=free_port(), mono=mono, svc=svc)


@pytest.fixture
async def guarded(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("STRANGLER_READ_TOKEN", READ)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    return await inproc_proxy(config(mono.port, svc.port))


async def _call(s: aiohttp.ClientSession, base: str, method: str, path: str,
                token: str | None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, base + path, json=body, headers=headers) as r:
        return r.status, await r.text()


async def test_open_endpoints_need_no_token(guarded):
    async with aiohttp.ClientSession() as s:
        for method, path in OPEN:
            status, _ = await _call(s, guarded.admin, method, path, None)
            assert status == 200, path


async def test_reads_need_a_token_and_accept_both(guarded):
    async with aiohttp.ClientSession() as s:
        for method, path in READS:
            status, text = await _call(s, guarded.admin, method, path, None)
            assert status == 401, path
            assert "token" in text
            status, _ = await _call(s, guarded.admin, method, path, "wrong-" + READ)
            assert status == 401, path
            for token in (READ, ADMIN):
                status, text = await _call(s, guarded.admin, method, path, token)
                assert status == 200, (path, text)
                assert READ not in text and ADMIN not in text


async def test_mutations_need_the_admin_token(guarded):
    rt = guarded.runtime
    async with aiohttp.ClientSession() as s:
        for method, path, body in MUTATIONS:
            for token, expected in ((None, 401), ("nope", 401), (READ, 403)):
                status, text = await _call(s, guarded.admin, method, path, token, body)
                assert status == expected, (path, token, text)
                assert READ not in text and ADMIN not in text
            # refused calls changed nothing
            assert rt.effective("balance") == 5
            assert not rt.rolled_back("balance")
            assert [e["action"] for e in rt.audit.entries()] == ["serve_started"] \
                or path == "/admin/reload"
        for method, path, body in MUTATIONS:
            status, text = await _call(s, guarded.admin, method, path, ADMIN, body)
            assert status == 200, (path, text)
            assert READ not in text and ADMIN not in text
    actions = [e["action"] for e in reversed(rt.audit.entries())]
    # promote at 10% without evidence holds: nothing to record
    assert actions == ["serve_started", "set_weight", "rollback", "rollback", "resume", "reload"]


async def test_read_token_refused_message_says_what_to_do(guarded):
    async with aiohttp.ClientSession() as s:
        async with s.post(guarded.admin + "/admin/rollback", json={"reason": "x"},
                          headers={"Authorization": f"Bearer {READ}"}) as r:
            assert r.status == 403
            body = await r.json()
    assert "read-only" in body["error"] and "STRANGLER_ADMIN_TOKEN" in body["error"]


async def test_without_tokens_everything_is_allowed(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await inproc_proxy(config(mono.port, svc.port))
    async with aiohttp.ClientSession() as s:
        for method, path in READS:
            status, _ = await _call(s, p.admin, method, path, None)
            assert status == 200, path
        status, text = await _call(s, p.admin, "PUT", "/admin/routes/balance/weight", None,
                                   {"weight": 20, "reason": "no token configured"})
        assert status == 200, text
    assert p.runtime.effective("balance") == 20
    assert p.runtime.audit.entries()[0]["actor"].endswith("(no token)")


def test_tokens_identify_roles():
    tokens = Tokens("a" * 32, "r" * 32)
    assert tokens.authorize("Bearer " + "a" * 32, write=True) == Caller("admin", True)
    assert tokens.authorize("bearer " + "r" * 32, write=False) == Caller("read", False)
    for header in (None, "", "Bearer", "Basic " + "a" * 32, "Bearer " + "a" * 31):
        with pytest.raises(AuthError) as err:
            tokens.authorize(header, write=False)
        assert err.value.status == 401
    with pytest.raises(AuthError) as err:
        tokens.authorize("Bearer " + "r" * 32, write=True)
    assert err.value.status == 403
    assert not Tokens.from_env({}).enabled
    assert Tokens.from_env({"STRANGLER_READ_TOKEN": "x"}).enabled


def test_actor_names_the_vouching_token_and_sanitises_the_claim():
    assert actor_name(Caller("admin", True), "alice") == "alice (admin token)"
    assert actor_name(Caller("open", True), None) == "unknown (no token)"
    assert actor_name(Caller("admin", True), "bob\n{evil}") == "bobevil (admin token)"
