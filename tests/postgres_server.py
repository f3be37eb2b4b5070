"""A real PostgreSQL 15 (scripts/postgres-dev) for the `postgres` test tier, one per session.

In tests/conftest.py:
    from tests.postgres_server import postgres_server  # noqa: F401  (the session fixture)
Tests take `postgres_server` (or `pg_db`: a database of their own in it) and are marked
`@pytest.mark.postgres`. The server starts on first use only; without Debian's PostgreSQL 15
binaries the tests are skipped with the reason, except under CI=1 where that is a failure.
`stop()` and `start()` are an outage: the server comes back on the same port and data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres-dev"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class PostgresServer:
    dsn: str  # the strangler role's DSN to the `strangler` database
    port: int
    dir: Path

    def _run(self, *args: str) -> str:
        proc = subprocess.run([str(SCRIPT), *args, "--dir", str(self.dir)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/postgres-dev {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    def stop(self, immediate: bool = False) -> None:
        """Stop the server (fast shutdown: clients are disconnected), as an outage."""
        self._run("stop", *(("--immediate",) if immediate else ()))

    def start(self) -> None:
        """Start it again on the same port (a no-op when it runs)."""
        self._run("start")

    def superuser(self, sql: str) -> list[tuple]:
        """Run SQL as the postgres superuser over the socket (creating databases)."""
        import psycopg

        sock = self.dir / "pgsock"
        with psycopg.connect(host=str(sock), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def new_database(self) -> str:
        """A fresh database owned by the strangler role; returns its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.superuser(f"CREATE DATABASE {name} OWNER strangler")
        return self.dsn.rsplit("/", 1)[0] + f"/{name}"


def _exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value.strip("'")
    return out


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the postgres tier needs PostgreSQL 15 in {PG_BIN}")
        pytest.skip(f"PostgreSQL 15 not found in {PG_BIN}")
    # Not under pytest's tmp dir: that is 0700 and the postgres user must reach the cluster.
    run_dir = Path(tempfile.mkdtemp(prefix="strangler-pg-"))
    server = None
    try:
        out = subprocess.run([str(SCRIPT), "start", "--dir", str(run_dir),
                              "--port", str(free_port())], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/postgres-dev start failed:\n{out.stderr}")
        env = _exports(out.stdout)
        server = PostgresServer(env["STRANGLER_DATABASE_URL"], int(env["PG_DEV_PORT"]), run_dir)
        yield server
    finally:
        subprocess.run([str(SCRIPT), "stop", "--dir", str(run_dir)], cwd=ROOT, check=False,
                       timeout=60, capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def pg_db(postgres_server: PostgresServer) -> str:
    """A database of the test's own (tests share the server, not the tables); its DSN."""
    return postgres_server.new_database()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster (from its pid file) and every backend it forked."""
    pid = int((server.dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    return [pid, *_children(pid)]
