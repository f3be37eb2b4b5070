"""The access log is written in batches through a 64 KiB buffer, not a write per line; what is
buffered is never lost on the way out: SIGTERM (one process or workers), or an exit by an
exception."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.dataplane import access_log as logs
from tests.support import STRANGLER, TWO_UPSTREAMS, free_port, routes_yaml, wait_for

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
        shadow: false
"""
KEYS = ["request_id", "route", "backend", "upstream", "method", "path", "query", "status",
        "duration_ms", "upstream_ms", "bytes_in", "bytes_out", "client", "user_agent", "fallback",
        "event", "level", "logger", "process", "timestamp"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_writes_the_line_of_every_request_served(upstreams, proxy_process,
                                                               workers):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port)
    proxy = await proxy_process(text, args=("--workers", str(workers)))
    served = await load(proxy.url, 16, 150)
    # The last responses were sent moments ago: their lines are still in the proxy's buffers.
    assert await proxy.stop() == 0
    access = [json.loads(line) for line in proxy.stdout_path.read_text().splitlines()]
    assert sorted(r["request_id"] for r in access) == sorted(served)
    assert len(served) == 2400
    assert all(list(r) == KEYS for r in access)


async def load(url: str, clients: int, each: int) -> list[str]:
    served: list[str] = []

    async def client(s: aiohttp.ClientSession) -> None:
        for i in range(each):
            async with s.get(url + f"/api/v1/balance/{i}") as r:
                await r.read()
                assert r.status == 200
                served.append(r.headers["X-Request-Id"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
        await asyncio.gather(*(client(s) for _ in range(clients)))
    return served


@pytest.mark.slow
async def test_workers_on_a_slowly_read_pipe_never_mix_their_lines(upstreams, tmp_path):
    """stdout as in a container: a pipe whose reader lags, so writers block and could
    interleave; two workers' lines must still come out whole."""
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    port, admin = free_port(), free_port()
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(routes_yaml(ROUTES, port=port, admin=admin, mono=mono.port, svc=svc.port))
    proc = await asyncio.create_subprocess_exec(
        STRANGLER, "serve", "-c", str(cfg), "--workers", "2", cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=1 << 16)
    assert proc.stdout is not None
    chunks: list[bytes] = []

    async def slow_reader() -> None:
        while chunk := await proc.stdout.read(4096):
            chunks.append(chunk)
            await asyncio.sleep(0.002)  # ~2 MB/s: the 64 KiB pipe fills under load

    reader = asyncio.create_task(slow_reader())
    try:
        async def ready() -> bool:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                return r.status == 200

        async def up() -> bool:
            try:
                return await ready()
            except aiohttp.ClientError:
                return False

        await wait_for(up, timeout=30)
        served = await load(f"http://127.0.0.1:{port}", 32, 150)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 40) == 0
        await asyncio.wait_for(reader, 30)
    lines = b"".join(chunks).decode().splitlines()
    access = [json.loads(line) for line in lines]  # a mixed line would not parse
    assert sorted(r["request_id"] for r in access) == sorted(served)
    assert all(list(r) == KEYS for r in access)


def test_lines_go_out_in_batches_and_the_buffer_stays_bounded(tmp_path):
    """Inside an event loop, lines reach the file when 64 KiB are buffered (no write per line,
    no 200 ms of lines in memory), and all of them at flush, byte for byte as rendered."""
    path = tmp_path / "access.log"

    async def serve(log: logs.AccessLog, n: int) -> list[int]:
        sizes = []
        for i in range(n):
            log.request(f"id-{i}", "balance", "legacy", "monolith", b"GET",
                        b"/api/v1/balance/%d" % i, 200, 0.0012345, False)
            if i % 8 == 7:
                await asyncio.sleep(0)  # the end of a loop iteration: rendered and buffered
                sizes.append(path.stat().st_size)
        return sizes

    renderer = logs.AccessLog(stream=io.StringIO())

    def rendered(i: int) -> int:  # the length of line i (the timestamp has a fixed width)
        return len(renderer._render((f"id-{i}", "balance", "legacy", "monolith", b"GET",
                                     b"/api/v1/balance/%d" % i, 200, 0.0012345, False, 0.0,
                                     None, -1.0, 0, 0, "", None)))

    with open(path, "w") as stream:
        log = logs.AccessLog(stream=stream)
        sizes = asyncio.run(serve(log, 2000))
        assert sizes[0] == 0  # the first lines wait in the buffer
        lengths = [rendered(i) for i in range(2000)]
        held = [sum(lengths[: 8 * (k + 1)]) - size for k, size in enumerate(sizes)]
        assert max(held) <= logs.WRITE_BUFFER  # never more than the buffer in memory
        assert max(held) > logs.WRITE_BUFFER - 8 * max(lengths)  # but a full one: batches
        assert 0 < sizes[-1] < sum(lengths)  # some written before the flush, not all
        log.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    recs = [json.loads(line) for line in lines]
    assert [r["request_id"] for r in recs] == [f"id-{i}" for i in range(2000)]
    assert recs[7] == {**recs[7], "path": "/api/v1/balance/7", "status": 200,
                       "duration_ms": 1.234, "fallback": False, "event": "access"}
    assert all(list(r) == KEYS for r in recs)


def test_an_exit_by_an_exception_still_writes_the_buffered_lines(tmp_path):
    # No event loop runs, so nothing renders the lines before the crash: only the exit does.
    script = (
        "from proxy.dataplane.access_log import AccessLog\n"
        "log = AccessLog()\n"
        "for i in range(3):\n"
        "    log.request(f'id-{i}', 'r', 'legacy', 'm', b'GET', b'/x', 200, 0.001, False)\n"
        "raise RuntimeError('crash')\n"
    )
    out = tmp_path / "stdout"
    with open(out, "wb") as f:
        done = subprocess.run([sys.executable, "-c", script], stdout=f, stderr=subprocess.PIPE,
                              timeout=30, check=False, env={"PYTHONUNBUFFERED": "1",
                                                            "PATH": "/usr/bin:/bin"},
                              cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 1 and b"RuntimeError: crash" in done.stderr
    ids = [json.loads(line)["request_id"] for line in out.read_text().splitlines()]
    assert ids == ["id-0", "id-1", "id-2"]
