"""routes.yaml `notify:`: the notification sinks, checked by the config walker.

Kept apart from `proxy.config.loader` (which calls it) so the loader stays one file per concern; the
problems it reports read like every other one: file:line, field path, what to write instead.
A url is never repeated in a message: it may carry a webhook's secret.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from proxy.config.checks import BAD, ENV_RE
from proxy.config.spec import NOTIFY_EVENTS, NotifySpec

NOTIFY_KEYS = ("url", "url_env", "events", "format", "routes", "timeout")
FORMATS = ("json", "slack")


def _did_you_mean(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def url_problem(value: str) -> str | None:
    """Why `value` is not a usable webhook url (the message never quotes it), or None."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError when invalid
    except ValueError:
        return "is not a valid url"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s)://HOST[:PORT]/path url"
    return None


def notify_sinks(w: Any, e: Any, route_names: Sequence[str] | None) -> tuple[NotifySpec, ...]:
    """`notify:` as specs; `w` is the config walker (`proxy.config.loader._Walker`).

    `route_names` is None when the routes had problems: references to them are then not
    judged (the route may be the one that was rejected).
    """

    items = w.sequence(e, "a list of notification sinks, e.g. [{url_env: SLACK_WEBHOOK, "
                       "format: slack}]")
    out: list[NotifySpec] = []
    for item in items or ():
        m = w.mapping(item, NOTIFY_KEYS, what="a mapping with url or url_env")
        if m is None:
            continue
        kw: dict[str, Any] = {"line": item.line}
        ok = True
        if ("url" in m) == ("url_env" in m):
            where = m["url_env"] if "url_env" in m else item
            w.problem(where.line, f"{item.path}.url_env" if "url_env" in m else item.path,
                      "set exactly one of 'url' and 'url_env' (url_env names the environment "
                      "variable holding the url, for webhooks whose url is a secret)")
            ok = False
        if "url" in m:
            value = w.string(m["url"], what="an http(s) url")
            if value is BAD:
                ok = False
            elif (why := url_problem(value)) is not None:
                w.problem(m["url"].line, m["url"].path, f"the url {why}")
                ok = False
            else:
                kw["url"] = value.strip()
        if "url_env" in m:
            value = w.string(m["url_env"], what="an environment variable name", pattern=ENV_RE,
                             pattern_hint="expected an environment variable name")
            if value is BAD:
                ok = False
            else:
                kw["url_env"] = value
        if "events" in m:
            events = _events(w, m["events"])
            ok = ok and events is not BAD
            if events is not BAD:
                kw["events"] = events
        if "format" in m:
            value = w.choice(m["format"], FORMATS)
            ok = ok and value is not BAD
            if value is not BAD:
                kw["format"] = value
        if "routes" in m:
            routes = _routes(w, m["routes"], route_names)
            ok = ok and routes is not BAD
            if routes is not BAD:
                kw["routes"] = routes
        if "timeout" in m:
            value = w.duration(m["timeout"])
            ok = ok and value is not BAD
            if value is not BAD:
                kw["timeout"] = value
        if ok:
            out.append(NotifySpec(**kw))
    return tuple(out)


def _events(w: Any, e: Any) -> Any:

    items = w.sequence(e, "a list of events")
    if items is None:
        return BAD
    if not items:
        return w.problem(e.line, e.path, "must not be empty (leave it out for every event: "
                         f"{', '.join(NOTIFY_EVENTS)})")
    out: list[str] = []
    ok = True
    for item in items:
        value = w.string(item, what="an event name")
        if value is BAD:
            ok = False
        elif value not in NOTIFY_EVENTS:
            ok = w.reject(item.line, item.path, f"unknown event '{value}'; expected one of: "
                          f"{', '.join(NOTIFY_EVENTS)}{_did_you_mean(value, NOTIFY_EVENTS)}")
        elif value in out:
            ok = w.reject(item.line, item.path, f"duplicate event '{value}'")
        else:
            out.append(value)
    return tuple(out) if ok else BAD


def _routes(w: Any, e: Any, route_names: Sequence[str] | None) -> Any:

    items = w.sequence(e, "a list of route names")
    if items is None:
        return BAD
    if not items:
        return w.problem(e.line, e.path, "must not be empty (leave it out for every route)")
    out: list[str] = []
    ok = True
    for item in items:
        value = w.string(item, what="a route name")
        if value is BAD:
            ok = False
        elif route_names is not None and value not in route_names:
            known = ", ".join(route_names) or "none"
            ok = w.reject(item.line, item.path, f"unknown route '{value}'; defined: {known}"
                          f"{_did_you_mean(value, route_names)}")
        elif value in out:
            ok = w.reject(item.line, item.path, f"duplicate route '{value}'")
        else:
            out.append(value)
    return tuple(out) if ok else BAD


__all__ = ["FORMATS", "NOTIFY_KEYS", "notify_sinks", "url_problem"]
