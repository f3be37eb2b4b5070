"""Notifications: decisions and rollbacks posted to webhooks (routes.yaml `notify:`).

The runtime calls `Notifier.emit` after a change took effect (traffic moved, audit written);
emit only puts the event on each matching sink's bounded queue and returns, so a slow or dead
receiver can never hold up a rollback or a request. Each sink has one delivery task (one shared
ClientSession): retries with exponential backoff and jitter on connection errors, timeouts, 5xx,
408 and 429, a bounded number of attempts; other 4xx answers are not retried. A 429 or 503 with
`Retry-After` (seconds or an HTTP date; Slack sends it) waits that long instead, at most
RETRY_AFTER_CAP seconds (a longer wait is cut to the cap and logged). A full queue drops
the event. Every outcome is counted in `strangler_notifications_total{sink, result}`.

A sink's url can be a secret (a Slack webhook): it is never logged or put in a message, only
its `scheme://host[:port]`; the `sink` label is the sink's index in `notify:`.
Runs in the control process only; `stop()` drains for a few seconds, then logs what it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import structlog

from proxy.config.spec import Config, NotifySpec
from proxy.config.values import url_problem
from proxy.control.audit import entry_hash

log = structlog.get_logger("strangler.notify")

QUEUE_SIZE = 256  # events waiting per sink; beyond, new events are dropped (and counted)
ATTEMPTS = 4  # deliveries tried per event, the first included
BACKOFF_BASE = 0.5  # seconds before the 2nd attempt (doubling, with jitter)
BACKOFF_CAP = 8.0
DRAIN_TIMEOUT = 3.0  # at shutdown: how long queued events may still be delivered
RESULTS = ("sent", "failed", "dropped")
RETRY_4XX = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
RETRY_AFTER_CAP = 30.0  # seconds: the longest Retry-After honoured (the sink's queue waits)


def display_url(url: str) -> str:
    """`scheme://host[:port]` of a url: all of it that may be logged."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


def dashboard_base(config: Config) -> str:
    if config.admin.dashboard_url:
        return config.admin.dashboard_url.rstrip("/") + "/"
    return f"http://{config.admin.listen}/"


# -- payloads ------------------------------------------------------------------------------------
def summarize(evidence: Any) -> dict | None:
    """The gate's numbers in a few fields (the full evidence stays in the audit log)."""
    if not isinstance(evidence, dict):
        return None
    ev = evidence.get("evidence")
    if "decision" not in evidence or not isinstance(ev, dict):
        return evidence  # the guardrail's window numbers, or an error: small already
    if "error" in ev:
        return {"decision": evidence["decision"], "reasons": evidence.get("reasons", []),
                "error": ev["error"]}

    def side(b: Any) -> dict | None:
        if not isinstance(b, dict):
            return None
        return {k: b.get(k) for k in ("requests", "errors", "error_rate", "p99_seconds")}

    shadow = ev.get("shadow") if isinstance(ev.get("shadow"), dict) else {}
    return {
        "decision": evidence["decision"],
        "reasons": list(evidence.get("reasons", [])),
        "step": ev.get("step"),
        "since": ev.get("since"),
        "since_reason": ev.get("since_reason"),
        "target": side(ev.get("target")),
        "legacy": side(ev.get("legacy")),
        "fallbacks": ev.get("fallbacks"),
        "error_rate_increase": ev.get("error_rate_increase"),
        "p99_ratio": ev.get("p99_ratio"),
        "shadow": {k: shadow.get(k) for k in ("compared", "mismatched", "mismatch_rate",
                                              "errors", "target_errors")},
        "paired_latency": ev.get("paired_latency"),
        "approval": evidence.get("approval"),
        "checks": [{k: c.get(k) for k in ("name", "value", "ok")}
                   for c in ev.get("checks", []) if isinstance(c, dict)],
    }


TITLES = {
    "rollback": "rolled back",
    "fail": "promotion gate failed",
    "promote": "promoted",
    "complete": "migration complete",
    "resume": "resumed",
    "weight_changed": "weight changed",
    "inconclusive": "gate inconclusive: auto-promotion paused",
    "approval_requested": "approval needed",
}
EMOJI = {
    "rollback": ":rotating_light:",
    "fail": ":x:",
    "promote": ":arrow_up:",
    "complete": ":white_check_mark:",
    "resume": ":arrow_forward:",
    "weight_changed": ":level_slider:",
    "inconclusive": ":hourglass:",
    "approval_requested": ":raised_hand:",
}


def _pct(value: Any) -> str:
    return f"{value:g}%" if isinstance(value, int | float) else "-"


def _rate(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "-"


def _esc(text: str, limit: int) -> str:
    """Slack mrkdwn: &, < and > escaped; long text cut."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: dict) -> dict:
    """A Slack incoming-webhook message with the same facts as the json event."""
    kind = event["event"]
    route = event.get("route") or "all routes"
    title = f"{route}: {TITLES.get(kind, kind)}"
    weights = f"{_pct(event.get('from_weight'))} → {_pct(event.get('to_weight'))}"
    text = (f"{EMOJI.get(kind, '')} strangler {title} ({weights}, {event['trigger']}, "
            f"by {event['actor']}): {event.get('reason') or ''}").strip()
    fields = [
        {"type": "mrkdwn", "text": f"*Weight*\n{weights}"},
        {"type": "mrkdwn", "text": f"*Trigger*\n{_esc(event['trigger'], 100)}"},
        {"type": "mrkdwn", "text": f"*Actor*\n{_esc(event['actor'], 200)}"},
        {"type": "mrkdwn", "text": f"*Decision*\n{_esc(event['decision'], 100)}"},
    ]
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _esc(event.get("reason") or "(no reason)", 2900)}},
        {"type": "section", "fields": fields},
    ]
    ev = event.get("evidence")
    if isinstance(ev, dict) and "target" in ev and isinstance(ev["target"], dict):
        t, leg = ev["target"], ev.get("legacy") or {}
        lines = [f"target: {t.get('requests')} requests, error rate {_rate(t.get('error_rate'))}",
                 f"legacy: {leg.get('requests')} requests, error rate "
                 f"{_rate(leg.get('error_rate'))}"]
        shadow = ev.get("shadow")
        if isinstance(shadow, dict) and shadow.get("compared"):
            lines.append(f"shadow: {shadow.get('mismatched')} of {shadow.get('compared')} "
                         f"differed ({_rate(shadow.get('mismatch_rate'))})")
        if isinstance(ev.get("p99_ratio"), int | float):
            lines.append(f"p99 ratio target/legacy: {ev['p99_ratio']:.2f}")
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _esc("\n".join(lines), 2900)}})
    context = [f"<{event['dashboard_url']}|dashboard>"]
    audit = event.get("audit")
    if isinstance(audit, dict):
        context.append(f"audit #{audit.get('seq')} `{str(audit.get('hash'))[:16]}`")
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": text, "blocks": blocks}


def render(fmt: str, event: dict) -> dict:
    return slack_payload(event) if fmt == "slack" else event


# -- sinks ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class Sink:
    index: int
    spec: NotifySpec
    url: str  # resolved (url_env read); never logged
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    task: asyncio.Task | None = None
    inflight: dict | None = None

    @property
    def label(self) -> str:
        return str(self.index)

    @property
    def shown(self) -> str:
        return display_url(self.url)

    def wants(self, event: str, route: str | None) -> bool:
        if event not in self.spec.events:
            return False
        return self.spec.routes is None or route is None or route in self.spec.routes


def resolve(spec: NotifySpec, index: int, source: str) -> tuple[str | None, str | None]:
    """(url, None) or (None, problem): the problem names the variable, never its value."""
    where = f"{source}:{spec.line}: notify[{index}]"
    if spec.url_env is None:
        return spec.url, None
    value = os.environ.get(spec.url_env, "").strip()
    if not value:
        return None, (f"{where}.url_env: environment variable {spec.url_env} is not set "
                      "(it must hold the webhook url)")
    why = url_problem(value)
    if why is not None:
        return None, f"{where}.url_env: the value of {spec.url_env} {why}"
    return value, None


class Notifier:
    """Sinks of the running config, their queues and delivery tasks."""

    def __init__(self, counters: dict[tuple[str, ...], int]) -> None:
        self.counters = counters  # (sink, result) -> count; read by proxy.api.metrics
        self.sinks: list[Sink] = []
        self.dashboard = "http://127.0.0.1:9901/"
        self.session: Any = None
        self.retiring: set[asyncio.Task] = set()  # sinks a reload removed, draining
        # a shared audit trail chains entries in the background: `settle(entry)` gives an
        # entry's seq and hash before the event is sent (AuditTrail.settle)
        self.settle: Any = None

    # lifecycle --------------------------------------------------------------------------------
    def configure(self, config: Config) -> list[str]:
        """Follow `config.notify`; returns the sinks' problems (those sinks stay off)."""
        self.dashboard = dashboard_base(config)
        problems: list[str] = []
        keep: dict[tuple[NotifySpec, str], Sink] = {
            (replace(s.spec, line=0), s.url): s for s in self.sinks
        }
        sinks: list[Sink] = []
        for i, spec in enumerate(config.notify):
            url, problem = resolve(spec, i, str(config.source))
            if problem is not None:
                problems.append(problem)
                continue
            assert url is not None
            old = keep.pop((replace(spec, line=0), url), None)
            sink = old if old is not None else Sink(i, spec, url)
            if old is not None and old.index != i:  # moved in the list: its label follows
                sink.index = i
            sink.spec = spec
            sinks.append(sink)
            for result in RESULTS:
                self.counters.setdefault((sink.label, result), 0)
        for gone in keep.values():  # removed from the file: what it still holds is dropped
            self._retire(gone)
        self.sinks = sinks
        if self.session is not None:
            for sink in sinks:
                self._spawn(sink)
        for problem in problems:
            log.error("notification sink disabled", problem=problem)
        return problems

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16), auto_decompress=False)
        for sink in self.sinks:
            self._spawn(sink)
        if self.sinks:
            log.info("notifications", sinks=[f"{s.label}:{s.shown}" for s in self.sinks])

    def _spawn(self, sink: Sink) -> None:
        if sink.task is None:
            sink.task = asyncio.get_running_loop().create_task(self._run(sink))

    def _retire(self, sink: Sink) -> None:
        """A sink removed by a reload still gets DRAIN_TIMEOUT to deliver what it holds."""
        if sink.task is None:
            return
        async def drain() -> None:
            dropped = await self._drain([sink], DRAIN_TIMEOUT)
            if dropped:
                log.warning("notifications dropped: sink removed by a reload", sink=sink.label,
                            url=sink.shown, dropped=dropped)

        task = asyncio.get_running_loop().create_task(drain())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def reconfigure(self, config: Config) -> None:
        """`runtime.on_reload` hook."""
        self.configure(config)

    async def stop(self, timeout: float | None = None) -> None:
        """Deliver what is queued for up to `timeout` seconds, then drop the rest (logged)."""
        timeout = DRAIN_TIMEOUT if timeout is None else timeout
        dropped = await self._drain(self.sinks, timeout)
        if self.retiring:
            await asyncio.wait(set(self.retiring), timeout=timeout + 1)
        if dropped:
            log.warning("notifications dropped at shutdown", dropped=dropped,
                        drain_timeout=timeout)
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _drain(self, sinks: list[Sink], timeout: float) -> int:
        """Let `sinks` deliver what they hold for up to `timeout`; stop them; count the rest."""
        waits = [asyncio.ensure_future(s.queue.join()) for s in sinks if s.task is not None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
        dropped = 0
        for sink in sinks:
            lost = sink.queue.qsize() + (1 if sink.inflight is not None else 0)
            if sink.task is not None:
                sink.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sink.task
                sink.task = None
            if lost:
                self._count(sink, "dropped", lost)
                dropped += lost
        return dropped

    # emitting ---------------------------------------------------------------------------------
    def emit(self, event: str, route: str | None, *, from_weight: Any, to_weight: Any,
             trigger: str, actor: str, reason: str, decision: str | None = None,
             evidence: Any = None, audit: dict | None = None,
             audit_hash: str | None = None) -> None:
        """Queue one event for every sink that wants it; never blocks, never raises."""
        try:
            targets = [s for s in self.sinks if s.wants(event, route)]
            if not targets:
                return
            payload = {
                "source": "strangler",
                "id": uuid.uuid4().hex,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": event,
                "decision": decision or event,
                "route": route,
                "from_weight": from_weight,
                "to_weight": to_weight,
                "trigger": trigger,
                "actor": actor,
                "reason": reason,
                "evidence": summarize(evidence),
                "dashboard_url": self.dashboard + (f"#/routes/{route}" if route else ""),
                "audit": ({"seq": audit.get("seq"), "hash": audit_hash}
                          if audit is not None and audit_hash else None),
            }
            if audit is not None and audit.get("pending"):
                payload["audit"] = {"seq": None, "hash": None, "uid": audit.get("uid"),
                                    "pending": True}
            for sink in targets:
                try:
                    sink.queue.put_nowait(payload)
                except asyncio.QueueFull:
                    self._count(sink, "dropped")
                    log.warning("notification dropped: queue full", sink=sink.label,
                                url=sink.shown, kind=event, route=route)
        except Exception:  # a notification must never break the change that caused it
            log.exception("notification not queued", kind=event, route=route)

    # delivering -------------------------------------------------------------------------------
    def _count(self, sink: Sink, result: str, n: int = 1) -> None:
        key = (sink.label, result)
        self.counters[key] = self.counters.get(key, 0) + n

    async def _run(self, sink: Sink) -> None:
        while True:
            payload = await sink.queue.get()
            sink.inflight = payload
            try:
                await self._settle_audit(payload)
                ok = await self._deliver(sink, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification delivery crashed", sink=sink.label)
                ok = False
            finally:
                sink.queue.task_done()
            sink.inflight = None
            self._count(sink, "sent" if ok else "failed")

    async def _settle_audit(self, payload: dict) -> None:
        """Quote the entry's seq and hash once the shared trail has chained it (bounded wait;
        while the store is down the event says `pending` and carries the entry's uid)."""
        audit = payload.get("audit")
        if self.settle is None or not isinstance(audit, dict) or not audit.get("pending"):
            return
        entry = await self.settle({"uid": audit["uid"], "pending": True}, 5.0)
        if entry is not None and not entry.get("pending"):
            payload["audit"] = {"seq": entry.get("seq"), "hash": entry_hash(entry),
                                "uid": audit["uid"]}

    async def _deliver(self, sink: Sink, payload: dict) -> bool:
        import aiohttp

        body = render(sink.spec.format, payload)
        timeout = aiohttp.ClientTimeout(total=sink.spec.timeout)
        why = ""
        for attempt in range(1, ATTEMPTS + 1):
            asked: float | None = None
            try:
                async with self.session.post(sink.url, json=body, timeout=timeout,
                                             allow_redirects=False) as resp:
                    status = resp.status
                    asked = retry_after(resp.headers.get("Retry-After"), time.time()) \
                        if status in RETRY_AFTER_STATUSES else None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # type only: an exception's text may quote the url
                why = type(exc).__name__
            else:
                if status < 300:
                    log.info("notification sent", sink=sink.label, url=sink.shown,
                             kind=payload["event"], route=payload["route"], attempt=attempt)
                    return True
                why = f"HTTP {status}"
                if 300 <= status < 500 and status not in RETRY_4XX:
                    log.warning("notification refused (not retried)", sink=sink.label,
                                url=sink.shown, kind=payload["event"],
                                route=payload["route"], status=status)
                    return False
            if attempt < ATTEMPTS:
                ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
                delay = ceiling / 2 + random.uniform(0, ceiling / 2)
                extra: dict[str, Any] = {}
                if asked is not None:  # the receiver said when: its word, within the cap
                    delay = min(asked, RETRY_AFTER_CAP)
                    extra = {"retry_after": asked, "capped": asked > RETRY_AFTER_CAP}
                log.info("notification retry", sink=sink.label, url=sink.shown,
                         kind=payload["event"], attempt=attempt, error=why,
                         retry_in=round(delay, 3), **extra)
                await asyncio.sleep(delay)
        log.warning("notification failed", sink=sink.label, url=sink.shown,
                    kind=payload["event"], route=payload["route"], attempts=attempt, error=why)
        return False


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date, RFC 9110 10.2.3);
    None when absent or not understood (then the usual backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


__all__ = ["ATTEMPTS", "Notifier", "Sink", "display_url", "render", "retry_after",
           "slack_payload", "summarize"]
