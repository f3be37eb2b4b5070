"""routes.yaml loading: defaults, every kind of problem at its exact line and field path."""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from pathlib import Path
from textwrap import dedent

import pytest

from proxy.config.loader import ConfigError, Problem, format_problems, load_config, parse_host_port
from proxy.config.spec import (
    CompareSpec,
    HostPort,
    LimitsSpec,
    MiB,
    PromotionSpec,
    ShadowSpec,
    StickySpec,
    UnleashSpec,
)
from proxy.config.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "routes.yaml"

# Five lines; route snippets below start at line 6.
BASE = """\
version: 1
upstreams:
  old: {url: "http://127.0.0.1:8001"}
  new: {url: "http://127.0.0.1:8002"}
default_upstream: old
"""


def problems(text: str, file: str = "routes.yaml") -> list[str]:
    """`LINE: path: message` for every problem; fails the test when the file is valid."""
    with pytest.raises(ConfigError) as info:
        load_config(file, dedent(text))
    assert all(p.file == file for p in info.value.problems)
    return [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems]


def marked_line(text: str) -> int:
    """The 1-based line carrying the `# <-` marker."""
    lines = dedent(text).splitlines()
    (index,) = [i for i, line in enumerate(lines) if "# <-" in line]
    return index + 1


def route(body: str) -> str:
    """BASE plus a `routes:` list whose first item is `body` (indented as a list item)."""
    return BASE + "routes:\n" + dedent(body)


# -- the example and defaults -----------------------------------------------------------------


def test_example_routes_yaml_is_valid_and_reads_as_the_contract_says() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.listen == HostPort("0.0.0.0", 8080)
    assert config.admin.listen == HostPort("127.0.0.1", 9901)
    assert config.state_dir == ROOT / ".strangler"
    assert list(config.upstreams) == ["monolith", "monolith-2", "balance-svc"]
    assert [(u.host, u.port) for u in config.upstreams.values()] == [
        ("127.0.0.1", 8001), ("127.0.0.1", 8003), ("127.0.0.1", 8002)]
    assert config.default_upstream == "monolith"
    assert config.limits == LimitsSpec()
    assert config.flags.backend == "file" and config.gate.metrics == "local"
    (balance,) = config.routes
    route_line = EXAMPLE.read_text().splitlines().index("  - name: balance") + 1
    assert balance.name == "balance" and balance.line == route_line
    assert balance.match.path_prefix == "/api/v1/balance" and balance.match.methods == ("GET",)
    assert (balance.legacy, balance.target, balance.weight) == ("monolith", "balance-svc", 5.0)
    assert balance.sticky == StickySpec(header="x-user-id")
    assert balance.flag == "strangler.balance"
    # the values shown under shadow and promotion are the defaults, except what the route adds
    assert balance.shadow == dataclasses.replace(ShadowSpec(), compare=CompareSpec(
        headers=("content-type",),
        ignore=("$.server_time", "$.request_id", "header:date"),
        redact=("$.card_number", "$..iban"),
        array_keys=(("$.items", "id"),),
        noise_upstream="monolith-2",
    ))
    assert balance.promotion == PromotionSpec()


def test_defaults_fill_everything_left_out(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(BASE + "routes:\n  - {name: r, legacy: old, target: new}\n")
    config = load_config(path)
    assert config.listen == HostPort("0.0.0.0", 8080)
    assert config.admin.listen == HostPort("127.0.0.1", 9901)
    assert config.state_dir == tmp_path / ".strangler"
    assert config.trusted_proxies == ()
    assert config.limits.max_body == 100 * MiB and config.limits.drain_timeout == 30.0
    old = config.upstreams["old"]
    assert (old.connect_timeout, old.timeout, old.max_connections, old.base_path) == (
        1.0, 30.0, 256, "")
    (r,) = config.routes
    assert r.weight == 0.0 and r.sticky is None and r.fallback_to_legacy is True
    assert r.flag is None and r.websocket is False
    assert r.match.path is None and r.match.path_prefix is None and r.match.methods is None
    assert r.shadow == ShadowSpec() and r.shadow.enabled and r.shadow.methods == ("GET", "HEAD")
    assert r.promotion.steps == (1.0, 5.0, 25.0, 50.0, 100.0)


def test_state_dir_is_relative_to_the_file_or_to_cwd_for_text_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "r.yaml").write_text(BASE + "state_dir: state/here\n")
    assert load_config(sub / "r.yaml").state_dir == sub / "state" / "here"
    monkeypatch.chdir(tmp_path)
    assert load_config("nowhere/r.yaml", BASE).state_dir == tmp_path / ".strangler"
    assert load_config("x.yaml", BASE + "state_dir: /var/lib/s\n").state_dir == Path("/var/lib/s")


def test_all_values_are_read_and_frozen() -> None:
    config = load_config("r.yaml", route("""\
          - name: orders.v2
            match:
              path_regex: "/orders/[0-9]+"
              methods: [get, Post]
              headers: {X-Canary: "yes", X-Version: 2}
            legacy: old
            target: new
            weight: 12.25
            sticky: {cookie: session}
            fallback_to_legacy: false
            websocket: true
            shadow:
              sample: 0.25
              methods: [GET, POST]
              allow_unsafe: true
              max_body: 64KiB
              pipeline: false
              compare: {ignore: ["header:Date", "$.a..b[0]['x y'][*]"], numeric_tolerance: 0.01}
            promotion:
              steps: [0.5, 10, 100]
              auto: {enabled: true, interval: 1.5s}
              guardrail: {window: 250ms, min_requests: 5}
        """) + "gate: {url: http://prom:9090}\n")
    (r,) = config.routes
    assert r.match.methods == ("GET", "POST")
    assert r.match.headers == (("x-canary", "yes"), ("x-version", "2"))
    assert r.weight == 12.25 and r.sticky == StickySpec(cookie="session")
    assert r.fallback_to_legacy is False and r.websocket is True
    assert r.shadow.sample == 0.25 and r.shadow.max_body == 64 * 1024
    assert r.shadow.methods == ("GET", "POST") and r.shadow.allow_unsafe
    assert r.shadow.pipeline is False and ShadowSpec().pipeline is True
    assert r.shadow.compare.ignore == ("header:date", "$.a..b[0]['x y'][*]")
    assert r.promotion.steps == (0.5, 10.0, 100.0)
    assert r.promotion.auto.enabled and r.promotion.auto.interval == 1.5
    assert r.promotion.guardrail.window == 0.25 and r.promotion.guardrail.min_requests == 5
    assert config.gate.url == "http://prom:9090"
    assert isinstance(config.routes, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.weight = 50  # type: ignore[misc]


def test_gate_floors_default_to_1000_50_3_and_are_read_per_route() -> None:
    config = load_config("r.yaml", route("""\
          - {name: a, legacy: old, target: new, match: {path: /a}}
          - name: b
            legacy: old
            target: new
            promotion: {min_latency_samples: 30, early_fail_samples: 20, min_fail_events: 1}
        """))
    a, b = config.routes
    floors = ("min_latency_samples", "early_fail_samples", "min_fail_events")
    assert [getattr(a.promotion, f) for f in floors] == [1000, 50, 3]
    assert [getattr(b.promotion, f) for f in floors] == [30, 20, 1]
    assert b.promotion.min_requests == PromotionSpec().min_requests


def test_a_bad_gate_floor_names_file_line_and_field_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("deploy/routes.yaml", route("""\
          - name: a
            legacy: old
            target: new
            promotion:
              min_latency_samples: 0
              min_fail_events: -2
        """))
    assert str(info.value).splitlines() == [
        "deploy/routes.yaml:11: routes[0].promotion.min_latency_samples: 0 is out of range: "
        "must be at least 1",
        "deploy/routes.yaml:12: routes[0].promotion.min_fail_events: -2 is out of range: "
        "must be at least 1",
    ]


def test_shadow_false_turns_mirroring_off() -> None:
    config = load_config("r.yaml", route("  - {name: r, legacy: old, target: new, "
                                         "shadow: false}\n"))
    assert config.routes[0].shadow == ShadowSpec(enabled=False)


def test_upstream_urls_listen_addresses_and_trusted_proxies() -> None:
    config = load_config("r.yaml", dedent("""\
        version: 1
        listen: "[::]:8080"
        admin: {listen: "localhost:9999"}
        upstreams:
          a: {url: "http://legacy.internal/app/", timeout: 2m, connect_timeout: 250ms}
          b: {url: "http://[::1]:9000", max_connections: 4}
        default_upstream: a
        trusted_proxies: [10.0.0.0/8, 192.168.1.7, "fd00::/8"]
        limits: {max_body: 10MB, max_request_line: 16KiB, max_headers: 50}
    """))
    assert config.listen == HostPort("::", 8080) and str(config.listen) == "[::]:8080"
    assert config.admin.listen == HostPort("localhost", 9999)
    a, b = config.upstreams["a"], config.upstreams["b"]
    assert (a.host, a.port, a.base_path, a.timeout, a.connect_timeout) == (
        "legacy.internal", 80, "/app", 120.0, 0.25)
    assert (b.host, b.port, b.max_connections) == ("::1", 9000, 4)
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"))
    assert config.limits.max_body == 10_000_000 and config.limits.max_request_line == 16384
    assert config.limits.max_headers == 50


def test_unleash_backend_reads_its_block_and_needs_a_flag_per_route() -> None:
    text = dedent("""\
        version: 1
        upstreams: {old: {url: "http://127.0.0.1:1"}, new: {url: "http://127.0.0.1:2"}}
        default_upstream: old
        flags:
          backend: unleash
          unleash: {url: "http://127.0.0.1:4242/api", refresh_interval: 5s, project: p}
        routes:
          - {name: a, legacy: old, target: new, flag: strangler.a, match: {path: /a}}
          - {name: b, legacy: old, target: new, match: {path: /b}}   # <-
    """)
    assert problems(text) == [f"{marked_line(text)}: routes[1].flag: required with "
                              "flags.backend: unleash (the Unleash toggle that holds this "
                              "route's weight)"]
    assert problems(text.replace("match: {path: /b}", "flag: null")) == problems(text)
    fixed = text.replace("match: {path: /b}", "flag: strangler.b")
    flags = load_config("r.yaml", fixed).flags
    assert flags.backend == "unleash"
    assert flags.unleash == UnleashSpec(refresh_interval=5.0, project="p")


# -- problems, each at its line and path ------------------------------------------------------

CASES = [
    # (id, yaml with a `# <-` marker on the offending line, path, message fragment)
    ("version", "version: 2   # <-\nupstreams: {a: {url: 'http://h:1'}}\ndefault_upstream: a\n",
     "version", "unsupported version '2': only version 1 exists"),
    ("missing-version", "upstreams: {a: {url: 'http://h:1'}}   # <-\ndefault_upstream: a\n",
     "version", "missing required key 'version'"),
    ("top-unknown", BASE + "listn: 0.0.0.0:80   # <-\n", "listn",
     "unknown key 'listn'; expected one of: version, listen,"),
    ("listen-no-port", BASE + "listen: 0.0.0.0   # <-\n", "listen", "expected HOST:PORT"),
    ("listen-ipv6-brackets", BASE + "admin:\n  listen: '::1:9901'   # <-\n", "admin.listen",
     "put IPv6 addresses in brackets"),
    ("tls-on-http-upstream", BASE.replace('8001"}', '8001", tls: {verify: false}}   # <-'),
     "upstreams.old.tls", "tls is only used with an https:// url"),
    ("https-upstream-half-mtls", BASE.replace('"http://127.0.0.1:8001"}',
                                              '"https://x:1", tls: {key_file: k.pem}}   # <-'),
     "upstreams.old.tls.cert_file", "key_file needs cert_file too"),
    ("https-upstream-tls-version", BASE.replace('"http://127.0.0.1:8001"}',
                                                '"https://x:1", tls: {min_version: 1.1}}   # <-'),
     "upstreams.old.tls.min_version", "expected \"1.2\" or \"1.3\""),
    ("host-header", BASE.replace('8001"}', '8001", host_header: "a/b"}   # <-'),
     "upstreams.old.host_header", "expected client (the Host the client sent), upstream"),
    ("upstream-query", BASE.replace('8001"}', '8001/?a=1"}   # <-'), "upstreams.old.url",
     "cannot have a query"),
    ("upstream-no-host", BASE.replace('"http://127.0.0.1:8001"}', '"http:///x"}   # <-'),
     "upstreams.old.url", "missing or invalid host"),
    ("upstream-ftp", BASE.replace('"http://127.0.0.1:8001"}', '"ftp://h"}   # <-'),
     "upstreams.old.url", "expected http(s)://HOST:PORT"),
    ("upstream-timeout", BASE.replace('8001"}', '8001", timeout: soon}   # <-'),
     "upstreams.old.timeout", "invalid duration 'soon'"),
    ("upstream-max-connections", BASE.replace('8001"}', '8001", max_connections: 0}   # <-'),
     "upstreams.old.max_connections", "0 is out of range: must be at least 1"),
    ("upstream-no-url", BASE.replace('{url: "http://127.0.0.1:8001"}', "{timeout: 1s}   # <-"),
     "upstreams.old.url", "missing required key 'url'"),
    ("upstream-typo", BASE.replace('8001"}', '8001", timout: 1s}   # <-'),
     "upstreams.old.timout", "(did you mean 'timeout'?)"),
    ("default-unknown", BASE.replace("default_upstream: old", "default_upstream: olf   # <-"),
     "default_upstream", "unknown upstream 'olf'; defined: old, new (did you mean 'old'?)"),
    ("trusted-bad", BASE + "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.1.2.3/8   # <-\n",
     "trusted_proxies[1]", "has host bits set"),
    ("limits-size", BASE + "limits:\n  max_body: lots   # <-\n", "limits.max_body",
     "invalid size 'lots'"),
    ("limits-unknown", BASE + "limits:\n  max_bodies: 1MiB   # <-\n", "limits.max_bodies",
     "(did you mean 'max_body'?)"),
    ("gate-metrics", BASE + "gate: {metrics: graphite}   # <-\n", "gate.metrics",
     "invalid value 'graphite': expected local or prometheus"),
    ("gate-prometheus-url", BASE + "gate:\n  metrics: prometheus   # <-\n", "gate.url",
     "required with metrics: prometheus"),
    ("flags-backend", BASE + "flags: {backend: redis}   # <-\n", "flags.backend",
     "expected file or unleash"),
    ("flags-unleash-key", BASE + "flags:\n  backend: unleash\n  unleash:\n    apikey: x   # <-\n",
     "flags.unleash.apikey", "unknown key 'apikey'"),
    ("flags-unleash-with-file", BASE + "flags:\n  backend: file\n  unleash: {}   # <-\n",
     "flags.unleash", "only used with backend: unleash"),
    ("routes-not-list", BASE + "routes: {name: a}   # <-\n", "routes",
     "expected a list of routes, got a mapping"),
    ("route-no-name", route("  - legacy: old   # <-\n    target: new\n"), "routes[0].name",
     "missing required key 'name'"),
    ("route-bad-name", route("  - name: 'bad name'   # <-\n    legacy: old\n    target: new\n"),
     "routes[0].name", "invalid value 'bad name'"),
    ("route-unknown-legacy", route("  - name: a\n    legacy: mono   # <-\n    target: new\n"),
     "routes[0].legacy", "unknown upstream 'mono'"),
    ("route-same-sides", route("  - name: a\n    legacy: old\n    target: old   # <-\n"),
     "routes[0].target", "target must be a different upstream from legacy ('old')"),
    ("route-no-target", route("  - name: a   # <-\n    legacy: old\n"), "routes[0].target",
     "missing required key 'target'"),
    ("weight-typo", route("  - name: a\n    legacy: old\n    target: new\n    weigth: 5   # <-\n"),
     "routes[0].weigth", "unknown key 'weigth'; expected one of: name, match, legacy, target, "
     "weight,"),
    ("weight-range", route("  - name: a\n    legacy: old\n    target: new\n"
                           "    weight: 101  # <-\n"),
     "routes[0].weight", "101 is out of range: must be between 0 and 100"),
    ("weight-decimals", route("  - {name: a, legacy: old, target: new, weight: 1.005}  # <-\n"),
     "routes[0].weight", "more than two decimals"),
    ("weight-type", route("  - name: a\n    legacy: old\n    target: new\n"
                          "    weight: '5%'  # <-\n"),
     "routes[0].weight", "expected a number, got string '5%'"),
    ("two-path-conditions",
     route("  - name: a\n    legacy: old\n    target: new\n    match:\n      path: /a\n"
           "      path_prefix: /b   # <-\n"),
     "routes[0].match.path_prefix", "use only one of path, path_prefix, path_regex"),
    ("path-relative", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                            "      path: api   # <-\n"),
     "routes[0].match.path", "must start with '/'"),
    ("path-dotdot", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                          "      path_prefix: /api/../admin   # <-\n"),
     "routes[0].match.path_prefix", "must not contain '.' or '..' segments"),
    ("path-double-slash", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                                "      path: /api//x   # <-\n"),
     "routes[0].match.path", "must not contain '//'"),
    ("path-encoded-dot", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                               "      path_prefix: /api/%2e%2e/x   # <-\n"),
     "routes[0].match.path_prefix", "must not percent-encode '%2e'"),
    ("prefix-trailing-slash", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                                    "      path_prefix: /api/   # <-\n"),
     "routes[0].match.path_prefix", "must not end with '/'"),
    ("regex", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                    "      path_regex: '/a/(['   # <-\n"),
     "routes[0].match.path_regex", "invalid regular expression"),
    ("method-token", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                           "      methods:\n        - GET\n        - 'GE T'   # <-\n"),
     "routes[0].match.methods[1]", "invalid HTTP method 'GE T'"),
    ("methods-empty", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                            "      methods: []   # <-\n"),
     "routes[0].match.methods", "must not be empty"),
    ("header-value-type", route("  - name: a\n    legacy: old\n    target: new\n    match:\n"
                                "      headers:\n        x-on: true   # <-\n"),
     "routes[0].match.headers.x-on", "expected a header value (quote it"),
    ("sticky-both", route("  - name: a\n    legacy: old\n    target: new\n"
                          "    sticky: {header: X-U, cookie: s}   # <-\n"),
     "routes[0].sticky", "give exactly one of header or cookie"),
    ("fallback-type", route("  - name: a\n    legacy: old\n    target: new\n"
                            "    fallback_to_legacy: maybe   # <-\n"),
     "routes[0].fallback_to_legacy",
     "expected true, false or {on: [connect, timeout, reset, 502, 503, 504]}, got string "
     "'maybe'"),
    ("shadow-sample", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                            "      sample: 1.5   # <-\n"),
     "routes[0].shadow.sample", "1.5 is out of range: must be between 0 and 1"),
    ("shadow-unsafe", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                            "      methods:\n        - GET\n        - POST   # <-\n"),
     "routes[0].shadow.methods[1]", "POST is not a safe method"),
    ("shadow-scalar", route("  - name: a\n    legacy: old\n    target: new\n"
                            "    shadow: sometimes   # <-\n"),
     "routes[0].shadow", "expected a mapping, or false to turn mirroring off"),
    ("shadow-max-body", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                              "      max_body: 1.5   # <-\n"),
     "routes[0].shadow.max_body", "must be whole"),
    ("compare-ignore", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                             "      compare:\n        ignore:\n          - $.ok\n"
                             "          - server_time   # <-\n"),
     "routes[0].shadow.compare.ignore[1]", "expected 'header:NAME' or a field path"),
    ("compare-redact", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                             "      compare:\n        redact: ['$.a[x]']   # <-\n"),
     "routes[0].shadow.compare.redact[0]", "is not a field path"),
    ("compare-tolerance", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                                "      compare: {numeric_tolerance: -0.1}   # <-\n"),
     "routes[0].shadow.compare.numeric_tolerance", "must be at least 0"),
    ("compare-noise", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                            "      compare: {noise_upstream: old2}   # <-\n"),
     "routes[0].shadow.compare.noise_upstream", "unknown upstream 'old2'"),
    ("compare-noise-is-legacy", route("  - name: a\n    legacy: old\n    target: new\n"
                                      "    shadow:\n      compare:\n"
                                      "        noise_upstream: old   # <-\n"),
     "routes[0].shadow.compare.noise_upstream", "must be a second copy of legacy"),
    ("compare-array-keys", route("  - name: a\n    legacy: old\n    target: new\n    shadow:\n"
                                 "      compare:\n        array_keys:\n"
                                 "          items: id   # <-\n"),
     "routes[0].shadow.compare.array_keys.items", "is not an array path like $.items"),
    ("steps-order", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                          "      steps:\n        - 5\n        - 1   # <-\n        - 100\n"),
     "routes[0].promotion.steps[1]", "steps must increase: 1 comes after 5"),
    ("steps-last", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                         "      steps:\n        - 5\n        - 50   # <-\n"),
     "routes[0].promotion.steps[1]", "the last step must be 100, not 50"),
    ("steps-zero", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                         "      steps:\n        - 0   # <-\n        - 100\n"),
     "routes[0].promotion.steps[0]", "must be greater than 0 and at most 100"),
    ("min-requests", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                           "      min_requests: 10.5   # <-\n"),
     "routes[0].promotion.min_requests", "expected a whole number, got number 10.5"),
    ("min-latency-samples", route("  - name: a\n    legacy: old\n    target: new\n"
                                  "    promotion:\n      min_latency_samples: 0   # <-\n"),
     "routes[0].promotion.min_latency_samples", "0 is out of range: must be at least 1"),
    ("early-fail-samples", route("  - name: a\n    legacy: old\n    target: new\n"
                                 "    promotion:\n      early_fail_samples: 12.5   # <-\n"),
     "routes[0].promotion.early_fail_samples", "expected a whole number, got number 12.5"),
    ("min-fail-events", route("  - name: a\n    legacy: old\n    target: new\n"
                              "    promotion:\n      min_fail_events: many   # <-\n"),
     "routes[0].promotion.min_fail_events", "expected a whole number, got string 'many'"),
    ("min-fail-events-bool", route("  - name: a\n    legacy: old\n    target: new\n"
                                   "    promotion: {min_fail_events: true}   # <-\n"),
     "routes[0].promotion.min_fail_events", "expected a whole number, got boolean true"),
    ("mismatch-rate", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                            "      max_mismatch_rate: 2   # <-\n"),
     "routes[0].promotion.max_mismatch_rate", "must be between 0 and 1"),
    ("p99-ratio", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                        "      max_p99_ratio: 0   # <-\n"),
     "routes[0].promotion.max_p99_ratio", "must be greater than 0"),
    ("auto-interval", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                            "      auto: {enabled: true, interval: 0s}   # <-\n"),
     "routes[0].promotion.auto.interval", "must be greater than 0"),
    ("checks-need-url", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                              "      checks: [{name: c, query: q, max: 1}]   # <-\n"),
     "routes[0].promotion.checks", "checks need a Prometheus url: set gate.url"),
    ("check-no-bound", "gate: {url: 'http://p:9090'}\n" + route(
        "  - name: a\n    legacy: old\n    target: new\n    promotion:\n      checks:\n"
        "        - {name: c, query: q}   # <-\n"),
     "routes[0].promotion.checks[0]", "give max, min or both"),
    ("check-duplicate", "gate: {url: 'http://p:9090'}\n" + route(
        "  - name: a\n    legacy: old\n    target: new\n    promotion:\n      checks:\n"
        "        - {name: c, query: q, max: 1}\n        - {name: c, query: q2, min: 0}  # <-\n"),
     "routes[0].promotion.checks[1].name", "duplicate check name 'c'"),
    ("guardrail", route("  - name: a\n    legacy: old\n    target: new\n    promotion:\n"
                        "      guardrail:\n        max_error_rate: 5   # <-\n"),
     "routes[0].promotion.guardrail.max_error_rate", "must be between 0 and 1"),
    ("duplicate-route-name", route("  - {name: a, legacy: old, target: new, match: {path: /a}}\n"
                                   "  - {name: a, legacy: old, target: new, match: {path: /b}}"
                                   "  # <-\n"),
     "routes[1].name", "duplicate route name 'a' (first at line 7)"),
    ("duplicate-flag", route("  - {name: a, legacy: old, target: new, flag: f, match: {path: /a}}"
                             "\n  - {name: b, legacy: old, target: new, flag: f}  # <-\n"),
     "routes[1].flag", "flag 'f' is already used by route 'a'"),
    ("duplicate-key", BASE + "listen: 0.0.0.0:1\nlisten: 0.0.0.0:2   # <-\n", "listen",
     "duplicate key 'listen' (first at line 6)"),
    ("non-string-key", BASE + "routes:\n  - name: a\n    legacy: old\n    target: new\n"
     "    5: x   # <-\n", "routes[0]", "keys must be strings, got number 5"),
    ("yaml-syntax", BASE + "routes:\n  - name: [a\n    legacy: old   # <-\n", "syntax",
     "invalid YAML"),
    ("yaml-tab", BASE + "routes:\n\t- name: a   # <-\n", "syntax", "invalid YAML"),
    ("merge-key", BASE + "x: &x {name: a}\nroutes:\n  - <<: *x   # <-\n", "routes[0]",
     "merge keys (<<) are not supported"),
]


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_problem_is_reported_at_its_line_and_path(text: str, path: str, message: str
                                                       ) -> None:
    line = marked_line(text)
    found = problems(text)
    matching = [p for p in found if p.startswith(f"{line}: {path}: ") and message in p]
    assert matching, f"wanted {line}: {path}: ...{message}...; got {found}"


def test_top_not_mapping_reports_the_documents_first_line() -> None:
    assert problems("- a\n- b\n") == [
        "1: : expected a mapping of routes.yaml settings, got a list"]


def test_yaml_syntax_error_is_one_problem_at_the_line_yaml_reports() -> None:
    text = BASE + "routes:\n  - name: a\n    legacy: old\n   target: new\n"
    (only,) = problems(text)
    assert only.startswith("9: syntax: invalid YAML: ")


def test_empty_file_is_a_problem_not_a_crash() -> None:
    assert problems("") == ["1: : the file is empty; expected a mapping starting with "
                            "'version: 1'"]
    assert problems("# only a comment\n") == problems("")


def test_every_problem_in_the_file_is_reported_at_once() -> None:
    text = dedent("""\
        version: 1
        listen: nowhere
        upstreams:
          old: {url: "http://127.0.0.1:8001"}
          new: {url: "https://127.0.0.1:8002", tls: {verify: maybe}}
        default_upstream: old
        routes:
          - name: a
            legacy: old
            target: nwe
            weigth: 5
            shadow: {sample: 2}
          - name: b
            legacy: old
            target: new
            promotion: {steps: [50, 10, 100], min_comparisons: 0}
    """)
    found = problems(text, file="conf/routes.yaml")
    assert [p.split(":")[0] + ":" + p.split(":")[1] for p in found] == [
        "2: listen",
        "5: upstreams.new.tls.verify",
        "10: routes[0].target",
        "11: routes[0].weigth",
        "12: routes[0].shadow.sample",
        "16: routes[1].promotion.steps[1]",
        "16: routes[1].promotion.min_comparisons",
    ]


def test_problem_and_error_format_as_file_line_path_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("deploy/routes.yaml", BASE + "listen: nowhere\nlimits: {max_body: x}\n")
    err = info.value
    first = err.problems[0]
    assert first == Problem("deploy/routes.yaml", 6, "listen", first.message)
    assert str(first) == f"deploy/routes.yaml:6: listen: {first.message}"
    assert str(err) == format_problems(err.problems) == "\n".join(str(p) for p in err.problems)
    assert str(err).splitlines()[1].startswith("deploy/routes.yaml:7: limits.max_body: ")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: no such file"
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert [(p.line, p.message) for p in info.value.problems] == [(2, "not valid UTF-8")]


# -- unreachable routes ---------------------------------------------------------------------


def test_a_route_covered_by_an_earlier_prefix_can_never_match() -> None:
    text = route("""\
          - {name: api, legacy: old, target: new, match: {path_prefix: /api}}
          - {name: balance, legacy: old, target: new, match: {path: /api/v1/balance}}  # <-
    """)
    assert problems(text) == [f"{marked_line(text)}: routes[1]: route 'balance' can never match:"
                              " route 'api' (line 7) matches every request it would"]


@pytest.mark.parametrize(("first", "second"), [
    ("{}", "{path_prefix: /x}"),  # no condition at all covers everything
    ("{path_prefix: /}", "{path_regex: '/x.*'}"),
    ("{path_prefix: /a}", "{path_prefix: /a/b, methods: [GET]}"),
    ("{path_prefix: /a/b}", "{path_prefix: /a/b}"),
    ("{path: /a, methods: [GET, POST]}", "{path: /a, methods: [POST]}"),
    ("{path_regex: '/r/.*'}", "{path_regex: '/r/.*', methods: [GET]}"),
    ("{path_prefix: /a}", "{path: /a, headers: {x-beta: '1'}}"),
])
def test_unreachable_routes_are_errors(first: str, second: str) -> None:
    text = route(f"""\
          - {{name: first, legacy: old, target: new, match: {first}}}
          - {{name: second, legacy: old, target: new, match: {second}}}
    """)
    assert problems(text) == ["8: routes[1]: route 'second' can never match: route 'first' "
                              "(line 7) matches every request it would"]


@pytest.mark.parametrize(("first", "second"), [
    ("{path_prefix: /api/v1/balance}", "{path_prefix: /api/v1/balancex}"),  # not a segment
    ("{path_prefix: /a/b}", "{path_prefix: /a}"),
    ("{path: /a}", "{path_prefix: /a}"),
    ("{path_prefix: /a, methods: [GET]}", "{path: /a/b}"),
    ("{path_prefix: /a, methods: [GET]}", "{path: /a/b, methods: [GET, POST]}"),
    ("{path_prefix: /a, headers: {x-beta: '1'}}", "{path: /a/b}"),
    ("{path_regex: '/a.*'}", "{path: /a/b}"),  # regexes are not analysed
])
def test_routes_that_can_still_match_are_accepted(first: str, second: str) -> None:
    text = route(f"""\
          - {{name: first, legacy: old, target: new, match: {first}}}
          - {{name: second, legacy: old, target: new, match: {second}}}
    """)
    assert [r.name for r in load_config("r.yaml", text).routes] == ["first", "second"]


# -- scale --------------------------------------------------------------------------------------


def test_ten_thousand_routes_load_in_linear_time() -> None:
    """A guard against quadratic checks (never-matching routes, duplicates), not a performance
    target: 10,000 routes take ~1 s here; a quadratic pass would take minutes."""
    lines = [BASE, "routes:\n"]
    for i in range(10_000):
        lines.append(
            f"  - name: r{i}\n"
            f"    match: {{path_prefix: /api/v{i}/things, methods: [GET, POST]}}\n"
            f"    legacy: old\n    target: new\n    weight: {i % 100}\n"
            f"    sticky: {{header: X-User-Id}}\n"
        )
    text = "".join(lines)
    start = time.perf_counter()
    config = load_config("big.yaml", text)
    assert time.perf_counter() - start < 30.0
    assert len(config.routes) == 10_000 and config.routes[-1].line == 6 + 6 * 9_999 + 1


# -- units and addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("1s", 1.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0), (2, 2.0),
    (0.5, 0.5), ("10", 10.0)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [
    ("64KiB", 65536), ("1MiB", 1048576), ("1GiB", 1 << 30), ("10KB", 10_000), ("2MB", 2_000_000),
    ("1GB", 10**9), (512, 512), ("0.5KiB", 512)])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "fast", "1d", "-1s", "1 s s", True, None, "nan", [1]])
def test_parse_duration_rejects_with_a_hint(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["", "1TiB", "1.5", "0.3B", "-1", True, None, 1.5])
def test_parse_size_rejects_with_a_hint(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_parse_host_port() -> None:
    assert parse_host_port("[::1]:9901") == HostPort("::1", 9901)
    assert parse_host_port("example.com:80") == HostPort("example.com", 80)
    for bad in ("::1:80", "host", ":80", "host:http", "host:70000", "[zz]:1", "a b:1"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_gate_url_is_needed_once_for_prometheus_and_for_checks() -> None:
    checks = route("""\
          - name: a
            legacy: old
            target: new
            promotion: {checks: [{name: cost, query: 'sum(x)', max: 0.04}]}
    """)
    # a null url is as missing as no url; an invalid one is reported once, at gate.url
    assert problems(checks + "gate: {metrics: prometheus, url: null}\n") == [
        "10: routes[0].promotion.checks: checks need a Prometheus url: set gate.url (e.g. gate: "
        "{metrics: local, url: http://prometheus:9090})",
        "11: gate.url: required with metrics: prometheus (the Prometheus base url, e.g. "
        "http://prometheus:9090)",
    ]
    assert problems(checks + "gate: {metrics: prometheus, url: 'ftp://p'}\n") == [
        "11: gate.url: invalid url 'ftp://p': expected http(s)://HOST[:PORT][/path]"]
    config = load_config("r.yaml", checks + "gate: {metrics: prometheus, url: 'http://p:9090/'}\n")
    assert config.gate.url == "http://p:9090"
    (check,) = config.routes[0].promotion.checks
    assert (check.name, check.query, check.max, check.min) == ("cost", "sum(x)", 0.04, None)
