"""Checks across the blocks of routes.yaml: what no single block can judge on its own.

References to upstreams (with did-you-mean), route and flag names used twice, a route an earlier
one always wins over, the Prometheus url the gate needs, who may pin requests. They run on the
raw data next to the model's own checks (values the model refused are skipped: they are reported
already), so that one `strangler validate` lists every problem.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

from proxy.config import values as v
from proxy.config.checks import NAME_RE
from proxy.config.document import Loc
from proxy.config.spec import Config, MatchSpec, RouteSpec, UpstreamSpec

Found = list[tuple[Loc, PydanticCustomError]]
_MISSING = object()


class _Raw:
    """The raw document with the set of paths the model refused."""

    def __init__(self, raw: dict[str, Any], bad: set[Loc]) -> None:
        self.raw = raw
        self.bad = bad

    def get(self, loc: Loc) -> Any:
        """The value at `loc` when present and accepted by the model, else _MISSING."""
        return _MISSING if loc in self.bad else self._at(loc)

    def present(self, loc: Loc) -> bool:
        return self._at(loc) is not _MISSING

    def _at(self, loc: Loc) -> Any:
        node: Any = self.raw
        for part in loc:
            if isinstance(node, dict) and isinstance(part, str) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                return _MISSING
        return node


def across(raw: dict[str, Any], bad: set[Loc], model: Any, *, quiet: bool = False) -> Found:
    """Problems across blocks; `bad` are the paths the model refused, `model` the valid model
    (None when it was not), `quiet` that YAML itself had problems (names are then not judged
    against a list that may be missing the broken entry)."""
    doc = _Raw(raw, bad)
    found: Found = []
    ups = raw.get("upstreams")
    names = [k for k in ups if isinstance(k, str)] if isinstance(ups, dict) else []
    for name in names:
        if not NAME_RE.match(name):
            found.append((("upstreams", name), v.problem(
                f"invalid upstream name {name!r}: use letters, digits, '-', '_' and '.', "
                "starting with a letter or digit")))

    def ref(loc: Loc, value: str) -> bool:
        if value in names or not names:
            return value in names
        found.append((loc, v.problem(f"unknown upstream '{value}'; defined: {', '.join(names)}"
                                     f"{v.suggest(value, names)}")))
        return False

    default = doc.get(("default_upstream",))
    if isinstance(default, str):
        ref(("default_upstream",), default)
    found += _same_listener(doc)

    gate_url = doc.get(("gate", "url"))
    gate_url_reported = ("gate", "url") in bad
    gate_url = None if gate_url is _MISSING else gate_url
    if doc.get(("gate", "metrics")) == "prometheus" and gate_url is None \
            and not gate_url_reported:
        where = ("gate", "url") if doc.present(("gate", "url")) else ("gate", "metrics")
        found.append((("gate", "url"), v.problem(
            "required with metrics: prometheus (the Prometheus base url, e.g. "
            "http://prometheus:9090)", line_of=where)))

    unleash = doc.get(("flags", "backend")) == "unleash"
    trust: Any = None
    if "overrides" in raw:
        block = raw["overrides"]
        trusted = block.get("trusted") if isinstance(block, dict) else None
        if not isinstance(trusted, dict):
            trust = "bad"  # reported; routes do not report its absence again
        else:
            header = doc.get(("overrides", "trusted", "secret_header"))
            trust = header.lower() if isinstance(header, str) else ""

    tokens = _token_roles(doc)

    routes = raw.get("routes")
    route_names: dict[str, int] = {}
    flag_names: dict[str, str] = {}
    coverage = Coverage()
    valid_routes = model.routes if model is not None else None
    for i, r in enumerate(routes if isinstance(routes, list) else ()):
        if not isinstance(r, dict):
            continue
        base: Loc = ("routes", i)
        name = doc.get((*base, "name"))
        if isinstance(name, str):
            if name in route_names:
                found.append(((*base, "name"), v.problem(
                    f"duplicate route name '{name}' (first at line {v.LINE})",
                    line_of=("routes", route_names[name]))))
            else:
                route_names[name] = i
        else:
            name = None
        sides: dict[str, str] = {}
        for side in ("legacy", "target"):
            value = doc.get((*base, side))
            if isinstance(value, str) and ref((*base, side), value):
                sides[side] = value
        if len(sides) == 2 and sides["legacy"] == sides["target"]:
            found.append(((*base, "target"), v.problem(
                "target must be a different upstream from legacy "
                f"('{sides['legacy']}')")))
        flag = doc.get((*base, "flag"))
        flag = flag if isinstance(flag, str) else None
        if flag is not None and name is not None:
            if flag in flag_names:
                found.append(((*base, "flag"), v.problem(
                    f"flag '{flag}' is already used by route '{flag_names[flag]}'; each route "
                    "needs its own toggle")))
            else:
                flag_names[flag] = name
        if unleash and flag is None and (*base, "flag") not in bad:
            found.append(((*base, "flag"), v.problem(
                "required with flags.backend: unleash (the Unleash toggle that holds this "
                "route's weight)", line_of=base)))
        found += _override(doc, base, trust)
        noise = doc.get((*base, "shadow", "compare", "noise_upstream"))
        if isinstance(noise, str) and ref((*base, "shadow", "compare", "noise_upstream"), noise):
            if noise in sides.values():
                role = "legacy" if noise == sides.get("legacy") else "target"
                found.append(((*base, "shadow", "compare", "noise_upstream"), v.problem(
                    f"noise_upstream must be a second copy of legacy, not the route's {role} "
                    f"('{noise}') itself")))
        checks = doc.get((*base, "promotion", "checks"))
        if isinstance(checks, list) and checks and gate_url is None and not gate_url_reported:
            found.append(((*base, "promotion", "checks"), v.problem(
                "checks need a Prometheus url: set gate.url (e.g. gate: {metrics: local, url: "
                "http://prometheus:9090})")))
        found += _approval(doc, base, tokens)
        if name is None or len(sides) != 2 or (*base, "match") in bad:
            continue
        match = _match(valid_routes[i].match if valid_routes is not None else r.get("match"))
        if match is None:
            continue
        earlier = coverage.covering(match)
        if earlier is not None:
            found.append((base, v.problem(
                f"route '{name}' can never match: route '{earlier[1]}' (line {v.LINE}) matches "
                "every request it would", line_of=("routes", earlier[0]))))
        coverage.add(match, (i, name))

    from proxy.config import groups  # `groups:` (members that move as one)

    found += groups.check(raw, bad, model)
    if not quiet and not found and all(loc[0] == "notify" for loc in bad):
        known = list(route_names)
        sinks = doc._at(("notify",))
        for j in range(len(sinks) if isinstance(sinks, list) else 0):
            listed = doc._at(("notify", j, "routes"))
            if ("notify", j, "routes") in bad and not isinstance(listed, list):
                continue  # not a list (reported)
            for k in range(len(listed) if isinstance(listed, list) else 0):
                value = doc.get(("notify", j, "routes", k))
                if isinstance(value, str) and value not in known:
                    found.append((("notify", j, "routes", k), v.problem(
                        f"unknown route '{value}'; defined: {', '.join(known) or 'none'}"
                        f"{v.suggest(value, known)}")))
    return found


def _token_roles(doc: _Raw) -> dict[str, str] | None:
    """admin.tokens as name -> role; None when the list was refused (reported already)."""
    if ("admin", "tokens") in doc.bad or ("admin",) in doc.bad:
        return None
    listed = doc.get(("admin", "tokens"))
    out: dict[str, str] = {}
    for entry in listed if isinstance(listed, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out[entry["name"]] = str(entry.get("role"))
    return out


def _approval(doc: _Raw, base: Loc, tokens: dict[str, str] | None) -> Found:
    """Four eyes need named credentials: the actor of a request or an approval must come from a
    token, not from a name the client types."""
    loc = (*base, "promotion", "approval")
    if tokens is None or doc.get(loc) in (_MISSING, None) or loc in doc.bad:
        return []
    admins = [name for name, role in tokens.items() if role == "admin"]
    if not admins:
        return [(loc, v.problem(
            "approval needs named admin credentials in admin.tokens (e.g. [{name: alice, "
            "role: admin, token_env: ALICE_TOKEN}]): the requester and the approver are told "
            "apart by their tokens, not by a name the client sends"))]
    found: Found = []
    approvers = doc.get((*loc, "approvers"))
    for k, name in enumerate(approvers if isinstance(approvers, list) else ()):
        if not isinstance(name, str):
            continue
        if name not in tokens:
            found.append(((*loc, "approvers", k), v.problem(
                f"unknown token name '{name}'; admin.tokens has: {', '.join(tokens)}"
                f"{v.suggest(name, list(tokens))}")))
        elif tokens[name] != "admin":
            found.append(((*loc, "approvers", k), v.problem(
                f"token '{name}' has role {tokens[name]}: an approver needs role admin")))
    return found


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_LOCALHOST = frozenset({"127.0.0.1", "::1"})  # what `localhost` binds


def _same_listener(doc: _Raw) -> Found:
    """`admin.listen` on the address `listen` takes: serve would die with "address already in
    use" (a wildcard host takes the port on every address; port 0 is a fresh port each)."""
    def address(loc: Loc, default: str) -> Any:
        value = doc.get(loc)
        if value is _MISSING:
            return None if doc.present(loc) else v.parse_host_port(default)
        try:
            return value if not isinstance(value, str) else v.parse_host_port(value)
        except ValueError:
            return None  # reported
    proxy = address(("listen",), "0.0.0.0:8080")
    admin = address(("admin", "listen"), "127.0.0.1:9901")
    if proxy is None or admin is None or proxy.port != admin.port or proxy.port == 0:
        return []
    hosts = {proxy.host.lower(), admin.host.lower()}
    if len(hosts) == 1 or hosts & _WILDCARDS or ("localhost" in hosts and hosts & _LOCALHOST):
        where = ("admin", "listen") if doc.present(("admin", "listen")) else ("listen",)
        return [(where, v.problem(
            f"admin.listen {admin} and listen {proxy} take the same port: the proxy and the "
            "admin API need a listener each (e.g. listen 0.0.0.0:8080, admin.listen "
            "127.0.0.1:9901)"))]
    return []


def unused_upstreams(config: Config) -> list[UpstreamSpec]:
    """Upstreams no route (legacy, target, noise_upstream) and not default_upstream use: a
    warning, not an error (one kept for a route still to come is fine), usually a typo."""
    used = {config.default_upstream}
    for r in config.routes:
        used |= {r.legacy, r.target, r.shadow.compare.noise_upstream}
    return [u for name, u in config.upstreams.items() if name not in used]


def unused_warnings(config: Config) -> list[str]:
    """`FILE:LINE: upstreams.NAME: warning: ...` for each unused upstream (validate prints them)."""
    return [f"{config.source}:{u.line}: upstreams.{u.name}: warning: not used by any route "
            "(legacy, target or noise_upstream) nor by default_upstream"
            for u in unused_upstreams(config)]


def _override(doc: _Raw, base: Loc, trust: Any) -> Found:
    value = doc._at((*base, "override"))  # unknown keys in it do not hide the checks below
    if value is not True and not isinstance(value, dict):
        return []  # absent, off, or the wrong type (reported)
    header, where = "x-strangler-backend", (*base, "override")
    if isinstance(value, dict) and "header" in value:
        header = doc.get((*base, "override", "header"))
        if not isinstance(header, str):
            return []  # reported
        header, where = header.lower(), (*base, "override", "header")
    if trust is None:
        return [((*base, "override"), v.problem(
            "needs overrides.trusted at the top of the file (who may pin requests); without it "
            "nobody could"))]
    if trust != "bad" and header == trust:
        return [(where, v.problem(f"'{header}' is also overrides.trusted.secret_header; use two "
                                  "different headers"))]
    sticky = doc.get((*base, "sticky"))
    if isinstance(sticky, dict) and isinstance(sticky.get("header"), str) \
            and sticky["header"].lower() == header:
        return [(where, v.problem(f"'{header}' is also this route's sticky header"))]
    return []


def _match(value: Any) -> MatchSpec | None:
    from proxy.config.build import match_spec
    from proxy.config.model import Match, adapter

    if value is None:
        return MatchSpec()
    if not isinstance(value, Match):
        try:
            value = adapter(Match).validate_python(value)
        except Exception:  # reported by the model already
            return None
    return match_spec(value)


class Coverage:
    """Finds an earlier route that matches every request a later one could (so it never will).

    Routes are indexed by their path condition so that 10,000 routes are checked in linear time:
    a later route only looks up the exact path, the segment prefixes of its path, and its regex.
    """

    def __init__(self) -> None:
        self.everything: list[tuple[MatchSpec, Any]] = []
        self.prefix: dict[str, list[tuple[MatchSpec, Any]]] = {}
        self.exact: dict[str, list[tuple[MatchSpec, Any]]] = {}
        self.regex: dict[str, list[tuple[MatchSpec, Any]]] = {}

    def add(self, m: MatchSpec, who: Any) -> None:
        if m.headers:  # conditional on headers: never covers a route without the same headers
            return
        if m.path_prefix is not None and m.path_prefix != "/":  # "/" is every path
            self.prefix.setdefault(m.path_prefix, []).append((m, who))
        elif m.path is not None:
            self.exact.setdefault(m.path, []).append((m, who))
        elif m.path_regex is not None:
            self.regex.setdefault(m.path_regex, []).append((m, who))
        else:
            self.everything.append((m, who))

    def covering(self, m: MatchSpec) -> Any:
        candidates = list(self.everything)
        if m.path_regex is not None:
            candidates += self.regex.get(m.path_regex, ())
        path = m.path if m.path is not None else m.path_prefix
        if path is not None:
            if m.path is not None:
                candidates += self.exact.get(m.path, ())
            end = len(path)
            while end > 0:
                candidates += self.prefix.get(path[:end], ())
                end = path.rfind("/", 0, end)
        found = [who for c, who in candidates
                 if _methods_cover(c.matched_methods(), m.matched_methods())]
        return min(found) if found else None


def _methods_cover(earlier: frozenset[str] | None, later: frozenset[str] | None) -> bool:
    if earlier is None:
        return True
    return later is not None and later <= earlier


__all__ = ["Coverage", "RouteSpec", "across", "unused_upstreams", "unused_warnings"]
