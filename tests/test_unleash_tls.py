"""`flags.unleash` over https: a real Unleash 8 behind a real TLS terminator (nginx; Unleash
serves plain HTTP only), with a private CA made in the test.

What users rely on: polls and Admin API writes go over TLS trusting the configured CA (and
showing a client certificate when the terminator requires one, with `server_name` as SNI and
the name checked); a TLS failure (wrong CA, a certificate the terminator refuses) says what is
wrong once and turns /readyz `degraded`, never a silent stale state; client certificate files
rotate without a restart; a reload that fixes `flags.unleash.tls` takes effect without one.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import ProxyProcess, Upstream, free_port, routes_yaml, wait_for
from tests.test_unleash_backend import (
    ROUTE,
    create_toggle,
    log_events,
    route_view,
    sides,
    toggle,
)
from tests.tls_support import Pki, write_atomically
from tests.tls_terminator import TlsTerminator
from tests.unleash_server import UnleashServer

pytestmark = pytest.mark.unleash

USERS = [f"u{i}" for i in range(40)]


@pytest.fixture
def terminators(unleash_server: UnleashServer, tmp_path: Path
                ) -> Iterator[Callable[..., TlsTerminator]]:
    """Factory: nginx with TLS in front of the session's Unleash; stopped after the test."""
    started: list[TlsTerminator] = []
    backend = int(unleash_server.base.rsplit(":", 1)[1])

    def make(cert_file: str, key_file: str, client_ca: str | None = None) -> TlsTerminator:
        t = TlsTerminator(tmp_path / f"nginx{len(started)}", backend, cert_file, key_file,
                          client_ca)
        started.append(t)
        return t.start()

    yield make
    for t in started:
        t.stop()


def config(url: str, flag: str, mono: Upstream, svc: Upstream, tls: str) -> str:
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          balance-svc: {{url: "http://127.0.0.1:{svc}"}}
        default_upstream: monolith
        flags:
          backend: unleash
          unleash:
            url: "{url}"
            refresh_interval: 1s
            tls: {tls}
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: balance-svc
            flag: {flag}
            sticky: {{header: X-User-Id}}
            shadow: false
        """, port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port, url=url,
        flag=flag, tls="{" + tls + "}")


async def readyz(proxy: ProxyProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/readyz") as resp:
        assert resp.status == 200  # degraded or not, legacy keeps serving
        return await resp.json()


def subjects(terminator: TlsTerminator, path: str = "") -> list[str]:
    """The client certificate's CN of each request through the terminator (with `path`)."""
    out = []
    for line in terminator.access():
        if path in line:
            dn = line.split('"')[1]
            out.append(dn.split(",")[0].removeprefix("CN=") if dn != "-" else "-")
    return out


def copy(src: str, dst: str) -> None:
    write_atomically(Path(dst), Path(src).read_bytes())


@pytest.mark.parametrize("mtls", [False, True], ids=["private-ca", "mtls"])
async def test_polls_and_writes_go_over_https_trusting_a_private_ca(
    mtls: bool, unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession,
    terminators, upstreams, proxy_process, tmp_path: Path,
) -> None:
    pki = Pki(tmp_path / "pki")
    if mtls:  # the certificate names only unleash.internal: server_name is what makes it match
        cert, key = pki.issue("unleash", "unleash.internal")
        client_cert, client_key = pki.issue("client", "strangler-one")
        tls = (f'ca_file: "{pki.ca_file}", cert_file: "{client_cert}", key_file: '
               f'"{client_key}", server_name: unleash.internal')
    else:
        cert, key = pki.issue("unleash", "127.0.0.1")
        tls = f'ca_file: "{pki.ca_file}"'
    front = terminators(cert, key, client_ca=pki.ca_file if mtls else None)
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("tls")
    await create_toggle(unleash_admin, flag, 30)
    proxy = await proxy_process(config(front.url, flag, mono, svc, tls), env=unleash_server.env())
    async with aiohttp.ClientSession() as s:
        assert (await route_view(s, proxy))["weight"] == 30.0  # read over TLS
        assert (await readyz(proxy))["status"] == "ready"
        async with s.put(f"{proxy.admin}/admin/routes/{ROUTE}/weight",
                         json={"weight": 100, "reason": "over tls"}) as resp:
            assert resp.status == 200, await resp.text()  # written over TLS
        enabled, params = await toggle(unleash_admin, flag)
        assert (enabled, params["stranglerWeight"]) == (True, "100.00")
        assert set((await sides(s, proxy, USERS)).values()) == {"balance-svc"}
    polls, writes = subjects(front, "/api/client/features"), subjects(front, "/api/admin/")
    assert polls and writes
    assert set(polls + writes) == ({"strangler-one"} if mtls else {"-"})
    assert all(line.startswith(("200 ", "304 ", "202 ")) for line in front.access()), \
        front.access()
    assert not log_events(proxy, "unleash.tls_failed")
    assert await proxy.stop() == 0


async def test_wrong_ca_is_named_once_and_degrades_readiness_until_a_reload_fixes_it(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, terminators,
    upstreams, proxy_process, tmp_path: Path,
) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other", name="other")
    front = terminators(*pki.issue("unleash", "127.0.0.1"))
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("wrongca")
    await create_toggle(unleash_admin, flag, 100)
    text = config(front.url, flag, mono, svc, f'ca_file: "{other.ca_file}"')
    proxy = await proxy_process(text, env=unleash_server.env())
    async with aiohttp.ClientSession() as s:
        body = await readyz(proxy)
        assert body["status"] == "degraded", body
        assert body["degraded"]["tls_cause"] == "unknown_ca"
        reason = body["degraded"]["flags"]
        assert "TLS to Unleash" in reason and "not signed by a trusted CA" in reason
        assert "flags.unleash.tls.ca_file" in reason and "every route at weight 0" in reason
        assert set((await sides(s, proxy, USERS)).values()) == {"monolith"}  # all legacy
        async with s.put(f"{proxy.admin}/admin/routes/{ROUTE}/weight",
                         json={"weight": 50, "reason": "x"}) as resp:
            assert resp.status == 503
            assert "not signed by a trusted CA" in (await resp.json())["detail"]["message"]
        await asyncio.sleep(3)  # three more polls fail the same way: still one line
        (line,) = log_events(proxy, "unleash.tls_failed")
        assert line["cause"] == "unknown_ca" and line["level"] == "error"
        assert not front.access()  # nothing reached Unleash without a verified certificate

        # The fix, without a restart: the right CA in the file, then a reload.
        proxy.config.write_text(text.replace(other.ca_file, pki.ca_file))
        async with s.post(proxy.admin + "/admin/reload") as resp:
            assert resp.status == 200, await resp.text()

        async def ready() -> bool:
            return (await readyz(proxy))["status"] == "ready"

        await wait_for(ready)
        assert set((await sides(s, proxy, USERS)).values()) == {"balance-svc"}
    assert log_events(proxy, "unleash.reconnected")
    assert await proxy.stop() == 0


async def test_unleash_certificate_from_another_ca_mid_run_is_degraded_not_silently_stale(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, terminators,
    upstreams, proxy_process, tmp_path: Path,
) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other", name="other")
    cert, key = pki.issue("unleash", "127.0.0.1")
    front = terminators(cert, key)
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("midrun")
    await create_toggle(unleash_admin, flag, 50)
    ca_file = str(tmp_path / "trusted.pem")
    shutil.copy(pki.ca_file, ca_file)
    proxy = await proxy_process(config(front.url, flag, mono, svc, f'ca_file: "{ca_file}"'),
                                env=unleash_server.env())
    async with aiohttp.ClientSession() as s:
        before = await sides(s, proxy, USERS)
        assert set(before.values()) == {"monolith", "balance-svc"}

        # Unleash's terminator now shows a certificate from a CA strangler does not trust.
        front.reload(**dict(zip(("cert_file", "key_file"),
                                other.issue("unleash", "127.0.0.1"), strict=True)))

        async def degraded() -> bool:
            return (await readyz(proxy))["status"] == "degraded"

        await wait_for(degraded)
        body = await readyz(proxy)
        assert body["degraded"]["tls_cause"] == "unknown_ca"
        assert "last known flag state" in body["degraded"]["flags"]
        assert "unreachable" in body["flags_stale"]
        assert await sides(s, proxy, USERS) == before  # routing holds on the last known state
        await asyncio.sleep(2)
        assert len(log_events(proxy, "unleash.tls_failed")) == 1

        # The CA bundle is rotated to the new CA: read again without a restart.
        copy(other.ca_file, ca_file)
        await wait_for(lambda: _ready(proxy))
        assert "flags_stale" not in await readyz(proxy)
    assert await proxy.stop() == 0


async def _ready(proxy: ProxyProcess) -> bool:
    return (await readyz(proxy))["status"] == "ready"


async def test_client_certificate_rotates_without_restart_and_a_refused_one_is_named(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, terminators,
    upstreams, proxy_process, tmp_path: Path,
) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other", name="other")
    front = terminators(*pki.issue("unleash", "127.0.0.1"), client_ca=pki.ca_file)
    one_cert, one_key = pki.issue("one", "strangler-one")
    two_cert, two_key = pki.issue("two", "strangler-two")
    foreign_cert, foreign_key = other.issue("foreign", "strangler-foreign")
    cert, key = str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem")
    copy(one_cert, cert)
    copy(one_key, key)
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("rotate")
    await create_toggle(unleash_admin, flag, 0)
    tls = f'ca_file: "{pki.ca_file}", cert_file: "{cert}", key_file: "{key}"'
    proxy = await proxy_process(config(front.url, flag, mono, svc, tls), env=unleash_server.env())
    polls = "/api/client/features"
    async with aiohttp.ClientSession() as s:
        assert set(subjects(front, polls)) == {"strangler-one"}

        # Half a rotation (the new certificate, the old key): the old pair stays in use.
        copy(two_cert, cert)
        seen = len(front.access())
        await wait_for(lambda: _polls_after(front, seen, 2))
        assert set(subjects(front, polls)[-2:]) == {"strangler-one"}
        assert (await readyz(proxy))["status"] == "ready"
        copy(two_key, key)  # the rotation completes: the next polls show the new certificate

        async def rotated() -> bool:
            return subjects(front, polls)[-1:] == ["strangler-two"]

        await wait_for(rotated)
        async with s.put(f"{proxy.admin}/admin/routes/{ROUTE}/weight",
                         json={"weight": 100, "reason": "after rotation"}) as resp:
            assert resp.status == 200, await resp.text()
        assert set(subjects(front, "/api/admin/")) == {"strangler-two"}
        assert (await readyz(proxy))["status"] == "ready"

        # A certificate the terminator does not trust: refused, named, degraded.
        copy(foreign_cert, cert)
        copy(foreign_key, key)

        async def refused() -> bool:
            return (await readyz(proxy)).get("degraded", {}).get("tls_cause") == \
                "client_cert_refused"

        await wait_for(refused)
        assert "check flags.unleash.tls.cert_file" in (await readyz(proxy))["degraded"]["flags"]
        assert set((await sides(s, proxy, USERS)).values()) == {"balance-svc"}  # last known
        await asyncio.sleep(2)
        (line,) = log_events(proxy, "unleash.tls_failed")
        assert line["cause"] == "client_cert_refused"

        copy(one_cert, cert)
        copy(one_key, key)
        await wait_for(lambda: _ready(proxy))
    reloads = log_events(proxy, "TLS certificate files reloaded")
    assert len(reloads) >= 2 and {r["of"] for r in reloads} == {"Unleash"}
    (half,) = log_events(proxy, "TLS files changed but cannot be loaded; the previous "
                         "certificate stays in use")
    assert half["field"] == "key_file" and "does not match the certificate" in half["error"]
    assert await proxy.stop() == 0


def _polls_after(front: TlsTerminator, seen: int, n: int) -> bool:
    return sum("/api/client/features" in line for line in front.access()[seen:]) >= n


async def test_a_terminator_requiring_a_client_certificate_says_so(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, terminators,
    upstreams, proxy_process, tmp_path: Path,
) -> None:
    pki = Pki(tmp_path / "pki")
    front = terminators(*pki.issue("unleash", "127.0.0.1"), client_ca=pki.ca_file)
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("nocert")
    proxy = await proxy_process(config(front.url, flag, mono, svc, f'ca_file: "{pki.ca_file}"'),
                                env=unleash_server.env())
    body = await readyz(proxy)
    assert body["status"] == "degraded" and body["degraded"]["tls_cause"] == \
        "client_cert_required"
    assert "set flags.unleash.tls.cert_file and key_file" in body["degraded"]["flags"]
    assert await proxy.stop() == 0


async def test_verify_false_works_and_is_said_at_load_and_in_readyz(
    unleash_server: UnleashServer, unleash_admin: aiohttp.ClientSession, terminators,
    upstreams, proxy_process, tmp_path: Path,
) -> None:
    front = terminators(*Pki(tmp_path / "pki").issue("unleash", "somewhere.else"))
    mono, svc = await upstreams("monolith"), await upstreams("balance-svc")
    flag = unleash_server.flag_name("noverify")
    await create_toggle(unleash_admin, flag, 100)
    proxy = await proxy_process(config(front.url, flag, mono, svc, "verify: false"),
                                env=unleash_server.env())
    body = await readyz(proxy)
    assert body["status"] == "ready" and body["tls_unverified"] == ["flags.unleash"]
    async with aiohttp.ClientSession() as s:
        assert (await route_view(s, proxy))["weight"] == 100.0
    (warning,) = log_events(proxy, "TLS certificate verification is OFF (verify: false): anyone "
                            "on the path can read and change this traffic")
    assert warning["of"] == "Unleash"
    assert await proxy.stop() == 0
