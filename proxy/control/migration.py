"""The whole migration from the inventory's rollups: the endpoint table (`strangler inventory`),
progress (share of requests and endpoints on new services), and retirement readiness.

Everything here works on a *raw* inventory, a plain JSON object that several replicas' answers
can be merged into (`merge_raw`): rows of counts and latency histograms add up exactly, so the
CLI asking every replica's admin API computes the same table one proxy would.

    raw = {"since", "until", "first", "grain",
           "rows": [[method, template, route, backend, requests, errors, [[bucket, n], ...]]],
           "routes": {name: {"weight", "state"}}, "declared": [[method, template, source]],
           "replicas": 1}

An endpoint is (method, path template); `route` `_default` means no route matched (legacy's
default upstream); backend `proxy` counts requests the proxy answered itself (a client that left,
the connection cap), which are in the request totals but on neither side of a migration.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterable
from typing import Any

from proxy.control.rollups import DAY, Key, Stats, Traffic, add_stats
from proxy.dataplane.inventory import OTHER, quantile

DEFAULT_ROUTE = "_default"
MIGRATED_SHARE = 0.99  # an endpoint whose share on new services is at least this is "moved"
_SINCE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(m|h|d|w)\s*")
_UNITS = {"m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}


def parse_since(text: str) -> float:
    """`7d`, `24h`, `30m`, `2w` -> seconds; ValueError with the accepted forms."""
    m = _SINCE.fullmatch(text or "")
    if m is None:
        raise ValueError(f"invalid window {text!r}: expected a number and a unit, e.g. 30m, 24h, "
                         "7d or 2w")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"invalid window {text!r}: must be more than 0")
    return seconds


# -- raw ------------------------------------------------------------------------------------------
def raw_from(traffic: Traffic, routes: dict[str, dict], declared: Iterable[Any]) -> dict:
    return {
        "since": traffic.since,
        "until": traffic.until,
        "first": traffic.first,
        "grain": traffic.grain,
        "rows": [[*k, s[0], s[1], sorted(s[2].items())] for k, s in traffic.totals().items()],
        "routes": routes,
        "declared": [[d.method, d.path, d.source] for d in declared],
        "replicas": 1,
    }


def raw_rows(raw: dict) -> dict[Key, Stats]:
    out: dict[Key, Stats] = {}
    for method, template, route, backend, requests, errors, latency in raw.get("rows", ()):
        add_stats(out, (method, template, route, backend), requests, errors, latency)
    return out


def merge_raw(raws: list[dict]) -> dict:
    """Several replicas' raw inventories as one: counts and histograms added; the window is the
    union; `first` the latest (the merged records are complete only from then on)."""
    if len(raws) == 1:
        return raws[0]
    rows: dict[Key, Stats] = {}
    declared: dict[tuple, list] = {}
    for raw in raws:
        for key, s in raw_rows(raw).items():
            add_stats(rows, key, s[0], s[1], s[2])
        for d in raw.get("declared", ()):
            declared.setdefault((d[0], d[1]), d)
    firsts = [r.get("first") for r in raws]
    routes = raws[0].get("routes", {})
    differ = any(r.get("routes", {}) != routes for r in raws[1:])
    return {
        "since": min(r["since"] for r in raws),
        "until": max(r["until"] for r in raws),
        "first": None if None in firsts else max(firsts),
        "grain": max(r.get("grain", 0) for r in raws),
        "rows": [[*k, s[0], s[1], sorted(s[2].items())] for k, s in rows.items()],
        "routes": routes,
        "routes_differ": differ or any(r.get("routes_differ") for r in raws),
        "declared": list(declared.values()),
        "replicas": sum(r.get("replicas", 1) for r in raws),
    }


# -- the endpoint table ---------------------------------------------------------------------------
def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def endpoints(raw: dict) -> list[dict]:
    """One entry per endpoint, busiest first."""
    by_ep: dict[tuple[str, str], dict] = {}
    total = 0
    for (method, template, route, backend), (req, err, hist) in raw_rows(raw).items():
        total += req
        e = by_ep.get((method, template))
        if e is None:
            e = by_ep[(method, template)] = {
                "method": method, "template": template, "requests": 0, "errors": 0,
                "legacy": 0, "target": 0, "unrouted": 0, "routes": {}, "_hist": {}}
        e["requests"] += req
        e["errors"] += err
        if backend in ("legacy", "target"):
            e[backend] += req
        if route == DEFAULT_ROUTE:
            e["unrouted"] += req
        else:
            e["routes"][route] = e["routes"].get(route, 0) + req
        if backend == "legacy":
            for i, n in hist.items():
                e["_hist"][i] = e["_hist"].get(i, 0) + n
    info = raw.get("routes", {})
    out = []
    for e in by_ep.values():
        hist = e.pop("_hist")
        routes = e.pop("routes")
        route = max(routes, key=lambda r: (routes[r], r)) if routes else None
        served = e["legacy"] + e["target"]
        r = info.get(route) if route else None
        e.update({
            "share": e["requests"] / total if total else 0.0,
            "error_rate": e["errors"] / e["requests"] if e["requests"] else None,
            "legacy_p50_ms": _ms(quantile(hist, 0.5)),
            "legacy_p99_ms": _ms(quantile(hist, 0.99)),
            "route": route,
            "other_routes": sorted(x for x in routes if x != route),
            "weight": r.get("weight") if r else None,
            "state": r.get("state") if r else None,
            "new_share": e["target"] / served if served else None,
            "other": (method_template(e) == OTHER),
        })
        out.append(e)
    out.sort(key=lambda e: (-e["requests"], e["template"], e["method"]))
    return out


def method_template(e: dict) -> tuple[str, str]:
    return (e["method"], e["template"])


def no_traffic(raw: dict, seen: list[dict]) -> list[dict]:
    """Declared endpoints (OpenAPI, templates) that got no request in the window."""
    methods: dict[str, set[str]] = {}
    for e in seen:
        methods.setdefault(e["template"], set()).add(e["method"])
    out = []
    for method, template, source in raw.get("declared", ()):
        got = methods.get(template, set())
        if (method is None and not got) or (method is not None and method not in got):
            out.append({"method": method or "*", "template": template, "source": source})
    out.sort(key=lambda d: (d["template"], d["method"]))
    return out


def progress(rows: dict[Key, Stats]) -> dict:
    """Share of requests, and of endpoints, served by new services."""
    legacy = target = 0
    per_ep: dict[tuple[str, str], list[int]] = {}
    for (method, template, _route, backend), (req, _err, _hist) in rows.items():
        if backend not in ("legacy", "target"):
            continue
        if backend == "legacy":
            legacy += req
        else:
            target += req
        if (method, template) != OTHER:
            lt = per_ep.setdefault((method, template), [0, 0])
            lt[backend == "target"] += req
    moved = sum(1 for lt in per_ep.values() if lt[1] >= MIGRATED_SHARE * (lt[0] + lt[1]))
    partly = sum(1 for lt in per_ep.values() if 0 < lt[1] < MIGRATED_SHARE * (lt[0] + lt[1]))
    served = legacy + target
    return {
        "requests": {"total": served, "legacy": legacy, "target": target,
                     "share": target / served if served else None},
        "endpoints": {"total": len(per_ep), "migrated": moved, "partly": partly,
                      "share": moved / len(per_ep) if per_ep else None},
    }


def inventory_view(raw: dict, unrouted: bool = False, limit: int | None = None) -> dict:
    """What `strangler inventory` shows: progress over the window, then the endpoints (with
    `unrouted`, only those not yet covered by a route, by their unrouted traffic), then declared
    endpoints without traffic."""
    eps = endpoints(raw)
    rows = raw_rows(raw)
    total = sum(e["requests"] for e in eps)
    shown = eps
    if unrouted:
        shown = sorted((e for e in eps if e["unrouted"]),
                       key=lambda e: (-e["unrouted"], e["template"], e["method"]))
    out = {
        "since": raw["since"],
        "until": raw["until"],
        "first": raw.get("first"),
        "replicas": raw.get("replicas", 1),
        "requests": total,
        "endpoints_total": sum(1 for e in eps if not e["other"]),
        "progress": progress(rows),
        "unrouted": unrouted,
        "endpoints": shown[:limit] if limit else shown,
        "truncated": max(0, len(shown) - limit) if limit else 0,
        "no_traffic": no_traffic(raw, eps),
    }
    if raw.get("routes_differ"):
        out["warning"] = ("the replicas do not agree on routes, weights or states; the route "
                          "columns show the first replica's")
    return out


def daily(traffic: Traffic) -> list[dict]:
    """Progress per UTC day (`traffic` read with daily buckets)."""
    days: dict[int, dict[Key, Stats]] = {}
    for start, key, s in traffic.rows:
        add_stats(days.setdefault(start // DAY * DAY, {}), key, s[0], s[1], s[2])
    return [{"day": _day(start), "start": start, **progress(rows)}
            for start, rows in sorted(days.items())]


def _day(start: int) -> str:
    return datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%d")


# -- retirement --------------------------------------------------------------------------------
def audit_time(entry: dict) -> float | None:
    text = entry.get("time")
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# Audit actions that change a route's effective weight: on the route itself (`from` -> `to`),
# or for every route (`state_recovered` rolls every route back; a `reload` has maps of weights).
WEIGHT_ACTIONS = frozenset({"set_weight", "promote", "rollback", "resume", "weight_from_file",
                            "flag_change"})


def _about(entry: dict, route: str) -> bool:
    """The entry is on `route`, or on a group it is in (`routes` lists the members)."""
    return entry.get("route") == route or route in (entry.get("routes") or ())


def _changes_weight(entry: dict, route: str) -> bool:
    """Whether an audit entry changed `route`'s effective weight."""
    action = entry.get("action")
    if action == "state_recovered":
        return True
    if action == "group_aligned" and _about(entry, route):
        return True
    if _about(entry, route) and action in WEIGHT_ACTIONS:
        return action in ("rollback", "resume") or entry.get("from") != entry.get("to")
    before, after = entry.get("from"), entry.get("to")
    if action == "reload" and isinstance(before, dict) and isinstance(after, dict):
        return route in after and before.get(route) != after.get(route)
    return False


def retire_check(route: str, days: float, *, now: float, weight: float, state: str,
                 audit: list[dict], traffic: Traffic | None, reverse_shadow: bool,
                 reconcile: dict | None) -> dict:
    """Whether `route`'s legacy side can be deleted: each condition with `ok` and its words.

    `audit` is the log's entries, newest first; `traffic` the route's rollups over the window
    (None when the inventory is off); `reconcile` the route's newest reconcile run (or None)."""
    since = now - days * DAY
    when = _when
    conditions: list[dict] = []

    def cond(name: str, ok: bool, detail: str) -> None:
        conditions.append({"name": name, "ok": ok, "detail": detail})

    at_100 = weight >= 100 and state == "active"
    if state == "rolled_back":
        cond("weight", False, "the route is rolled back (every request goes to legacy)")
    else:
        cond("weight", at_100, "the route is at 100% on the new service" if at_100 else
             f"the route is at {weight:g}% (retirement needs 100%)")

    changes = [e for e in audit if _changes_weight(e, route)]
    last = changes[0] if changes else None
    last_t = audit_time(last) if last else None
    oldest = audit_time(audit[-1]) if audit else None
    if last is not None and last_t is not None and last_t > since:
        cond("held", False, f"at its current weight only since {when(last_t)} ({last['action']} "
             f"by {last.get('actor')}); the window needs {days:g} days")
    elif last is None and (oldest is None or oldest > since):
        cond("held", False, "the audit log " + (f"begins at {when(oldest)}" if oldest else
                                                "is empty") +
             f": it cannot show the route at 100% for the last {days:g} days")
    else:
        cond("held", at_100, f"no weight change in the last {days:g} days" if at_100 else
             "not at 100%")

    rollbacks = [e for e in audit if e.get("action") == "rollback" and _about(e, route)
                 and (audit_time(e) or 0) >= since]
    if rollbacks:
        r = rollbacks[0]
        cond("rollback", False, f"{len(rollbacks)} rollback(s) in the window, the last at "
             f"{when(audit_time(r))} ({r.get('trigger', 'manual')}: {r.get('reason')})")
    else:
        cond("rollback", True, f"no rollback in the last {days:g} days")

    if traffic is None:
        cond("legacy_traffic", False, "the traffic inventory is off (inventory.enabled: false): "
             "nothing shows that legacy got no requests")
    else:
        legacy = target = 0
        last_legacy = None
        for start, (_m, _t, r, backend), s in traffic.rows:
            if r != route:
                continue
            if backend == "legacy" and s[0]:
                legacy += s[0]
                last_legacy = start if last_legacy is None else max(last_legacy, start)
            elif backend == "target":
                target += s[0]
        first = traffic.first
        if first is None or first > since:
            cond("legacy_traffic", False, "the inventory's records begin at "
                 f"{when(first) if first else 'now'}: they cannot cover {days:g} days")
        elif legacy:
            cond("legacy_traffic", False, f"legacy served {legacy} live request(s) of this "
                 f"route in the window (fallbacks included), the last in the "
                 f"{'hour' if traffic.grain < DAY else 'day'} from {when(last_legacy)}")
        else:
            cond("legacy_traffic", True, f"legacy served no live request of this route in the "
                 f"window ({target} on the new service; QA pins aside)")

    if reverse_shadow:
        if traffic is None:
            cond("reverse_shadow", False, "the inventory is off: no shadow counts are kept")
        else:
            c = [0, 0, 0]
            for _start, r, counts in traffic.shadow:
                if r == route:
                    c = [a + b for a, b in zip(c, counts, strict=True)]
            compared, mismatched, errors = c
            ok = compared > 0 and not mismatched and not errors
            cond("reverse_shadow", ok,
                 f"reverse shadow: {compared} comparisons, all equal" if ok else
                 "reverse shadow compared nothing in the window" if not compared else
                 f"reverse shadow: {mismatched} of {compared} comparisons differed"
                 + (f", {errors} failed" if errors else ""))

    if reconcile is not None:
        finished = reconcile.get("finished")
        clean = bool(finished) and not reconcile.get("mismatched") and not reconcile.get("errors")
        started = reconcile.get("started")
        cond("reconcile", clean,
             f"the latest reconcile run ({when(started)}) was clean: "
             f"{reconcile.get('compared')} compared" if clean else
             f"the latest reconcile run ({when(started)}) "
             + ("did not finish" if not finished else
                f"found {reconcile.get('mismatched')} difference(s) and "
                f"{reconcile.get('errors')} error(s) in {reconcile.get('compared')} compared"))

    unmet = [c["detail"] for c in conditions if not c["ok"]]
    return {"route": route, "ready": not unmet, "days": days, "since": since, "until": now,
            "conditions": conditions, "unmet": unmet}


def merge_checks(results: list[dict]) -> dict:
    """Several replicas' answers for one route: ready only where every replica is; each unmet
    condition once per replica that reported it."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    by_name: dict[str, dict] = {}
    failures: dict[str, list[str]] = {}
    for i, res in enumerate(results):
        for c in res["conditions"]:
            by_name.setdefault(c["name"], {"name": c["name"], "ok": True, "detail": c["detail"]})
            if not c["ok"]:
                failures.setdefault(c["name"], []).append(f"replica {i + 1}: {c['detail']}")
    for name, details in failures.items():
        by_name[name].update(ok=False, detail="; ".join(details))
    out["conditions"] = list(by_name.values())
    out["unmet"] = [c["detail"] for c in out["conditions"] if not c["ok"]]
    out["ready"] = not out["unmet"]
    out["replicas"] = len(results)
    return out


def _when(t: float | None) -> str:
    if t is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
