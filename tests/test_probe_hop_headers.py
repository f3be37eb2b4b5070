"""The contract's hop-by-hop list and X-Request-Id, both ways (found by a contract audit).

`Proxy-*` is hop-by-hop in the contract, but only Proxy-Connection, -Authenticate and
-Authorization were removed: `Proxy-Foo` and httpoxy's `Proxy: http://evil:1` reached the
upstream, and an upstream's `Proxy-Foo` the client. `TE: trailers` was forwarded though the
contract removes `TE` (and trailers are not relayed). An upstream's own `X-Request-Id` was
relayed to the client instead of the id passed upstream and logged; now the answer always
carries the request's id.
"""

from __future__ import annotations

import pytest

from tests.probe import probe_config
from tests.rawhttp import RawUpstream, SeenRaw, parse_responses, raw_request


def _answer(seen: SeenRaw) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nProxy-Foo: p\r\nPROXY: q\r\n"
            b"Proxy-Status: upstream; error=none\r\nX-Request-Id: upstream-chosen\r\n"
            b"X-Kept: k\r\n\r\nok")


@pytest.fixture
async def hop(proxy_process):
    up = await RawUpstream(respond=_answer).start()
    p = await proxy_process(probe_config(up.port, up.port))
    yield p, up
    await up.stop()


@pytest.mark.parametrize("rid", [None, b"client-id-1"], ids=["generated", "client_sent"])
async def test_proxy_star_and_te_are_removed_both_ways_and_the_request_id_is_ours(hop, rid):
    p, up = hop
    extra = b"X-Request-Id: %s\r\n" % rid if rid else b""
    data, _ = await raw_request(
        p.port, b"GET /api/x HTTP/1.1\r\nHost: shop\r\nProxy-Foo: y\r\nProxy: http://evil:1\r\n"
                b"TE: trailers\r\nX-Mine: m\r\n%sConnection: close\r\n\r\n" % extra)
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.body == b"ok"
    sent = up.seen[0]
    assert [n for n in sent.names() if n.startswith(b"proxy") or n == b"te"] == []
    assert sent.header("x-mine") == b"m"
    passed = sent.header("x-request-id")
    assert passed == (rid or passed) and passed
    names = [n for n, _ in resp.headers]  # lower-cased by the test's parser
    assert [n for n in names if n.startswith("proxy")] == [], resp.headers
    assert resp.header("x-kept") == "k"
    assert names.count("x-request-id") == 1
    assert resp.header("x-request-id") == passed.decode()  # the id the upstream got, not its own
