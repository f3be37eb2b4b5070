"""The response's status line is cached per status code, but not a long reason phrase: an
upstream's 60 KB reasons, one per code, would stay in memory for the process's life. The data
plane runs in memory (bench.hotpath's plane: the real DataPlane, table and pools)."""

from __future__ import annotations

from bench import servers
from bench.hotpath import build


def test_a_long_reason_phrase_is_forwarded_and_not_kept() -> None:
    """A hostile upstream's long reason phrases (one per status code) are not cached for the
    process's life; the client still gets each one as sent."""
    from proxy.dataplane import exchange

    loop, plane = build(10, access_log=False)
    loop(1)
    conn = next(iter(plane.connections))
    path = servers.bench_paths(10)[0].encode()
    cache = getattr(exchange, "_STATUS_LINES", None)  # a C global when compiled
    for status, reason in ((298, b"R" * 5000), (299, b"Fine")):
        conn.transport.out.clear()
        conn.data_received(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
        conn.cur.up.data_received(b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nok"
                                  % (status, reason))
        assert b"".join(conn.transport.out).startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))
    if cache is not None:
        assert cache[298] is None
        assert cache[299] == (b"Fine", b"HTTP/1.1 299 Fine\r\n")
