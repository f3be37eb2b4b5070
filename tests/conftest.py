"""Shared fixtures: real upstreams on 127.0.0.1, the proxy in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests import alone, durations
from tests.support import InProcessProxy, ProxyProcess, Upstream


def pytest_configure(config: pytest.Config) -> None:
    """The directory of the `alone` lock (tests/alone.py): one per run unless `make test` gives
    the tiers it runs side by side one. Set before pytest-xdist starts its workers: they share
    it through the environment."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None and not os.environ.get(alone.ENV):
        directory = tempfile.mkdtemp(prefix="strangler-alone-")
        os.environ[alone.ENV] = directory
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist the longest tests first (tests/durations.txt), the rest as collected:
    a long test that began last would keep one worker busy after the others ran out of work.
    `alone` tests last: they wait for every running test to end, and then the ones running
    are short."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    seconds = durations.known()
    items.sort(key=lambda item: (item.get_closest_marker("alone") is not None,
                                 -seconds.get(item.nodeid, 0.0)))  # stable: ties as collected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Every test holds the shared `alone` lock from setup to teardown; `alone` tests hold it
    alone (tests/alone.py)."""
    with alone.machine_share(Path(os.environ[alone.ENV]),
                             item.get_closest_marker("alone") is not None):
        yield


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
