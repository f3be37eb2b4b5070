"""bench.hotpath's in-memory loop (what bench.icount counts) sends what it says it sends."""

from __future__ import annotations

import pytest

from bench.hotpath import BROWSER_HEADERS, build


@pytest.mark.parametrize("browser", [False, True], ids=["host_only", "browser"])
def test_the_loop_forwards_its_request_heads_and_answers_each(browser: bool) -> None:
    loop, plane = build(10, access_log=True, browser=browser)
    loop(3)  # the first request's bytes are cleared (the 200-request flush); two remain
    client_out = b"".join(next(iter(plane.connections)).transport.out)
    upstream_out = b"".join(b"".join(up.transport.out) for pool in plane.pools.values()
                            for up in pool.live)
    assert client_out.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert upstream_out.count(b"GET /svc/") == 2
    names = [line.split(b":", 1)[0].lower() for line in BROWSER_HEADERS.split(b"\r\n") if line]
    # hop-by-hop Connection is dropped; every other header of the browser's goes upstream
    forwarded = [n for n in names if n != b"connection"] if browser else [b"host"]
    head = upstream_out.split(b"\r\n\r\n", 1)[0].lower()
    for name in forwarded:
        assert b"\r\n" + name + b": " in head, name
    assert (b"\r\nuser-agent: " in head) is browser
