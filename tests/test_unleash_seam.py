"""The seam between the Unleash backend and Unleash, in the fast tier (no real Unleash needed).

`proxy.control.unleash` speaks Unleash's client API itself (see its docstring for why). These
tests pin what it relies on, so that a change on our side that would break the contract fails
here, not in production: the request it sends (path, project, the identification headers,
`If-None-Match`), how it treats 200 / 304 / errors, the registration body, and the cache file it
writes. The server here is a stand-in that answers like Unleash 8 does (a fake, named so); the
`unleash` tier runs the same client against the real server (tests/test_unleash_client.py).

Also: no module of ours reaches into a dependency's private modules or names (the way the
backend once patched the SDK's `_transport`).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy import __version__
from proxy.config.spec import UnleashSpec
from proxy.control.unleash import CACHE_FILE, FlagState, UnleashFlags

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "default:development.seam-test-token"


def _features(rollout: str, enabled: bool = True) -> dict:
    return {
        "version": 2,
        "features": [{
            "name": "checkout", "enabled": enabled, "type": "release", "project": "default",
            "strategies": [{"name": "flexibleRollout", "constraints": [],
                            "parameters": {"rollout": rollout, "stickiness": "default",
                                           "groupId": "checkout"}}],
        }],
        "segments": [],
        "query": {"project": ["default"], "environment": "development", "inlineSegmentConstraints":
                  True},
        "meta": {"revisionId": 1, "etag": '"61824cd0:1"', "queryHash": "61824cd0"},
    }


class FakeUnleash:
    """A stand-in for Unleash's client API that records every request it gets."""

    def __init__(self) -> None:
        self.body = _features("25")
        self.etag = 'W/"61824cd0:1"'
        self.status = 200  # what GET client/features answers (besides 304)
        self.requests: list[web.Request] = []
        self.registrations: list[dict] = []
        self.url = ""

    async def features(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if self.status != 200:
            return web.Response(status=self.status)
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return web.json_response(self.body, headers={"ETag": self.etag})

    async def register(self, request: web.Request) -> web.Response:
        self.registrations.append(await request.json())
        return web.Response(status=202)

    def change(self, rollout: str) -> None:
        self.body = _features(rollout)
        self.etag = f'W/"61824cd0:{uuid.uuid4().hex[:6]}"'


@pytest.fixture
async def fake_unleash() -> AsyncIterator[FakeUnleash]:
    fake = FakeUnleash()
    app = web.Application()
    app.router.add_get("/api/client/features", fake.features)
    app.router.add_post("/api/client/register", fake.register)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/api"
    yield fake
    await runner.cleanup()


def _client(fake: FakeUnleash, cache: Path, refresh: float = 0.1) -> UnleashFlags:
    spec = UnleashSpec(url=fake.url, refresh_interval=refresh)
    return UnleashFlags(spec, cache, flags=["checkout"], env={"UNLEASH_API_TOKEN": TOKEN},
                        instance_id="seam-test-1")


async def _until(predicate, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_polls_the_client_api_with_the_standard_headers_and_etag(
    fake_unleash: FakeUnleash, tmp_path: Path
) -> None:
    async with _client(fake_unleash, tmp_path) as flags:
        assert flags.connected and not flags.degraded
        assert flags.snapshot()["checkout"] == FlagState(True, 25.0)
        await _until(lambda: len(fake_unleash.requests) >= 3)

        first, second = fake_unleash.requests[0], fake_unleash.requests[1]
        assert first.path == "/api/client/features"
        assert first.query.get("project") == "default"
        h = first.headers
        assert h["Authorization"] == TOKEN
        assert h["UNLEASH-APPNAME"] == "strangler"
        assert h["UNLEASH-INSTANCEID"] == "seam-test-1"
        uuid.UUID(h["UNLEASH-CONNECTION-ID"])  # a uuid, the same for every request of a start
        assert second.headers["UNLEASH-CONNECTION-ID"] == h["UNLEASH-CONNECTION-ID"]
        assert h["UNLEASH-SDK"] == f"strangler:{__version__}"
        assert h["UNLEASH-INTERVAL"] == "100"
        assert "If-None-Match" not in h
        assert second.headers["If-None-Match"] == fake_unleash.etag  # then 304s

        fake_unleash.change("60")  # a new body with a new ETag reaches the snapshot
        await _until(lambda: flags.snapshot()["checkout"] == FlagState(True, 60.0))
        assert flags.connected


async def test_registers_once_with_the_documented_body(
    fake_unleash: FakeUnleash, tmp_path: Path
) -> None:
    async with _client(fake_unleash, tmp_path):
        await _until(lambda: len(fake_unleash.requests) >= 4)
    (body,) = fake_unleash.registrations
    assert body["appName"] == "strangler" and body["instanceId"] == "seam-test-1"
    assert body["sdkVersion"] == f"strangler:{__version__}"
    assert set(body["strategies"]) >= {"default", "flexibleRollout"}
    assert body["interval"] == 100 and body["started"]


async def test_cache_file_is_the_last_body_and_serves_a_restart_while_unleash_fails(
    fake_unleash: FakeUnleash, tmp_path: Path
) -> None:
    async with _client(fake_unleash, tmp_path):
        pass
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert cached["features"] == fake_unleash.body
    assert cached["url"] == fake_unleash.url and cached["etag"] == fake_unleash.etag
    assert os.listdir(tmp_path) == [CACHE_FILE]  # no temporary file left

    fake_unleash.status = 503
    with capture_logs() as logs:
        async with _client(fake_unleash, tmp_path) as flags:
            assert not flags.connected and not flags.degraded
            assert flags.snapshot()["checkout"] == FlagState(True, 25.0)
            await _until(lambda: len(fake_unleash.requests) >= 5)  # more failed polls
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["unleash.unreachable"]  # once per outage
    assert "503" in warnings[0]["reason"]

    other = UnleashSpec(url=fake_unleash.url.replace("/api", "/other/api"))
    with capture_logs() as logs:
        async with UnleashFlags(other, tmp_path, flags=["checkout"],
                                env={"UNLEASH_API_TOKEN": TOKEN}) as flags:
            assert flags.degraded  # a cache for another Unleash is not used
    assert "unleash.cache_other_server" in [e["event"] for e in logs]


async def test_stop_waits_for_the_cache_write_of_the_last_state_polled(
    fake_unleash: FakeUnleash, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while the cache file is being written (a slow disk) waits for that write: a
    restart during an outage finds the state this replica last saw, not the one before it
    (the real-Unleash test of a restart in an outage failed once on this race under load)."""
    import time

    write = UnleashFlags._write_cache

    def slow_write(self: UnleashFlags, body: str, etag: str) -> None:
        time.sleep(0.3)  # in the write's thread, as a slow fsync would
        write(self, body, etag)

    async with _client(fake_unleash, tmp_path) as flags:
        monkeypatch.setattr(UnleashFlags, "_write_cache", slow_write)
        fake_unleash.change("60")
        await _until(lambda: flags.snapshot()["checkout"] == FlagState(True, 60.0))
    # the context's stop has returned: the file holds the new body, whole
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert cached["features"] == fake_unleash.body and cached["etag"] == fake_unleash.etag
    assert os.listdir(tmp_path) == [CACHE_FILE]


def _private_uses(path: Path) -> list[str]:
    """`import x._y`, `from x._y import ...` and `from x import _y` of third-party packages."""
    found = []
    ours = {"proxy", "shadow", "tests", "bench"} | set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            top = node.module.split(".")[0]
            if top in ours:
                continue
            private = [p for p in node.module.split(".") if p.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_")]
            if private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] not in ours and any(p.startswith("_") for p in parts):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {alias.name}")
    return found


def test_no_module_uses_a_private_module_or_name_of_a_dependency() -> None:
    found = [f for top in ("proxy", "shadow") for path in sorted((ROOT / top).rglob("*.py"))
             for f in _private_uses(path)]
    assert found == []
    # the check itself finds what it is for
    probe = ROOT / "tests" / ".private_probe.py"
    probe.write_text("from UnleashClient._transport import FetchResult\n")
    try:
        assert _private_uses(probe)
    finally:
        probe.unlink()


class HeldPlane:
    """A stand-in for a data plane (a fake, named so) whose weight updates wait for `release`:
    a slow worker, seen from the control plane."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.weights: dict = {}

    async def apply_weights(self, updates: dict) -> None:
        self.entered.set()
        await self.release.wait()
        self.weights.update(updates)


async def test_readyz_stays_degraded_until_the_data_planes_have_the_weights_unleash_sent(
    fake_unleash: FakeUnleash, tmp_path: Path
) -> None:
    """A replica started with Unleash down and no cache routes everything to legacy and says so
    on /readyz. When Unleash answers, /readyz may stop saying so only once the data planes route
    by what it sent: a pipeline that waits for /readyz and then sends traffic must find the
    rollout in force (the real-Unleash test of this failed once in CI on that window)."""
    from proxy.config.loader import load_config
    from proxy.control.flags_link import FlagsLink
    from proxy.control.runtime import Runtime

    text = textwrap.dedent(f"""
        version: 1
        listen: 127.0.0.1:1
        state_dir: {tmp_path / "state"}
        upstreams:
          monolith: {{url: "http://127.0.0.1:2"}}
          balance-svc: {{url: "http://127.0.0.1:3"}}
        default_upstream: monolith
        flags:
          backend: unleash
          unleash: {{url: "{fake_unleash.url}", refresh_interval: 0.1}}
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: balance-svc
            weight: 0
            flag: checkout
            shadow: false
        """)
    config = load_config(tmp_path / "routes.yaml", text)
    rt = Runtime(str(tmp_path / "routes.yaml"), config, text)
    plane = HeldPlane()
    rt.planes.append(plane)  # type: ignore[arg-type]
    fake_unleash.status = 503
    link = FlagsLink(rt, client=_client(fake_unleash, tmp_path / "cache"))
    rt.flags = link
    await link.start()
    try:
        assert link.degraded_reason is not None and link.weight(config.route("balance")) == 0

        fake_unleash.status = 200
        await asyncio.wait_for(plane.entered.wait(), 5)  # the new weight is on its way
        assert link.client.snapshot()["checkout"] == FlagState(True, 25.0)
        reason = link.degraded_reason
        assert reason is not None and "no cached flag state" in reason["flags"]

        plane.release.set()
        await _until(lambda: link.degraded_reason is None)
        assert plane.weights["balance"][0] == 2500  # basis points: 25%
    finally:
        plane.release.set()
        await link.stop()
