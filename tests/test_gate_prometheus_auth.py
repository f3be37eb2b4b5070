"""Issue 25.4: the gate reads a Prometheus that wants credentials over TLS with a private CA.

A real Prometheus (Debian's /usr/bin/prometheus) is started with a web config file that serves
TLS with a certificate from a CA made in the test and requires basic auth; it scrapes a real
`strangler serve`, whose gate then judges from it. Tenant headers and bearer tokens (Mimir,
Cortex, Thanos) are checked against a recording HTTP server named fake_prometheus: none of
those can run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from proxy.config.spec import BasicAuthSpec, ClientTlsSpec, GateSourceSpec
from shadow.promql import CredentialsMissing, MetricsUnavailable, PrometheusSource
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli
from tests.tls_support import Pki

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
HAVE_PROMETHEUS = Path(PROMETHEUS).exists()
PASSWORD = "s3cret-gate-password"


class SecuredPrometheus:
    """Prometheus behind TLS + basic auth (its web config file), scraping `targets`."""

    def __init__(self, directory: Path, pki: Pki, targets: list[str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cert, key = pki.issue("prometheus", "127.0.0.1", "localhost")
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.dir / "web.yml").write_text(
            f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            f"basic_auth_users:\n  gate: '{hashed}'\n")
        quoted = ", ".join(f'"{t}"' for t in targets)
        (self.dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: strangler\n    scrape_interval: 1s\n"
            f"    scrape_timeout: 1s\n    static_configs: [{{targets: [{quoted}]}}]\n")
        self.pki = pki
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:"
             f"{self.port}", f"--web.config.file={self.dir / 'web.yml'}", "--log.level=warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    async def start(self) -> SecuredPrometheus:
        self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 30
        auth = {"Authorization": aiohttp.encode_basic_auth("gate", PASSWORD)}
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/-/ready", ssl=self.pki.client_context(),
                                     headers=auth) as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gate_spec(url: str, ca_file: str | None, password_env: str = "GATE_PW") -> GateSourceSpec:
    return GateSourceSpec(metrics="prometheus", url=url,
                          basic_auth=BasicAuthSpec("gate", password_env),
                          tls=ClientTlsSpec(ca_file=ca_file))


@pytest.fixture
async def secured_prometheus(tmp_path):
    if not HAVE_PROMETHEUS:
        pytest.skip("prometheus not installed (scripts/install-test-deps)")
    made: list[SecuredPrometheus] = []

    async def make(pki: Pki, targets: list[str]) -> SecuredPrometheus:
        prom = SecuredPrometheus(tmp_path / f"prom{len(made)}", pki, targets)
        made.append(prom)
        return await prom.start()

    yield make
    for prom in made:
        prom.stop()


@pytest.mark.prometheus
@pytest.mark.slow
async def test_basic_auth_over_tls_with_private_ca(tmp_path, secured_prometheus):
    pki = Pki(tmp_path / "pki")
    prom = await secured_prometheus(pki, ["127.0.0.1:1"])
    env = {"GATE_PW": PASSWORD}
    async with PrometheusSource.from_spec(gate_spec(prom.url, pki.ca_file), env) as source:
        assert await source.query("vector(7)") == 7.0
    wrong = {"GATE_PW": "guess"}
    async with PrometheusSource.from_spec(gate_spec(prom.url, pki.ca_file), wrong) as source:
        with pytest.raises(MetricsUnavailable, match="refused the gate's credentials"):
            await source.query("vector(7)")
    # the system CAs do not know the private CA
    async with PrometheusSource.from_spec(gate_spec(prom.url, None), env) as source:
        with pytest.raises(MetricsUnavailable, match="TLS certificate was refused"):
            await source.query("vector(7)")
    with pytest.raises(CredentialsMissing, match="GATE_PW"):
        PrometheusSource.from_spec(gate_spec(prom.url, pki.ca_file), {})


ROUTES = TWO_UPSTREAMS + """
    gate:
      metrics: prometheus
      url: "{prom}"
      basic_auth: {{username: gate, password_env: PROM_PASSWORD}}
      tls: {{ca_file: "{ca}"}}
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
        shadow: false
"""


@pytest.mark.prometheus
@pytest.mark.slow
async def test_serve_gate_judges_from_a_secured_prometheus(tmp_path, upstreams, proxy_process,
                                                           secured_prometheus):
    pki = Pki(tmp_path / "pki")
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    admin = free_port()
    prom_port_holder = SecuredPrometheus(tmp_path / "probe", pki, [])  # just for its free port
    text = routes_yaml(ROUTES, port=free_port(), admin=admin, mono=mono.port, svc=svc.port,
                       prom=f"https://127.0.0.1:{prom_port_holder.port}", ca=pki.ca_file)
    # an unset password variable stops serve before it listens, naming the variable
    (tmp_path / "r.yaml").write_text(text)
    code, _, err = await run_cli("serve", "-c", str(tmp_path / "r.yaml"),
                                 env={"PROM_PASSWORD": ""}, timeout=30)
    assert code == 2 and "PROM_PASSWORD" in err and PASSWORD not in err
    proxy = await proxy_process(text, env={"PROM_PASSWORD": PASSWORD})
    prom = SecuredPrometheus(tmp_path / "prom", pki, [f"127.0.0.1:{admin}"])
    prom.port = prom_port_holder.port
    await prom.start()
    try:
        spec = gate_spec(prom.url, pki.ca_file)
        async with PrometheusSource.from_spec(spec, {"GATE_PW": PASSWORD}) as source:
            deadline = time.monotonic() + 30  # scraped once at 0 before the traffic
            while await source.query('sum(up{job="strangler"})') != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                async with s.get(f"{proxy.url}/api/v1/balance/{i}") as r:
                    assert r.status == 200
            deadline = time.monotonic() + 30
            evidence = None
            while time.monotonic() < deadline:
                async with s.get(proxy.admin + "/admin/routes/balance/gate") as r:
                    body = await r.json()
                evidence = body.get("evidence") or {}
                total = sum((evidence.get(side) or {}).get("requests") or 0
                            for side in ("legacy", "target"))
                if total >= 60:
                    break
                await asyncio.sleep(1)
        # counted by Prometheus, read over TLS with basic auth
        assert total >= 60, (body["reasons"], evidence)
        assert PASSWORD not in proxy.stdout_path.read_text()
        assert PASSWORD not in proxy.stderr_path.read_text()
    finally:
        prom.stop()


async def test_tenant_header_and_bearer_token_are_sent(monkeypatch):
    seen: list[dict[str, str]] = []

    async def fake_prometheus(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"status": "success", "data": {
            "resultType": "scalar", "result": [0, "3"]}})

    app = web.Application()
    app.router.add_post("/api/v1/query", fake_prometheus)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        spec = GateSourceSpec(metrics="prometheus", url=f"http://127.0.0.1:{port}",
                              headers=(("x-scope-orgid", "TENANT"),), bearer_token_env="TOKEN")
        env = {"TENANT": "team-payments", "TOKEN": "tok-123"}
        async with PrometheusSource.from_spec(spec, env) as source:
            assert await source.query("vector(3)") == 3.0
        assert seen[0]["x-scope-orgid"] == "team-payments"
        assert seen[0]["authorization"] == "Bearer tok-123"
    finally:
        await runner.cleanup()
