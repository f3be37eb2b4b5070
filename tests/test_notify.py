"""Notifications as the on-call engineer relies on them: decisions and rollbacks reach a real
webhook receiver on 127.0.0.1, a slow, dead or failing receiver never holds up a rollback, and
a webhook's secret url never shows up in a log, the audit log or an answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

import proxy.control.notify as notify
from proxy.control.notify import display_url, slack_payload
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli, wait_for

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: {weight}
        shadow: false
        fallback_to_legacy: true
        promotion:
          min_requests: 100
          max_error_rate_increase: 0.05
          guardrail: {{enabled: false}}
      - name: kyc
        match: {{path_prefix: /api/v1/kyc}}
        legacy: monolith
        target: svc
        shadow: false
"""

SECRET_PATH = "/services/T0NOTIFY/B0HOOK/s3cr3t-webhook-token"


@dataclass
class Receiver:
    """A webhook receiver: answers with `statuses` in turn (then 200); `hold` keeps every
    request waiting until `release` is set."""

    statuses: list[int] = field(default_factory=list)
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    bodies: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    retry_after: str | None = None  # sent with every 429/503 answer
    times: list[float] = field(default_factory=list)  # monotonic arrival of each request

    async def handler(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        self.bodies.append(await request.json())
        self.paths.append(request.path)
        if self.hold:
            self.held += 1
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": self.retry_after} \
            if self.retry_after and status in (429, 503) else None
        return web.json_response({"ok": status < 300}, status=status, headers=headers)

    def events(self, path: str | None = None) -> list[tuple[str, str]]:
        return [(b["event"], b["route"]) for b, p in zip(self.bodies, self.paths, strict=True)
                if path is None or p == path]


def config(mono: int, svc: int, notify_yaml: str, weight: float = 50) -> str:
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono, svc=svc,
                       weight=weight)
    return text + "notify:\n" + notify_yaml


async def start(upstreams, receiver: Receiver) -> tuple[int, int, int]:
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    hook = await upstreams("hook", handler=receiver.handler)
    return mono.port, svc.port, hook.port


async def admin(proxy, method: str, path: str, **body) -> dict:
    async with aiohttp.ClientSession() as s, s.request(method, proxy.admin + path,
                                                       json=body or None) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def notifications(proxy) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/metrics") as r:
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "strangler_notifications":
            for sample in family.samples:
                out[(sample.labels["sink"], sample.labels["result"])] = sample.value
    return out


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF_BASE", 0.02)
    monkeypatch.setattr(notify, "ATTEMPTS", 3)


# -- delivery end to end ------------------------------------------------------------------------
async def test_cli_rollback_sends_one_json_event_quoting_the_audit_hash(upstreams,
                                                                        proxy_process):
    receiver = Receiver()
    mono, svc, hook = await start(upstreams, receiver)
    secret_url = f"http://127.0.0.1:{hook}{SECRET_PATH}"
    text = config(mono, svc, "  - {url_env: STRANGLER_TEST_WEBHOOK, format: json}\n")
    p = await proxy_process(text, args=("--workers", "2"),
                            env={"STRANGLER_TEST_WEBHOOK": secret_url})
    code, out, err = await run_cli("rollback", "balance", "--reason", "p99 doubled",
                                   "--json", env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, err
    await wait_for(lambda: receiver.bodies, timeout=10)
    assert await notifications(p) == {("0", "sent"): 1.0, ("0", "failed"): 0.0,
                                      ("0", "dropped"): 0.0}
    assert await p.stop() == 0

    # one event, although two worker processes run: only the control process notifies
    (event,) = receiver.bodies
    assert receiver.paths == [SECRET_PATH]
    assert {k: event[k] for k in ("event", "decision", "route", "from_weight", "to_weight",
                                  "trigger", "reason")} == {
        "event": "rollback", "decision": "rollback", "route": "balance", "from_weight": 50.0,
        "to_weight": 0.0, "trigger": "manual", "reason": "p99 doubled"}
    assert event["actor"]
    assert event["dashboard_url"] == f"{p.admin}/#/routes/balance"
    lines = (p.dir / "state" / "audit.log").read_bytes().splitlines()
    (line,) = [raw for raw in lines if json.loads(raw)["action"] == "rollback"]
    assert event["audit"] == {"seq": json.loads(line)["seq"],
                              "hash": hashlib.sha256(line).hexdigest()}
    assert json.loads(out)["audit"]["seq"] == event["audit"]["seq"]

    # the secret is nowhere but in the process environment
    logs = p.stderr_path.read_text() + p.stdout_path.read_text()
    assert "notification sent" in logs and f"http://127.0.0.1:{hook}" in logs
    written = [f.read_bytes() for f in (p.dir / "state").rglob("*") if f.is_file()]
    for haystack in (logs, out, err, *(w.decode(errors="replace") for w in written)):
        assert "s3cr3t-webhook-token" not in haystack and "T0NOTIFY" not in haystack


async def test_unset_url_env_refuses_to_start_naming_the_variable(upstreams, proxy_process):
    receiver = Receiver()
    mono, svc, _ = await start(upstreams, receiver)
    text = config(mono, svc, "  - {url_env: STRANGLER_TEST_UNSET_HOOK}\n")
    with pytest.raises(RuntimeError, match="exited 2") as info:
        await proxy_process(text, env={"STRANGLER_TEST_UNSET_HOOK": ""})
    assert "notify[0].url_env: environment variable STRANGLER_TEST_UNSET_HOOK is not set" \
        in str(info.value)


async def test_gate_failure_sends_fail_and_rollback_with_the_gates_numbers(upstreams,
                                                                          inproc_proxy):
    receiver = Receiver()
    mono = await upstreams("monolith")
    rnd = random.Random(7)

    async def flaky(request: web.Request) -> web.Response:
        status = 500 if rnd.random() < 0.2 else 200
        return web.json_response({"served_by": "svc"}, status=status)

    svc = await upstreams("svc", handler=flaky)
    hook = await upstreams("hook", handler=receiver.handler)
    proxy = await inproc_proxy(config(mono.port, svc.port,
                                      f"  - {{url: 'http://127.0.0.1:{hook.port}/hook'}}\n"))
    async with aiohttp.ClientSession() as s:
        for i in range(300):
            async with s.get(f"{proxy.url}/api/v1/balance/{i}") as r:
                await r.read()
    await asyncio.sleep(0.3)
    proxy.server.flush()
    body = await admin(proxy, "POST", "/admin/routes/balance/promote")
    assert body["decision"] == "fail" and body["acted"]
    await wait_for(lambda: len(receiver.bodies) == 2, timeout=10)
    rollback, fail = receiver.bodies
    assert (rollback["event"], fail["event"]) == ("rollback", "fail")
    assert rollback["trigger"] == fail["trigger"] == "gate"
    assert (fail["from_weight"], fail["to_weight"]) == (50.0, 0.0)
    assert fail["reason"] == " ".join(body["reasons"])
    numbers = fail["evidence"]
    assert numbers["decision"] == "fail"
    assert numbers["target"]["requests"] == body["evidence"]["target"]["requests"] > 0
    assert numbers["target"]["errors"] == body["evidence"]["target"]["errors"] > 0
    assert numbers["legacy"]["requests"] == body["evidence"]["legacy"]["requests"]
    entry = proxy.runtime.audit.entries("balance", limit=1)[0]
    assert entry["action"] == "rollback"
    assert fail["audit"] == rollback["audit"] and fail["audit"]["seq"] == entry["seq"]


async def test_slack_format_carries_the_same_facts(upstreams, inproc_proxy):
    receiver = Receiver()
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"""\
  - url: "http://127.0.0.1:{hook}/slack"
    format: slack
    events: [weight_changed]
"""))
    body = await admin(proxy, "PUT", "/admin/routes/balance/weight", weight=12.5,
                       reason="canary <for> QA & support")
    await wait_for(lambda: receiver.bodies, timeout=10)
    (msg,) = receiver.bodies
    assert set(msg) == {"text", "blocks"}
    assert "balance" in msg["text"] and "50% → 12.5%" in msg["text"]
    types = [b["type"] for b in msg["blocks"]]
    assert types[0] == "header" and types[-1] == "context" and "section" in types
    assert msg["blocks"][0]["text"] == {"type": "plain_text", "text": "balance: weight changed"}
    reason = msg["blocks"][1]["text"]
    assert reason == {"type": "mrkdwn", "text": "canary &lt;for&gt; QA &amp; support"}
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1]
              for f in msg["blocks"][2]["fields"]}
    assert fields == {"*Weight*": "50% → 12.5%", "*Trigger*": "manual",
                      "*Actor*": body["audit"]["actor"], "*Decision*": "weight_changed"}
    context = msg["blocks"][-1]["elements"][0]["text"]
    assert f"<{proxy.admin}/#/routes/balance|dashboard>" in context
    last_line = proxy.runtime.audit.path.read_bytes().splitlines()[-1]
    h = hashlib.sha256(last_line).hexdigest()
    assert f"audit #{body['audit']['seq']} `{h[:16]}`" in context


def test_slack_payload_shows_the_gate_numbers() -> None:
    event = {"event": "fail", "decision": "fail", "route": "kyc", "from_weight": 5.0,
             "to_weight": 0.0, "trigger": "gate", "actor": "auto-promotion",
             "reason": "target error rate 20%", "dashboard_url": "http://a:9901/#/routes/kyc",
             "audit": None,
             "evidence": {"decision": "fail", "target": {"requests": 200, "error_rate": 0.2},
                          "legacy": {"requests": 800, "error_rate": 0.0},
                          "shadow": {"compared": 90, "mismatched": 9, "mismatch_rate": 0.1},
                          "p99_ratio": 1.5}}
    text = "\n".join(b["text"]["text"] for b in slack_payload(event)["blocks"]
                     if b["type"] == "section" and "text" in b)
    assert "target: 200 requests, error rate 20.00%" in text
    assert "legacy: 800 requests, error rate 0.00%" in text
    assert "shadow: 9 of 90 differed (10.00%)" in text
    assert "p99 ratio target/legacy: 1.50" in text


def test_logged_url_is_scheme_and_host_only() -> None:
    assert display_url("https://hooks.slack.com/services/T0/B0/secret?x=1") == \
        "https://hooks.slack.com"
    assert display_url("http://user:pw@[::1]:8080/x") == "http://[::1]:8080"


# -- slow, dead and failing receivers -----------------------------------------------------------
async def test_hanging_receiver_never_holds_up_a_rollback(upstreams, inproc_proxy,
                                                          fast_retries):
    receiver = Receiver(hold=True)
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"""\
  - {{url: "http://127.0.0.1:{hook}/hook", timeout: 300ms}}
"""))
    try:
        body = await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="first")
        assert body["state"] == "rolled_back"
        await wait_for(lambda: receiver.held == 1, timeout=5)
        # the receiver holds the first delivery: the next rollback is answered regardless
        body = await admin(proxy, "POST", "/admin/routes/kyc/rollback", reason="second")
        assert body["state"] == "rolled_back" and proxy.runtime.rolled_back("kyc")
        assert receiver.held >= 1 and not receiver.release.is_set()
        # each event: ATTEMPTS timed-out attempts, then counted as failed
        await wait_for(lambda: len(receiver.bodies) == 2 * notify.ATTEMPTS, timeout=20)
        counts = await wait_for(
            lambda: _when(notifications(proxy), lambda c: c[("0", "failed")] == 2), timeout=10)
        assert counts[("0", "sent")] == 0 and counts[("0", "dropped")] == 0
        assert [b["id"] for b in receiver.bodies] == \
            [receiver.bodies[0]["id"]] * 3 + [receiver.bodies[3]["id"]] * 3
    finally:
        receiver.release.set()


async def _when(coro, check):
    value = await coro
    return value if check(value) else None


async def test_receiver_answering_500_then_200_gets_the_event_once(upstreams, inproc_proxy,
                                                                   fast_retries):
    receiver = Receiver(statuses=[500, 503])
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"  - {{url: 'http://127.0.0.1:{hook}/h'}}\n"))
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="errors")
    counts = await wait_for(
        lambda: _when(notifications(proxy), lambda c: c[("0", "sent")] == 1), timeout=10)
    assert counts[("0", "failed")] == 0
    assert len(receiver.bodies) == 3  # 500, 503, then 200: delivered by the third attempt
    assert len({b["id"] for b in receiver.bodies}) == 1  # the same event, for deduplication


@pytest.mark.parametrize(("header", "cap", "least", "most"), [
    ("1", 30.0, 0.95, 5.0),  # Slack's 429: wait what it says, not the 20 ms backoff
    ("3600", 0.3, 0.25, 5.0),  # an hour: cut to the cap
])
async def test_429_retry_after_is_honoured_within_the_cap(upstreams, inproc_proxy, fast_retries,
                                                          monkeypatch, header, cap, least, most):
    monkeypatch.setattr(notify, "RETRY_AFTER_CAP", cap)
    receiver = Receiver(statuses=[429], retry_after=header)
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"  - {{url: 'http://127.0.0.1:{hook}/h'}}\n"))
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="errors")
    await wait_for(
        lambda: _when(notifications(proxy), lambda c: c[("0", "sent")] == 1), timeout=10)
    assert len(receiver.times) == 2
    assert least <= receiver.times[1] - receiver.times[0] <= most


def test_retry_after_header_forms() -> None:
    now = 1_700_000_000.0
    assert notify.retry_after("7", now) == 7.0
    assert notify.retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20.0  # now + 20 s
    assert notify.retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0  # in the past
    for junk in (None, "", "soon", "-3", "1.5", "٣"):
        assert notify.retry_after(junk, now) is None, junk


async def test_receiver_refusing_with_4xx_is_not_retried(upstreams, inproc_proxy,
                                                         fast_retries):
    receiver = Receiver(statuses=[404])
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"  - {{url: 'http://127.0.0.1:{hook}/h'}}\n"))
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="errors")
    await wait_for(
        lambda: _when(notifications(proxy), lambda c: c[("0", "failed")] == 1), timeout=10)
    await proxy.stop()
    assert len(receiver.bodies) == 1


async def test_full_queue_drops_and_counts(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.setattr(notify, "QUEUE_SIZE", 2)
    receiver = Receiver(hold=True)
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"""\
  - {{url: "http://127.0.0.1:{hook}/hook", timeout: 30s}}
"""))
    try:
        await admin(proxy, "PUT", "/admin/routes/balance/weight", weight=1, reason="r")
        await wait_for(lambda: receiver.held == 1, timeout=5)
        for w in (2, 3, 4, 5, 6):  # 2 wait in the queue, 3 find it full
            await admin(proxy, "PUT", "/admin/routes/balance/weight", weight=w, reason="r")
        assert proxy.runtime.effective("balance") == 6
        counts = await notifications(proxy)
        assert (counts[("0", "dropped")], counts[("0", "sent")]) == (3, 0)
        receiver.hold = False
        receiver.release.set()
        counts = await wait_for(
            lambda: _when(notifications(proxy), lambda c: c[("0", "sent")] == 3), timeout=10)
        assert counts[("0", "dropped")] == 3 and counts[("0", "failed")] == 0
        assert [b["to_weight"] for b in receiver.bodies] == [1, 2, 3]
    finally:
        receiver.release.set()


async def test_shutdown_drains_briefly_then_counts_what_it_drops(upstreams, inproc_proxy,
                                                                 monkeypatch):
    monkeypatch.setattr(notify, "DRAIN_TIMEOUT", 0.5)
    receiver = Receiver(hold=True)
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"""\
  - {{url: "http://127.0.0.1:{hook}/hook", timeout: 30s}}
"""))
    try:
        await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="r")
        await admin(proxy, "POST", "/admin/routes/kyc/rollback", reason="r")
        await wait_for(lambda: receiver.held == 1, timeout=5)
        counters = proxy.runtime.counters["notifications"]
        await asyncio.wait_for(proxy.stop(), 10)  # bounded by DRAIN_TIMEOUT, not the receiver
        assert counters[("0", "dropped")] == 2 and counters[("0", "sent")] == 0
    finally:
        receiver.release.set()


# -- what is sent where -------------------------------------------------------------------------
async def test_events_and_routes_filters_are_respected(upstreams, inproc_proxy):
    receiver = Receiver()
    mono, svc, hook = await start(upstreams, receiver)
    proxy = await inproc_proxy(config(mono, svc, f"""\
  - url: "http://127.0.0.1:{hook}/rollbacks"
    events: [rollback]
    routes: [balance]
  - url: "http://127.0.0.1:{hook}/all"
"""))
    await admin(proxy, "PUT", "/admin/routes/balance/weight", weight=5, reason="r")
    await admin(proxy, "POST", "/admin/routes/kyc/rollback", reason="r")
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="r")
    await admin(proxy, "POST", "/admin/routes/balance/resume", reason="r")
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="again")
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="already")  # no change
    await proxy.stop()  # drains both queues
    assert receiver.events("/rollbacks") == [("rollback", "balance")] * 2
    assert receiver.events("/all") == [
        ("weight_changed", "balance"), ("rollback", "kyc"), ("rollback", "balance"),
        ("resume", "balance"), ("rollback", "balance")]
    resume = next(b for b in receiver.bodies if b["event"] == "resume")
    assert (resume["from_weight"], resume["to_weight"], resume["trigger"]) == (0.0, 0.0,
                                                                                "manual")


async def test_reload_weight_changes_are_sent_with_trigger_reload(upstreams, inproc_proxy):
    receiver = Receiver()
    mono, svc, hook = await start(upstreams, receiver)
    hook_yaml = f"  - {{url: 'http://127.0.0.1:{hook}/h', events: [weight_changed]}}\n"
    text = config(mono, svc, hook_yaml, weight=10)
    proxy = await inproc_proxy(text)
    proxy.path.write_text(text.replace("weight: 10", "weight: 30"))
    await admin(proxy, "POST", "/admin/reload", reason="gitops sync")
    await wait_for(lambda: receiver.bodies, timeout=10)
    (event,) = receiver.bodies
    assert (event["event"], event["route"], event["from_weight"], event["to_weight"],
            event["trigger"], event["reason"]) == ("weight_changed", "balance", 10.0, 30.0,
                                                    "reload", "gitops sync")
    assert event["audit"]["seq"] == proxy.runtime.audit.entries(limit=1)[0]["seq"]


async def test_reload_applies_a_changed_notify_block(upstreams, inproc_proxy):
    receiver = Receiver()
    mono, svc, hook = await start(upstreams, receiver)
    first = f"  - {{url: 'http://127.0.0.1:{hook}/first', events: [rollback]}}\n"
    text = config(mono, svc, first)
    proxy = await inproc_proxy(text)
    await admin(proxy, "POST", "/admin/routes/kyc/rollback", reason="r")
    proxy.path.write_text(text.replace("/first", "/second"))  # the old sink drains first
    await admin(proxy, "POST", "/admin/reload", reason="new webhook")
    await admin(proxy, "POST", "/admin/routes/balance/rollback", reason="r")
    await proxy.stop()
    assert receiver.events("/first") == [("rollback", "kyc")]
    assert receiver.events("/second") == [("rollback", "balance")]
