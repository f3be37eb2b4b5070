"""routes.yaml `overrides.trusted` and a route's `override`, checked by the config walker.

Kept apart from `proxy.config.loader` (which calls it), like `proxy.config.notify`; the problems it
reports read like every other one: file:line, field path, what to write instead. The shared
secret has no field in the file at all: only the name of the environment variable holding it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from yaml.nodes import ScalarNode

from proxy.config.checks import BAD, ENV_RE
from proxy.config.header_names import FORWARDED_HEADERS, HOP_BY_HOP
from proxy.config.spec import OverrideSpec, OverrideTrustSpec

OVERRIDES_KEYS = ("trusted",)
TRUSTED_KEYS = ("cidrs", "secret_header", "secret_env")
OVERRIDE_KEYS = ("header",)
DEFAULT_HEADER = "x-strangler-backend"
# Headers the proxy frames, re-adds or interprets itself: never a pin or secret header.
_RESERVED = (HOP_BY_HOP | FORWARDED_HEADERS | {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"x-request-id",
    b"x-strangler-shadow", b"cookie", b"authorization", b"expect",
})


def _reserved(name: str) -> bool:
    return name.encode() in _RESERVED


def overrides(w: Any, e: Any) -> Any:
    """`overrides: {trusted: {cidrs, secret_header, secret_env}}`; `w` is the config walker.

    BAD (reported) when the block is unusable, so routes do not report its absence again.
    """

    m = w.mapping(e, OVERRIDES_KEYS)
    if m is None:
        return BAD
    if "trusted" not in m:
        return w.problem(e.line, f"{e.path}.trusted", "missing required key 'trusted' (who "
                         "may pin requests: cidrs, secret_header + secret_env, or both)")
    t = m["trusted"]
    tm = w.mapping(t, TRUSTED_KEYS, what="a mapping with cidrs and/or secret_header + "
                   "secret_env")
    if tm is None:
        return BAD
    cidrs: list[Any] = []
    reported = len(w.problems)
    if "cidrs" in tm:
        items = w.sequence(tm["cidrs"], "a list of CIDRs or IP addresses")
        for item in items or ():
            value = w.string(item, what="a CIDR or IP address like 10.20.0.0/16")
            if value is BAD:
                continue
            try:
                cidrs.append(ipaddress.ip_network(value.strip()))
            except ValueError as exc:
                w.problem(item.line, item.path, f"invalid network {value!r}: {exc}")
    kw: dict[str, Any] = {}
    if "secret_header" in tm:
        x = tm["secret_header"]
        name = w.header_name(x, w.string(x, what="a header name"))
        if name is not BAD and _reserved(name):
            name = w.problem(x.line, x.path, f"'{name}' is a header the proxy handles itself; "
                             "choose a name of your own, e.g. X-Strangler-Override-Secret")
        if name is not BAD:
            kw["secret_header"] = name
    if "secret_env" in tm:
        value = w.string(tm["secret_env"], what="an environment variable name", pattern=ENV_RE,
                         pattern_hint="expected an environment variable name")
        if value is not BAD:
            kw["secret_env"] = value
    has_header, has_env = "secret_header" in tm, "secret_env" in tm
    if has_header != has_env:
        present, missing = ("secret_header", "secret_env") if has_header else \
            ("secret_env", "secret_header")
        w.problem(tm[present].line, f"{t.path}.{missing}", f"{present} needs {missing} too "
                  "(the header carries the secret; its value comes from that environment "
                  "variable, never from this file)")
    if not cidrs and not has_header and len(w.problems) == reported:
        w.problem(t.line, t.path, "trusts nobody: give cidrs, secret_header + secret_env, "
                  "or both")
    return OverrideTrustSpec(cidrs=tuple(cidrs), line=t.line, **kw)


def route_override(w: Any, e: Any, trust: OverrideTrustSpec | None, sticky: Any) -> Any:
    """A route's `override`: {header: NAME} (default X-Strangler-Backend), true, or false.

    `trust` is the file's `overrides.trusted` (parsed before the routes), `sticky` the route's
    StickySpec, for the cross-checks.
    """

    node = e.node
    header = DEFAULT_HEADER
    path = f"{e.path}.header"
    line = e.line
    if isinstance(node, ScalarNode) and w.scalar_value(node) in (None, False, True):
        if w.scalar_value(node) is not True:
            return None
        path = e.path
    else:
        m = w.mapping(e, OVERRIDE_KEYS, what="{header: X-Strangler-Backend}, true or false")
        if m is None:
            return BAD
        if "header" in m:
            x = m["header"]
            name = w.header_name(x, w.string(x, what="a header name"))
            if name is BAD:
                return BAD
            if _reserved(name):
                return w.problem(x.line, x.path, f"'{name}' is a header the proxy handles "
                                 "itself; choose a name of your own, e.g. X-Strangler-Backend")
            header, line = name, x.line
        else:
            path = e.path
    if trust is None:
        return w.problem(e.line, e.path, "needs overrides.trusted at the top of the file (who "
                         "may pin requests); without it nobody could")
    if trust is not BAD and header == trust.secret_header:
        return w.problem(line, path, f"'{header}' is also overrides.trusted.secret_header; "
                         "use two different headers")
    if sticky is not None and sticky.header == header:
        return w.problem(line, path, f"'{header}' is also this route's sticky header")
    return OverrideSpec(header=header, line=e.line)


def check_consumed(w: Any, routes: Any, trust: Any) -> None:
    """The pin and secret headers are consumed on every route: none may be a header another
    route needs forwarded or keys its split on (a sticky header). Run when the rest is valid,
    so that `routes[i]` is the i-th route of the file."""
    if w.problems or trust is None:
        return
    sticky = {r.sticky.header: r for r in routes if r.sticky is not None and r.sticky.header}
    if trust.secret_header in sticky:
        other = sticky[trust.secret_header]
        w.problem(trust.line, "overrides.trusted.secret_header", f"'{trust.secret_header}' is "
                  f"route '{other.name}''s sticky header; the proxy never forwards the secret "
                  "header, so that route's upstream would not see it")
    for i, r in enumerate(routes):
        if r.override is None:
            continue
        other = sticky.get(r.override.header)
        if other is not None and other is not r:
            w.problem(r.override.line, f"routes[{i}].override", f"'{r.override.header}' is "
                      f"route '{other.name}''s sticky header; the proxy never forwards a pin "
                      "header, on any route, so that route's upstream would not see it")
