"""`flags.unleash.tls` in the fast tier: what `validate` says about it, and what the Unleash
client does with TLS where a real Unleash is not needed to show it.

The Unleash here is a stand-in (a fake, named so) speaking the two client API calls and the one
Admin API call these tests need, over real TLS with a private CA made in the test; the `unleash`
tier runs the client against a real Unleash behind nginx (tests/test_unleash_tls.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy.config.spec import ClientTlsSpec, UnleashSpec
from proxy.control.unleash import FlagState, UnleashConfigError, UnleashFlags
from tests.support import routes_yaml, run_cli, wait_for
from tests.tls_support import Pki, ThreadedTlsServer, server_context, write_atomically

ENV = {"UNLEASH_API_TOKEN": "default:development.t", "UNLEASH_ADMIN_TOKEN": "*:*.admin"}
FEATURES = {"version": 2, "features": [{
    "name": "checkout", "enabled": True, "strategies": [{
        "name": "flexibleRollout", "parameters": {"rollout": "25", "groupId": "checkout"}}]}]}


class FakeTlsUnleash:
    """A stand-in for Unleash over TLS that records the client certificate of each request;
    `hold` seconds of delay on the Admin API's GET of a toggle (a write in flight)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.hold = 0.0
        self.peers: list[tuple[str, str | None]] = []  # (path, client certificate CN)
        self.url = ""

    def _peer(self, request: web.Request) -> None:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        cert = obj.getpeercert() if obj is not None else None
        cn = next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn
                   if k == "commonName"), None)
        self.peers.append((request.path, cn))

    async def features(self, request: web.Request) -> web.Response:
        self._peer(request)
        return web.json_response(FEATURES)

    async def register(self, request: web.Request) -> web.Response:
        return web.Response(status=202)

    async def feature(self, request: web.Request) -> web.Response:
        self._peer(request)
        await asyncio.sleep(self.hold)
        return web.json_response({"name": "checkout", "environments": [
            {"name": "development", "enabled": True, "strategies": [
                {"id": "s1", "name": "flexibleRollout", "parameters": {"rollout": "25"}}]}]})

    async def strategy(self, request: web.Request) -> web.Response:
        self._peer(request)
        return web.json_response(await request.json())


@pytest.fixture
async def fake_tls_unleash(tmp_path: Path) -> AsyncIterator[tuple[FakeTlsUnleash, Pki]]:
    pki = Pki(tmp_path / "pki")
    ctx = server_context(*pki.issue("unleash", "127.0.0.1"))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # records a client certificate when one is shown
    ctx.load_verify_locations(pki.ca_file)
    fake = FakeTlsUnleash(ctx)
    app = web.Application()
    app.router.add_get("/api/client/features", fake.features)
    app.router.add_post("/api/client/register", fake.register)
    feature = "/api/admin/projects/default/features/checkout"
    app.router.add_get(feature, fake.feature)
    app.router.add_put(feature + "/environments/development/strategies/s1", fake.strategy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"https://127.0.0.1:{port}/api"
    yield fake, pki
    await runner.cleanup()


def _client(url: str, cache: Path, tls: ClientTlsSpec | None, refresh: float = 0.1,
            ) -> UnleashFlags:
    spec = UnleashSpec(url=url, refresh_interval=refresh, tls=tls)
    return UnleashFlags(spec, cache, flags=["checkout"], env=ENV)


async def test_a_write_in_flight_finishes_while_a_rotation_moves_polls_to_new_files(
    fake_tls_unleash: tuple[FakeTlsUnleash, Pki], tmp_path: Path,
) -> None:
    fake, pki = fake_tls_unleash
    cert, key = str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem")
    for stem, name in (("one", "client-one"), ("two", "client-two")):
        pki.issue(stem, name)
    write_atomically(Path(cert), (pki.dir / "one.pem").read_bytes())
    write_atomically(Path(key), (pki.dir / "one-key.pem").read_bytes())
    tls = ClientTlsSpec(ca_file=pki.ca_file, cert_file=cert, key_file=key)
    async with _client(fake.url, tmp_path / "cache", tls) as flags:
        assert flags.snapshot()["checkout"] == FlagState(True, 25.0)
        fake.hold = 1.5
        write = asyncio.create_task(flags.set_rollout("checkout", 40))
        await wait_for(lambda: any("/admin/" in path for path, _ in fake.peers))
        first = flags._session
        write_atomically(Path(cert), (pki.dir / "two.pem").read_bytes())
        write_atomically(Path(key), (pki.dir / "two-key.pem").read_bytes())
        # The next polls (every 0.1 s) take the new files on a new session...
        await wait_for(lambda: fake.peers[-1] == ("/api/client/features", "client-two"))
        assert flags._session is not first and first is not None and not first.closed
        # ...while the write that was on its way when they changed finishes on the old one.
        await asyncio.wait_for(write, 5)
        assert first.closed  # closed once its last request was done
        assert flags.snapshot()["checkout"] == FlagState(True, 40.0)
    admin = [(path.rsplit("/", 1)[-1], cn) for path, cn in fake.peers if "/admin/" in path]
    assert admin == [("checkout", "client-one"), ("s1", "client-two")]


async def test_an_https_url_without_tls_trusts_the_system_cas(
    fake_tls_unleash: tuple[FakeTlsUnleash, Pki], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, pki = fake_tls_unleash
    with capture_logs() as logs:
        async with _client(fake.url, tmp_path / "a", None) as flags:
            assert flags.degraded and flags.tls_failure is not None
            assert flags.tls_failure[0] == "unknown_ca"  # the test's CA is not a system CA
            await asyncio.sleep(0.5)  # five more polls: still one line
    assert [e["cause"] for e in logs if e["event"] == "unleash.tls_failed"] == ["unknown_ca"]
    # OpenSSL's system store honours SSL_CERT_FILE: with the test's CA there, it connects.
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    async with _client(fake.url, tmp_path / "b", None) as flags:
        assert flags.connected and flags.tls_failure is None


async def test_new_tls_settings_take_effect_at_the_next_poll_and_bad_files_are_refused(
    fake_tls_unleash: tuple[FakeTlsUnleash, Pki], tmp_path: Path,
) -> None:
    fake, pki = fake_tls_unleash
    other = Pki(tmp_path / "other", name="other")
    async with _client(fake.url, tmp_path / "cache", ClientTlsSpec(ca_file=other.ca_file)
                       ) as flags:
        assert flags.tls_failure is not None and "flags.unleash.tls.ca_file" in \
            flags.tls_failure[1]
        with pytest.raises(UnleashConfigError, match=r"flags\.unleash\.tls\.ca_file: .*no such"):
            flags.use_tls(ClientTlsSpec(ca_file=str(tmp_path / "missing.pem")))
        flags.use_tls(ClientTlsSpec(ca_file=pki.ca_file))
        await wait_for(lambda: flags.connected, timeout=3)
        assert flags.tls_failure is None and flags.spec.tls == ClientTlsSpec(ca_file=pki.ca_file)


async def test_a_tls13_refusal_of_the_client_certificate_after_the_handshake_is_named(
    tmp_path: Path,
) -> None:
    """Servers other than nginx (Go, Envoy, HAProxy) refuse a missing client certificate with
    an alert that TLS 1.3 delivers after the handshake: aiohttp sees a broken pipe."""
    pki = Pki(tmp_path / "pki")
    server = ThreadedTlsServer(server_context(*pki.issue("unleash", "127.0.0.1"),
                                              client_ca=pki.ca_file)).start()
    try:
        with capture_logs() as logs:
            async with _client(server.url + "/api", tmp_path / "c",
                               ClientTlsSpec(ca_file=pki.ca_file)) as flags:
                assert flags.degraded
                assert flags.tls_failure is not None
                cause, sentence = flags.tls_failure
                assert cause == "client_cert_refused"
                assert "set flags.unleash.tls.cert_file and key_file" in sentence
                await asyncio.sleep(0.5)
        assert [e["cause"] for e in logs if e["event"] == "unleash.tls_failed"] == [cause]
    finally:
        server.stop()


async def test_validate_names_unusable_unleash_tls_files_and_warns_about_verify_false(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path / "pki")
    cert, _ = pki.issue("client", "client")
    _, other_key = pki.issue("other", "other")
    path = tmp_path / "r.yaml"

    def write(unleash: str) -> str:
        path.write_text(routes_yaml("""
            version: 1
            upstreams:
              mono: {{url: "http://127.0.0.1:1"}}
            default_upstream: mono
            flags:
              backend: unleash
              unleash:
            """).strip() + "\n" + unleash)
        return str(path)

    code, _, err = await run_cli("validate", "-c", write(f"""\
    url: https://unleash.internal/api
    tls:
      ca_file: missing-ca.pem
      cert_file: {cert}
      key_file: {other_key}
"""))
    assert code == 2
    assert f"r.yaml:10: flags.unleash.tls.ca_file: {tmp_path}/missing-ca.pem: no such file" in err
    assert f"r.yaml:12: flags.unleash.tls.key_file: {other_key}: the key does not match the " \
        f"certificate in {cert}" in err

    code, _, err = await run_cli("validate", "-c", write("""\
    url: http://unleash.internal/api
    tls: {ca_file: x.pem}
"""))
    assert code == 2 and "r.yaml:9: flags.unleash.tls: tls is only used with an https:// url" \
        in err

    code, out, err = await run_cli("validate", "-c", write("""\
    url: https://unleash.internal/api
    tls: {verify: false}
"""))
    assert code == 0 and ": OK:" in out
    assert "WARNING: flags.unleash: tls.verify is false" in err
