"""Human-readable output of `strangler inventory` and `strangler retire-check`.

Endpoint templates come from request paths, which anyone can send: every character that is not
printable (or reorders text, like U+202E) is shown escaped, so a path cannot rewrite the
terminal or disguise itself.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any

from proxy.cli.output import ms, pct, table, weight


def printable(text: str) -> str:
    out = []
    for ch in text:
        if ch.isprintable() and unicodedata.category(ch) != "Cf":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def progress_line(p: dict) -> str:
    req, eps = p["requests"], p["endpoints"]
    if not req["total"]:
        return "no requests to legacy or new services"
    partly = f", {eps['partly']} partly" if eps["partly"] else ""
    return (f"{pct(req['share'], 1)} of requests ({req['target']} of {req['total']}) and "
            f"{eps['migrated']} of {eps['total']} endpoints{partly} on new services")


def _endpoint(e: dict) -> str:
    if e.get("other"):
        return "* other (beyond inventory.max_templates)"
    return printable(f"{e['method']} {e['template']}")


def inventory(view: dict, last_24h: dict | None = None) -> str:
    since = _when(view["since"])
    replicas = view.get("replicas", 1)
    head = [f"Traffic inventory since {since}"
            + (f", {replicas} replicas merged" if replicas > 1 else "")
            + f": {view['requests']} requests, {view['endpoints_total']} endpoints"]
    first = view.get("first")
    if isinstance(first, int | float) and first > view["since"]:
        head.append(f"(records begin {_when(first)}: the window is shorter than asked)")
    if not view.get("enabled", True):
        head.append("(inventory.enabled is false: nothing new is being recorded)")
    head.append("Window: " + progress_line(view["progress"]))
    if last_24h is not None:
        head.append("Last 24 h: " + progress_line(last_24h))
    rows = []
    for e in view["endpoints"]:
        served = f"{pct(e['new_share'], 1)}" if e.get("new_share") is not None else "-"
        lat = f"{ms(e['legacy_p50_ms'])} / {ms(e['legacy_p99_ms'])}"
        route = e.get("route") or "-"
        if e.get("other_routes"):
            route += f" (+{len(e['other_routes'])})"
        cells = [_endpoint(e), e["requests"], pct(e["share"], 1), pct(e["error_rate"]), lat,
                 printable(route), weight(e["weight"]) if e.get("weight") is not None else "-",
                 (e.get("state") or "-").replace("_", " "), served]
        if view.get("unrouted"):
            cells.insert(2, e["unrouted"])
        rows.append(cells)
    headers = ["ENDPOINT", "REQUESTS", "SHARE", "ERRORS", "LEGACY P50 / P99", "ROUTE", "WEIGHT",
               "STATE", "ON NEW"]
    if view.get("unrouted"):
        headers.insert(2, "UNROUTED")
    title = ("Not yet routed, by unrouted traffic (candidates for the next route):"
             if view.get("unrouted") else "Endpoints by traffic:")
    body = [title, table(headers, rows) if rows else "(none)"]
    if view.get("truncated"):
        body.append(f"... and {view['truncated']} more (--limit)")
    none = view.get("no_traffic") or []
    if none:
        body.append("")
        body.append("Declared but no traffic in the window (delete rather than migrate?):")
        body += [printable(f"  {d['method']} {d['template']}  ({d['source']})") for d in none]
    if view.get("warning"):
        body.append("WARNING: " + view["warning"])
    return "\n".join([*head, "", *body])


def retire_check(result: dict) -> str:
    name = printable(result["route"])
    lines = [f"{name}: {'READY to retire' if result['ready'] else 'NOT ready to retire'} "
             f"(last {result['days']:g} days"
             + (f", {result['replicas']} replicas" if result.get("replicas", 1) > 1 else "")
             + ")"]
    for c in result["conditions"]:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {printable(c['detail'])}")
    return "\n".join(lines)
