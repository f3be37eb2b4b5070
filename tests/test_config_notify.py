"""routes.yaml `notify:` and `admin.dashboard_url`: defaults, and every problem at its line and
field path, without ever quoting a url (it may carry a webhook's secret)."""

from __future__ import annotations

from textwrap import dedent

import pytest

from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import NOTIFY_EVENTS, NotifySpec

# Routes end at line 8; a `notify:` block appended starts at line 9.
BASE = """\
version: 1
upstreams:
  old: {url: "http://127.0.0.1:8001"}
  new: {url: "http://127.0.0.1:8002"}
default_upstream: old
routes:
  - {name: balance, legacy: old, target: new, match: {path_prefix: /b}}
  - {name: kyc, legacy: old, target: new, match: {path_prefix: /kyc}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("routes.yaml", BASE + dedent(text))
    return [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems]


def test_defaults_and_every_field() -> None:
    config = load_config("routes.yaml", BASE + dedent("""\
        admin: {dashboard_url: "https://strangler.example.com/"}
        notify:
          - url_env: SLACK_WEBHOOK
            format: slack
            events: [rollback, fail]
            routes: [kyc]
            timeout: 2s
          - url: http://hooks.internal:8080/strangler
        """))
    slack, plain = config.notify
    assert slack == NotifySpec(url_env="SLACK_WEBHOOK", format="slack",
                               events=("rollback", "fail"), routes=("kyc",), timeout=2.0,
                               line=11)
    assert plain == NotifySpec(url="http://hooks.internal:8080/strangler", line=16)
    assert plain.events == NOTIFY_EVENTS and plain.format == "json" and plain.routes is None
    assert plain.timeout == 5.0
    assert config.admin.dashboard_url == "https://strangler.example.com"
    assert load_config("routes.yaml", BASE).notify == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("notify:\n  - {url_env: HOOK, events: [rollbak]}\n",
     "10: notify[0].events[0]: unknown event 'rollbak'; expected one of: rollback, fail, "
     "promote, complete, resume, weight_changed, inconclusive, approval_requested (did you "
     "mean 'rollback'?)"),
    ("notify:\n  - url_env: HOOK\n    events: [fail, fail]\n",
     "11: notify[0].events[1]: duplicate event 'fail'"),
    ("notify:\n  - {url_env: HOOK, events: []}\n",
     "10: notify[0].events: must not be empty (leave it out for every event: rollback, fail, "
     "promote, complete, resume, weight_changed, inconclusive, approval_requested)"),
    ("notify:\n  - {url_env: HOOK, format: teams}\n",
     "10: notify[0].format: invalid value 'teams': expected json or slack"),
    ("notify:\n  - {timeout: 1s}\n",
     "10: notify[0]: set exactly one of 'url' and 'url_env' (url_env names the environment "
     "variable holding the url, for webhooks whose url is a secret)"),
    ("notify:\n  - url: http://a/b\n    url_env: HOOK\n",
     "11: notify[0].url_env: set exactly one of 'url' and 'url_env' (url_env names the "
     "environment variable holding the url, for webhooks whose url is a secret)"),
    ("notify:\n  - {url_env: 'my hook'}\n",
     "10: notify[0].url_env: invalid value 'my hook': expected an environment variable name"),
    ("notify:\n  - {url_env: HOOK, routes: [balanse]}\n",
     "10: notify[0].routes[0]: unknown route 'balanse'; defined: balance, kyc "
     "(did you mean 'balance'?)"),
    ("notify:\n  - {url_env: HOOK, timeout: 0s}\n",
     "10: notify[0].timeout: must be greater than 0"),
    ("notify:\n  - {url_env: HOOK, retries: 3}\n",
     "10: notify[0].retries: unknown key 'retries'; expected one of: url, url_env, events, "
     "format, routes, timeout"),
    ("notify: {url_env: HOOK}\n",
     "9: notify: expected a list of notification sinks, e.g. [{url_env: SLACK_WEBHOOK, "
     "format: slack}], got a mapping"),
    ("notfy: []\n", "9: notfy: unknown key 'notfy'"),
])
def test_problems_name_line_and_field(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_a_bad_url_is_reported_without_quoting_it() -> None:
    (found,) = problems("notify:\n  - {url: 'ftp://hooks.example.com/T0/s3cr3t'}\n")
    assert found == "10: notify[0].url: the url must be an http(s)://HOST[:PORT]/path url"
    assert "s3cr3t" not in found


def test_every_problem_is_reported_at_once() -> None:
    found = problems("notify:\n  - {url_env: HOOK, events: [rolback], format: xml}\n"
                     "  - {}\n")
    assert [p.split(":", 2)[1].strip() for p in found] == [
        "notify[0].events[0]", "notify[0].format", "notify[1]"]


# -- the Helm chart's values schema describes the same fields ----------------------------------
@pytest.fixture(scope="module")
def chart():
    helm = pytest.importorskip("helm_python")
    from pathlib import Path

    with helm.Chart.load(Path(__file__).resolve().parent.parent / "helm" / "strangler") as c:
        yield c


def test_helm_schema_accepts_a_notify_block(chart) -> None:
    chart.validate_schema(chart.merge_values({"config": {
        "admin": {"dashboard_url": "https://strangler.example.com"},
        "notify": [{"url_env": "SLACK_WEBHOOK", "format": "slack", "events": ["rollback"],
                    "routes": ["balance"], "timeout": "2s"},
                   {"url": "http://hooks.internal/strangler"}]}}))


@pytest.mark.parametrize("sink", [
    {"url_env": "HOOK", "events": ["rollbak"]},
    {"url_env": "HOOK", "format": "teams"},
    {"url": "http://a/b", "url_env": "HOOK"},
    {"events": ["rollback"]},
    {"url_env": "HOOK", "retries": 3},
])
def test_helm_schema_rejects_what_the_loader_rejects(chart, sink: dict) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match="/config/notify/0"):
        chart.validate_schema(chart.merge_values({"config": {"notify": [sink]}}))
