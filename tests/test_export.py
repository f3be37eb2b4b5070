"""Recorded mismatches exported as regression tests that replay against a real legacy server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from aiohttp import web

from proxy.config.spec import CompareSpec
from shadow.diff import Comparator
from shadow.export import assertions, export
from shadow.jsonpath import PathSet
from shadow.model import Exchange, RequestRecord
from shadow.store import DiffStore

IBAN = "DE89370400440532013000"
SPEC = CompareSpec(ignore=("$.server_time", "$.items[*].ts"), redact=("$..iban",))
REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the virtualenv running the tests (make test-image-python has its own)


def balance_doc(account: str, amount: float) -> dict[str, object]:
    return {
        "account": account,
        "amount": amount,
        "currency": "EUR",
        "owner": "Zo\u00eb",
        "server_time": time.time(),  # differs on every call: ignored
        "iban": IBAN,  # redacted: never asserted, never written
        "flags": {"frozen": False, "limit": None},
        "items": [{"sku": "a", "q": 1, "ts": time.time()}, {"sku": "b", "q": 2, "ts": 0}],
        "tags": [],
    }


@asynccontextmanager
async def legacy_server(amount: float) -> AsyncIterator[str]:
    """The monolith: it says who it is, and answers balances with a given amount."""

    async def balance(request: web.Request) -> web.Response:
        return web.json_response(
            balance_doc(request.match_info["account"], amount),
            headers={"X-Served-By": "legacy"},
        )

    app = web.Application()
    app.router.add_get("/api/v1/balance/{account}", balance)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def record_mismatches(store: DiffStore, base: str) -> None:
    """What the mirror does: legacy's real answer vs a target with a planted difference."""
    comparator = Comparator(SPEC)
    async with httpx.AsyncClient(base_url=base) as client:
        for path in ("/api/v1/balance/1?currency=EUR", "/api/v1/balance/2"):
            r = await client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert r.headers["x-served-by"] == "legacy"
            headers = tuple((k.lower(), v) for k, v in r.headers.items())
            legacy = Exchange(r.status_code, headers, r.content)
            doc = r.json()
            doc["amount"] += 1
            target = Exchange(200, headers, json.dumps(doc).encode())
            comparison = comparator.compare(legacy, target)
            assert [d.path for d in comparison.differences] == ["$.amount"]
            request = RequestRecord(
                "GET", path, (("authorization", "Bearer s3cret"), ("accept", "*/*")), b""
            )
            store.record("balance", 0, request, legacy, target, comparison, comparator.redactor)
    post = RequestRecord("POST", "/api/v1/balance/1", (), b"{}")
    bad = comparator.compare(Exchange(200, (), b"{}"), Exchange(500, (), b"{}"))
    store.record(
        "balance",
        0,
        post,
        Exchange(200, (), b"{}"),
        Exchange(500, (), b""),
        bad,
        comparator.redactor,
    )
    assert store.flush()


async def run_pytest(module: Path, base: str) -> tuple[int, str]:
    # the exported module needs only pytest and httpx: skip loading this repo's plugins
    env = {**os.environ, "BASE_URL": base, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(module),
        cwd=module.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode()


async def test_exported_pytest_module_passes_on_legacy_and_fails_on_a_changed_field(
    tmp_path: Path,
) -> None:
    module = tmp_path / "replay" / "test_balance_regressions.py"
    module.parent.mkdir()
    with DiffStore(tmp_path / "diffs.sqlite3") as store:
        async with legacy_server(amount=12.5) as base:
            await record_mismatches(store, base)
            assert export(store, "balance", "pytest", module, ignore=SPEC.ignore) == 2
            text = module.read_text()
            assert IBAN not in text and "s3cret" not in text and "server_time" not in text
            code, out = await run_pytest(module, base)
            assert code == 0, out
            assert "2 passed" in out
        async with legacy_server(amount=99.0) as changed:
            code, out = await run_pytest(module, changed)
            assert code == 1, out
            assert "$.amount: expected 12.5, got 99.0" in out
            assert "2 failed" in out


async def test_hurl_export_asserts_legacy_fields(tmp_path: Path) -> None:
    out = tmp_path / "balance.hurl"
    with DiffStore(tmp_path / "diffs.sqlite3") as store:
        async with legacy_server(amount=12.5) as base:
            await record_mismatches(store, base)
        assert export(store, "balance", "hurl", out, ignore=SPEC.ignore) == 2
    text = out.read_text()
    first = text.split("\n\n")[1].splitlines()
    assert first[:3] == ["GET {{BASE_URL}}/api/v1/balance/2", "accept: */*", "HTTP 200"]
    assert first[3] == "[Asserts]"
    asserts = set(first[4:])
    for line in (
        'jsonpath "$.account" == "2"',
        'jsonpath "$.amount" == 12.5',
        'jsonpath "$.owner" == "Zo\u00eb"',
        'jsonpath "$.flags.frozen" == false',
        'jsonpath "$.flags.limit" == null',
        'jsonpath "$.items" count == 2',
        'jsonpath "$.items[1].sku" == "b"',
        'jsonpath "$.tags" count == 0',
    ):
        assert line in asserts
    assert "GET {{BASE_URL}}/api/v1/balance/1?currency=EUR" in text
    for absent in ("server_time", ".ts", "iban", IBAN, "s3cret", "authorization", "POST"):
        assert absent not in text


def test_assertions_skip_ignored_and_redacted_fields() -> None:
    doc = {"a": 1, "id": 7, "n": {"id": 8, "s": "[REDACTED]", "k": [True]}}
    got: Callable[[], list[tuple[str, str, object]]] = lambda: [  # noqa: E731
        (a.text, a.op, a.value) for a in assertions(doc, PathSet(["$..id"]))
    ]
    assert got() == [
        ("$", "object", None),
        ("$.a", "equals", 1),
        ("$.n", "object", None),
        ("$.n.k", "count", 1),
        ("$.n.k[0]", "equals", True),
    ]
