"""A real Unleash server (scripts/unleash-dev) for the `unleash` test tier, one per session.

In tests/conftest.py:
    from tests.unleash_server import unleash_server  # noqa: F401  (the session fixture)
Tests take the `unleash_server` fixture and are marked `@pytest.mark.unleash`.

The server starts on first use only, so a run that deselects the tier never starts it. The
script installs the npm package when it is missing. Without node or PostgreSQL 15 the tests are
skipped with the reason, except under CI=1 where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unleash-dev"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SCRIPT_TIMEOUT = 180.0  # seconds; a cold npm install is about a minute


@dataclass
class UnleashServer:
    """A running dev server: its URL (ending in /api), tokens and run directory."""

    url: str
    client_token: str
    admin_token: str
    dir: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/api")

    def env(self) -> dict[str, str]:
        """The env vars the strangler Unleash backend reads (names as in the spec defaults)."""
        return {"UNLEASH_API_TOKEN": self.client_token, "UNLEASH_ADMIN_TOKEN": self.admin_token}

    def flag_name(self, prefix: str = "t") -> str:
        """A toggle name no other test uses (the server is shared by the session)."""
        return f"{prefix}.{uuid.uuid4().hex[:10]}"

    def unleash_pid(self) -> int | None:
        try:
            return int((self.dir / "unleash.pid").read_text())
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def kill_unleash(self) -> None:
        """SIGKILL Unleash only (PostgreSQL keeps running), as an outage; waits until gone."""
        pid = self.unleash_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"Unleash pid {pid} did not exit")

    def restart_unleash(self) -> None:
        """Start Unleash again on the same port and wait for /health (no-op when it runs)."""
        _run(["start", "--dir", str(self.dir)])


def _run(args: list[str]) -> str:
    proc = subprocess.run(
        [str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/unleash-dev {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def _parse_exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value.strip("'")
    return out


def _missing_prerequisite() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 not found in {PG_BIN}"
    return None


@pytest.fixture(scope="session")
def unleash_server() -> Iterator[UnleashServer]:
    """Start PostgreSQL + Unleash once for the session; stop both (by PID) at the end."""
    reason = _missing_prerequisite()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the unleash tier needs {reason}")
        pytest.skip(reason)
    # Not under pytest's tmp dir: that is 0700 and the postgres user must reach the cluster.
    run_dir = Path(tempfile.mkdtemp(prefix="strangler-unleash-"))
    try:
        exports = _parse_exports(_run(["start", "--port", str(free_port()), "--pg-port",
                                       str(free_port()), "--dir", str(run_dir)]))
        yield UnleashServer(
            url=exports["UNLEASH_URL"],
            client_token=exports["UNLEASH_API_TOKEN"],
            admin_token=exports["UNLEASH_ADMIN_TOKEN"],
            dir=run_dir,
        )
    finally:
        subprocess.run(
            [str(SCRIPT), "stop", "--dir", str(run_dir)], cwd=ROOT, check=False, timeout=60
        )
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
async def unleash_admin(unleash_server: UnleashServer) -> AsyncIterator[aiohttp.ClientSession]:
    """Unleash's own Admin API, as a user in its UI would change toggles."""
    async with aiohttp.ClientSession(
        base_url=unleash_server.base + "/",
        headers={"Authorization": unleash_server.admin_token},
        raise_for_status=True,
    ) as session:
        yield session


@pytest.fixture
def outage(unleash_server: UnleashServer):
    """Kill Unleash on demand; it is brought back after the test whatever happens."""
    yield unleash_server.kill_unleash
    unleash_server.restart_unleash()


def feature_path(flag: str) -> str:
    return f"api/admin/projects/default/features/{flag}"
