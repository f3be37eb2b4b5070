"""Pinning a request to legacy or target by header (routes.yaml `override`, `overrides.trusted`).

Real upstreams that say who served; the headers they received prove what was forwarded; the
gate's evidence (admin API) and /metrics prove that pinned traffic is counted apart.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.loader import ConfigError, load_config
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for

PIN = "X-Strangler-Backend"
SECRET_HEADER = "X-QA-Token"
SECRET_ENV = "STRANGLER_TEST_QA_SECRET"


def config(mono: int, svc: int, trusted: str, routes: str, head: str = TWO_UPSTREAMS) -> str:
    return routes_yaml(head + """
    overrides:
      trusted: {trusted}
    routes:
""" + routes, port=free_port(), admin=free_port(), mono=mono, svc=svc, trusted=trusted)


TWO_ROUTES = """
      - name: zero
        match: {{path_prefix: /zero}}
        legacy: monolith
        target: svc
        weight: 0
        override: {{header: X-Strangler-Backend}}
        shadow: false
      - name: full
        match: {{path_prefix: /full}}
        legacy: monolith
        target: svc
        weight: 100
        override: true
        shadow: false
      - name: plain
        match: {{path_prefix: /plain}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
"""


async def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        body = await r.json(content_type=None)
        return r.status, body


async def served_by(url: str, headers: dict | None = None) -> str:
    status, body = await get(url, headers)
    assert status == 200, body
    return body["served_by"]


async def metrics(admin: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
        text = await r.text()
    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def forwarded_names(up) -> set[str]:
    return {name for seen in up.seen for name in seen.headers}


async def test_trusted_peer_by_cidr_pins_each_side_whatever_the_weight(upstreams, inproc_proxy):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    proxy = await inproc_proxy(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}",
                                      TWO_ROUTES))
    # weight 0: the split alone never reaches the target; weight 100: never legacy
    assert await served_by(proxy.url + "/zero/1") == "monolith"
    assert await served_by(proxy.url + "/full/1") == "svc"
    for path in ("/zero/1", "/full/1"):
        assert await served_by(proxy.url + path, {PIN: "target"}) == "svc"
        assert await served_by(proxy.url + path, {PIN: "legacy"}) == "monolith"
    assert await served_by(proxy.url + "/zero/1", {PIN: " Target "}) == "svc"  # case, blanks
    # the pin is consumed by the proxy: no upstream ever received it
    assert "x-strangler-backend" not in forwarded_names(mono) | forwarded_names(svc)
    # a route without `override` is not pinned (and the header is not forwarded there either)
    assert await served_by(proxy.url + "/plain/1", {PIN: "target"}) == "monolith"
    assert "x-strangler-backend" not in forwarded_names(mono)


async def test_trusted_by_secret_header_and_the_secret_is_never_forwarded(
        upstreams, inproc_proxy, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret-value")
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    trusted = (f"{{cidrs: [10.99.0.0/16], secret_header: {SECRET_HEADER}, "
               f"secret_env: {SECRET_ENV}}}")
    proxy = await inproc_proxy(config(mono.port, svc.port, trusted, TWO_ROUTES))
    good = {SECRET_HEADER: "s3cret-value"}
    assert await served_by(proxy.url + "/zero/1", {PIN: "target", **good}) == "svc"
    assert await served_by(proxy.url + "/full/1", {PIN: "legacy", **good}) == "monolith"
    # a wrong or missing secret: the pin is ignored, the split decides
    assert await served_by(proxy.url + "/zero/1", {PIN: "target",
                                                   SECRET_HEADER: "guess"}) == "monolith"
    assert await served_by(proxy.url + "/full/1", {PIN: "legacy"}) == "svc"
    # the secret header is stripped always: with or without a pin, on any route, unmatched too
    assert await served_by(proxy.url + "/plain/1", good) == "monolith"
    assert await served_by(proxy.url + "/elsewhere", good) == "monolith"
    names = forwarded_names(mono) | forwarded_names(svc)
    assert "x-qa-token" not in names and "x-strangler-backend" not in names
    assert all("s3cret-value" not in v for up in (mono, svc) for seen in up.seen
               for v in seen.headers.values())
    m = await wait_for(lambda: _ignored(proxy.admin, "zero", "untrusted", 1))
    assert series(m, "strangler_override_ignored_total", route="full", reason="untrusted") == 1


async def _ignored(admin: str, route: str, reason: str, n: int) -> dict | None:
    m = await metrics(admin)
    got = series(m, "strangler_override_ignored_total", route=route, reason=reason)
    return m if got >= n else None


async def test_untrusted_peer_header_ignored_and_stripped(upstreams, inproc_proxy):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    proxy = await inproc_proxy(config(mono.port, svc.port, "{cidrs: [10.99.0.0/16]}",
                                      TWO_ROUTES))
    for _ in range(3):
        assert await served_by(proxy.url + "/zero/1", {PIN: "target"}) == "monolith"
        assert await served_by(proxy.url + "/full/1", {PIN: "legacy"}) == "svc"
    assert await served_by(proxy.url + "/elsewhere", {PIN: "target"}) == "monolith"
    assert mono.count() == 4 and svc.count() == 3
    assert "x-strangler-backend" not in forwarded_names(mono) | forwarded_names(svc)
    # counted as what they are: ordinary requests, plus an ignored pin
    m = await wait_for(lambda: _ignored(proxy.admin, "zero", "untrusted", 3))
    assert series(m, "strangler_requests_total", route="zero", backend="legacy", code="200") == 3
    assert series(m, "strangler_requests_total", route="full", backend="target", code="200") == 3
    assert not [k for k in m if k[0] == "strangler_override_requests_total"]


async def test_invalid_value_from_a_trusted_peer_is_answered_400(upstreams, inproc_proxy):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    proxy = await inproc_proxy(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}",
                                      TWO_ROUTES))
    status, body = await get(proxy.url + "/zero/1", {PIN: "targte"})
    assert status == 400
    assert body["error"] == "bad_override"
    assert "legacy or target" in body["detail"]
    assert mono.count() == 0 and svc.count() == 0
    await wait_for(lambda: _ignored(proxy.admin, "zero", "invalid", 1))


GATED = """
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 50
        override: {{header: X-Strangler-Backend}}
        fallback_to_legacy: true
        shadow: {{sample: 1.0, reverse: true}}
        promotion:
          min_requests: 10
          min_comparisons: 10
          guardrail: {{enabled: true, window: 30s, min_requests: 20, max_error_rate: 0.2}}
"""


async def _evidence(admin: str) -> dict:
    status, body = await get(admin + "/admin/routes/balance/gate")
    assert status == 200, body
    ev = body["evidence"]
    return {"legacy": ev["legacy"]["requests"], "target": ev["target"]["requests"],
            "target_errors": ev["target"]["errors"], "compared": ev["shadow"]["compared"]}


async def _pinned_counted(admin: str, backend: str, code: str, n: int) -> bool:
    m = await metrics(admin)
    return series(m, "strangler_override_requests_total", route="balance", backend=backend,
                  code=code) >= n


async def test_pinned_traffic_never_enters_the_gate_evidence_nor_the_guardrail(
        upstreams, inproc_proxy):
    failing = {"on": False}

    async def svc_handler(request: web.Request) -> web.Response:
        if failing["on"] and not request.headers.get("x-strangler-shadow"):
            return web.json_response({"served_by": "svc", "error": "boom"}, status=500)
        return web.json_response({"served_by": "svc", "balance": 1})

    mono = await upstreams("monolith", handler=lambda r: _json({"served_by": "monolith",
                                                                 "balance": 1}))
    svc = await upstreams("svc", handler=svc_handler)
    proxy = await inproc_proxy(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}", GATED))
    async with aiohttp.ClientSession() as s:
        for i in range(20):  # ordinary traffic: evidence on both sides, comparisons
            async with s.get(f"{proxy.url}/api/v1/balance/{i}") as r:
                assert r.status == 200
    before = await _settled(proxy.admin, lambda e: e["compared"] >= 10
                            and e["legacy"] + e["target"] == 20)
    mirrors = mono.count(shadow=True) + svc.count(shadow=True)

    async with aiohttp.ClientSession() as s:
        for side in ("legacy", "target") * 10:
            async with s.get(proxy.url + "/api/v1/balance/7", headers={PIN: side}) as r:
                assert (await r.json())["served_by"] == ("svc" if side == "target" else
                                                         "monolith")
    await wait_for(lambda: _pinned_counted(proxy.admin, "target", "200", 10))
    await wait_for(lambda: _pinned_counted(proxy.admin, "legacy", "200", 10))
    assert await _evidence(proxy.admin) == before
    assert mono.count(shadow=True) + svc.count(shadow=True) == mirrors  # none mirrored

    # A failing target reached by pinned requests: the tester sees the 500 (no fallback), the
    # guardrail (20 requests, 20% errors) does not fire, the evidence does not move.
    failing["on"] = True
    legacy_before = mono.count()
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            async with s.get(proxy.url + "/api/v1/balance/7", headers={PIN: "target"}) as r:
                assert r.status == 500
    assert mono.count() == legacy_before
    await wait_for(lambda: _pinned_counted(proxy.admin, "target", "500", 30))
    status, route = await get(proxy.admin + "/admin/routes/balance")
    assert status == 200 and route["state"] == "active"
    assert await _evidence(proxy.admin) == before

    # The same failures without the pin trip the guardrail: the check above could fail.
    async with aiohttp.ClientSession() as s:
        for i in range(60):
            async with s.get(f"{proxy.url}/api/v1/balance/u{i}") as r:
                assert r.status == 200  # fallback_to_legacy hides the target's errors
    await wait_for(lambda: _state(proxy.admin, "rolled_back"), timeout=15)


async def _json(payload: dict) -> web.Response:
    return web.json_response(payload)


async def _settled(admin: str, ready) -> dict:
    """The evidence once `ready` and unchanged over two reads 0.5 s apart (mirrors finished)."""
    seen: list[dict] = []

    async def stable() -> dict | None:
        seen.append(await _evidence(admin))
        if ready(seen[-1]) and len(seen) > 1 and seen[-1] == seen[-2]:
            return seen[-1]
        return None

    return await wait_for(stable, interval=0.5)


async def _state(admin: str, state: str) -> bool:
    _, route = await get(admin + "/admin/routes/balance")
    return route["state"] == state


async def test_rolled_back_route_honours_only_legacy_pins_across_workers(
        upstreams, proxy_process):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    routes = """
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        override: {{header: X-Strangler-Backend}}
        shadow: false
"""
    proxy = await proxy_process(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}",
                                       routes), args=("--workers", "2"))
    url = proxy.url + "/api/v1/balance/1"
    for _ in range(4):  # both workers (connections land on either)
        assert await served_by(url, {PIN: "target"}) == "svc"
    code, out, err = await run_cli("rollback", "balance", "--reason", "test", "--admin",
                                   proxy.admin)
    assert code == 0, out + err
    for _ in range(6):
        assert await served_by(url, {PIN: "target"}) == "monolith"
        assert await served_by(url, {PIN: "legacy"}) == "monolith"
    await wait_for(lambda: _ignored(proxy.admin, "balance", "rolled_back", 6))
    code, out, err = await run_cli("resume", "balance", "--reason", "fixed", "--admin",
                                   proxy.admin)
    assert code == 0, out + err
    for _ in range(4):
        assert await served_by(url, {PIN: "target"}) == "svc"

    # pinned requests, counted apart (shipped from both workers); refused ones went to legacy
    await wait_for(lambda: _pinned_counted(proxy.admin, "target", "200", 8))
    await wait_for(lambda: _pinned_counted(proxy.admin, "legacy", "200", 12))
    m = await metrics(proxy.admin)
    assert series(m, "strangler_override_requests_total", route="balance", backend="target",
                  code="200") == 8
    assert series(m, "strangler_requests_total", route="balance", backend="legacy",
                  code="200") == 0
    await proxy.stop()
    lines = [x for x in proxy.access_lines() if x.get("event") == "access"]
    assert sum(x.get("override") == "target" and x["backend"] == "target"
               and x["upstream"] == "svc" for x in lines) == 8
    assert sum(x.get("override") == "refused:rolled_back" and x["backend"] == "legacy"
               for x in lines) == 6
    assert sum(x.get("override") == "legacy" for x in lines) == 6


async def test_access_log_shows_the_pin_and_nothing_for_ordinary_requests(
        upstreams, proxy_process):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    proxy = await proxy_process(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}",
                                       TWO_ROUTES))
    assert await served_by(proxy.url + "/zero/a", {PIN: "target"}) == "svc"
    assert await served_by(proxy.url + "/zero/b") == "monolith"
    await proxy.stop()
    lines = {x["path"]: x for x in proxy.access_lines() if x.get("event") == "access"}
    assert lines["/zero/a"]["override"] == "target"
    assert lines["/zero/a"]["backend"] == "target" and lines["/zero/a"]["upstream"] == "svc"
    assert "override" not in lines["/zero/b"]
    assert lines["/zero/b"]["backend"] == "legacy"


# -- configuration ---------------------------------------------------------------------------

BASE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  svc: {url: "http://127.0.0.1:8002"}
default_upstream: monolith
"""

ROUTE = """\
  - name: {name}
    match: {{path_prefix: /{name}}}
    legacy: monolith
    target: svc
"""


def problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [str(p).replace(str(path), "routes.yaml") for p in exc.value.problems]


def test_config_defaults_and_shapes(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(BASE + """\
overrides:
  trusted:
    cidrs: [10.20.0.0/16, "::1"]
    secret_header: X-QA-Token
    secret_env: QA_SECRET
routes:
""" + ROUTE.format(name="a") + "    override: {header: X-Pin}\n"
        + ROUTE.format(name="b") + "    override: true\n"
        + ROUTE.format(name="c") + "    override: false\n"
        + ROUTE.format(name="d"))
    cfg = load_config(path)
    assert cfg.overrides is not None
    assert [str(n) for n in cfg.overrides.cidrs] == ["10.20.0.0/16", "::1/128"]
    assert cfg.overrides.secret_header == "x-qa-token"
    assert cfg.overrides.secret_env == "QA_SECRET"
    headers = [r.override.header if r.override else None for r in cfg.routes]
    assert headers == ["x-pin", "x-strangler-backend", None, None]
    no_overrides = tmp_path / "plain.yaml"
    no_overrides.write_text(BASE + "routes:\n" + ROUTE.format(name="a"))
    plain = load_config(no_overrides)
    assert plain.overrides is None and plain.routes[0].override is None


def test_config_errors_name_file_line_and_field(tmp_path):
    text = BASE + """\
overrides:
  trusted:
    cidrs: [10.0.0.0/33]
    secret_header: X-QA-Token
    secret: hunter2
routes:
""" + ROUTE.format(name="a") + "    override: {header: X-Forwarded-For}\n" \
        + ROUTE.format(name="b") + "    sticky: {header: X-User}\n" \
        + "    override: {header: X-User}\n" \
        + ROUTE.format(name="c") + "    override: {headr: X-Pin}\n" \
        + ROUTE.format(name="d") + "    override: {header: X-QA-Token}\n" \
        + ROUTE.format(name="e") + "    overide: true\n"
    got = problems(tmp_path, text)
    assert got == [
        "routes.yaml:8: overrides.trusted.cidrs[0]: invalid network '10.0.0.0/33': "
        "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
        "routes.yaml:9: overrides.trusted.secret_env: secret_header needs secret_env too (the "
        "header carries the secret; its value comes from that environment variable, never "
        "from this file)",
        "routes.yaml:10: overrides.trusted.secret: unknown key 'secret'; expected one of: "
        "cidrs, secret_header, secret_env (did you mean 'secret_env'?)",
        "routes.yaml:16: routes[0].override.header: 'x-forwarded-for' is a header the proxy "
        "handles itself; choose a name of your own, e.g. X-Strangler-Backend",
        "routes.yaml:22: routes[1].override.header: 'x-user' is also this route's sticky "
        "header",
        "routes.yaml:27: routes[2].override.headr: unknown key 'headr'; expected one of: "
        "header (did you mean 'header'?)",
        "routes.yaml:32: routes[3].override.header: 'x-qa-token' is also "
        "overrides.trusted.secret_header; use two different headers",
        "routes.yaml:37: routes[4].overide: unknown key 'overide'; expected one of: name, "
        "match, legacy, target, weight, sticky, fallback_to_legacy, retry_with_idempotency_key, "
        "flag, websocket, override, shadow, promotion (did you mean 'override'?)",
    ]
    assert all("hunter2" not in p for p in got)


def test_config_override_without_trust_is_an_error(tmp_path):
    got = problems(tmp_path, BASE + "routes:\n" + ROUTE.format(name="a")
                   + "    override: {header: X-Pin}\n")
    assert got == ["routes.yaml:11: routes[0].override: needs overrides.trusted at the top of "
                   "the file (who may pin requests); without it nobody could"]
    got = problems(tmp_path, BASE + "overrides: {trusted: {cidrs: []}}\nroutes:\n"
                   + ROUTE.format(name="a") + "    override: true\n")
    assert got == ["routes.yaml:6: overrides.trusted: trusts nobody: give cidrs, "
                   "secret_header + secret_env, or both"]
    got = problems(tmp_path, BASE + "overrides: {trusted: {secret_env: 'not a name'}}\n")
    assert got == [
        "routes.yaml:6: overrides.trusted.secret_env: invalid value 'not a name': expected an "
        "environment variable name",
        "routes.yaml:6: overrides.trusted.secret_header: secret_env needs secret_header too "
        "(the header carries the secret; its value comes from that environment variable, "
        "never from this file)",
    ]


# -- Helm ------------------------------------------------------------------------------------

HELM_ROUTE = {"name": "balance", "match": {"path_prefix": "/api/v1/balance"},
              "legacy": "monolith", "target": "monolith-2",
              "override": {"header": "X-Strangler-Backend"}}


@pytest.mark.helm
def test_helm_values_carry_overrides_and_the_secret_comes_from_a_secret_ref() -> None:
    helm = pytest.importorskip("helm_python")
    import yaml

    from tests.test_helm import CHART

    values = {
        "config": {
            "upstreams": {"monolith-2": {"url": "http://monolith-2:8080"}},
            "overrides": {"trusted": {"cidrs": ["10.20.0.0/16"],
                                      "secret_header": "X-Strangler-Override-Secret",
                                      "secret_env": "STRANGLER_OVERRIDE_SECRET"}},
            "routes": [HELM_ROUTE],
        },
        "extraEnv": [{"name": "STRANGLER_OVERRIDE_SECRET", "valueFrom": {
            "secretKeyRef": {"name": "qa-override", "key": "secret"}}}],
    }
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="edge", namespace="shop", is_install=True)
        docs = [d for path, text in manifests.items() if not path.endswith("NOTES.txt")
                for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        (cm,) = [d for d in docs if d.get("kind") == "ConfigMap"
                 and "routes.yaml" in d.get("data", {})]
        cfg = load_config("routes.yaml", text=cm["data"]["routes.yaml"])
        assert cfg.routes[0].override is not None
        assert cfg.overrides is not None and cfg.overrides.secret_env == "STRANGLER_OVERRIDE_SECRET"
        for bad, where in (
            ({"trusted": {"cidrs": [], "secret": "hunter2"}}, "secret"),
            ({"trusted": {"secret_header": "X-S"}}, "secret_env"),
        ):
            wrong = {"config": {**values["config"], "overrides": bad}}
            with pytest.raises(helm.HelmValuesError, match=where):
                chart.validate_schema(chart.merge_values(wrong))
        wrong = {"config": {**values["config"], "routes": [{**HELM_ROUTE,
                                                            "override": {"headr": "X"}}]}}
        with pytest.raises(helm.HelmValuesError, match="headr"):
            chart.validate_schema(chart.merge_values(wrong))


# -- several replicas on Unleash -------------------------------------------------------------

@pytest.mark.unleash
async def test_a_rollback_through_one_replica_refuses_target_pins_on_the_others(
        unleash_server, unleash_admin, upstreams, proxy_process) -> None:
    """At weight 0 a rollback changes no weight: the other replica must still learn of it."""
    from tests.test_unleash_backend import create_toggle

    flag = unleash_server.flag_name("pin")
    await create_toggle(unleash_admin, flag, 0)
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    unleash = f"""
    flags:
      backend: unleash
      unleash: {{{{url: "{unleash_server.url}", refresh_interval: 500ms}}}}
"""
    routes = f"""
      - name: balance
        match: {{{{path_prefix: /api/v1/balance}}}}
        legacy: monolith
        target: svc
        flag: {flag}
        override: true
        shadow: false
"""
    replicas = [await proxy_process(config(mono.port, svc.port, "{cidrs: [127.0.0.1/32]}",
                                           routes, head=TWO_UPSTREAMS + unleash),
                                    env=unleash_server.env(), name=f"replica{i}")
                for i in range(2)]
    url = "/api/v1/balance/1"
    for p in replicas:
        assert await served_by(p.url + url, {PIN: "target"}) == "svc"
    code, out, err = await run_cli("rollback", "balance", "--reason", "drill", "--admin",
                                   replicas[0].admin)
    assert code == 0, out + err
    assert await served_by(replicas[0].url + url, {PIN: "target"}) == "monolith"

    async def refused() -> bool:
        return await served_by(replicas[1].url + url, {PIN: "target"}) == "monolith"

    await wait_for(refused, timeout=10, interval=0.1)


def test_peer_check_reads_ipv4_peers_of_a_dual_stack_listener(tmp_path) -> None:
    from proxy.dataplane.overrides import OverridePolicy

    path = tmp_path / "routes.yaml"
    path.write_text(BASE + "overrides: {trusted: {cidrs: [10.20.0.0/16, 'fd00::/8']}}\n")
    policy = OverridePolicy(load_config(path), env={})
    assert policy.peer_trusted("10.20.3.4") and policy.peer_trusted("::ffff:10.20.3.4")
    assert policy.peer_trusted("fd00::1")
    assert not policy.peer_trusted("10.21.0.1") and not policy.peer_trusted("::ffff:10.21.0.1")
    assert not policy.peer_trusted("") and not policy.peer_trusted("not-an-ip")


async def test_an_unset_secret_env_trusts_nobody(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    trusted = f"{{secret_header: {SECRET_HEADER}, secret_env: {SECRET_ENV}}}"
    proxy = await inproc_proxy(config(mono.port, svc.port, trusted, TWO_ROUTES))
    for guess in ("", "x", "None"):
        assert await served_by(proxy.url + "/zero/1", {PIN: "target",
                                                       SECRET_HEADER: guess}) == "monolith"
    assert "x-qa-token" not in forwarded_names(mono)


def test_config_a_consumed_header_cannot_be_another_routes_sticky_header(tmp_path):
    text = BASE + """\
overrides:
  trusted: {cidrs: [10.0.0.0/8], secret_header: X-User-Id, secret_env: QA_SECRET}
routes:
""" + ROUTE.format(name="a") + "    override: {header: X-Session}\n" \
        + ROUTE.format(name="b") + "    sticky: {header: X-Session}\n" \
        + ROUTE.format(name="c") + "    sticky: {header: X-User-Id}\n"
    assert problems(tmp_path, text) == [
        "routes.yaml:7: overrides.trusted.secret_header: 'x-user-id' is route 'c''s sticky "
        "header; the proxy never forwards the secret header, so that route's upstream would "
        "not see it",
        "routes.yaml:13: routes[0].override: 'x-session' is route 'b''s sticky header; the "
        "proxy never forwards a pin header, on any route, so that route's upstream would not "
        "see it",
    ]
