"""What an access line says about a request (docs/contract.md "Logs"), and who wrote every line:
a real `strangler serve`, real upstreams, real requests."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from tests.support import free_port, routes_yaml

pytestmark = pytest.mark.slow

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      gone: {{url: "http://127.0.0.1:{dead}"}}
    default_upstream: monolith
    overrides:  # its secret env is unset: every data plane warns (a line from each worker)
      trusted: {{secret_header: X-QA-Secret, secret_env: STRANGLER_TEST_UNSET_SECRET}}
    routes:
      - name: broken
        match: {{path_prefix: /broken}}
        legacy: gone
        target: monolith
        weight: 0
        shadow: false
"""
BODY = b'{"balance": 100, "currency": "EUR"}'


async def _slow_answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def _records(path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@pytest.mark.parametrize("workers", [1, 2])
async def test_access_line_fields_and_every_line_names_logger_and_process(
        upstreams, proxy_process, workers):
    mono = await upstreams("monolith", handler=_slow_answer, delay=0.05)
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       dead=free_port())
    proxy = await proxy_process(text, args=("--workers", str(workers)))
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as s:
        async with s.get(proxy.url + "/api/v1/balance/7?x=1&y=%20z",
                         headers={"User-Agent": "probe/1.0 (tests)"}) as r:
            assert await r.read() == BODY
            query_id = r.headers["X-Request-Id"]
        async with s.post(proxy.url + "/api/v1/orders", data=b"o" * 1000) as r:
            await r.read()
            post_id = r.headers["X-Request-Id"]
        async with s.get(proxy.url + "/broken/1") as r:
            assert r.status == 502
            broken_id = r.headers["X-Request-Id"]
    assert await proxy.stop() == 0

    access = {r["request_id"]: r for r in _records(proxy.stdout_path)}
    got = access[query_id]
    assert got["path"] == "/api/v1/balance/7" and got["query"] == "x=1&y=%20z"
    assert got["client"] == "127.0.0.1"
    assert got["user_agent"] == "probe/1.0 (tests)"
    assert got["bytes_in"] == 0 and got["bytes_out"] == len(BODY)
    assert 50 <= got["upstream_ms"] <= got["duration_ms"]  # the upstream took its 50 ms
    posted = access[post_id]
    assert posted["bytes_in"] == 1000 and posted["query"] is None
    assert posted["user_agent"] is None
    failed = access[broken_id]
    assert failed["status"] == 502 and failed["upstream_ms"] is None
    assert failed["bytes_out"] == 0  # an answer strangler made itself

    planes = {"main"} if workers == 1 else {"worker-0", "worker-1"}
    assert {r["process"] for r in access.values()} <= planes
    assert {r["logger"] for r in access.values()} == {"strangler.access"}
    everything = _records(proxy.stdout_path) + _records(proxy.stderr_path)
    for rec in everything:
        assert {"logger", "process"} <= rec.keys(), rec
    serving = [r for r in everything if r["event"] == "serving"]
    assert [(r["logger"], r["process"]) for r in serving] == [("strangler.app", "main")]
    warned = [r for r in _records(proxy.stderr_path)
              if r["event"].startswith("overrides.secret_env is not set")]
    assert sorted(r["process"] for r in warned) == sorted(planes)  # each plane says who it is
    assert {r["logger"] for r in warned} == {"strangler.dataplane"}


async def test_paths_that_need_json_escaping_and_the_timestamp_of_the_end(upstreams,
                                                                          proxy_process):
    """Lines are rendered from the finished exchange (issue 29): a path with a quote or a
    percent-escape is escaped as JSON, and the timestamp is the wall-clock time the request
    ended, though the data plane only reads its monotonic clock per request."""
    import datetime as dt

    from tests.rawhttp import parse_responses, raw_request

    mono = await upstreams("monolith", handler=_slow_answer)
    port = free_port()
    text = routes_yaml(ROUTES, port=port, admin=free_port(), mono=mono.port, dead=free_port())
    proxy = await proxy_process(text)
    paths = [b'/q/a"b', b"/q/caf%c3%a9", b"/q/%7e/x", b"/q/plain/1"]
    before = dt.datetime.now(dt.UTC)
    ids = []
    for path in paths:
        data, _ = await raw_request(port, b"GET %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: id-%d\r\n"
                                    b"Connection: close\r\n\r\n" % (path, len(ids)))
        (resp,) = parse_responses(data)
        assert resp.status == 200
        ids.append(f"id-{len(ids)}")
    after = dt.datetime.now(dt.UTC)
    assert await proxy.stop() == 0
    access = {r["request_id"]: r for r in _records(proxy.stdout_path)}
    assert [access[i]["path"] for i in ids] == ['/q/a"b', "/q/caf%C3%A9", "/q/~/x", "/q/plain/1"]
    for i in ids:
        stamp = dt.datetime.strptime(access[i]["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC)
        assert before - dt.timedelta(seconds=0.01) <= stamp <= after, (stamp, before, after)
        assert access[i]["status"] == 200 and access[i]["query"] is None
