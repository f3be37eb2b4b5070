"""What docs/contract.md promises about /metrics' first scrape, the shadow error kinds, the
`strangler diffs --json` field rows and the `--export jsonl` request set, checked against a real
proxy with real upstreams (and a real TLS target) through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, routes_yaml, run_cli, wait_for
from tests.tls_support import Pki, TlsUpstream, server_context

CONTRACT = (Path(__file__).resolve().parent.parent / "docs" / "contract.md").read_text()

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: accounts
        match: {{path_prefix: /api/v1/accounts}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {{sample: 1.0}}
"""

Samples = dict[tuple[str, frozenset], float]


def contract_values(metric: str, label: str) -> list[str]:
    """The values docs/contract.md section 6 lists for `label` of `metric`."""
    row = re.search(rf"^\| `{re.escape(metric)}` \|.*$", CONTRACT, re.M)
    assert row, f"docs/contract.md has no row for {metric}"
    listed = re.search(rf"`{re.escape(label)}` \(([^)]*)\)", row.group(0))
    assert listed, f"docs/contract.md lists no values of {label} for {metric}"
    return re.findall(r"`(\w+)`", listed.group(1))


async def scrape(proxy) -> Samples:
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.admin + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _json_answer(doc: dict):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(doc)

    return handler


async def start(upstreams, inproc_proxy, legacy: dict | None = None, target: dict | None = None):
    mono = await upstreams("monolith", handler=_json_answer(legacy) if legacy else None)
    svc = await upstreams("svc", handler=_json_answer(target) if target else None)
    return await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                          mono=mono.port, svc=svc.port))


# -- 1. every label value the contract lists is there from the first scrape -------------------


@pytest.mark.parametrize(("metric", "label"), [
    ("strangler_shadow_skipped_total", "reason"),
    ("strangler_shadow_errors_total", "kind"),
    ("strangler_shadow_comparisons_total", "result"),
    ("strangler_fallbacks_total", "reason"),
])
async def test_first_scrape_has_every_label_value_the_contract_lists(
        upstreams, inproc_proxy, metric: str, label: str) -> None:
    listed = contract_values(metric, label)
    assert len(listed) >= 3, listed  # the doc's list was read, not an empty match
    proxy = await start(upstreams, inproc_proxy)
    samples = await scrape(proxy)  # before any request
    present = {dict(labels)[label] for (name, labels), value in samples.items()
               if name == metric and dict(labels)["route"] == "accounts" and value == 0}
    missing = [v for v in listed if v not in present]
    assert not missing, f"{metric}: no {label} series at 0 on the first scrape for {missing}"


def test_every_skip_reason_the_data_plane_counts_is_listed() -> None:
    """The data plane counts a skipped mirror by a literal reason where it decides
    (proxy/dataplane/*.py, compiled: no constant lookup per request); every such literal must be
    one /metrics pre-creates and the contract lists, or a new reason would appear on no first
    scrape and in no document."""
    from proxy.api.metrics import SKIP_REASONS

    root = Path(__file__).resolve().parent.parent / "proxy" / "dataplane"
    counted = {m for f in root.glob("*.py")
               for m in re.findall(r'shadow_skipped\([^,()]+, "(\w+)"\)', f.read_text())}
    assert {"sampled_out", "comparer_busy", "body_too_large"} <= counted  # the scan finds them
    listed = set(contract_values("strangler_shadow_skipped_total", "reason"))
    assert counted - set(SKIP_REASONS) == set(), "not pre-created in proxy/api/metrics.py"
    assert counted - listed == set(), "not listed in docs/contract.md"


async def test_decoded_too_large_is_pre_created_and_counted_on_the_same_series(
        upstreams, inproc_proxy) -> None:
    """The comparer's own skip reason: at 0 from the first scrape, then counted there."""
    import gzip

    bomb = gzip.compress(b" " * (64 << 20))  # 64 MiB of spaces: ~64 KiB on the wire

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Type": "application/json",
                                                "Content-Encoding": "gzip"})

    mono = await upstreams("monolith", handler=gzipped)
    svc = await upstreams("svc", handler=_json_answer({"x": 1}))
    proxy = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                           mono=mono.port, svc=svc.port))
    key = ("strangler_shadow_skipped_total",
           frozenset({("route", "accounts"), ("reason", "decoded_too_large")}))
    assert (await scrape(proxy)).get(key) == 0
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(proxy.url + "/api/v1/accounts/1") as r:
            assert r.status == 200
            await r.read()

    async def skipped() -> bool:
        proxy.server.flush()
        return (await scrape(proxy)).get(key, 0) >= 1

    await wait_for(skipped, timeout=15)


# -- 2. kind="tls" of strangler_shadow_errors_total is real -----------------------------------

TLS_ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      ledger:
        url: "{ledger}"
        connect_timeout: 1s
        tls: {{ca_file: "{ca}"}}
    default_upstream: monolith
    routes:
      - name: ledger
        match: {{path_prefix: /ledger}}
        legacy: monolith
        target: ledger
        weight: 0
        shadow: {{sample: 1.0}}
"""


async def test_a_mirror_to_an_https_target_whose_certificate_fails_is_kind_tls(
        tmp_path, upstreams, inproc_proxy) -> None:
    trusted = Pki(tmp_path / "trusted")  # the CA the proxy is told to trust
    other = Pki(tmp_path / "other", name="other")  # the CA that signed the target's certificate
    cert, key = other.issue("ledger", "127.0.0.1")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key)).start()
    try:
        mono = await upstreams("monolith")
        proxy = await inproc_proxy(routes_yaml(
            TLS_ROUTES, port=free_port(), admin=free_port(), mono=mono.port, ledger=ledger.url,
            ca=trusted.ca_file))
        errors = "strangler_shadow_errors_total"
        tls = (errors, frozenset({("route", "ledger"), ("side", "target"), ("kind", "tls")}))
        assert (await scrape(proxy)).get(tls) == 0
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                async with s.get(f"{proxy.url}/ledger/{i}") as r:
                    assert (await r.json())["served_by"] == "monolith"

        async def counted() -> Samples | None:
            proxy.server.flush()
            samples = await scrape(proxy)
            return samples if samples.get(tls, 0) >= 3 else None

        samples = await wait_for(counted, timeout=15)
        others = {dict(ls)["kind"]: v for (n, ls), v in samples.items()
                  if n == errors and dict(ls)["route"] == "ledger" and dict(ls)["side"] == "target"}
        assert others == {"connect": 0, "timeout": 0, "reset": 0, "tls": 3, "busy": 0}
        assert not ledger.seen  # the handshake failed: no request reached it
    finally:
        await ledger.stop()


# -- 3. elements / of / share are null for a path without a list ------------------------------

LEGACY = {"owner": "ann", "items": [{"id": 1, "amount": 10}, {"id": 2, "amount": 20}]}
TARGET = {"owner": "bob", "items": [{"id": 1, "amount": 10}, {"id": 2, "amount": 21}]}
REQUESTS = 6


async def _mirror(proxy) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(REQUESTS):
            async with s.get(f"{proxy.url}/api/v1/accounts/{i}") as r:
                assert (await r.json())["owner"] == "ann"

        async def compared() -> bool:
            async with s.get(proxy.admin + "/admin/routes/accounts/diffs") as r:
                return (await r.json())["mismatched"] >= REQUESTS

        await wait_for(compared, timeout=15)


async def test_diffs_elements_of_and_share_are_null_without_a_list(
        upstreams, inproc_proxy) -> None:
    proxy = await start(upstreams, inproc_proxy, LEGACY, TARGET)
    await _mirror(proxy)
    for extra in ((), ("--all",)):
        code, out, err = await run_cli("diffs", "accounts", "--json", "--admin", proxy.admin,
                                       *extra)
        assert code == 0, err
        rows = {f["path"]: f for f in json.loads(out)["fields"]}
        assert set(rows) == {"$.owner", "$.items[*].amount"}
        owner, amount = rows["$.owner"], rows["$.items[*].amount"]
        assert owner["count"] == REQUESTS
        assert (owner["elements"], owner["of"], owner["share"]) == (None, None, None)
        # in a list: 1 element of the 2 differed, in every comparison
        assert (amount["elements"], amount["of"], amount["share"]) == (
            REQUESTS, 2 * REQUESTS, 0.5)

    code, out, err = await run_cli("diffs", "accounts", "--admin", proxy.admin)
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("$.")}
    assert "50.0% of 2 elements" in lines["$.items[*].amount"], out
    assert "element" not in lines["$.owner"] and "None" not in lines["$.owner"], out


# -- 4. the jsonl export is the contract's {"method", "path", "headers", "status"} ------------


async def test_jsonl_export_lines_are_method_path_headers_status(
        tmp_path, upstreams, inproc_proxy) -> None:
    proxy = await start(upstreams, inproc_proxy, LEGACY, TARGET)
    await _mirror(proxy)
    dest = tmp_path / "set.jsonl"
    code, out, err = await run_cli("diffs", "accounts", "--admin", proxy.admin,
                                   "--export", "jsonl", str(dest))
    assert code == 0, err
    lines = [json.loads(ln) for ln in dest.read_text().splitlines()]
    assert lines, out
    assert all(set(ln) == {"method", "path", "headers", "status"} for ln in lines), lines[0]
    assert {ln["path"] for ln in lines} <= {f"/api/v1/accounts/{i}" for i in range(REQUESTS)}
    assert {(ln["method"], ln["status"]) for ln in lines} == {("GET", 200)}
