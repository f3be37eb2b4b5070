"""Checks of `groups:` across the file: every member is a route, in one group at most, a group has
two or more, and members can really move as one (proxy.control.groups): the same sticky key (a
user is on one side for all of them), the same legacy upstream, the same weight in the file and
the same promotion steps, auto-promotion and approval policy. Each problem is reported at the
member's line in `groups:`, naming the route it disagrees with.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

from proxy.config import values as v
from proxy.config.checks import NAME_RE
from proxy.config.document import Loc

Found = list[tuple[Loc, PydanticCustomError]]


def _sticky(route: dict) -> str:
    s = route.get("sticky")
    if isinstance(s, dict) and isinstance(s.get("header"), str):
        return f"header {s['header'].lower()}"
    if isinstance(s, dict) and isinstance(s.get("cookie"), str):
        return f"cookie {s['cookie']}"
    return "no sticky key (a random draw per request)"


def _promotion(model: Any, i: int) -> tuple | None:
    if model is None:
        return None
    p = model.routes[i].promotion
    approval = p.approval
    return (p.steps, p.auto.enabled, p.auto.interval,
            None if approval is None else (approval.from_weight, approval.approvers))


def check(raw: dict[str, Any], bad: set[Loc], model: Any) -> Found:
    groups = raw.get("groups")
    if not isinstance(groups, dict) or not groups:
        return []
    found: Found = []
    routes = raw.get("routes") if isinstance(raw.get("routes"), list) else []
    index = {r["name"]: i for i, r in enumerate(routes)
             if isinstance(r, dict) and isinstance(r.get("name"), str)}
    if isinstance(raw.get("flags"), dict) and raw["flags"].get("backend") == "unleash":
        found.append((("groups",), v.problem(
            "groups need flags.backend: file (with Unleash each route's toggle holds its own "
            "weight, so members could not move as one)")))
    owner: dict[str, tuple[str, int]] = {}  # route -> (group, index in its routes)
    for name, group in groups.items():
        if not isinstance(name, str):
            continue
        base: Loc = ("groups", name)
        if not NAME_RE.match(name):
            found.append((base, v.problem(f"invalid group name {name!r}: {v.NAME_HINT}")))
        if name in index:
            found.append((base, v.problem(
                f"group name '{name}' is also a route's name (line {v.LINE}); commands take "
                "either, so they must differ", line_of=("routes", index[name]))))
        members = group.get("routes") if isinstance(group, dict) else None
        if not isinstance(members, list) or (*base, "routes") in bad:
            continue
        if len(members) == 1:
            found.append(((*base, "routes"), v.problem(
                f"a group of one: '{members[0]}' moves on its own; a group needs two routes or "
                "more")))
        lead: tuple[str, int] | None = None
        for k, member in enumerate(members):
            where: Loc = (*base, "routes", k)
            if not isinstance(member, str):
                continue
            if member not in index:
                found.append((where, v.problem(
                    f"unknown route '{member}'; defined: {', '.join(index) or 'none'}"
                    f"{v.suggest(member, list(index))}")))
                continue
            if member in owner and owner[member][0] != name:
                other, j = owner[member]
                found.append((where, v.problem(
                    f"route '{member}' is already in group '{other}' (line {v.LINE}); a route "
                    "moves with one group at most", line_of=("groups", other, "routes", j))))
                continue
            owner[member] = (name, k)
            i = index[member]
            if lead is None:
                lead = (member, i)
                continue
            found += _disagree(where, routes, model, lead, (member, i))
    return found


def _disagree(where: Loc, routes: list, model: Any, lead: tuple[str, int],
              member: tuple[str, int]) -> Found:
    """What keeps `member` from moving as one with the group's first route."""
    (a, i), (b, j) = lead, member
    ra, rb = routes[i], routes[j]
    out: Found = []
    if _sticky(ra) != _sticky(rb):
        out.append((where, v.problem(
            f"'{b}' splits on {_sticky(rb)} but '{a}' on {_sticky(ra)}: members share one "
            "sticky key, or one user could be on the new service for one and on legacy for "
            "the other")))
    if ra.get("legacy") != rb.get("legacy"):
        out.append((where, v.problem(
            f"'{b}' has legacy '{rb.get('legacy')}' but '{a}' has '{ra.get('legacy')}': members "
            "share their legacy upstream")))
    wa, wb = ra.get("weight", 0), rb.get("weight", 0)
    if wa != wb:
        out.append((where, v.problem(
            f"'{b}' has weight {wb} but '{a}' has {wa}: members share one weight (write the "
            "same in both)")))
    pa, pb = _promotion(model, i), _promotion(model, j)
    if pa is not None and pa != pb:
        out.append((where, v.problem(
            f"'{b}' has other promotion steps, auto-promotion or approval than '{a}': the "
            "group is promoted as one, by one policy")))
    return out
