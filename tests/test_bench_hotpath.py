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


def test_icount_tracing_traces_and_encodes_what_the_loop_serves(monkeypatch) -> None:
    """`bench.icount --tracing RATIO` counts tracing's whole cost: every request of the loop
    sampled at 1.0 sends a traceparent upstream, and its spans are OTLP-encoded, not kept."""
    from bench import icount
    from proxy.dataplane import otlp

    encoded: list[int] = []
    real = otlp.encode
    monkeypatch.setattr(otlp, "encode", lambda spans, service: encoded.append(len(spans))
                        or real(spans, service))
    loop, plane = build(10, access_log=True)
    run = icount.traced(loop, plane, 1.0)
    run(3)
    assert plane.tracer is not None and plane.trace_ratio == 1.0
    assert encoded == [6]  # a SERVER and a CLIENT span for each of the 3 requests
    upstream_out = b"".join(b"".join(up.transport.out) for pool in plane.pools.values()
                            for up in pool.live)
    assert upstream_out.count(b"\r\ntraceparent: 00-") == 2  # the first was cleared (flush)


async def test_icount_shadow_mirrors_each_request_and_counts_it_a_match() -> None:
    """`bench.icount --shadow` counts a mirror's whole path: every request of the loop is
    written to the shadow target's pipelined connection, its answer read and found
    byte-identical (counted for the gate and for the diff store), nothing left in flight."""
    loop, plane = build(10, access_log=True, shadow=True)
    mirror = plane.shadow
    (pipe,) = [p for name, p in mirror.pipes.items() if name == "shadow-target"]
    (target,) = pipe.conns
    written: list[bytes] = []
    write = target.transport.write
    target.transport.write = lambda data: written.append(data) or write(data)
    loop(5)
    assert b"".join(written).count(b"GET /svc/") == 5
    assert b"".join(written).count(b"\r\nx-strangler-shadow: 1\r\n") == 5
    assert sum(n for (_, _, result), n in mirror.link.counts.items() if result == "match") == 5
    delta = plane.recorder.take()  # the loop's flush took the first request's counts
    assert sum(delta.shadow.values()) == 4 and set(delta.shadow) == {("r00008", 0, "match")}
    assert sum(delta.paired[("r00008", 0)][0].values()) == 4
    assert mirror.running == 0 and not mirror.in_flight and not target.waiting
