"""Issue 24: the shadow loop on real third-party services (two json-server instances).

Legacy is json-server with 120 accounts and 40 transactions; the new service is a second
json-server whose data drifted the way new services do: `owner` renamed `owner_name` on 12 of
120 accounts, a few amounts as strings, an extra `source_system`, `lines[]` reversed,
`updated_at` different everywhere. A newcomer reads the diffs, adds rules by reload, reads again,
restarts, and exports regression tests from a route that now shadows clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.json_server import json_servers  # noqa: F401  (fixture)
from tests.support import REPO, ProxyProcess, free_port, routes_yaml, run_cli, wait_for

pytestmark = pytest.mark.slow


def accounts(drift: bool) -> list[dict]:
    out = []
    for i in range(1, 121):
        a: dict = {"id": i, "owner": f"Owner {i}", "amount": round(i * 10.25, 2),
                   "currency": "EUR", "lines": [{"id": j, "amount": j * 1.5} for j in (1, 2, 3)],
                   "updated_at": f"2026-01-{1 + i % 28:02d}T10:{i % 60:02d}:00Z"}
        if drift:
            if i % 10 == 5:
                a["owner_name"] = a.pop("owner")
            if i % 17 == 0:
                a["amount"] = str(a["amount"])
            a["source_system"] = "ledger-svc"
            a["lines"].reverse()
            a["updated_at"] = f"2026-03-{1 + i % 28:02d}T11:11:{i % 60:02d}Z"
        out.append(a)
    return out


def transactions(drift: bool) -> list[dict]:
    out = []
    for i in range(1, 41):
        t: dict = {"id": i, "account": 1 + i % 7, "amount": i * 3.5, "label": "caf\u00e9",
                   "lines": [{"id": j, "sku": f"s{j}", "amount": j * 2} for j in (1, 2, 3, 4)]}
        if i == 40:
            t["memo"] = "m" * 20_000  # the list answer is over 16 KiB: its sample is cut
        if drift:
            t["lines"].reverse()
        out.append(t)
    return out


CONFIG = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      legacy: {{url: "http://127.0.0.1:{legacy}"}}
      newsvc: {{url: "http://127.0.0.1:{new}"}}
    default_upstream: legacy
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: accounts
        match: {{path_prefix: /accounts}}
        legacy: legacy
        target: newsvc
        weight: 0
        shadow:
          sample: 1.0
          max_rate: unlimited
          compare: {{{accounts_rules}}}
      - name: transactions
        match: {{path_prefix: /transactions}}
        legacy: legacy
        target: newsvc
        weight: 0
        shadow:
          sample: 1.0
          max_rate: unlimited
          compare: {{{transactions_rules}}}
"""


async def _servers(json_servers) -> tuple:  # noqa: F811
    legacy = await json_servers("legacy", {"accounts": accounts(False),
                                           "transactions": transactions(False)})
    new = await json_servers("new", {"accounts": accounts(True),
                                     "transactions": transactions(True)})
    return legacy, new


def _config(legacy, new, port: int, admin: int, accounts_rules: str = 'array_keys: {"$": id}',
            transactions_rules: str = "numeric_tolerance: 0.001") -> str:
    return routes_yaml(CONFIG, port=port, admin=admin, legacy=legacy.port, new=new.port,
                       accounts_rules=accounts_rules, transactions_rules=transactions_rules)


async def _get(s: aiohttp.ClientSession, url: str, n: int = 1) -> None:
    for _ in range(n):
        async with s.get(url) as r:
            assert r.status == 200
            await r.read()


async def _json(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _diffs(proxy, *args: str) -> dict:
    code, out, err = await run_cli("diffs", *args, "--json",
                                   env={"STRANGLER_ADMIN_URL": proxy.admin})
    assert code == 0, err
    return json.loads(out)


async def _settled(proxy, n: int, *args: str) -> dict:
    """`_diffs` once `n` comparisons are in: the mirrors of the last requests may still be on
    their way when the view is read (it waits for the comparer, not for mirrors in flight)."""
    view: dict = {}

    async def enough() -> bool:
        nonlocal view
        view = await _diffs(proxy, *args)
        return view["compared"] >= n

    await wait_for(enough, timeout=20, interval=0.1)
    return view


def _rows(view: dict) -> dict[tuple[str, str], dict]:
    return {(f["path"], f["kind"]): f for f in view["fields"]}


async def _numbers(s: aiohttp.ClientSession, proxy, route: str) -> tuple[int, int, int]:
    """(status, gate, diffs) shadow comparisons of the route's current evidence."""
    status = (await _json(s, f"{proxy.admin}/admin/routes/{route}"))["stats"]["step"]["shadow"]
    gate = (await _json(s, f"{proxy.admin}/admin/routes/{route}/gate"))["evidence"]["shadow"]
    diffs = await _json(s, f"{proxy.admin}/admin/routes/{route}/diffs")
    return status["compared"], gate["compared"], diffs["compared"]


async def test_the_newcomer_loop_on_list_endpoints(json_servers, tmp_path: Path) -> None:  # noqa: F811
    legacy, new = await _servers(json_servers)
    port, admin = free_port(), free_port()
    proxy = await ProxyProcess(tmp_path / "proxy", _config(legacy, new, port, admin)).start()
    try:
        async with aiohttp.ClientSession() as s:
            await _get(s, proxy.url + "/accounts", 25)
            first = await _settled(proxy, 25, "accounts")
            assert (first["compared"], first["mismatched"]) == (25, 25)
            rows = _rows(first)
            # 24.1: one row per field of the elements, never one per index
            assert not [p for p, _ in rows if re.search(r"\[\d+\]", p)], sorted(rows)
            assert len(rows) <= 8, sorted(rows)
            owner = rows[("$[*].owner", "missing")]
            assert (owner["count"], owner["share"], owner["of"] // owner["count"]) == (
                25, 0.1, 120)
            assert owner["renamed_to"] == "$[*].owner_name"  # 24.6
            assert rows[("$[*].owner_name", "extra")]["renamed_from"] == "$[*].owner"
            assert rows[("$[*].amount", "type")]["share"] == pytest.approx(7 / 120)
            assert rows[("$[*].updated_at", "value")]["likely_noise"]  # works on [*] paths
            assert not rows[("$[*].source_system", "extra")]["likely_noise"]  # a contract change
            sample = first["samples"][0]
            assert sample["step"] == first["window"]["step"]
            ats = {d["path"]: d for d in sample["differences"]}
            assert ats["$[*].owner"]["at"] == "$[id=5].owner"  # array_keys {"$": id}
            assert ats["$[*].owner"]["elements"] == 12
            code, text, _ = await run_cli("diffs", "accounts", "--limit", "5",
                                          "--sample-lines", "3",
                                          env={"STRANGLER_ADMIN_URL": proxy.admin})
            assert code == 0
            lines = text.splitlines()
            assert len(lines) <= 2 + 2 + 6 + 2 + 5 * 5, text  # head, table, 5 samples of 5
            assert re.search(r"\(step \d+, \d+s ago\)", text)
            assert "more difference(s) (--sample-lines)" in text
            code, text, _ = await run_cli("diffs", "accounts", "--limit", "1",
                                          "--sample-lines", "20",
                                          env={"STRANGLER_ADMIN_URL": proxy.admin})
            assert "$[*].owner in 12 of 120 elements, e.g. $[id=5].owner: missing" in text, text
            status, gate, diffs = await _numbers(s, proxy, "accounts")
            assert status == gate == diffs > 0  # they agree
            before_step = (await _json(s, f"{proxy.admin}/admin/routes/accounts"))["step"]["id"]

            # the newcomer's fix: ignore the timestamps, match lines by id; reload
            fixed = _config(legacy, new, port, admin, accounts_rules=(
                'array_keys: {"$": id, "$[*].lines": id}, ignore: ["$..updated_at"]'))
            proxy.config.write_text(fixed)
            async with s.post(proxy.admin + "/admin/reload") as r:
                assert r.status == 200, await r.text()
            await _get(s, proxy.url + "/accounts", 20)
            after = await _settled(proxy, 20, "accounts")
            assert (after["compared"], after["mismatched"]) == (20, 20)
            rows = _rows(after)
            assert not [p for p, _ in rows if "updated_at" in p or "lines" in p], sorted(rows)
            assert ("$[*].owner", "missing") in rows
            assert after["window"]["rules"] != first["window"]["rules"]
            everything = await _settled(proxy, 45, "accounts", "--all")
            assert everything["compared"] == 45
            old = _rows(everything)[("$[*].updated_at", "value")]
            assert old["ignored"] and old["count"] == 25  # marked, never live
            live = [f for f in everything["fields"] if not f["ignored"]]
            assert everything["fields"].index(old) >= len(live)
            status, gate, diffs = await _numbers(s, proxy, "accounts")
            after_step = (await _json(s, f"{proxy.admin}/admin/routes/accounts"))["step"]["id"]
            assert after_step != before_step  # a rules change is a new step (issue 23)
            assert status == gate == diffs == 20
        assert await proxy.stop() == 0

        # 24.2: after a restart (a new step: old evidence is never blended in) status, gate
        # and diffs agree on the numbers, and --all still has what came before
        proxy = await ProxyProcess(tmp_path / "proxy", fixed).start()
        async with aiohttp.ClientSession() as s:
            assert await _numbers(s, proxy, "accounts") == (0, 0, 0)
            await _get(s, proxy.url + "/accounts", 5)

            async def compared() -> bool:  # the comparer's answers are on their way
                return (await _numbers(s, proxy, "accounts"))[0] >= 5

            await wait_for(compared, timeout=20, interval=0.1)
            assert await _numbers(s, proxy, "accounts") == (5, 5, 5)
            everything = await _json(s, f"{proxy.admin}/admin/routes/accounts/diffs?all=1")
            assert everything["compared"] == 25 + 20 + 5
    finally:
        await proxy.stop()


async def _run_pytest(module: Path, base: str) -> tuple[int, str]:
    env = {**os.environ, "BASE_URL": base, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    python = REPO / ".venv" / "bin" / "python"
    proc = await asyncio.create_subprocess_exec(
        str(python) if python.exists() else sys.executable, "-m", "pytest", "-q", "-p",
        "no:cacheprovider", str(module), cwd=module.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_exports_pass_against_the_new_service_where_shadowing_passes(
        json_servers, tmp_path: Path) -> None:  # noqa: F811
    legacy, new = await _servers(json_servers)
    port, admin = free_port(), free_port()
    proxy = await ProxyProcess(tmp_path / "proxy", _config(legacy, new, port, admin)).start()
    env = {"STRANGLER_ADMIN_URL": proxy.admin}
    try:
        async with aiohttp.ClientSession() as s:
            # lines[] reversed: by position every transaction differs
            await _get(s, proxy.url + "/transactions", 3)
            for i in range(1, 41):
                await _get(s, f"{proxy.url}/transactions/{i}")
            assert (await _settled(proxy, 43, "transactions"))["mismatched"] == 43
            # the fix: match lines by id; the route now shadows clean
            proxy.config.write_text(_config(
                legacy, new, port, admin,
                transactions_rules=('numeric_tolerance: 0.001, '
                                    'array_keys: {"$.lines": id, "$[*].lines": id}')))
            async with s.post(proxy.admin + "/admin/reload") as r:
                assert r.status == 200
            await _get(s, proxy.url + "/transactions", 3)
            for i in range(1, 41):
                await _get(s, f"{proxy.url}/transactions/{i}")
            clean = await _settled(proxy, 43, "transactions")
            assert (clean["compared"], clean["mismatched"]) == (43, 0)
        module = tmp_path / "test_transactions_export.py"
        code, out, err = await run_cli("diffs", "transactions", "--export", "pytest",
                                       str(module), env=env)
        assert code == 0, err
        cases = int(re.search(r"wrote (\d+) case", out).group(1))  # type: ignore[union-attr]
        assert cases >= 4
        text = module.read_text()
        # the list answer (over 16 KiB) was recorded cut: asserted by status only, and said so
        assert "1 request(s) asserted by status only: the recorded legacy answer was cut" in text
        assert '$.lines[id=1].amount' in text  # lines found by key, not position
        code, out = await _run_pytest(module, new.url)
        assert code == 0, out
        assert f"{cases} passed" in out and "failed" not in out
        # ... and fail where a service really differs (not vacuous)
        broken = transactions(True)
        broken[0]["lines"][1]["amount"] = 999  # transaction 1, the line with id 3
        other = await json_servers("broken", {"transactions": broken})
        code, out = await _run_pytest(module, other.url)
        assert code == 1 and "$.lines[id=3].amount: expected 6, got 999" in out, out
        hurl = tmp_path / "transactions.hurl"
        code, _, err = await run_cli("diffs", "transactions", "--export", "hurl", str(hurl),
                                     env=env)
        assert code == 0, err
        htext = hurl.read_text()
        assert 'jsonpath "$.lines[?(@.id==1)].amount" nth 0 >= 1.999' in htext  # tolerance
        assert "# 1 request(s) asserted by status only" in htext
    finally:
        await proxy.stop()
