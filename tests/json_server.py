"""json-server (npm) as a real third-party legacy or new service, for the shadow-diff tests.

Installed (once, cached in .cache/json-server) by `scripts/json-server-dev install`, which
`make deps` runs and `json_servers` calls; started per test on a free 127.0.0.1 port with a
JSON file of records. It answers lists (`GET /accounts`) and records (`GET /accounts/7`), and
gzip-compresses larger answers for clients that accept it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support import REPO, free_port

SCRIPT = REPO / "scripts" / "json-server-dev"


class JsonServer:
    def __init__(self, directory: Path, name: str, db: dict) -> None:
        self.path = directory / f"{name}.json"
        directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(db))
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> JsonServer:
        self.proc = await asyncio.create_subprocess_exec(
            str(SCRIPT), "start", str(self.path), str(self.port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as s:
            while loop.time() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"json-server exited {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/db") as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.1)
        raise RuntimeError("json-server did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # the script exec'd node: this is json-server's own pid
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def json_servers(tmp_path: Path):
    """Factory: `await json_servers("legacy", {"accounts": [...]})` -> a started JsonServer."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (json-server needs Node.js)")
    await asyncio.to_thread(subprocess.run, [str(SCRIPT), "install"], check=True, timeout=600)
    started: list[JsonServer] = []

    async def make(name: str, db: dict) -> JsonServer:
        server = await JsonServer(tmp_path / "json-server", name, db).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
