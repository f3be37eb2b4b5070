"""The data plane's clock (DataPlane.clock): the time stamps of one read share one clock read,
taken when the read began; outside a read it is the clock itself. A stale read time would make
every latency the gate judges wrong, so each way out of a read (served, refused, a broken
upstream response) must leave no read time behind."""

from __future__ import annotations

import time

from bench import servers
from bench.hotpath import RESPONSE, build


def _plane_and_request():
    _, plane = build(10, access_log=False)
    conn = next(iter(plane.connections))
    path = servers.bench_paths(10)[0].encode()
    request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n" % path
    return plane, conn, request


def _busy_upstream(plane):
    return next(up for pool in plane.pools.values() for up in pool.live if up.sink is not None)


def test_a_request_answered_after_a_pause_is_recorded_with_the_pause() -> None:
    plane, conn, request = _plane_and_request()
    plane.recorder.take()
    conn.data_received(request)
    assert plane.tick == 0.0
    time.sleep(0.05)
    _busy_upstream(plane).data_received(RESPONSE)
    assert plane.tick == 0.0
    delta = plane.recorder.take()
    assert sum(delta.requests.values()) == 1
    ((_, total),) = delta.latency.values()
    assert 0.05 <= total < 5.0


def test_outside_a_read_the_clock_is_read_afresh() -> None:
    plane, conn, request = _plane_and_request()
    before = time.monotonic()
    got = plane.clock()
    assert before <= got <= time.monotonic()
    conn.data_received(request)  # a read: its time must not outlive it
    time.sleep(0.02)
    before = time.monotonic()
    assert before <= plane.clock() <= time.monotonic()


def test_a_refused_request_leaves_no_read_time_behind() -> None:
    plane, conn, _ = _plane_and_request()
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # repeated Host: 400
    assert conn.transport.out and b" 400 " in b"".join(conn.transport.out)
    assert plane.tick == 0.0
    before = time.monotonic()
    assert plane.clock() >= before


def test_a_broken_upstream_response_leaves_no_read_time_behind() -> None:
    plane, conn, request = _plane_and_request()
    conn.data_received(request)
    up = _busy_upstream(plane)
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert up.transport.closing  # refused: the connection is dropped
    assert plane.tick == 0.0
