"""Issue 22.9: Host is an RFC 9110 uri-host[:port] or the request is refused; a repeated
X-Forwarded-For from a trusted peer is one list; HTTP/0.9 is answered 505 (as SECURITY.md says).

The probe: `Host: a b`, `Host: evil.example/../x` and `Host: a..b` were forwarded (and copied
into X-Forwarded-Host; nginx: 400); two X-Forwarded-For headers from a trusted peer kept only
the last.
"""

from __future__ import annotations

import json

import pytest

from tests.probe import probe_config
from tests.rawhttp import RawUpstream, parse_responses, raw_request
from tests.support import free_port, routes_yaml, wait_for

BAD_HOSTS = [b"a b", b"evil.example/../x", b"a..b", b".a", b"a\\b", b"user@a", b"a:b",
             b"a:123456", b"a:65536", b"[::1", b"[::1]x", b"a?b", b"a#b", b"%zz", b"a:80:80"]
GOOD_HOSTS = [b"shop", b"shop.example.com:8080", b"[::1]:8080", b"127.0.0.1", b"a_b.example",
              b"xn--bcher-kva.example", b"shop.example.", b"SHOP.Example", b"a:", b"%41b"]


@pytest.fixture
async def raw_proxy(proxy_process):
    ups: list[RawUpstream] = []

    async def make(top: str = "") -> tuple[int, RawUpstream]:
        up = await RawUpstream().start()
        ups.append(up)
        p = await proxy_process(probe_config(up.port, up.port, top=top))
        return p.port, up

    yield make
    for up in ups:
        await up.stop()


async def test_hosts_that_are_not_uri_host_port_are_refused(raw_proxy):
    port, up = await raw_proxy()
    for host in BAD_HOSTS:
        data, closed = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        (resp,) = parse_responses(data)
        assert resp.status == 400 and closed, host
        assert json.loads(resp.body)["error"] == "bad_host"
        assert host not in resp.body
    assert up.raw == b""  # nothing reached the upstream


async def test_valid_hosts_are_forwarded_and_copied_to_x_forwarded_host(raw_proxy):
    port, up = await raw_proxy()
    for host in GOOD_HOSTS:
        data, _ = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: %s\r\n"
                                          b"Connection: close\r\n\r\n" % host)
        assert [r.status for r in parse_responses(data)] == [200], host
        assert up.seen[-1].header("host") == host
        assert up.seen[-1].header("x-forwarded-host") == host


async def test_repeated_x_forwarded_for_from_a_trusted_peer_is_one_list(raw_proxy):
    port, up = await raw_proxy(top="trusted_proxies: [127.0.0.0/8]\n")
    data, _ = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: shop\r\n"
                                      b"X-Forwarded-For: 203.0.113.7\r\n"
                                      b"X-Forwarded-For: 198.51.100.2, 10.0.0.3\r\n"
                                      b"Connection: close\r\n\r\n")
    assert [r.status for r in parse_responses(data)] == [200]
    assert (up.seen[-1].header("x-forwarded-for")
            == b"203.0.113.7, 198.51.100.2, 10.0.0.3, 127.0.0.1")
    assert [n for n in up.seen[-1].names() if n == b"x-forwarded-for"] == [b"x-forwarded-for"]


async def test_untrusted_repeated_x_forwarded_for_is_replaced(raw_proxy):
    port, up = await raw_proxy()
    data, _ = await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: shop\r\n"
                                      b"X-Forwarded-For: 203.0.113.7\r\n"
                                      b"X-Forwarded-For: 198.51.100.2\r\nConnection: close\r\n\r\n")
    assert [r.status for r in parse_responses(data)] == [200]
    assert up.seen[-1].header("x-forwarded-for") == b"127.0.0.1"


async def test_http09_request_line_is_505(raw_proxy):
    port, up = await raw_proxy()
    data, closed = await raw_request(port, b"GET /api\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 505 and closed
    assert up.raw == b""


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/3.0", b"HTTP/9.9", b"HTTP/2"])
async def test_any_other_http_version_is_505(raw_proxy, version):
    """llhttp itself refuses a version it does not know (not 0.9, 1.x or 2.0): that was
    answered 400 `malformed request: Invalid HTTP version`; the contract says 505."""
    port, up = await raw_proxy()
    data, closed = await raw_request(port, b"GET /api/x %s\r\nHost: shop\r\n\r\n" % version)
    (resp,) = parse_responses(data)
    assert resp.status == 505 and closed, data
    assert json.loads(resp.body)["error"] == "http_version"
    assert up.raw == b""


@pytest.mark.parametrize("pause", [0.0, 0.2], ids=["pipelined", "one_read_each"])
async def test_a_host_valid_earlier_on_the_connection_does_not_pass_a_bad_one(raw_proxy, pause):
    """The data plane remembers the last valid Host of a connection (one comparison instead of
    a cache lookup per request): a different Host on the same connection is checked again."""
    port, up = await raw_proxy()
    get = b"GET /api/x HTTP/1.1\r\nHost: %s\r\n\r\n"
    pieces = [get % b"shop.example", get % b"shop.example", get % b"other.example",
              get % b"a..b", get % b"shop.example"]
    data, closed = await raw_request(port, pieces, pause=pause)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 200, 200, 400] and closed
    assert json.loads(responses[-1].body)["error"] == "bad_host"
    assert [s.header("host") for s in up.seen] == [b"shop.example", b"shop.example",
                                                    b"other.example"]


async def test_a_mirrored_request_carries_the_clients_host(proxy_process):
    """The mirror sends the Host the client sent (the exchange's `req_host`), as the primary:
    also when it writes the head again (a GET with a body: not the primary's bytes)."""
    legacy, target = await RawUpstream().start(), await RawUpstream().start()
    try:
        config = routes_yaml("""
            version: 1
            listen: 127.0.0.1:{port}
            admin: {{listen: "127.0.0.1:{admin}"}}
            state_dir: state
            upstreams:
              legacy: {{url: "http://127.0.0.1:{legacy}"}}
              target: {{url: "http://127.0.0.1:{target}"}}
            default_upstream: legacy
            shadow_budget: {{max_rate: unlimited}}
            routes:
              - name: api
                match: {{path_prefix: /api}}
                legacy: legacy
                target: target
                weight: 0
                shadow: {{sample: 1.0, max_rate: unlimited}}
            """, port=free_port(), admin=free_port(), legacy=legacy.port, target=target.port)
        p = await proxy_process(config)
        for host in (b"shop.example:8080", b"other.example"):
            data, _ = await raw_request(p.port, b"GET /api/x HTTP/1.1\r\nHost: %s\r\n"
                                                b"Content-Length: 2\r\n"
                                                b"Connection: close\r\n\r\n{}" % host)
            assert [r.status for r in parse_responses(data)] == [200]
            await wait_for(lambda h=host: any(s.header("host") == h for s in target.seen))
        assert [s.header("host") for s in legacy.seen] == [b"shop.example:8080",
                                                           b"other.example"]
        assert [s.header("host") for s in target.seen] == [b"shop.example:8080",
                                                           b"other.example"]
    finally:
        await legacy.stop()
        await target.stop()
