"""The compiled route table: first match in file order, whole-segment prefixes, indexed lookup."""

from __future__ import annotations

import json
import textwrap

import aiohttp
import pytest

from proxy.config.loader import load_config
from proxy.dataplane.table import RouteTable, cookie_value
from tests.support import free_port, routes_yaml

HEAD = """\
version: 1
listen: 127.0.0.1:8080
state_dir: state
upstreams:
  mono: {url: "http://127.0.0.1:9"}
  new: {url: "http://127.0.0.1:10"}
default_upstream: mono
routes:
"""


def table(routes: str) -> RouteTable:
    config = load_config("routes.yaml", HEAD + textwrap.indent(textwrap.dedent(routes), "  "))
    return RouteTable(config, {}, 1)


def name(t: RouteTable, path: str, method: str = "GET", headers: dict | None = None) -> str | None:
    hd = {k.encode(): v.encode() for k, v in (headers or {}).items()}
    r = t.match(method.encode(), path.encode(), hd)
    return r.name if r is not None else None


def _route(n: str, match: str) -> str:
    return f"- {{name: {n}, match: {match}, legacy: mono, target: new, shadow: false}}\n"


def test_path_prefix_matches_whole_segments():
    t = table(_route("bal", "{path_prefix: /api/v1/balance}"))
    assert name(t, "/api/v1/balance") == "bal"
    assert name(t, "/api/v1/balance/") == "bal"
    assert name(t, "/api/v1/balance/7") == "bal"
    assert name(t, "/api/v1/balance/7/history") == "bal"
    assert name(t, "/api/v1/balancex") is None
    assert name(t, "/api/v1/balance.json") is None
    assert name(t, "/api/v1") is None
    assert name(t, "/API/v1/balance") is None


def test_prefix_root_matches_every_path():
    t = table(_route("all", "{path_prefix: /}"))
    assert name(t, "/") == "all"
    assert name(t, "/anything/deep") == "all"


def test_first_match_wins_in_file_order():
    t = table(
        _route("exact", "{path: /api/v1/balance/special}")
        + _route("narrow", "{path_prefix: /api/v1/balance}")
        + _route("regex", "{path_regex: '/api/v1/[a-z]+/[0-9]+'}")
        + _route("broad", "{path_prefix: /api}")
    )
    assert name(t, "/api/v1/balance/special") == "exact"
    assert name(t, "/api/v1/balance/7") == "narrow"
    assert name(t, "/api/v1/orders/7") == "regex"
    assert name(t, "/api/v1/orders/x") == "broad"
    assert name(t, "/other") is None


def test_earlier_broad_route_beats_later_narrow_one():
    # Both kinds of index (trie and regex list) must respect file order, not specificity.
    t = table(
        _route("regex", "{path_regex: '/api/.*'}")
        + _route("prefix", "{path_prefix: /api/v1, headers: {x-beta: '1'}}")
    )
    assert name(t, "/api/v1/x", headers={"x-beta": "1"}) == "regex"
    t = table(
        _route("prefix", "{path_prefix: /api, methods: [GET]}")
        + _route("exact", "{path: /api/x}")
    )
    assert name(t, "/api/x") == "prefix"
    assert name(t, "/api/x", "POST") == "exact"


def test_cache_keys_by_method_only_when_a_route_names_methods():
    """Repeated lookups come from the cache: keyed by (method, path) when some route has a
    method condition, else by the path alone. Either way the answer is the uncached one."""
    t = table(_route("get", "{path_prefix: /api, methods: [GET]}")
              + _route("any", "{path: /api/x}"))
    for _ in range(2):
        assert [name(t, "/api/x", m) for m in ("GET", "POST", "GET", "DELETE")] == [
            "get", "any", "get", "any"]
    assert set(t._cache) == {(b"GET", b"/api/x"), (b"POST", b"/api/x"), (b"DELETE", b"/api/x")}
    t = table(_route("p", "{path_prefix: /api}") + _route("q", "{path: /x}"))
    for _ in range(2):
        assert [name(t, p, m) for p, m in (("/api/x", "GET"), ("/api/x", "POST"), ("/x", "PUT"),
                                           ("/y", "GET"))] == ["p", "p", "q", None]
    assert set(t._cache) == {b"/api/x", b"/x", b"/y"}


def test_regex_is_anchored_to_the_whole_path():
    t = table(_route("r", "{path_regex: '/items/[0-9]+'}"))
    assert name(t, "/items/42") == "r"
    assert name(t, "/items/42/x") is None
    assert name(t, "/x/items/42") is None


def test_methods_and_headers_conditions():
    t = table(
        _route("get-beta", "{path_prefix: /api, methods: [GET], headers: {x-beta: 'yes'}}")
        + _route("post", "{path_prefix: /api, methods: [POST, PUT]}")
    )
    assert name(t, "/api/a", headers={"x-beta": "yes"}) == "get-beta"
    assert name(t, "/api/a", headers={"x-beta": "no"}) is None
    assert name(t, "/api/a") is None
    assert name(t, "/api/a", "POST") == "post"
    assert name(t, "/api/a", "PUT", {"x-beta": "yes"}) == "post"
    assert name(t, "/api/a", "DELETE") is None


def test_exact_path_does_not_match_children():
    t = table(_route("e", "{path: /health}"))
    assert name(t, "/health") == "e"
    assert name(t, "/health/") is None
    assert name(t, "/health/x") is None


def test_lookup_does_not_scan_every_route():
    """2000 prefix routes: a lookup visits the trie, not the list (timed loosely)."""
    routes = "".join(_route(f"r{i}", f"{{path_prefix: /svc{i}}}") for i in range(2000))
    t = table(routes)
    assert name(t, "/svc1999/x") == "r1999"
    assert name(t, "/svc0") == "r0"
    import time

    t0 = time.perf_counter()
    for _ in range(2000):
        t.match(b"GET", b"/svc1999/x", {})
    assert time.perf_counter() - t0 < 0.5


def test_cookie_value():
    assert cookie_value(b"a=1; session=abc; b=2", b"session") == b"abc"
    assert cookie_value(b'session="q"', b"session") == b"q"
    assert cookie_value(b"xsession=1", b"session") is None
    assert cookie_value(b"session=", b"session") is None


async def test_first_match_and_default_through_the_proxy(upstreams, inproc_proxy):
    mono = await upstreams("mono")
    a = await upstreams("svc-a")
    b = await upstreams("svc-b")
    proxy = await inproc_proxy(routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          mono: {{url: "http://127.0.0.1:{mono}"}}
          a: {{url: "http://127.0.0.1:{a}"}}
          b: {{url: "http://127.0.0.1:{b}"}}
        default_upstream: mono
        routes:
          - name: special
            match: {{path: /api/orders/special}}
            legacy: mono
            target: b
            weight: 100
            shadow: false
          - name: orders
            match: {{path_prefix: /api/orders}}
            legacy: mono
            target: a
            weight: 100
            shadow: false
        """, port=free_port(), admin=free_port(), mono=mono.port, a=a.port, b=b.port))
    want = {
        "/api/orders/special": "svc-b",
        "/api/orders/7": "svc-a",
        "/api/orders": "svc-a",
        "/api/ordersx": "mono",
        "/elsewhere?q=1": "mono",
    }
    async with aiohttp.ClientSession() as s:
        for path, who in want.items():
            async with s.get(proxy.url + path) as r:
                assert r.status == 200
                body = json.loads(await r.text())
                assert body["served_by"] == who, path
                assert body["path"] == path  # unmatched requests go to default untouched


@pytest.mark.parametrize("weight,bp", [(0, 0), (0.01, 1), (12.34, 1234), (100, 10000)])
def test_table_state_holds_weight_in_basis_points(weight, bp):
    t = table(f"- {{name: r, match: {{path_prefix: /r}}, legacy: mono, target: new, "
              f"weight: {weight}, shadow: false}}\n")
    assert t.by_name["r"].state.weight_bp == bp
