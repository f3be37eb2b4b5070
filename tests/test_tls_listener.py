"""Issue 25.2: the proxy and the admin API serve TLS themselves, and follow their certificate
files without a restart.

Clients are real TLS clients trusting a private CA made in the test; the certificate is
rewritten while requests run on kept-alive connections.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp
import pytest

from tests.support import free_port, routes_yaml, run_cli, wait_for
from tests.tls_support import Pki

CONFIG = """
    version: 1
    listen: 127.0.0.1:{port}
    tls: {{cert_file: "{cert}", key_file: "{key}"}}
    admin:
      listen: "127.0.0.1:{admin}"
{admin_tls}
    state_dir: state
    limits: {{header_timeout: 1s}}
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
    default_upstream: monolith
"""


def config(pki: Pki, mono: int, admin_tls: bool = False) -> tuple[str, str, str]:
    cert, key = pki.issue("proxy", "127.0.0.1", "localhost")
    extra = f'      tls: {{cert_file: "{cert}", key_file: "{key}"}}' if admin_tls else ""
    return routes_yaml(CONFIG, port=free_port(), admin=free_port(), cert=cert, key=key,
                       mono=mono, admin_tls=extra), cert, key


async def peer_name(port: int, ctx: ssl.SSLContext) -> tuple[str, str | None]:
    """(certificate serial, ALPN protocol) of a new TLS connection to the port."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="127.0.0.1")
    obj = writer.get_extra_info("ssl_object")
    serial = obj.getpeercert()["serialNumber"]
    alpn = obj.selected_alpn_protocol()
    writer.close()
    return serial, alpn


async def test_listener_serves_tls_with_alpn_and_forwarded_proto(tmp_path, inproc_proxy,
                                                                 upstreams):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    text, _, _ = config(pki, mono.port)
    proxy = await inproc_proxy(text)
    port = proxy.runtime.config.listen.port
    ctx = pki.client_context()
    async with aiohttp.ClientSession() as s, s.get(f"https://127.0.0.1:{port}/x", ssl=ctx) as r:
        assert r.status == 200
        assert (await r.json())["served_by"] == "monolith"
    assert mono.seen[-1].headers["x-forwarded-proto"] == "https"
    _, alpn = await peer_name(port, ctx)
    assert alpn == "http/1.1"
    # plain HTTP on the TLS port: refused, the proxy keeps serving
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    async with aiohttp.ClientSession() as s, s.get(f"https://127.0.0.1:{port}/y", ssl=ctx) as r:
        assert r.status == 200


async def test_client_that_never_finishes_its_handshake_is_cut(tmp_path, inproc_proxy,
                                                               upstreams):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    text, _, _ = config(pki, mono.port)
    proxy = await inproc_proxy(text)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.runtime.config.listen.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # header_timeout: 1s
    assert time.monotonic() - started < 5
    writer.close()


async def test_rotated_listener_certificate_served_to_new_connections_while_kept_alive_ones_run(
        tmp_path, inproc_proxy, upstreams):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    text, _cert, _key = config(pki, mono.port)
    proxy = await inproc_proxy(text)
    port = proxy.runtime.config.listen.port
    ctx = pki.client_context()
    before, _ = await peer_name(port, ctx)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:  # one kept-alive connection across the rotation
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            deadline = time.monotonic() + 15
            while not stop.is_set() and time.monotonic() < deadline:
                async with s.get(f"https://127.0.0.1:{port}/k", ssl=ctx) as r:
                    statuses.append(r.status)

    worker = asyncio.create_task(load())
    await wait_for(lambda: len(statuses) > 10)
    pki.issue("proxy", "127.0.0.1", "localhost")  # cert-manager writes the new pair

    async def rotated() -> bool:
        serial, _ = await peer_name(port, ctx)
        return serial != before

    await wait_for(rotated, timeout=10, interval=0.2)
    count = len(statuses)
    await wait_for(lambda: len(statuses) > count + 10)
    stop.set()
    await worker
    assert set(statuses) == {200}


async def test_admin_listener_over_tls(tmp_path, inproc_proxy, upstreams):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    text, _, _ = config(pki, mono.port, admin_tls=True)
    proxy = await inproc_proxy(text)
    admin_port = proxy.runtime.config.admin.listen.port
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://127.0.0.1:{admin_port}/readyz",
                         ssl=pki.client_context()) as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                await r.read()
    # the CLI trusts the private CA through STRANGLER_ADMIN_CA
    code, out, err = await run_cli("status", "--admin", f"https://127.0.0.1:{admin_port}",
                                   "--json", env={"STRANGLER_ADMIN_CA": pki.ca_file})
    assert code == 0, (out, err)
    code, _, err = await run_cli("status", "--admin", f"https://127.0.0.1:{admin_port}")
    assert code == 3  # untrusted: unreachable, not a traceback
    before, _ = await peer_name(admin_port, pki.client_context())
    pki.issue("proxy", "127.0.0.1", "localhost")

    async def rotated() -> bool:
        serial, _ = await peer_name(admin_port, pki.client_context())
        return serial != before

    await wait_for(rotated, timeout=10, interval=0.2)


async def test_tls_listener_with_two_workers(tmp_path, proxy_process, upstreams):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    text, _, _ = config(pki, mono.port)
    proxy = await proxy_process(text, args=("--workers", "2"))
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            async with s.get(f"https://127.0.0.1:{proxy.port}/w/{i}",
                             ssl=pki.client_context()) as r:
                assert r.status == 200
    assert len(mono.seen) == 20
