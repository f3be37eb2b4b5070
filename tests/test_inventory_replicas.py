"""Several replicas (contract §7): each `strangler serve` keeps its own inventory, and the CLI
merges them through each replica's admin API. Two real replicas with their own state_dirs take
different traffic; `strangler inventory --replica` reads exactly their sum (counts, endpoints,
progress, latency histograms), and `retire-check --replica` is ready only when both are."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.dataplane.inventory import quantile
from tests.support import ProxyProcess, free_port, routes_yaml, run_cli, wait_for
from tests.test_retire import PROMOTED, ROUTES, history

pytestmark = pytest.mark.slow


async def _send(url: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for path in paths:
            async with s.get(url + path) as r:
                await r.read()


async def _inventory(admin: str, *more: str) -> dict:
    code, out, err = await run_cli("inventory", "--since", "1h", "--json", *more,
                                   "--admin", admin)
    assert code == 0, err
    return json.loads(out)


async def test_two_replicas_merge_through_their_admin_apis(upstreams, tmp_path: Path) -> None:
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    now = time.time()
    replicas = []
    for i in range(2):
        text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                           svc=svc.port)
        p = ProxyProcess(tmp_path / f"replica{i}", text)
        history(p.dir / "state", now=now, audit=PROMOTED)
        replicas.append(await p.start())
    a, b = replicas
    try:
        await _send(a.url, [f"/cart/{n}" for n in range(30)] + ["/orders/1"] * 10)
        await _send(b.url, [f"/cart/{n}" for n in range(12)] + ["/orders/2"] * 7
                    + ["/about"] * 4)

        async def both() -> dict | None:
            one, two = await _inventory(a.admin), await _inventory(b.admin)
            return {"a": one, "b": two} if one["requests"] == 40 and two["requests"] == 23 \
                else None

        alone = await wait_for(both, timeout=20, interval=0.3)
        merged = await _inventory(a.admin, "--replica", b.admin)
        assert merged["replicas"] == 2 and merged["requests"] == 63
        got = {f"{e['method']} {e['template']}": (e["requests"], e["legacy"], e["target"])
               for e in merged["endpoints"]}
        assert got == {"GET /orders/{id}": (17, 17, 0), "GET /cart/{id}": (42, 0, 42),
                       "GET /about": (4, 4, 0)}
        assert merged["progress"]["requests"] == {"total": 63, "legacy": 21, "target": 42,
                                                  "share": 42 / 63}
        assert merged["progress"]["endpoints"]["migrated"] == 1
        # the last 24 h also hold the history's day-old 700 requests, on each replica
        assert merged["last_24h"]["requests"]["total"] == 63 + 2 * 700
        # percentiles come from the summed histograms, not from the two answers' percentiles
        summed: dict[int, int] = {}
        for p in (a, b):
            async with aiohttp.ClientSession() as s:
                async with s.get(p.admin + "/admin/inventory?since=1h&raw=1") as r:
                    raw = (await r.json())["raw"]
            for m, t, _route, backend, _n, _e, hist in raw["rows"]:
                if (m, t, backend) == ("GET", "/orders/{id}", "legacy"):
                    for i, n in hist:
                        summed[i] = summed.get(i, 0) + n
        orders = next(e for e in merged["endpoints"] if e["template"] == "/orders/{id}")
        assert sum(summed.values()) == 17
        assert orders["legacy_p99_ms"] == round(quantile(summed, 0.99) * 1000, 3)
        assert orders["legacy_p50_ms"] == round(quantile(summed, 0.5) * 1000, 3)
        assert alone["a"]["requests"] + alone["b"]["requests"] == merged["requests"]

        code, out, err = await run_cli("retire-check", "cart", "--json", "--admin", a.admin,
                                       "--replica", b.admin)
        assert code == 0, out + err
        # replica 2's new service fails once: legacy answers (a fallback) there only
        svc.status = 503
        await _send(b.url, ["/cart/99"])
        svc.status = 200
        code, out, _ = await run_cli("retire-check", "cart", "--json", "--admin", a.admin)
        assert code == 0  # replica 1 alone saw nothing wrong
        code, out, _ = await run_cli("retire-check", "cart", "--json", "--admin", a.admin,
                                     "--replica", b.admin)
        result = json.loads(out)
        assert code == 1 and result["replicas"] == 2
        assert result["unmet"] == ["replica 2: legacy served 1 live request(s) of this route in "
                                   "the window (fallbacks included), the last in the hour from "
                                   + result["unmet"][0].rsplit("the hour from ", 1)[1]]
        code, _, err = await run_cli("inventory", "--admin", a.admin, "--replica",
                                     f"http://127.0.0.1:{free_port()}")
        assert code == 3 and "unreachable" in err
    finally:
        for p in replicas:
            await p.stop()
