"""Shared fixtures: real upstreams on 127.0.0.1, the proxy in-process or as a subprocess."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.support import InProcessProxy, ProxyProcess, Upstream


@pytest.fixture
async def upstreams():
    """Factory: `await upstreams("monolith")` -> a started Upstream that says who it is."""
    started: list[Upstream] = []

    async def make(name: str, **kw) -> Upstream:
        up = await Upstream(name, **kw).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.stop()


@pytest.fixture
async def proxy_process(tmp_path: Path):
    """Factory: `await proxy_process(routes_text, args=(), env={})` -> started `strangler serve`."""
    procs: list[ProxyProcess] = []

    async def make(text: str, args: tuple[str, ...] = (), env: dict | None = None,
                   name: str = "proxy") -> ProxyProcess:
        p = ProxyProcess(tmp_path / f"{name}{len(procs)}", text, args, env)
        procs.append(p)
        return await p.start()

    yield make
    for p in procs:
        with contextlib.suppress(Exception):
            await p.stop()


@pytest.fixture
async def inproc_proxy(tmp_path: Path):
    """Factory: `await inproc_proxy(routes_text)` -> the proxy's Server in this event loop."""
    started: list[InProcessProxy] = []

    async def make(text: str, **opts) -> InProcessProxy:
        p = InProcessProxy(tmp_path / f"inproc{len(started)}", text, **opts)
        started.append(p)
        return await p.start()

    yield make
    for p in started:
        with contextlib.suppress(Exception):
            await p.stop()


from tests.postgres_server import pg_db, postgres_server  # noqa: E402, F401  (fixtures)
from tests.unleash_server import (  # noqa: E402, F401  (fixtures)
    outage,
    unleash_admin,
    unleash_server,
)
