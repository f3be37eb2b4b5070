"""`strangler serve --workers 2`: both worker processes serve on the one port, a set-weight or a
rollback reaches every worker before the admin call returns, /metrics counts what both served,
and SIGTERM stops every worker with exit 0.

Which worker served a request is read from the kernel, not from the proxy: the upstream records
the source port of each connection the proxy opened to it, and /proc says which process owns the
socket bound to that port."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, wait_for
from tests.test_metrics import scrape, total

pytestmark = pytest.mark.slow

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _worker_pids(pid: int) -> list[int]:
    """The serve process's children that are strangler workers (not resource trackers)."""
    pids = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
            pids.append(child)
    return pids


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the IPv4 sockets the given processes hold."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode_pid[target[8:-1]] = pid
    owners: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port = int(fields[1].rsplit(":", 1)[1], 16)
        pid = inode_pid.get(fields[9])
        if pid is not None:
            owners[port] = pid
    return owners


class Recording:
    """An upstream that answers with its name and records the source port of every request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ports: list[int] = []

    async def handler(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        return web.json_response({"served_by": self.name})


async def _send(proxy, n: int) -> list[str]:
    """n GETs, each on a new connection so that the kernel spreads them over the workers."""
    served = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for i in range(n):
            async with s.get(f"{proxy.url}/api/v1/balance/{i}") as r:
                assert r.status == 200
                served.append((await r.json())["served_by"])
    return served


async def _admin(proxy, method: str, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as s, s.request(method, proxy.admin + path,
                                                       json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_two_workers_serve_follow_changes_and_stop(upstreams, proxy_process):
    mono, svc = Recording("monolith"), Recording("svc")
    up_mono = await upstreams("monolith", handler=mono.handler)
    up_svc = await upstreams("svc", handler=svc.handler)
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=up_mono.port,
                       svc=up_svc.port)
    proxy = await proxy_process(text, args=("--workers", "2"))
    workers = _worker_pids(proxy.proc.pid)
    assert len(workers) == 2, workers

    # Both workers serve: every upstream connection belongs to one of them, and both have some.
    assert await _send(proxy, 60) == ["monolith"] * 60
    owners = _socket_owners(workers)
    served_by = {owners.get(port) for port in mono.ports}
    assert served_by == set(workers), (served_by, workers)

    # set-weight 100: every request accepted after the call returned goes to target, in both.
    await _admin(proxy, "PUT", "/admin/routes/balance/weight",
                 {"weight": 100, "reason": "workers test"})
    svc.ports.clear()
    assert await _send(proxy, 60) == ["svc"] * 60
    owners = _socket_owners(workers)
    assert {owners.get(port) for port in svc.ports} == set(workers)

    # rollback: back to legacy at once, in both workers.
    await _admin(proxy, "POST", "/admin/routes/balance/rollback", {"reason": "workers test"})
    mono.ports.clear()
    assert await _send(proxy, 60) == ["monolith"] * 60
    owners = _socket_owners(workers)
    assert {owners.get(port) for port in mono.ports} == set(workers)

    # /metrics: the control process sums what both workers recorded.
    async def counted():
        m = await scrape(proxy)
        return m if total(m, "strangler_requests_total", route="balance") >= 180 else None

    m = await wait_for(counted, timeout=10)
    assert total(m, "strangler_requests_total", route="balance") == 180
    assert total(m, "strangler_requests_total", route="balance", backend="target") == 60
    assert total(m, "strangler_requests_total", route="balance", backend="legacy") == 120

    # SIGTERM: the control process exits 0 and no worker outlives it.
    assert await proxy.stop() == 0
    for pid in workers:
        assert _gone(pid), pid


def _gone(pid: int) -> bool:
    """No such process, or only its zombie entry left."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True



async def test_debug_tasks_counts_every_process_behind_the_admin_auth(upstreams, proxy_process):
    up_mono, up_svc = await upstreams("monolith"), await upstreams("svc")
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=up_mono.port,
                       svc=up_svc.port)
    proxy = await proxy_process(text, args=("--workers", "2"),
                                env={"STRANGLER_ADMIN_TOKEN": "adm-debug-5e1f",
                                     "STRANGLER_READ_TOKEN": "rd-debug-77c2"})
    url = proxy.admin + "/admin/debug/tasks"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 401  # like every /admin/ path
        async with s.get(url, headers={"Authorization": "Bearer rd-debug-77c2"}) as r:
            assert r.status == 200  # a read: the read token is enough
            body = await r.json()
        async with s.post(url, headers={"Authorization": "Bearer adm-debug-5e1f"}) as r:
            assert r.status == 405  # read-only: nothing to post
    assert body["control"]["pid"] == proxy.proc.pid
    assert isinstance(body["control"]["tasks"], int) and body["control"]["tasks"] >= 1
    assert sorted(w["pid"] for w in body["workers"]) == sorted(_worker_pids(proxy.proc.pid))
    assert sorted(w["index"] for w in body["workers"]) == [0, 1]
    for w in body["workers"]:
        assert isinstance(w["tasks"], int) and w["tasks"] >= 2, w  # flush loop, control link
