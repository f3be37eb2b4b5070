"""Issue 22.1: a request is sent again only when that cannot repeat a side effect.

The probe: warm the pool with a GET, then `POST /charge` with `Content-Length: 0`; the upstream
reads it and closes without answering. The proxy re-sent it on a fresh connection, so the
upstream executed the charge twice. Now a non-idempotent request (any method outside RFC 9110's
idempotent set GET, HEAD, OPTIONS, TRACE, PUT, DELETE) is never re-sent once a byte of it was
written upstream: not on a fresh connection after a stale pooled one, not to legacy as the
fallback. A route may opt in (`retry_with_idempotency_key: true`) to treat a request carrying an
`Idempotency-Key` header as re-sendable.

Everything runs against `strangler serve` and raw upstreams that count what they executed.
"""

from __future__ import annotations

import json

import pytest

from tests.probe import metric, probe_config, scrape
from tests.rawhttp import RawUpstream, SeenRaw, ok_json, parse_responses, raw_request

WARM = b"GET /api/warm HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"


def _request(method: bytes, path: bytes = b"/api/charge", body: bytes = b"",
             headers: bytes = b"") -> bytes:
    return (b"%s %s HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s"
            % (method, path, len(body), headers, body))


class Executions:
    """A raw upstream's answers: the first request to `drop_path` of each method is read and
    the connection closed without an answer; everything else is a 200. Counts what arrived."""

    def __init__(self, drop_path: bytes = b"/api/charge", drop: int = 1) -> None:
        self.drop_path = drop_path
        self.drop = drop
        self.by_method: dict[bytes, int] = {}

    def __call__(self, seen: SeenRaw) -> bytes:
        if seen.target != self.drop_path:
            return ok_json(seen)
        n = self.by_method[seen.method] = self.by_method.get(seen.method, 0) + 1
        return b"<CLOSE>" if n <= self.drop else ok_json(seen, b"upstream")


async def _serve(proxy_process, legacy: RawUpstream, target: RawUpstream, **kw):
    return await proxy_process(probe_config(legacy.port, target.port, **kw))


async def _one(port: int, raw: bytes):
    data, _ = await raw_request(port, raw, timeout=5)
    (resp,) = parse_responses(data)
    return resp


@pytest.fixture
async def raw_upstreams():
    made: list[RawUpstream] = []

    async def make(respond=ok_json) -> RawUpstream:
        up = await RawUpstream(respond=respond).start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


@pytest.mark.parametrize("body", [b"", b'{"amount": 10}'], ids=["content_length_0", "json_body"])
async def test_post_on_a_stale_pooled_connection_is_executed_once(proxy_process, raw_upstreams,
                                                                    body):
    legacy_answers = Executions()
    legacy = await raw_upstreams(legacy_answers)
    target = await raw_upstreams()
    p = await _serve(proxy_process, legacy, target)
    assert (await _one(p.port, WARM)).status == 200  # the pool now holds a connection
    resp = await _one(p.port, _request(b"POST", body=body))
    assert legacy_answers.by_method == {b"POST": 1}  # executed once, never re-sent
    assert resp.status == 502 and json.loads(resp.body)["error"] == "upstream_unavailable"
    assert [s.method for s in target.seen] == []  # and never sent to the other side


@pytest.mark.parametrize("method", [b"PATCH", b"LOCK"])
async def test_other_non_idempotent_methods_are_executed_once(proxy_process, raw_upstreams,
                                                               method):
    legacy_answers = Executions()
    legacy = await raw_upstreams(legacy_answers)
    p = await _serve(proxy_process, legacy, await raw_upstreams())
    assert (await _one(p.port, WARM)).status == 200
    assert (await _one(p.port, _request(method, body=b"x"))).status == 502
    assert legacy_answers.by_method == {method: 1}


@pytest.mark.parametrize("method", [b"DELETE", b"PUT", b"GET", b"OPTIONS", b"TRACE"])
async def test_idempotent_request_on_a_stale_connection_is_sent_again(proxy_process,
                                                                      raw_upstreams, method):
    """RFC 9110 §9.2.2: repeating these has the effect of sending them once (what nginx does
    for DELETE)."""
    legacy_answers = Executions()
    legacy = await raw_upstreams(legacy_answers)
    p = await _serve(proxy_process, legacy, await raw_upstreams())
    assert (await _one(p.port, WARM)).status == 200
    body = b"v=1" if method == b"PUT" else b""
    resp = await _one(p.port, _request(method, body=body))
    assert resp.status == 200, resp
    assert legacy_answers.by_method == {method: 2}
    if method == b"PUT":
        assert [s.body for s in legacy.seen if s.method == b"PUT"] == [b"v=1", b"v=1"]


async def test_idempotency_key_makes_a_post_resendable_only_where_the_route_opts_in(
        proxy_process, raw_upstreams):
    keyed = _request(b"POST", body=b"{}", headers=b"Idempotency-Key: 8e03978e-40d5\r\n")
    answers = Executions()
    legacy = await raw_upstreams(answers)
    p = await _serve(proxy_process, legacy, await raw_upstreams())
    assert (await _one(p.port, WARM)).status == 200
    assert (await _one(p.port, keyed)).status == 502
    assert answers.by_method == {b"POST": 1}  # the header alone changes nothing

    answers = Executions()
    legacy = await raw_upstreams(answers)
    p = await _serve(proxy_process, legacy, await raw_upstreams(),
                     route="retry_with_idempotency_key: true")
    assert (await _one(p.port, WARM)).status == 200
    assert (await _one(p.port, keyed)).status == 200
    assert answers.by_method == {b"POST": 2}
    assert all(s.header("idempotency-key") == b"8e03978e-40d5" for s in legacy.seen
               if s.method == b"POST")
    # Opted in, but without the header: once.
    answers.by_method.clear()
    answers.drop_path = b"/api/charge2"
    assert (await _one(p.port, WARM)).status == 200
    assert (await _one(p.port, _request(b"POST", b"/api/charge2", b"{}"))).status == 502
    assert answers.by_method == {b"POST": 1}


def _target_fails(seen: SeenRaw) -> bytes:
    body = b'{"error":"target down"}'
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))


@pytest.mark.parametrize("method,falls_back", [
    (b"GET", True), (b"PUT", True), (b"DELETE", True), (b"POST", False), (b"PATCH", False)])
async def test_fallback_to_legacy_follows_the_same_rule(proxy_process, raw_upstreams, method,
                                                        falls_back):
    legacy = await raw_upstreams(lambda seen: ok_json(seen, b"legacy"))
    target = await raw_upstreams(_target_fails)
    p = await _serve(proxy_process, legacy, target, weight=100)
    resp = await _one(p.port, _request(method, b"/api/orders/7", b"v=2"))
    executed_on_legacy = [s.method for s in legacy.seen]
    if falls_back:
        assert resp.status == 200 and json.loads(resp.body)["served_by"] == "legacy"
        assert executed_on_legacy == [method]
        assert legacy.seen[0].body == b"v=2"
    else:
        assert resp.status == 503  # the target's own answer, passed through
        assert executed_on_legacy == []
    assert [s.method for s in target.seen] == [method]
    text = await scrape(p.admin)
    assert metric(text, "strangler_requests_total", route="api", backend="target",
                  code="503") == 1


async def test_keyed_post_falls_back_where_the_route_opts_in(proxy_process, raw_upstreams):
    legacy = await raw_upstreams(lambda seen: ok_json(seen, b"legacy"))
    target = await raw_upstreams(_target_fails)
    p = await _serve(proxy_process, legacy, target, weight=100,
                     route="retry_with_idempotency_key: true")
    resp = await _one(p.port, _request(b"POST", b"/api/pay", b"{}",
                                       b"Idempotency-Key: k-1\r\n"))
    assert resp.status == 200 and json.loads(resp.body)["served_by"] == "legacy"
    resp = await _one(p.port, _request(b"POST", b"/api/pay", b"{}"))
    assert resp.status == 503
    assert [s.method for s in legacy.seen] == [b"POST"]


async def test_post_falls_back_when_nothing_of_it_reached_the_target(proxy_process, raw_upstreams):
    """The target refuses the connection: no byte was written, so even a POST may go to legacy
    (nginx's proxy_next_upstream does the same), its body streamed there whole."""
    from tests.support import free_port

    legacy = await raw_upstreams(lambda seen: ok_json(seen, b"legacy"))
    p = await proxy_process(probe_config(legacy.port, free_port(), weight=100))
    resp = await _one(p.port, _request(b"POST", b"/api/pay", b'{"amount": 10}'))
    assert resp.status == 200 and json.loads(resp.body)["served_by"] == "legacy"
    assert [(s.method, s.body) for s in legacy.seen] == [(b"POST", b'{"amount": 10}')]
    text = await scrape(p.admin)
    assert metric(text, "strangler_requests_total", route="api", backend="target",
                  code="502") == 1
    assert metric(text, "strangler_upstream_errors_total", upstream="target", kind="connect") == 1
