"""A valid `proxy.config.model.RoutesFile` -> the frozen specs the proxy runs on.

Only keys the file sets are passed on: every default lives in `proxy.config.spec`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proxy.config import model as m
from proxy.config.document import Document
from proxy.config.spec import (
    AdminSpec,
    ApprovalSpec,
    AutoSpec,
    BasicAuthSpec,
    CheckSpec,
    ClientTlsSpec,
    CompareSpec,
    Config,
    FlagsSpec,
    GateSourceSpec,
    GroupSpec,
    GuardrailSpec,
    HostPort,
    InventorySpec,
    LimitsSpec,
    MatchSpec,
    MaxHoldSpec,
    NotifySpec,
    OverrideSpec,
    OverrideTrustSpec,
    PromotionSpec,
    RouteSpec,
    ServerTlsSpec,
    ShadowBudgetSpec,
    ShadowSpec,
    StickySpec,
    StoreSpec,
    TokenSpec,
    TracingSpec,
    UnleashSpec,
    UpstreamSpec,
)


def _set(block: m.Block, *skip: str) -> dict[str, Any]:
    """The fields the file wrote, with their checked values."""
    return {k: getattr(block, k) for k in block.model_fields_set if k not in skip}


def match_spec(match: m.Match) -> MatchSpec:
    return MatchSpec(**_set(match))


def _compare(c: m.Compare) -> CompareSpec:
    return CompareSpec(**_set(c))


def _shadow(s: m.Shadow) -> ShadowSpec:
    kw = _set(s, "compare")
    if "compare" in s.model_fields_set:
        kw["compare"] = _compare(s.compare)
    return ShadowSpec(**kw)


def _promotion(p: m.Promotion) -> PromotionSpec:
    kw = _set(p, "auto", "checks", "guardrail", "max_hold", "approval")
    if p.max_hold is not None:
        kw["max_hold"] = MaxHoldSpec(**_set(p.max_hold))
    if p.approval is not None:
        kw["approval"] = ApprovalSpec(**_set(p.approval))
    if "auto" in p.model_fields_set:
        kw["auto"] = AutoSpec(**_set(p.auto))
    if "guardrail" in p.model_fields_set:
        kw["guardrail"] = GuardrailSpec(**_set(p.guardrail))
    if "checks" in p.model_fields_set:
        kw["checks"] = tuple(CheckSpec(**_set(c)) for c in p.checks)
    return PromotionSpec(**kw)


def _path(base: Path, value: str) -> str:
    return os.path.normpath(base / Path(value).expanduser())


def client_tls(t: m.ClientTls | None, base: Path, line: int) -> ClientTlsSpec:
    """An https client's TLS settings (the defaults when the block is absent), paths absolute."""
    if t is None:
        return ClientTlsSpec(line=line)
    kw = _set(t)
    for key in ("ca_file", "cert_file", "key_file"):
        if kw.get(key):
            kw[key] = _path(base, kw[key])
    return ClientTlsSpec(line=line, **kw)


def _server_tls(t: m.ServerTls | None, base: Path, line: int) -> ServerTlsSpec | None:
    if t is None:
        return None
    return ServerTlsSpec(cert_file=_path(base, t.cert_file), key_file=_path(base, t.key_file),
                         min_version=t.min_version, line=line)


def _upstream(name: str, u: m.Upstream, doc: Document, base: Path) -> UpstreamSpec:
    kw = _set(u, "url", "tls")
    if u.url["scheme"] == "https":
        kw["tls"] = client_tls(u.tls, base, doc.line(("upstreams", name, "tls")))
    return UpstreamSpec(name=name, line=doc.line(("upstreams", name)), **kw, **u.url)


def _gate(g: m.Gate, doc: Document, base: Path) -> GateSourceSpec:
    kw = _set(g, "basic_auth", "tls")
    if g.basic_auth is not None:
        kw["basic_auth"] = BasicAuthSpec(**_set(g.basic_auth))
    if g.url is not None and g.url.lower().startswith("https://"):
        kw["tls"] = client_tls(g.tls, base, doc.line(("gate", "tls")))
    return GateSourceSpec(line=doc.line(("gate",)), **kw)


def _tracing(t: m.Tracing | None, doc: Document, base: Path) -> TracingSpec | None:
    if t is None:
        return None
    kw = _set(t, "tls")
    if t.otlp_endpoint.lower().startswith("https://"):
        kw["tls"] = client_tls(t.tls, base, doc.line(("tracing", "tls")))
    return TracingSpec(**kw)


def _unleash(u: m.Unleash, doc: Document, base: Path) -> UnleashSpec:
    kw = _set(u, "tls")
    if u.url.lower().startswith("https://"):
        kw["tls"] = client_tls(u.tls, base, doc.line(("flags", "unleash", "tls")))
    return UnleashSpec(**kw)


def _route(r: m.Route, line: int, override_line: int, group: str | None) -> RouteSpec:
    kw = _set(r, "match", "sticky", "override", "shadow", "promotion")
    if isinstance(kw.get("fallback_to_legacy"), tuple):  # {on: [...]}
        kw["fallback_on"] = kw["fallback_to_legacy"]
        kw["fallback_to_legacy"] = True
    if r.sticky is not None:
        kw["sticky"] = StickySpec(**_set(r.sticky))
    if r.override is not None:
        kw["override"] = OverrideSpec(header=r.override.header, line=override_line)
    return RouteSpec(match=match_spec(r.match), shadow=_shadow(r.shadow),
                     promotion=_promotion(r.promotion), line=line, group=group, **kw)


def _admin(a: m.Admin, doc: Document, base: Path) -> AdminSpec:
    kw = _set(a, "tokens", "tls")
    kw["tokens"] = tuple(TokenSpec(line=doc.line(("admin", "tokens", i)), **_set(t))
                         for i, t in enumerate(a.tokens))
    kw["tls"] = _server_tls(a.tls, base, doc.line(("admin", "tls")))
    return AdminSpec(**kw)


def config(model: m.RoutesFile, doc: Document, source: Path, base: Path) -> Config:
    ups = {name: _upstream(name, u, doc, base) for name, u in model.upstreams.items()}
    groups = tuple(GroupSpec(name, g.routes, doc.line(("groups", name)))
                   for name, g in model.groups.items())
    member_of = {route: g.name for g in groups for route in g.routes}
    routes = tuple(_route(r, doc.line(("routes", i)), doc.line(("routes", i, "override")),
                          member_of.get(r.name))
                   for i, r in enumerate(model.routes))
    flags = FlagsSpec()
    if "flags" in model.model_fields_set:
        kw = _set(model.flags, "unleash")
        if model.flags.unleash is not None:
            kw["unleash"] = _unleash(model.flags.unleash, doc, base)
        elif model.flags.backend == "unleash":
            kw["unleash"] = UnleashSpec()
        flags = FlagsSpec(**kw)
    trust = None
    if model.overrides is not None:
        t = model.overrides.trusted
        trust = OverrideTrustSpec(line=doc.line(("overrides", "trusted")), **_set(t))
    notify = tuple(NotifySpec(line=doc.line(("notify", i)), **_set(n))
                   for i, n in enumerate(model.notify))
    state_dir = base / ".strangler"
    if "state_dir" in model.model_fields_set:
        state_dir = base / Path(model.state_dir).expanduser()
    listen = model.listen if "listen" in model.model_fields_set else HostPort("0.0.0.0", 8080)
    return Config(
        source=source,
        version=1,
        listen=listen,
        admin=_admin(model.admin, doc, base),
        state_dir=Path(os.path.normpath(state_dir)),
        upstreams=ups,
        default_upstream=model.default_upstream,
        trusted_proxies=model.trusted_proxies,
        limits=LimitsSpec(**_set(model.limits)),
        gate=_gate(model.gate, doc, base),
        flags=flags,
        routes=routes,
        notify=notify,
        overrides=trust,
        shadow_budget=ShadowBudgetSpec(**_set(model.shadow_budget)),
        store=StoreSpec(**_set(model.store)),
        tls=_server_tls(model.tls, base, doc.line(("tls",))),
        tracing=_tracing(model.tracing, doc, base),
        inventory=_inventory(model.inventory, doc, source),
        groups=groups,
    )


def _inventory(inv: m.Inventory, doc: Document, source: Path) -> InventorySpec:
    """The block as written plus its `templates` as declared endpoints (the OpenAPI document's
    are added by the loader, which reports its problems)."""
    from proxy.config.templates import DeclaredTemplate, split_method

    where = [doc.line(("inventory", "templates", i)) for i in range(len(inv.templates))]
    declared = tuple(DeclaredTemplate(*split_method(t), f"{source.name}:{line}")
                     for t, line in zip(inv.templates, where, strict=True))
    return InventorySpec(**_set(inv), declared=declared)
