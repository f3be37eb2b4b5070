"""What a route's evidence depends on, and the step id that names it.

A *step* is one stretch of evidence the gate may judge as a whole. Its id changes (a new step
begins, the step window and the diff store's current counts start empty) whenever anything the
evidence depends on changes:
- the effective weight (set-weight, promote, rollback, resume, a reload or Unleash);
- the legacy or target upstream's identity: its url (base path included) and timeouts;
- the route's match (path, methods, headers), its compare rules and its shadow sampling
  (enabled, sample, reverse, methods, allow_unsafe, max_body, max_rate, pipeline);
- a restart (in-process counters do not survive one, so neither does the step);
- `strangler reset-evidence` (an operator's "judge it afresh").
`identity()` is the single description of the evidence's dependencies apart from the weight;
`changes()` names what differs between two of them. Step ids are integers that only grow for a
route, at least the current epoch second, so an id is never reused, even when state.json is
lost: the diff store can key its counts on (route, step id) safely.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from proxy.config.spec import Config, RouteSpec, UpstreamSpec

# The parts of a route's identity, in the order changes are named.
PARTS = ("legacy", "target", "match", "compare", "shadow")


def next_step_id(current: int, now: float | None = None) -> int:
    """A fresh step id for a route whose current one is `current`."""
    now = time.time() if now is None else now
    return max(current + 1, int(now))


def _upstream(u: UpstreamSpec | None, name: str) -> str:
    if u is None:
        return f"{name} (undefined)"
    return (f"{u.name} {u.url} connect_timeout={u.connect_timeout:g}s "
            f"timeout={u.timeout:g}s")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def identity(config: Config, spec: RouteSpec) -> dict[str, str]:
    """The route's evidence dependencies (all but the weight), as comparable strings."""
    sh = spec.shadow
    compare = asdict(sh.compare)
    noise = sh.compare.noise_upstream
    if noise is not None:
        compare["noise_upstream"] = _upstream(config.upstreams.get(noise), noise)
    return {
        "legacy": _upstream(config.upstreams.get(spec.legacy), spec.legacy),
        "target": _upstream(config.upstreams.get(spec.target), spec.target),
        "match": _canonical(asdict(spec.match)),
        "compare": _canonical(compare),
        "shadow": _canonical({"enabled": sh.enabled, "sample": sh.sample,
                              "reverse": sh.reverse, "methods": sh.methods,
                              "allow_unsafe": sh.allow_unsafe, "max_body": sh.max_body,
                              "max_rate": sh.max_rate, "pipeline": sh.pipeline}),
    }


def changes(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """What differs, as short phrases: `target changed (svc http://a -> svc2 http://b)`."""
    if not old:
        return []
    out = []
    for part in PARTS:
        before, after = old.get(part), new.get(part)
        if before == after:
            continue
        if part in ("legacy", "target"):
            b, a = _short(before), _short(after)
            if b == a:  # the same url: a timeout changed
                b, a = before or "?", after or "?"
            out.append(f"{part} changed ({b} -> {a})")
        else:
            keys = _changed_keys(before, after)
            label = {"match": "match", "compare": "compare rules",
                     "shadow": "shadow sampling"}[part]
            out.append(f"{label} changed ({', '.join(keys)})" if keys else f"{label} changed")
    return out


def _short(upstream: str | None) -> str:
    """`name url` of an upstream identity (the timeouts only matter when they changed)."""
    return " ".join((upstream or "?").split()[:2])


def _changed_keys(before: str | None, after: str | None) -> list[str]:
    try:
        a = json.loads(before or "{}")
        b = json.loads(after or "{}")
    except ValueError:
        return []
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
