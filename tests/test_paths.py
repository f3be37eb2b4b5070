"""One canonical path decides routing and is what the upstream receives (or the request is 400).

The end-to-end table is the documented behaviour (SECURITY.md): for each raw request target, the
route chosen and the exact path the upstream got.
"""

from __future__ import annotations

import json

import pytest

from proxy.config.paths import BadPath, canonical_path
from tests.rawhttp import RawUpstream, parse_responses, raw_request
from tests.support import free_port, routes_yaml

UNIT = [
    (b"/", b"/"),
    (b"/a/b", b"/a/b"),
    (b"/a/../b", b"/b"),
    (b"/a/./b", b"/a/b"),
    (b"/a//b", b"/a/b"),
    (b"//a", b"/a"),
    (b"/a/b/", b"/a/b/"),
    (b"/a/b/..", b"/a/"),
    (b"/a/%2e%2e/b", b"/b"),
    (b"/a/%2E%2E/b", b"/b"),
    (b"/a/.%2e/b", b"/b"),
    (b"/%7Euser", b"/~user"),
    (b"/%41%42", b"/AB"),
    (b"/a%20b", b"/a%20b"),
    (b"/a%3bb", b"/a%3Bb"),
    (b"/a;b", b"/a;b"),
    (b"/a/b;c=../d", b"/a/b;c=../d"),
    (b"/A/B", b"/A/B"),
    (b"/%252e%252e/", b"/%252e%252e/"),
]
BAD = [b"", b"a", b"/../x", b"/a/../../x", b"/a%2Fb", b"/a%2fb", b"/a%5Cb", b"/a%00",
       b"/a\\b", b"/a\x00", b"/a b", b"/a\tb", b"/a%zz", b"/a%2", b"/a\x7f"]


@pytest.mark.parametrize("raw,canon", UNIT)
def test_canonical_path(raw, canon):
    assert canonical_path(raw) == canon
    assert canonical_path(canon) == canon  # idempotent


@pytest.mark.parametrize("raw", BAD)
def test_bad_paths_refused(raw):
    with pytest.raises(BadPath):
        canonical_path(raw)


def test_fast_path_returns_input_object():
    raw = b"/api/v1/balance/7"
    assert canonical_path(raw) is raw


def test_data_plane_plain_path_agrees_with_suspect():
    """The compiled data plane's byte loop (exchange._plain_path) accepts exactly the paths
    proxy.config.paths.suspect finds nothing in: every path of the tables above, and every
    short path over the bytes that matter."""
    import itertools

    from proxy.config.paths import suspect
    from proxy.dataplane.exchange import _plain_path

    alphabet = b"/.%\\a~\x00\x1f \x7f\x80"
    paths = [raw for raw, _ in UNIT] + [canon for _, canon in UNIT] + [b for b in BAD if b]
    for n in range(5):
        paths += [b"/" + bytes(t) for t in itertools.product(alphabet, repeat=n)]
    for path in paths:
        if path[:1] == b"/":
            assert _plain_path(path) == (suspect(path) is None), path


# (raw target, expected status, served_by, path the upstream received)
TABLE = [
    (b"/public/x", 200, "new", b"/public/x"),
    (b"/public", 200, "new", b"/public"),
    (b"/publicx", 200, "mono", b"/publicx"),
    (b"/PUBLIC/x", 200, "mono", b"/PUBLIC/x"),
    (b"/public/../admin", 200, "mono", b"/admin"),
    (b"/public/%2e%2e/admin", 200, "mono", b"/admin"),
    (b"/public/%2E%2E/admin/users", 200, "mono", b"/admin/users"),
    (b"/admin/../public/x", 200, "new", b"/public/x"),
    (b"//public//x", 200, "new", b"/public/x"),
    (b"/public/./x", 200, "new", b"/public/x"),
    (b"/public;x", 200, "mono", b"/public;x"),
    (b"/public/x;y=1", 200, "new", b"/public/x;y=1"),
    (b"/public/%7Ebob", 200, "new", b"/public/~bob"),
    (b"/public/%252e%252e/admin", 200, "new", b"/public/%252e%252e/admin"),
    (b"/public/x?next=/../admin", 200, "new", b"/public/x?next=/../admin"),
    (b"/%70ublic/x", 200, "new", b"/public/x"),
    (b"/public%2F..%2Fadmin", 400, None, None),
    (b"/public/%00", 400, None, None),
    (b"/public\\..\\admin", 400, None, None),
    (b"/public/%5C..%5Cadmin", 400, None, None),
    (b"/../admin", 400, None, None),
    (b"/public/../../admin", 400, None, None),
    (b"/public/%zz", 400, None, None),
]


async def test_path_table_end_to_end(inproc_proxy):
    mono = await RawUpstream(respond=lambda s: _named(s, b"mono")).start()
    new = await RawUpstream(respond=lambda s: _named(s, b"new")).start()
    proxy = await inproc_proxy(routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          mono: {{url: "http://127.0.0.1:{mono}"}}
          new: {{url: "http://127.0.0.1:{new}"}}
        default_upstream: mono
        routes:
          - name: public
            match: {{path_prefix: /public}}
            legacy: mono
            target: new
            weight: 100
            shadow: false
        """, port=free_port(), admin=free_port(), mono=mono.port, new=new.port))
    port = proxy.runtime.config.listen.port
    try:
        for raw, status, served_by, received in TABLE:
            before = len(mono.seen) + len(new.seen)
            data, _ = await raw_request(port, b"GET " + raw + b" HTTP/1.1\r\nHost: a\r\n"
                                              b"Connection: close\r\n\r\n")
            (resp,) = parse_responses(data)
            assert resp.status == status, raw
            if status != 200:
                assert json.loads(resp.body)["error"] == "bad_path", raw
                assert len(mono.seen) + len(new.seen) == before, raw
                continue
            assert json.loads(resp.body)["served_by"] == served_by, raw
            up = mono if served_by == "mono" else new
            assert up.seen[-1].target == received, raw
    finally:
        await mono.stop()
        await new.stop()


def _named(seen, name: bytes) -> bytes:
    body = json.dumps({"served_by": name.decode(), "path": seen.target.decode()}).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))
