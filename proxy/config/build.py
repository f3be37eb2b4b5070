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
    CheckSpec,
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
    ShadowBudgetSpec,
    ShadowSpec,
    StickySpec,
    TokenSpec,
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


def _route(r: m.Route, line: int, override_line: int, group: str | None) -> RouteSpec:
    kw = _set(r, "match", "sticky", "override", "shadow", "promotion")
    if r.sticky is not None:
        kw["sticky"] = StickySpec(**_set(r.sticky))
    if r.override is not None:
        kw["override"] = OverrideSpec(header=r.override.header, line=override_line)
    return RouteSpec(match=match_spec(r.match), shadow=_shadow(r.shadow),
                     promotion=_promotion(r.promotion), line=line, group=group, **kw)


def _admin(a: m.Admin, doc: Document) -> AdminSpec:
    kw = _set(a, "tokens")
    kw["tokens"] = tuple(TokenSpec(line=doc.line(("admin", "tokens", i)), **_set(t))
                         for i, t in enumerate(a.tokens))
    return AdminSpec(**kw)


def config(model: m.RoutesFile, doc: Document, source: Path, base: Path) -> Config:
    ups = {name: UpstreamSpec(name=name, line=doc.line(("upstreams", name)),
                              **_set(u, "url"), **u.url)
           for name, u in model.upstreams.items()}
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
            kw["unleash"] = UnleashSpec(**_set(model.flags.unleash))
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
        admin=_admin(model.admin, doc),
        state_dir=Path(os.path.normpath(state_dir)),
        upstreams=ups,
        default_upstream=model.default_upstream,
        trusted_proxies=model.trusted_proxies,
        limits=LimitsSpec(**_set(model.limits)),
        gate=GateSourceSpec(**_set(model.gate)),
        flags=flags,
        routes=routes,
        notify=notify,
        overrides=trust,
        shadow_budget=ShadowBudgetSpec(**_set(model.shadow_budget)),
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
