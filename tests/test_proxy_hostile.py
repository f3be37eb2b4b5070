"""Hostile HTTP/1 input on the request path (issue 10): refused, never passed on.

Every case talks raw bytes to the proxy and plays the upstream with a raw socket, so the test sees
exactly what the client got back and exactly what (if anything) reached the upstream.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.rawhttp import RawUpstream, SeenRaw, one_route_config, parse_responses, raw_request
from tests.support import free_port

LIMITS = "limits: {max_body: 1KiB, header_timeout: 500ms, body_idle_timeout: 500ms}\n"


@pytest.fixture
async def hostile(inproc_proxy):
    """Proxy with route `api` (/api, weight 0 -> legacy) in front of two raw upstreams."""
    made: list[RawUpstream] = []

    async def make(legacy_respond=None, target_respond=None, weight: float = 0,
                   limits: str = LIMITS, top: str = "", close_after: bool = False):
        kw = {} if legacy_respond is None else {"respond": legacy_respond}
        legacy = await RawUpstream(close_after=close_after, **kw).start()
        kw = {} if target_respond is None else {"respond": target_respond}
        target = await RawUpstream(close_after=close_after, **kw).start()
        made.extend((legacy, target))
        proxy = await inproc_proxy(one_route_config(free_port(), free_port(), legacy.port,
                                                    target.port, weight, limits=limits, top=top))
        port = proxy.runtime.config.listen.port
        return port, legacy, target

    yield make
    for up in made:
        await up.stop()


def _only(data: bytes):
    resps = parse_responses(data)
    assert len(resps) == 1, data
    return resps[0]


# Each: (id, raw request, acceptable statuses). All must close the connection and reach no upstream.
REFUSED = [
    ("cl_and_te", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("te_and_cl", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Length: 5\r\n\r\n0\r\n\r\n", {400}),
    ("conflicting_cl", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     b"Content-Length: 6\r\n\r\nhello!", {400}),
    ("cl_list", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", {400}),
    ("cl_plus", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", {400}),
    ("cl_negative", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", {400}),
    ("cl_hex", b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", {400}),
    ("te_xchunked", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"
     b"0\r\n\r\n", {400, 501}),
    ("te_chunked_identity", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, "
     b"identity\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te_space_before_colon", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked"
     b"\r\n\r\n0\r\n\r\n", {400}),
    ("te_twice", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te_vertical_tab", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"
     b"0\r\n\r\n", {400, 501}),
    ("te_http10", b"POST /api HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", {400}),
    ("chunk_size_hex_prefix", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk_bare_lf", b"POST /api HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\nhello\n0\n\n", {400}),
    ("bare_lf_head", b"GET /api HTTP/1.1\nHost: a\n\n", {400}),
    ("bare_lf_in_header", b"GET /api HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", {400}),
    ("bare_cr_in_header", b"GET /api HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", {400}),
    ("obs_fold", b"GET /api HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", {400}),
    ("nul_in_value", b"GET /api HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", {400}),
    ("nul_in_name", b"GET /api HTTP/1.1\r\nHost: a\r\nX-\x00A: b\r\n\r\n", {400}),
    ("space_in_name", b"GET /api HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", {400}),
    ("underscore_in_name", b"GET /api HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
     {400}),
    ("absolute_form_other_host", b"GET http://evil.example/api HTTP/1.1\r\nHost: a\r\n\r\n",
     {400}),
    ("absolute_form_other_port", b"GET http://a:81/api HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("authority_form", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", {400, 405, 501}),
    ("connect_origin_form", b"CONNECT /api HTTP/1.1\r\nHost: a\r\n\r\n", {405}),
    ("asterisk_form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("http2_line", b"GET /api HTTP/2.0\r\nHost: a\r\n\r\n", {400, 505}),
    ("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 505}),
    ("http12_line", b"GET /api HTTP/1.2\r\nHost: a\r\n\r\n", {400, 505}),
    ("http09_line", b"GET /api\r\n\r\n", {400, 505}),
    ("missing_host", b"GET /api HTTP/1.1\r\n\r\n", {400}),
    ("two_hosts", b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", {400}),
    ("fragment", b"GET /api#x HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("lowercase_method", b"get /api HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, {400}),
    ("header_no_colon", b"GET /api HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", {400}),
    ("encoded_slash", b"GET /api%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("dotdot_above_root", b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
]


@pytest.mark.parametrize("raw,statuses", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_hostile_request_refused_and_closed(hostile, raw, statuses):
    port, legacy, target = await hostile()
    data, closed = await raw_request(port, raw, timeout=3)
    resp = _only(data)
    assert resp.status in statuses
    assert closed, "the connection must be closed after a refused request"
    assert resp.header("connection") == "close"
    body = json.loads(resp.body)
    assert body["status"] == resp.status and body["error"] and body["request_id"]
    assert legacy.seen == [] and target.seen == []
    assert legacy.raw == b"" and target.raw == b""


async def test_refusal_body_never_echoes_input(hostile):
    port, _, _ = await hostile()
    marker = b"<script>alert(1)</script>"
    data, closed = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\nX-Evil: " + marker
                                     + b"\x00\r\n\r\n")
    resp = _only(data)
    assert resp.status == 400 and closed
    assert marker not in data
    assert resp.header("content-type") == "application/json"


async def test_pipelined_smuggle_attempt_is_two_clean_requests(hostile):
    """A body-less request followed by a second request on the same connection: the upstream
    gets two separately re-serialised requests, never raw bytes of the second inside the first."""
    port, legacy, _ = await hostile()
    raw = (b"GET /api/a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
           b"GET /api/b HTTP/1.1\r\nHost: a\r\nX-Second: 1\r\nConnection: close\r\n\r\n")
    data, closed = await raw_request(port, raw)
    resps = parse_responses(data)
    assert [r.status for r in resps] == [200, 200]
    assert [json.loads(r.body)["path"] for r in resps] == ["/api/a", "/api/b"]
    assert [s.target for s in legacy.seen] == [b"/api/a", b"/api/b"]
    assert legacy.seen[0].header("x-second") is None
    assert legacy.seen[1].header("x-second") == b"1"
    assert closed


async def test_absolute_form_matching_host_is_forwarded_origin_form(hostile):
    port, legacy, _ = await hostile()
    data, _ = await raw_request(port, b"GET http://a/api/x?q=1 HTTP/1.1\r\nHost: a\r\n"
                                      b"Connection: close\r\n\r\n")
    assert _only(data).status == 200
    assert legacy.seen[0].target == b"/api/x?q=1"


# -- differential check: exactly the request the proxy meant to send ---------------------------

async def test_upstream_sees_exactly_the_reserialised_request(hostile):
    port, legacy, _ = await hostile()
    raw = (b"POST /api/orders?x=1&y=%2F HTTP/1.1\r\n"
           b"Host: shop.example\r\n"
           b"User-Agent: t/1\r\n"
           b"Connection: keep-alive, X-Drop-Me\r\n"
           b"X-Drop-Me: secret\r\n"
           b"Keep-Alive: timeout=5\r\n"
           b"Proxy-Connection: keep-alive\r\n"
           b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
           b"TE: gzip\r\n"
           b"Trailer: X-T\r\n"
           b"X-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Host: evil.example\r\n"
           b"X-Forwarded-Proto: https\r\n"
           b"Forwarded: for=6.6.6.6\r\n"
           b"X-Request-Id: abc-123\r\n"
           b"Content-Length: 5\r\n"
           b"\r\nhello")
    data, _ = await raw_request(port, raw + b"GET /api/end HTTP/1.1\r\nHost: shop.example\r\n"
                                              b"Connection: close\r\n\r\n")
    first = parse_responses(data)[0]
    assert first.status == 200 and first.header("x-request-id") == "abc-123"
    seen = legacy.seen[0]
    assert seen.method == b"POST" and seen.target == b"/api/orders?x=1&y=%2F"
    assert seen.version == "1.1"
    assert seen.headers == [
        (b"Host", b"shop.example"),
        (b"User-Agent", b"t/1"),
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"shop.example"),
        (b"x-request-id", b"abc-123"),
        (b"content-length", b"5"),
    ]
    assert seen.body == b"hello"
    assert legacy.errors == []


async def test_chunked_request_is_rechunked_without_extensions_or_trailers(hostile):
    port, legacy, _ = await hostile()
    raw = (b"POST /api/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=evil\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: smuggled\r\n\r\n"
           b"GET /api/end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, _ = await raw_request(port, raw)
    assert [r.status for r in parse_responses(data)] == [200, 200]
    seen = legacy.seen[0]
    assert seen.body == b"abcde"
    assert seen.header("transfer-encoding") == b"chunked"
    assert seen.header("content-length") is None
    assert b"ext=evil" not in legacy.raw and b"smuggled" not in legacy.raw
    assert legacy.seen[1].target == b"/api/end"


async def test_connection_naming_framing_headers_never_drops_them(hostile):
    port, legacy, _ = await hostile()
    raw = (b"POST /api/x HTTP/1.1\r\nHost: a\r\nConnection: Host, Content-Length, "
           b"Transfer-Encoding, X-Request-Id\r\nX-Request-Id: keep-me\r\n"
           b"Content-Length: 4\r\n\r\nbody"
           b"GET /api/end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, _ = await raw_request(port, raw)
    assert [r.status for r in parse_responses(data)] == [200, 200]
    seen = legacy.seen[0]
    assert seen.header("host") == b"a"
    assert seen.header("content-length") == b"4" and seen.body == b"body"
    assert seen.header("x-request-id") == b"keep-me"
    assert legacy.seen[1].target == b"/api/end"  # framing intact: the next request parsed


async def test_h2c_upgrade_is_stripped(hostile):
    port, legacy, _ = await hostile()
    data, _ = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: a\r\n"
                                      b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                      b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert _only(data).status == 200
    names = legacy.seen[0].names()
    assert b"upgrade" not in names and b"http2-settings" not in names
    assert b"connection" not in names


# -- limits ----------------------------------------------------------------------------------

async def test_request_line_too_long_414(hostile):
    port, legacy, _ = await hostile()
    data, closed = await raw_request(port, b"GET /api/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a"
                                           b"\r\n\r\n")
    resp = _only(data)
    assert resp.status == 414 and closed and legacy.raw == b""


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"a" * 40000 + b"\r\n",
    b"".join(b"X-H%d: v\r\n" % i for i in range(150)),
], ids=["one_huge", "too_many"])
async def test_headers_too_large_431_short_json(hostile, headers):
    port, legacy, _ = await hostile()
    data, closed = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
    resp = _only(data)
    assert resp.status == 431 and closed and legacy.raw == b""
    assert len(resp.body) < 300 and b"aaaa" not in resp.body and b"X-H1" not in resp.body
    assert json.loads(resp.body)["error"] == "headers_too_large"


async def test_declared_body_over_cap_413_before_upstream(hostile):
    port, legacy, _ = await hostile()
    data, closed = await raw_request(port, b"POST /api HTTP/1.1\r\nHost: a\r\n"
                                           b"Content-Length: 2000\r\n\r\n" + b"x" * 100)
    resp = _only(data)
    assert resp.status == 413 and closed
    assert legacy.connections == 0 and legacy.raw == b""


async def test_chunked_body_crossing_cap_aborts_upstream_413(hostile):
    port, legacy, _ = await hostile(legacy_respond=lambda seen: None)
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    data, closed = await raw_request(port, [b"POST /api HTTP/1.1\r\nHost: a\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n" + chunk,
                                            chunk, chunk, b"0\r\n\r\n"], pause=0.1)
    resp = _only(data)
    assert resp.status == 413 and closed
    assert legacy.seen == []  # the upstream never got a complete request
    assert not legacy.raw.endswith(b"0\r\n\r\n")


async def test_slowloris_headers_408_and_close(hostile):
    port, legacy, _ = await hostile()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    data, closed = await raw_request(port, [b"GET /api HTTP/1.1\r\n", b"Host: a\r\n",
                                            b"X-A: 1\r\n", b"X-B: 1\r\n", b"X-C: 1\r\n"],
                                     pause=0.2, timeout=3)
    resp = _only(data)
    assert resp.status == 408 and closed
    assert loop.time() - t0 < 2.5
    assert legacy.raw == b""


async def test_idle_connection_without_request_is_closed(hostile):
    port, _, _ = await hostile()
    data, closed = await raw_request(port, [b"G"], timeout=3)
    assert closed
    assert data == b"" or _only(data).status == 408


async def test_body_idle_timeout_408_and_upstream_abandoned(hostile):
    port, legacy, _ = await hostile()
    data, closed = await raw_request(port, [b"POST /api HTTP/1.1\r\nHost: a\r\n"
                                            b"Content-Length: 100\r\n\r\nabc"], timeout=3)
    resp = _only(data)
    assert resp.status == 408 and closed
    assert legacy.seen == []


# -- upstream responses that must not reach the client ----------------------------------------

BAD_RESPONSES = [
    ("nul_in_value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
    ("bare_cr_in_value", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok"),
    ("obs_fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    ("conflicting_cl", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"),
    ("cl_and_te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n"),
    ("bad_te", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
    ("garbage_status", b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"),
    ("not_http", b"SSH-2.0-OpenSSH_9.6\r\n"),
]


@pytest.mark.parametrize("answer", [c[1] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES])
async def test_hostile_upstream_response_is_502(hostile, answer):
    port, _, _ = await hostile(legacy_respond=lambda seen: answer, close_after=True)
    data, _ = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\nX-Request-Id: r-1\r\n"
                                      b"Connection: close\r\n\r\n")
    resp = _only(data)
    assert resp.status == 502
    body = json.loads(resp.body)
    assert body["request_id"] == "r-1" and body["error"]
    assert b"a\x00b" not in data and b"SSH" not in data


async def test_upstream_hop_by_hop_response_headers_removed(hostile):
    def answer(seen: SeenRaw) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal, Content-Length\r\n"
                b"X-Internal: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
                b"Trailer: X-T\r\nUpgrade: foo\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok")

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resps = parse_responses(data)
    assert [r.status for r in resps] == [200, 200]
    first = resps[0]
    names = {k for k, _ in first.headers}
    for gone in ("x-internal", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert gone not in names
    assert first.header("x-kept") == "yes"
    assert first.header("content-length") == "2" and first.body == b"ok"
    assert first.header("x-request-id")


async def test_each_response_drops_what_its_own_connection_header_names(hostile):
    """Responses on one upstream connection naming different headers in Connection: each drops
    its own (the data plane remembers the last Connection value it read; it must not reuse it
    for another). Upper case names and order of headers as the upstream sent them."""
    def answer(seen: SeenRaw) -> bytes:
        named = {b"/api/a": b"X-One", b"/api/b": b"x-two, Keep-Alive", b"/api/c": b"keep-alive"}
        return (b"HTTP/1.1 200 OK\r\nX-Two: 2\r\nConnection: " + named[seen.target] +
                b"\r\nX-One: 1\r\nX-REQUEST-ID: up-" + seen.target[-1:] +
                b"\r\nContent-Length: 2\r\nX-Three: 3\r\n\r\nok")

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api/b HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api/c HTTP/1.1\r\nHost: a\r\n"
                                      b"Connection: close\r\n\r\n")
    resps = parse_responses(data)
    assert [r.status for r in resps] == [200] * 4
    names = [[k for k, _ in r.headers] for r in resps]
    assert [[n for n in ns if n.startswith("x-")] for ns in names] == [
        ["x-two", "x-three", "x-request-id"], ["x-one", "x-three", "x-request-id"],
        ["x-two", "x-three", "x-request-id"], ["x-two", "x-one", "x-three", "x-request-id"]]
    # the request's own id, never the upstream's (tests/test_probe_hop_headers.py)
    ids = [r.header("x-request-id") for r in resps]
    assert len(set(ids)) == 4 and not any(i.startswith("up-") for i in ids)
    assert all(r.body == b"ok" and r.header("content-length") == "2" for r in resps)


async def test_an_interim_response_leaves_nothing_to_the_final_one(hostile):
    """An upstream's 103 Early Hints (not forwarded) names its own Content-Length and
    Connection: none of that is held against the final response on the same connection, and
    the next request's response is read clean too."""
    def answer(seen: SeenRaw) -> bytes:
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nContent-Length: 7\r\n"
                b"Connection: x-hint\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nX-Hint: kept\r\nContent-Length: 2\r\n\r\nok")

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api/b HTTP/1.1\r\nHost: a\r\n"
                                      b"Connection: close\r\n\r\n")
    resps = parse_responses(data)
    assert [r.status for r in resps] == [200, 200]
    for r in resps:
        assert r.body == b"ok" and r.header("content-length") == "2"
        assert r.header("x-hint") == "kept" and r.header("link") is None


@pytest.mark.parametrize("after", [
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Evil: ", id="part_of_a_head"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Evil: yes\r\nContent-Length: 4\r\n\r\nevil", id="response"),
])
async def test_bytes_after_a_response_never_answer_the_next_request(hostile, after):
    """An upstream writes more after its response, in the same write: a whole response nobody
    asked for, or the start of one. None of it is read as the answer to the next request, asked
    on another client connection or pipelined behind the first (llhttp alone would take the start
    of a head, then the next response's status line as a header value). The connection is not
    used again; a GET that was already sent on it goes again on a fresh one."""
    def answer(seen: SeenRaw) -> bytes:
        if seen.target.startswith(b"/api/a"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + after
        return b"HTTP/1.1 200 OK\r\nX-Own: b\r\nContent-Length: 5\r\n\r\nfresh"

    port, legacy, _ = await hostile(legacy_respond=answer)
    close = b"Connection: close\r\n\r\n"
    data, _ = await raw_request(port, b"GET /api/a HTTP/1.1\r\nHost: a\r\n" + close)
    assert _only(data).body == b"ok"
    data, _ = await raw_request(port, b"GET /api/b HTTP/1.1\r\nHost: a\r\n" + close)
    resp = _only(data)
    assert resp.status == 200 and resp.body == b"fresh"
    assert resp.header("x-own") == "b" and resp.header("x-evil") is None
    assert legacy.connections == 2
    data, _ = await raw_request(port, b"GET /api/a HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api/b HTTP/1.1\r\nHost: a\r\n" + close)
    resps = parse_responses(data)
    assert [r.body for r in resps] == [b"ok", b"fresh"]
    assert resps[1].header("x-own") == "b" and resps[1].header("x-evil") is None


@pytest.mark.parametrize("cut", [5, 20, 27, 33, 52])
async def test_a_head_split_across_reads_is_read_whole(hostile, cut):
    """A response head that arrives in two reads (cut inside the status line, a name, a value,
    a line end, the blank line), after an interim 103 in the first: read header by header, every
    header once, in order, with no space added or lost."""
    final = (b"HTTP/1.1 200 OK\r\nX-One:1\r\nX-Two:  2 \r\nContent-Length: 2\r\n"
             b"Connection: keep-alive\r\n\r\nok")

    def answer(seen: SeenRaw) -> list[bytes]:
        early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        if seen.target.endswith(b"early"):
            return [early + final[:cut], final[cut:]]
        return [final[:cut], final[cut:]]

    port, _, _ = await hostile(legacy_respond=answer)
    for target in (b"/api/x", b"/api/early"):
        data, _ = await raw_request(
            port, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % target)
        resp = _only(data)
        assert resp.status == 200 and resp.body == b"ok", data
        assert [(k, v) for k, v in resp.headers if k.startswith("x-")][:2] == [
            ("x-one", "1"), ("x-two", "2 ")], data
        assert resp.header("link") is None


@pytest.mark.parametrize("early, filler, status", [
    pytest.param(b"", 70_000, 502, id="over_the_cap"),
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 70_000, 502,
                 id="over_after_a_103"),
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 65_460, 502,
                 id="the_103_counts"),
    pytest.param(b"", 65_460, 200, id="just_under"),  # 65,507 bytes: alone, under 64 KiB
])
async def test_a_response_head_over_its_cap_in_one_write_is_502(hostile, early, filler, status):
    """The response head's cap (`max_header_bytes`, 64 KiB by default; interim responses before
    it count) holds when the whole head arrives in one read, as when it trickles in (before,
    only a read that ended inside the head was counted: a 70 KB head in one write was served)."""
    def answer(seen: SeenRaw) -> bytes:
        return early + (b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\nok"
                        % (b"b" * filler))

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp = _only(data)
    assert resp.status == status
    if status == 502:
        assert b"bbbb" not in data
    else:
        assert resp.body == b"ok" and len(resp.header("x-big")) == filler


async def test_a_small_head_before_a_large_body_in_one_write_is_served(hostile):
    """The cap is the head's, not the read's: a small head with 300 KB of body behind it, in one
    write (one read past the cap), is served whole."""
    body = bytes(range(256)) * 1200

    def answer(seen: SeenRaw) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp = _only(data)
    assert resp.status == 200 and resp.body == body


@pytest.mark.parametrize("count", [3, 40, 2_000])
async def test_a_small_body_after_many_headers_arrives_whole(hostile, count):
    """A small response's head waits for its body to leave in one copy, unless the head has
    many pieces (an upstream's thousands of short headers are joined at once): either way every
    header arrives once, in order, with the body after them."""
    def answer(seen: SeenRaw) -> bytes:
        lines = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(count))
        return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 5\r\n\r\nhello"

    port, _, _ = await hostile(legacy_respond=answer)
    data, _ = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n"
                                      b"GET /api HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resps = parse_responses(data)
    assert [r.status for r in resps] == [200, 200]
    for r in resps:
        assert r.body == b"hello" and r.header("content-length") == "5"
        assert [k for k, _ in r.headers if k.startswith("x-h")] == [f"x-h{i}" for i in range(count)]


async def test_upstream_dying_mid_body_truncates_client_response(hostile):
    def answer(seen: SeenRaw) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"x" * 100, b"<ABORT>"]

    port, _, _ = await hostile(legacy_respond=answer)
    data, closed = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = _only(data)
    assert closed
    assert resp.status == 200 and not resp.complete and len(resp.body) == 100


async def test_chunked_upstream_dying_mid_body_has_no_final_chunk(hostile):
    def answer(seen: SeenRaw) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n",
                b"<ABORT>"]

    port, _, _ = await hostile(legacy_respond=answer)
    data, closed = await raw_request(port, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = _only(data)
    assert closed and not resp.complete and resp.body == b"hello"
    assert not data.endswith(b"0\r\n\r\n")
