"""A request strangler refuses itself is logged and keeps the client's X-Request-Id.

Found by a contract audit: "Access lines (stdout, one per request ...)", backend `proxy` for
an answer strangler made itself, errors always logged. The proxy's own refusals (400, 408, 413,
414, 431, 505, ...) were counted in `strangler_requests_total{backend="proxy"}` but had no
access line; and a refused request got a new id in its answer and body, even when the client
had sent a valid `X-Request-Id` (the contract: "kept (or generated), passed upstream and
returned"). Now every refusal has its line, with the id the client got: the client's own when
the head got that far.
"""

from __future__ import annotations

import json

import pytest

from tests.probe import probe_config
from tests.rawhttp import RawUpstream, parse_responses, raw_request
from tests.support import wait_for

CASES = {
    "body_too_large": (b"POST /api/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: c-413\r\n"
                       b"User-Agent: probe/1\r\nContent-Length: 5000\r\n\r\n", 413, "c-413",
                       "POST", "/api/x"),
    "bad_path": (b"GET /api/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: c-400\r\n"
                 b"\r\n", 400, "c-400", "GET", "/api/%2e%2e/%2e%2e/x"),
    "bad_host": (b"GET /api/x?q=1 HTTP/1.1\r\nHost: a b\r\nX-Request-Id: c-host\r\n\r\n", 400,
                 "c-host", "GET", "/api/x"),
    "http_version": (b"GET /api/x HTTP/1.2\r\nHost: shop\r\n\r\n", 505, None, "GET", "/api/x"),
    "too_large": (b"GET /api/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: c-431\r\nX-Big: "
                  + b"b" * 60_000 + b"\r\n\r\n", 431, "c-431", "GET", "/api/x"),
    "uri_too_long": (b"GET /api/" + b"u" * 9_000 + b"?secret=s HTTP/1.1\r\nHost: shop\r\n\r\n",
                     414, None, "GET", "/api/" + "u" * 251),  # the path cut at 256 bytes
    "bad_id_replaced": (b"POST /api/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: no spaces\r\n"
                        b"Content-Length: 5000\r\n\r\n", 413, None, "POST", "/api/x"),
}


def _access_lines(p) -> list[dict]:
    out = []
    for line in p.stdout_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "access":
                out.append(entry)
    return out


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_a_refusal_has_its_access_line_and_the_clients_id(proxy_process, case):
    raw, status, client_id, method, path = CASES[case]
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port, limits="max_body: 1KiB"))
        data, closed = await raw_request(p.port, raw, timeout=5)
        (resp,) = parse_responses(data)
        assert resp.status == status and closed, data[:300]
        rid = resp.header("x-request-id")
        assert json.loads(resp.body)["request_id"] == rid
        if client_id is not None:
            assert rid == client_id
        else:
            assert rid and rid != "no spaces" and len(rid) == 24
        await wait_for(lambda: any(e["request_id"] == rid for e in _access_lines(p)),
                       timeout=10)
        (entry,) = [e for e in _access_lines(p) if e["request_id"] == rid]
        assert (entry["status"], entry["backend"], entry["route"]) == (status, "proxy",
                                                                      "_default")
        assert (entry["method"], entry["path"]) == (method, path)
        assert entry["bytes_out"] == 0 and entry["upstream_ms"] is None
        assert entry["client"] == "127.0.0.1"
        if case == "body_too_large":
            assert entry["user_agent"] == "probe/1"
        assert up.seen == []
    finally:
        await up.stop()


async def test_a_pipelined_refusal_keeps_the_clients_id_in_its_turn(proxy_process):
    up = await RawUpstream().start()
    try:
        p = await proxy_process(probe_config(up.port, up.port))
        data, closed = await raw_request(
            p.port, b"GET /api/a HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p1\r\n\r\n"
                    b"GET /api/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p2\r\n\r\n")
        resps = parse_responses(data)
        assert [r.status for r in resps] == [200, 400] and closed
        assert [r.header("x-request-id") for r in resps] == ["p1", "p2"]
        await wait_for(lambda: {e["request_id"] for e in _access_lines(p)} >= {"p1", "p2"},
                       timeout=10)
    finally:
        await up.stop()
