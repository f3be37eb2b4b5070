"""What a reload (or a restart with an edited file) changed in routes.yaml, for the audit log.

`config_hash` is the SHA-256 of the file's text: the audit log names the exact file every
change ran under. `summary` compares two loaded configs field by field and says what changed
in words a reviewer reads: routes added, removed and changed (with each field's old and new
value), upstreams, and the other blocks. Secrets never appear: a notification sink's url is
only said to have changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from proxy.config.spec import Config

_SKIP = frozenset({"line", "source"})
_SECRET_PATHS = ("notify.",)  # `notify[i].url` may be a webhook secret
MAX_CHANGES = 200  # fields listed per entry (a rewritten file says how many more)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclasses, dicts and tuples as {dotted.path: leaf value}."""
    out: dict[str, Any] = {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if f.name not in _SKIP:
                out.update(flatten(getattr(value, f.name), f"{prefix}{f.name}."))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, tuple) and any(dataclasses.is_dataclass(x) for x in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def _by_name(config: Config) -> dict[str, Any]:
    """The config with routes keyed by name (a reorder is not a change of every field)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
           if f.name not in ("routes", "source")}
    out["routes"] = {r.name: r for r in config.routes}
    return out


def summary(old: Config, new: Config) -> dict[str, Any]:
    """{"routes_added", "routes_removed", "routes_changed", "changes": ["path: a -> b"...]}."""
    a, b = flatten(_by_name(old)), flatten(_by_name(new))
    changed = []
    for path in sorted({*a, *b}):
        if a.get(path) == b.get(path):
            continue
        if path.startswith(_SECRET_PATHS) and path.endswith(".url"):
            changed.append(f"{path}: changed (not shown: may be a secret)")
        elif path not in a:
            changed.append(f"{path}: (new) {_text(b[path])}")
        elif path not in b:
            changed.append(f"{path}: {_text(a[path])} (removed)")
        else:
            changed.append(f"{path}: {_text(a[path])} -> {_text(b[path])}")
    old_routes = [r.name for r in old.routes]
    new_routes = [r.name for r in new.routes]
    touched = sorted({p.split(".")[1] for p in changed if p.startswith("routes.")}
                     & set(old_routes) & set(new_routes))
    out: dict[str, Any] = {
        "routes_added": [n for n in new_routes if n not in old_routes],
        "routes_removed": [n for n in old_routes if n not in new_routes],
        "routes_changed": touched,
        "routes_reordered": [n for n in new_routes if n in old_routes] !=
                            [n for n in old_routes if n in new_routes],
        "changes": changed[:MAX_CHANGES],
    }
    if len(changed) > MAX_CHANGES:
        out["more_changes"] = len(changed) - MAX_CHANGES
    return out


def sentence(s: dict[str, Any]) -> str:
    """One line for the reason column: `routes added: x; changed: balance (target, weight)`."""
    parts = []
    if s["routes_added"]:
        parts.append("routes added: " + ", ".join(s["routes_added"]))
    if s["routes_removed"]:
        parts.append("routes removed: " + ", ".join(s["routes_removed"]))
    for name in s["routes_changed"]:
        fields = sorted({c.split(":")[0].split(".", 2)[2] for c in s["changes"]
                         if c.startswith(f"routes.{name}.")})
        parts.append(f"route {name}: {', '.join(fields)}")
    others = sorted({c.split(":")[0].split(".")[0] for c in s["changes"]
                     if not c.startswith("routes.")})
    if others:
        parts.append("also " + ", ".join(others))
    if s.get("routes_reordered"):
        parts.append("routes reordered")
    return "; ".join(parts) or "no effective change"


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
