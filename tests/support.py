"""Test harness: real upstream HTTP servers on 127.0.0.1 and the proxy, in-process or as
`strangler serve` subprocesses. Routes are written inline in each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
STRANGLER = str(Path(sys.executable).parent / "strangler")


def _port_slice() -> range:
    """This process's share of the ports outside the kernel's ephemeral range.

    Ports handed out here are bound later (often by a subprocess): one from the ephemeral range
    could meanwhile become the local end of an outgoing connection, or be the kernel's next
    answer to a bind to port 0. Outside that range only an explicit bind takes a port. Each
    pytest-xdist worker gets its own slice, so two workers never hand out the same port.
    STRANGLER_TEST_PORTS=LOW-HIGH narrows the range, to keep test runs side by side apart
    (the Makefile gives each tier its own).
    """
    low, high = 32768, 60999
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    below, above = range(10000, low), range(high + 1, 65536)
    ports = below if len(below) >= len(above) else above
    if len(ports) < 2000:  # the ephemeral range covers (nearly) everything: share it
        ports = range(10000, 65536)
    if given := os.environ.get("STRANGLER_TEST_PORTS"):
        first, _, last = given.partition("-")
        ports = range(int(first), int(last) + 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    size = len(ports) // max(count, 1)
    return ports[index * size:(index + 1) * size]


class _PortPool:
    """Walks this process's slice from a random start, each port checked free by a bind: a port
    is handed out again only after the whole slice has been (thousands of ports later). The
    random start keeps two test runs on one machine (other checkouts) apart.
    """

    def __init__(self) -> None:
        self.ports = _port_slice()
        self.next = random.randrange(len(self.ports))
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            for _ in range(len(self.ports)):
                port = self.ports[self.next]
                self.next = (self.next + 1) % len(self.ports)
                if _bindable(port):
                    return port
        raise RuntimeError(f"no free port in {self.ports}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:  # no SO_REUSEADDR: a port in TIME_WAIT is skipped too
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_POOL = _PortPool()


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on, never handed out twice in this test run."""
    return _POOL.take()


@dataclass
class Seen:
    method: str
    path: str  # raw path + query as received
    headers: dict[str, str]
    body: bytes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    """A real HTTP server that says who it is: JSON `{"served_by": name, ...}`.

    `handler` overrides the answer; `seen` records every request (raw path, headers, body).
    """

    name: str
    port: int = 0
    handler: Handler | None = None
    status: int = 200
    delay: float = 0.0
    extra: dict = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, shadow: bool | None = None) -> int:
        if shadow is None:
            return len(self.seen)
        return sum(1 for s in self.seen if (s.headers.get("x-strangler-shadow") == "1") == shadow)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.raw_path,
                 {k.lower(): v for k, v in request.headers.items()}, body)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.handler is not None:
            return await self.handler(request)
        payload = {"served_by": self.name, "path": request.raw_path, "method": request.method,
                   "body_len": len(body), **self.extra}
        return web.json_response(payload, status=self.status)

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:  # bound to a port the kernel chose: no window for anyone to take it
            self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


# The head of most test configs: a proxy and its admin on free ports, a monolith and a new
# service. Append a `routes:` block indented by four spaces and pass both to `routes_yaml`.
TWO_UPSTREAMS = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
"""


def routes_yaml(body: str, **ports: int) -> str:
    """Dedent a YAML snippet and fill `{name}` placeholders with ports."""
    return textwrap.dedent(body).format(**ports)


class ProxyProcess:
    """`strangler serve` as a user runs it, in a temp dir with the given routes.yaml text."""

    def __init__(self, directory: Path, config_text: str, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "routes.yaml"
        self.config.write_text(config_text)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        from proxy.config.loader import load_config

        cfg = load_config(str(self.config))
        self.port = cfg.listen.port
        self.admin_port = cfg.admin.listen.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self, timeout: float = 20.0) -> ProxyProcess:
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            STRANGLER, "serve", "-c", str(self.config), *self.args,
            stdout=self._out, stderr=self._err, env=self.env, cwd=str(self.dir),
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"strangler serve exited {self.proc.returncode}: "
                                       f"{self.stderr_path.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.admin + "/readyz") as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.05)
        raise RuntimeError("strangler serve did not become ready: "
                           + self.stderr_path.read_text()[-2000:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 40.0) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        finally:
            self._out.close()
            self._err.close()

    def access_lines(self) -> list[dict]:
        out = []
        for line in self.stdout_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


async def run_cli(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        STRANGLER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


class InProcessProxy:
    """The proxy's Server object in the test's own event loop (fast, no subprocess)."""

    def __init__(self, directory: Path, config_text: str, **opts: Any) -> None:
        from proxy.config.loader import load_config
        from proxy.serve.app import ServeOptions, Server

        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "routes.yaml"
        self.path.write_text(config_text)
        config = load_config(str(self.path))
        options = ServeOptions(config_path=str(self.path), access_log=False, watch=False,
                               **opts)
        self.server = Server(options, config, config_text)

    @property
    def runtime(self) -> Any:
        return self.server.runtime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.config.listen.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.runtime.config.admin.listen.port}"

    async def start(self) -> InProcessProxy:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
                   interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy (may be async); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
