"""Logs of a real `strangler serve`: every line JSON (structlog), access lines that say which
request went where, a console format for humans, sampling that keeps errors, and never a token."""

from __future__ import annotations

import io
import json
import logging
import signal
import warnings

import aiohttp
import pytest
import structlog

from proxy.config import logsetup as logs
from tests.support import free_port, routes_yaml, wait_for

ADMIN_TOKEN = "adm-log-7c1e94b0f2"
READ_TOKEN = "read-log-5d2a8e61c3"
TOKENS = {"STRANGLER_ADMIN_TOKEN": ADMIN_TOKEN, "STRANGLER_READ_TOKEN": READ_TOKEN}

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
      gone: {{url: "http://127.0.0.1:{dead}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
      - name: broken
        match: {{path_prefix: /api/v1/broken}}
        legacy: gone
        target: svc
        weight: 0
        shadow: false
"""


async def start(upstreams, proxy_process, args: tuple[str, ...] = ()):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, dead=free_port())
    return await proxy_process(text, args=args, env=TOKENS)


async def get(s: aiohttp.ClientSession, url: str, **kw) -> tuple[int, str]:
    async with s.get(url, **kw) as r:
        await r.read()
        return r.status, r.headers.get("X-Request-Id", "")


def lines(path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


@pytest.mark.slow
async def test_every_line_is_json_access_lines_identify_requests_and_no_token_leaks(
    upstreams, proxy_process
):
    proxy = await start(upstreams, proxy_process)
    ids: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            status, rid = await get(s, proxy.url + f"/api/v1/balance/{i}",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            ids[rid] = status
        status, rid = await get(s, proxy.url + "/api/v1/balance/x",
                                headers={"X-Request-Id": "client-chosen-id-1"})
        assert rid == "client-chosen-id-1"
        ids[rid] = status
        for _ in range(3):
            status, rid = await get(s, proxy.url + "/api/v1/broken/1")
            assert status == 502
            ids[rid] = status
        # Admin calls with good, read-only and wrong tokens, a change and a refused change.
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert (await get(s, proxy.admin + "/admin/routes", headers=read))[0] == 200
        assert (await get(s, proxy.admin + "/admin/routes",
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}))[0] == 401
        async with s.post(proxy.admin + "/admin/routes/balance/rollback", headers=read,
                          json={"reason": "read token"}) as r:
            assert r.status == 403
        async with s.post(proxy.admin + "/admin/routes/balance/rollback", headers=auth,
                          json={"reason": "log test"}) as r:
            assert r.status == 200
        async with s.post(proxy.admin + "/admin/reload", headers=auth) as r:
            assert r.status == 200
    proxy.signal(signal.SIGHUP)
    await wait_for(lambda: proxy.stderr_path.read_text().count('"config reloaded"') == 2,
                   timeout=10)
    assert await proxy.stop() == 0

    out, err = lines(proxy.stdout_path), lines(proxy.stderr_path)
    assert out and err
    records = []
    for line in out + err:
        rec = json.loads(line)  # every line of both streams is one JSON object
        assert isinstance(rec, dict)
        assert {"event", "level", "timestamp"} <= rec.keys(), rec
        assert rec["timestamp"].endswith("Z")  # ISO 8601, UTC, the same in every line
        records.append(rec)
    events = {r["event"] for r in records}
    assert {"serving", "rollback", "config reloaded", "stopped"} <= events, events

    access = [r for r in records if r["event"] == "access"]
    assert {r["request_id"]: r["status"] for r in access} == ids
    for r in access:
        assert r["route"] in ("balance", "broken")
        assert r["backend"] in ("legacy", "target")
        assert r["method"] == "GET" and r["path"].startswith("/api/v1/")
    assert {r["status"] for r in access if r["route"] == "broken"} == {502}

    everything = proxy.stdout_path.read_text() + proxy.stderr_path.read_text()
    assert ADMIN_TOKEN not in everything
    assert READ_TOKEN not in everything


@pytest.mark.slow
async def test_console_format_is_for_humans(upstreams, proxy_process):
    proxy = await start(upstreams, proxy_process, args=("--log-format", "console"))
    async with aiohttp.ClientSession() as s:
        _, rid = await get(s, proxy.url + "/api/v1/balance/7")
        await get(s, proxy.url + "/api/v1/broken/7")
    assert await proxy.stop() == 0
    out, err = lines(proxy.stdout_path), lines(proxy.stderr_path)
    for line in out + err:
        with pytest.raises(ValueError):
            json.loads(line)
    serving = next(ln for ln in err if "serving" in ln)
    assert "[info" in serving and "workers=1" in serving
    (ok,) = [ln for ln in out if rid in ln]
    assert ok.startswith("200 GET /api/v1/balance/7 -> balance/")
    assert any(ln.startswith("502 GET /api/v1/broken/7 -> broken/legacy") for ln in out)


@pytest.mark.slow
async def test_access_log_sample_keeps_every_error(upstreams, proxy_process):
    proxy = await start(upstreams, proxy_process, args=("--access-log-sample", "0.02"))
    async with aiohttp.ClientSession() as s:
        for i in range(300):
            await get(s, proxy.url + f"/api/v1/balance/{i}")
        for _ in range(12):
            await get(s, proxy.url + "/api/v1/broken/1")
    assert await proxy.stop() == 0
    access = [json.loads(ln) for ln in lines(proxy.stdout_path)]
    errors = [r for r in access if r["status"] >= 500]
    ok = [r for r in access if r["status"] < 500]
    assert len(errors) == 12
    assert len(ok) < 40  # about 6 of 300 expected; 40 or more has probability < 1e-18


def test_stdlib_and_warnings_go_through_the_same_renderer():
    """Library loggers (aiohttp, asyncio, the Unleash SDK) and warnings come out as JSON too."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    try:
        logs.configure("json", "info", buf)
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("asyncio").debug("below the level: dropped")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        structlog.get_logger("strangler.test").info("hello", route="balance")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
        structlog.reset_defaults()
    recs = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert recs[0]["event"] == "Error handling request"
    assert recs[0]["logger"] == "aiohttp.server" and recs[0]["level"] == "error"
    assert "ZeroDivisionError: boom" in recs[0]["exception"]
    assert "deprecated thing" in recs[1]["event"] and recs[1]["level"] == "warning"
    assert recs[2] == {**recs[2], "event": "hello", "route": "balance", "level": "info"}
    assert len(recs) == 3


def test_a_child_is_named_after_its_parent_and_every_line_names_its_logger(monkeypatch):
    """The comparer inherits its data plane's name (STRANGLER_PROCESS) and adds its role."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    monkeypatch.setenv(logs.PROCESS_ENV, "worker-1")  # both restored after the test
    monkeypatch.setattr(logs, "_process", "main")
    try:
        logs.configure("json", "info", buf, role="comparer")
        assert logs.process_name() == "worker-1/comparer"
        structlog.get_logger("strangler.comparer").info("compared", pairs=3)
        logging.getLogger("asyncio").warning("from a library")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
        structlog.reset_defaults()
    recs = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    assert [(r["logger"], r["process"]) for r in recs] == [
        ("strangler.comparer", "worker-1/comparer"), ("asyncio", "worker-1/comparer")]
