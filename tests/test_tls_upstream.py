"""Issue 25.1: https and mTLS upstreams, the Host a target expects, TLS failures in words.

Every upstream here is a real TLS server on 127.0.0.1 with certificates made in the test by a
private CA: a good one, an expired one, one for another name, one from a CA nobody trusts, a
server that requires a client certificate, a plain-HTTP server behind an https url, and one
that accepts TCP and never answers the handshake.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time

import aiohttp
import pytest

from tests.support import free_port, routes_yaml, wait_for
from tests.tls_support import Pki, ThreadedTlsServer, TlsUpstream, server_context

CONFIG = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      ledger:
        url: "{ledger}"
        connect_timeout: 0.5s
{tls}
    default_upstream: monolith
    routes:
      - name: ledger
        match: {{path_prefix: /ledger}}
        legacy: monolith
        target: ledger
        weight: 100
        fallback_to_legacy: false
"""


def config(port: int, admin: int, mono: int, ledger: str, tls: str = "") -> str:
    indented = "\n".join("        " + line for line in tls.strip().splitlines())
    return routes_yaml(CONFIG, port=port, admin=admin, mono=mono, ledger=ledger,
                       tls=indented)


async def start(inproc_proxy, upstreams, ledger_url: str, tls: str = ""):
    mono = await upstreams("monolith")
    proxy = await inproc_proxy(config(free_port(), free_port(), mono.port, ledger_url, tls))
    return proxy


async def get(url: str, n: int = 1, path: str = "/ledger/1", **kw) -> list[tuple[int, dict]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url + path, **kw) as r:
                out.append((r.status, await r.json(content_type=None)))
    return out


def copy_file(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)  # in place, not atomic: a rotation caught half-way


def tls_errors(proxy) -> int:
    proxy.server.flush()
    return proxy.runtime.agg.upstream_errors.get(("ledger", "tls"), 0)


async def test_https_upstream_with_private_ca_server_name_and_host_header(
        tmp_path, inproc_proxy, upstreams):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "ledger.internal")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key)).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url, f"""
tls: {{ca_file: "{pki.ca_file}", server_name: ledger.internal}}
host_header: upstream""")
        answers = await get(proxy.url, 3, headers={"Host": "shop.example"})
        assert [a[1]["served_by"] for a in answers] == ["ledger"] * 3
        # Host is the upstream's own host:port; the client's stays in X-Forwarded-Host
        assert ledger.seen[0].headers["host"] == f"127.0.0.1:{ledger.port}"
        assert ledger.seen[0].headers["x-forwarded-host"] == "shop.example"
        assert len(ledger.resumed) == 3 and not ledger.resumed[0]
        # one keep-alive connection carried all three
        assert proxy.server.plane.pools["ledger"].total == 1
    finally:
        await ledger.stop()


async def test_literal_host_header_and_client_default(tmp_path, inproc_proxy, upstreams):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key)).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url, f"""
tls: {{ca_file: "{pki.ca_file}"}}
host_header: ledger.internal""")
        await get(proxy.url, headers={"Host": "shop.example"})
        assert ledger.seen[-1].headers["host"] == "ledger.internal"
        # HTTP/1.0 without Host: the literal is added
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       proxy.runtime.config.listen.port)
        writer.write(b"GET /ledger/10 HTTP/1.0\r\n\r\n")
        head = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert ledger.seen[-1].headers["host"] == "ledger.internal"
    finally:
        await ledger.stop()


async def test_tls_sessions_are_resumed_by_new_pooled_connections(tmp_path, inproc_proxy,
                                                                  upstreams):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key), delay=0.05).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url,
                            f'tls: {{ca_file: "{pki.ca_file}"}}')
        await get(proxy.url)  # the first connection: a full handshake, its session kept
        async with aiohttp.ClientSession() as s:
            async def one() -> int:
                async with s.get(proxy.url + "/ledger/2") as r:
                    return r.status
            # concurrent requests make the pool open more connections
            assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        pool = proxy.server.plane.pools["ledger"]
        assert pool.total >= 3
        assert ledger.resumed[0] is False
        # every later connection resumed the session instead of a full handshake
        assert sum(ledger.resumed[1:]) >= pool.total - 1 > 1
    finally:
        await ledger.stop()


@pytest.mark.parametrize(("case", "cause"), [
    ("expired", "expired"), ("wrong_name", "name_mismatch"), ("unknown_ca", "unknown_ca")])
async def test_certificate_failures_are_502_kind_tls_logged_once(
        tmp_path, inproc_proxy, upstreams, case, cause, capsys):
    pki = Pki(tmp_path / "pki")
    if case == "expired":
        cert, key = pki.issue("ledger", "127.0.0.1", expired=True)
    elif case == "wrong_name":
        cert, key = pki.issue("ledger", "other.example")
    else:
        cert, key = Pki(tmp_path / "other", name="other").issue("ledger", "127.0.0.1")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key)).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url,
                            f'tls: {{ca_file: "{pki.ca_file}"}}')
        answers = await get(proxy.url, 4)
        assert [status for status, _ in answers] == [502] * 4
        body = answers[0][1]
        assert body["error"] == "upstream_tls"
        assert body["detail"].startswith("TLS to ledger: ")
        assert tls_errors(proxy) == 4
        assert not ledger.seen  # nothing reached the application
        logged = [line for line in capsys.readouterr().out.splitlines()
                  if "TLS to upstream failed" in line]
        assert len(logged) == 1, logged  # one line per cause and upstream, not per request
        assert f'"cause": "{cause}"' in logged[0] or f"cause={cause}" in logged[0]
    finally:
        await ledger.stop()


async def test_mtls_client_certificate_required_refused_then_accepted(tmp_path, inproc_proxy,
                                                                      upstreams):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    client_cert, client_key = pki.issue("proxy-client", "strangler.proxy")
    foreign_cert, foreign_key = Pki(tmp_path / "x", name="x").issue("foreign", "intruder")
    server = ThreadedTlsServer(server_context(cert, key, client_ca=pki.ca_file)).start()
    try:
        base = f'tls: {{ca_file: "{pki.ca_file}"'
        without = await start(inproc_proxy, upstreams, server.url, base + "}")
        assert [s for s, _ in await get(without.url, 2)] == [502, 502]
        # TLS 1.3: the server refuses the certificate after the proxy's side of the handshake is
        # done, so its alert can race with the close it sends after it; a failure whose alert
        # lost that race is counted as a reset (seen twice under load on 2026-12-06). Each counts.
        tls = tls_errors(without)  # flushes the counters first
        kinds = {kind: n for (up, kind), n in without.runtime.agg.upstream_errors.items()
                 if up == "ledger"}
        assert tls >= 1 and sum(kinds.values()) == 2, kinds
        assert set(kinds) <= {"tls", "reset"}, kinds
        foreign = await start(inproc_proxy, upstreams, server.url,
                              base + f', cert_file: "{foreign_cert}", key_file: "{foreign_key}"}}')
        status, body = (await get(foreign.url))[0]
        assert status == 502 and "client certificate" in body["detail"]
        good = await start(inproc_proxy, upstreams, server.url,
                           base + f', cert_file: "{client_cert}", key_file: "{client_key}"}}')
        status, body = (await get(good.url))[0]
        assert status == 200 and body["peer"] == "strangler.proxy"
    finally:
        server.stop()


async def test_plain_http_on_an_https_url_is_a_clear_error(tmp_path, inproc_proxy, upstreams,
                                                           capsys):
    plain = await upstreams("plain-ledger")
    proxy = await start(inproc_proxy, upstreams, f"https://127.0.0.1:{plain.port}")
    status, body = (await get(proxy.url))[0]
    assert status == 502
    assert "does not speak TLS" in body["detail"] and "https by mistake" in body["detail"]
    assert tls_errors(proxy) == 1
    assert "plain_http" in capsys.readouterr().out


async def test_handshake_that_never_completes_is_bounded_by_connect_timeout(
        tmp_path, inproc_proxy, upstreams):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts TCP (the kernel does), never speaks TLS
    try:
        proxy = await start(inproc_proxy, upstreams, f"https://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        status, body = (await get(proxy.url))[0]
        took = time.monotonic() - started
        assert status == 502 and "timed out after 0.5s" in body["detail"]
        assert 0.4 < took < 2.0
    finally:
        silent.close()


async def test_rotated_client_certificate_is_used_without_restart_and_in_flight_survive(
        tmp_path, inproc_proxy, upstreams):
    """cert-manager rewrites the client certificate while requests run: new connections show
    the new one, pooled ones retire as their exchanges end, no request fails."""
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    client_cert, client_key = pki.issue("client", "client-one")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key, client_ca=pki.ca_file),
                               delay=0.02).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url, f"""
tls: {{ca_file: "{pki.ca_file}", cert_file: "{client_cert}", key_file: "{client_key}"}}""")
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with aiohttp.ClientSession() as s:
                deadline = time.monotonic() + 15
                while not stop.is_set() and time.monotonic() < deadline:
                    async with s.get(proxy.url + "/ledger/r") as r:
                        statuses.append(r.status)

        async def slow() -> int:  # in flight across the rotation
            async with aiohttp.ClientSession() as s, s.get(proxy.url + "/ledger/slow") as r:
                return r.status

        workers = [asyncio.create_task(load()) for _ in range(4)]
        await wait_for(lambda: len(statuses) > 20)
        ledger.delay = 1.5
        in_flight = asyncio.create_task(slow())
        await asyncio.sleep(0.2)
        ledger.delay = 0.02
        assert "client-one" in ledger.peers
        pki.issue("client", "client-two")  # rewrites both files in place (rename)
        await wait_for(lambda: ledger.peers[-1] == "client-two", timeout=10)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        assert await in_flight == 200
        assert statuses and set(statuses) == {200}
        after = ledger.peers[ledger.peers.index("client-two"):]
        assert after[-5:] == ["client-two"] * 5
    finally:
        await ledger.stop()


async def test_broken_rotation_keeps_the_last_good_certificate(tmp_path, inproc_proxy,
                                                               upstreams, capsys):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    client_cert, client_key = pki.issue("client", "client-one")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key,
                                                                client_ca=pki.ca_file)).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url, f"""
tls: {{ca_file: "{pki.ca_file}", cert_file: "{client_cert}", key_file: "{client_key}"}}""")
        await get(proxy.url)
        # half a rotation: a new certificate whose key has not been written yet
        other_cert, _ = pki.issue("other", "client-two")
        copy_file(other_cert, client_cert)
        await asyncio.sleep(1.5)
        pool = proxy.server.plane.pools["ledger"]
        for conn in list(pool.idle):
            conn.transport.close()
        await asyncio.sleep(0.1)
        assert [s for s, _ in await get(proxy.url, 2)] == [200, 200]
        assert ledger.peers[-1] == "client-one"
        out = capsys.readouterr().out
        assert out.count("TLS files changed but cannot be loaded") == 1
    finally:
        await ledger.stop()


async def test_verify_false_is_warned_at_load_and_in_readyz(tmp_path, inproc_proxy, upstreams,
                                                            capsys):
    pki = Pki(tmp_path / "pki")
    cert, key = Pki(tmp_path / "x", name="x").issue("ledger", "other.example")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key)).start()
    try:
        proxy = await start(inproc_proxy, upstreams, ledger.url, "tls: {verify: false}")
        assert (await get(proxy.url))[0][0] == 200
        assert "verification is OFF" in capsys.readouterr().out
        async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/readyz") as r:
            body = await r.json()
        assert body["tls_unverified"] == ["ledger"]
        del pki
    finally:
        await ledger.stop()


async def test_validate_names_unusable_tls_files_with_file_and_line(tmp_path):
    from tests.support import run_cli

    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("client", "client")
    _, other_key = pki.issue("other", "other")
    (tmp_path / "r.yaml").write_text(routes_yaml("""
        version: 1
        tls: {{cert_file: missing.pem, key_file: "{key}"}}
        upstreams:
          mono: {{url: "http://127.0.0.1:1"}}
          ledger:
            url: https://127.0.0.1:2
            tls:
              ca_file: "{key}"
              cert_file: "{cert}"
              key_file: "{other_key}"
        default_upstream: mono
    """, key=key, cert=cert, other_key=other_key))
    code, out, err = await run_cli("validate", "-c", str(tmp_path / "r.yaml"))
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert lines[0].endswith(f"r.yaml:3: tls.cert_file: {tmp_path}/missing.pem: no such file")
    assert f"r.yaml:9: upstreams.ledger.tls.ca_file: {key}: no usable PEM certificate" in lines[1]
    assert lines[2].endswith(f"r.yaml:11: upstreams.ledger.tls.key_file: {other_key}: the key "
                             f"does not match the certificate in {cert}")
    assert len(lines) == 3


async def test_shadow_mirrors_and_noise_twin_go_over_tls(tmp_path, inproc_proxy, upstreams):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("ledger", "127.0.0.1")
    ledger = await TlsUpstream("ledger", context=server_context(cert, key),
                               extra={"served_by": "same"}).start()
    twin = await TlsUpstream("twin", context=server_context(cert, key),
                             extra={"served_by": "same"}).start()
    mono = await upstreams("monolith", extra={"served_by": "same"})
    text = routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          ledger: {{url: "{ledger}", tls: {{ca_file: "{ca}"}}}}
          twin: {{url: "{twin}", tls: {{ca_file: "{ca}"}}}}
        default_upstream: monolith
        routes:
          - name: ledger
            match: {{path_prefix: /ledger}}
            legacy: monolith
            target: ledger
            weight: 0
            shadow: {{sample: 1.0, max_rate: unlimited, compare: {{noise_upstream: twin}}}}
    """, port=free_port(), admin=free_port(), mono=mono.port, ledger=ledger.url,
                       twin=twin.url, ca=pki.ca_file)
    proxy = await inproc_proxy(text)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(10):
                async with s.get(f"{proxy.url}/ledger/{i}", headers={
                        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                }) as r:
                    assert r.status == 200
        await wait_for(lambda: ledger.count(shadow=True) == 10 and twin.count(shadow=True) == 10)
        # the client's trace context is not copied onto mirrors
        assert all("traceparent" not in seen.headers for seen in ledger.seen)
        assert mono.seen[0].headers["traceparent"].startswith("00-0af7651916cd43dd")
        await proxy.server.shadow.flush()
        proxy.server.flush()
        results = {k[-1]: v for k, v in proxy.runtime.agg.shadow.items()}
        assert results.get("error", 0) == 0
        assert sum(results.values()) == 10
    finally:
        await ledger.stop()
        await twin.stop()


async def test_reconcile_replays_against_https_upstreams(tmp_path):
    from tests.support import run_cli

    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("svc", "svc.internal")
    bad_cert, bad_key = pki.issue("expired", "svc.internal", expired=True)
    legacy = await TlsUpstream("legacy", context=server_context(cert, key),
                               extra={"served_by": "same"}).start()
    target = await TlsUpstream("target", context=server_context(cert, key),
                               extra={"served_by": "same"}).start()
    expired = await TlsUpstream("expired", context=server_context(bad_cert, bad_key)).start()
    try:
        def write(target_url: str) -> str:
            path = tmp_path / "r.yaml"
            path.write_text(routes_yaml("""
                version: 1
                state_dir: state
                upstreams:
                  legacy: {{url: "{legacy}", tls: {{ca_file: "{ca}", server_name: svc.internal}}}}
                  target: {{url: "{target}", tls: {{ca_file: "{ca}", server_name: svc.internal}},
                           host_header: svc.internal}}
                default_upstream: legacy
                routes:
                  - {{name: r, match: {{path_prefix: /r}}, legacy: legacy, target: target}}
            """, legacy=legacy.url, target=target_url, ca=pki.ca_file))
            return str(path)

        (tmp_path / "requests.txt").write_text("GET /r/1\nGET /r/2\n")
        code, out, err = await run_cli("reconcile", "r", "-c", write(target.url), "--requests",
                                       str(tmp_path / "requests.txt"), "--json", "--rate", "50")
        assert code == 0, (out, err)
        assert json.loads(out)["compared"] == 2
        assert target.seen[0].headers["host"] == "svc.internal"
        code, out, err = await run_cli("reconcile", "r", "-c", write(expired.url), "--requests",
                                       str(tmp_path / "requests.txt"), "--json", "--rate", "50")
        assert code == 1, (out, err)
        assert json.loads(out)["error_kinds"] == {"tls": 2}
    finally:
        for up in (legacy, target, expired):
            await up.stop()


async def test_validate_warns_about_verify_false(tmp_path):
    from tests.support import run_cli

    (tmp_path / "r.yaml").write_text(routes_yaml("""
        version: 1
        upstreams:
          mono: {{url: "http://127.0.0.1:1"}}
          saas: {{url: "https://api.example", tls: {{verify: false}}}}
        default_upstream: mono
    """))
    code, out, err = await run_cli("validate", "-c", str(tmp_path / "r.yaml"))
    assert code == 0 and ": OK:" in out
    assert "WARNING: saas: tls.verify is false" in err
