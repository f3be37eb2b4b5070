"""`tls.server_name` is honoured on every client connection that takes a `tls` block, not only
on upstreams and Unleash: the gate's Prometheus (`gate.tls`) and the span exporter
(`tracing.tls`). Before, both checked the url's host and ignored the key.

The HTTPS servers here are fakes (aiohttp apps over TLS with a certificate from a CA made in the
test, naming only `metrics.internal`): what is under test is the name the client checks, which a
real Prometheus or collector would not change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from proxy.config.spec import ClientTlsSpec, TracingSpec
from proxy.dataplane.otlp import OtlpExporter
from shadow.promql import MetricsUnavailable, PrometheusSource
from tests.support import free_port
from tests.tls_support import Pki, server_context

NAME = "metrics.internal"


async def _fake_https_server(pki: Pki, seen: list[str]) -> tuple[web.AppRunner, str]:
    """A fake Prometheus and OTLP receiver over TLS, whose certificate names only NAME."""
    async def query(request: web.Request) -> web.Response:
        seen.append("query")
        return web.json_response({"status": "success", "data": {
            "resultType": "vector", "result": [{"metric": {}, "value": [0, "7"]}]}})

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        seen.append("traces")
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    cert, key = pki.issue("server", NAME)
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(cert, key))
    await site.start()
    return runner, f"https://127.0.0.1:{port}"


@pytest.fixture
async def https_server(tmp_path: Path):
    pki = Pki(tmp_path / "pki")
    seen: list[str] = []
    runner, url = await _fake_https_server(pki, seen)
    yield pki, url, seen
    await runner.cleanup()


async def test_gate_prometheus_checks_server_name_not_the_url_host(https_server) -> None:
    pki, url, seen = https_server
    named = ClientTlsSpec(ca_file=pki.ca_file, server_name=NAME)
    async with PrometheusSource(url, tls=named) as source:
        assert await source.query("vector(7)") == 7.0
    assert seen == ["query"]
    # without server_name the certificate must name 127.0.0.1, which it does not
    async with PrometheusSource(url, tls=ClientTlsSpec(ca_file=pki.ca_file)) as source:
        with pytest.raises(MetricsUnavailable, match="TLS certificate was refused"):
            await source.query("vector(7)")
    assert seen == ["query"]


async def test_span_exporter_checks_server_name_not_the_url_host(https_server) -> None:
    pki, url, seen = https_server

    async def post(tls: ClientTlsSpec) -> tuple[bool, str]:
        exporter = OtlpExporter(TracingSpec(otlp_endpoint=url, tls=tls), lambda r, n: None)
        try:
            return await exporter._post(b"")
        finally:
            if exporter._session is not None:
                await exporter._session.close()

    assert await post(ClientTlsSpec(ca_file=pki.ca_file, server_name=NAME)) == (True, "")
    assert seen == ["traces"]
    ok, why = await post(ClientTlsSpec(ca_file=pki.ca_file))
    assert not ok and "Certificate" in why, why
    assert seen == ["traces"]
