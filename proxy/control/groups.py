"""Route groups (`groups:`): routes that share data move together. Part of `Runtime` (a mixin,
like the four-eyes half): it uses the runtime's config, state, lock and audit.

- One weight and one state: every change (set-weight, promote, rollback, resume, the guardrail)
  is applied to every member in the same push to every data plane (each applies the whole
  update at once), and audited once, on the group (`route` is the group's name, `routes` its
  members). The runtime keeps each member's state equal; a start or reload that finds them
  apart (a group just formed) aligns them to the lowest weight, or rolled back if any is, and
  audits `group_aligned`.
- One sticky assignment: members' buckets are keyed by the group's name (proxy.dataplane.table),
  and they share the weight, so a user is on the same side for every member at every weight.
- One gate: each member's evidence is judged under its own policy and the group's decision is
  the most cautious of theirs: fail (any member fails: the group rolls back), then hold (a
  member needs more evidence: the group waits), then inconclusive, then promote (all members
  pass). Approvals are kept under the group's first route (its lead).

A group's name, or any member's, addresses the group in every command.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.config.spec import GroupSpec
from proxy.control.results import GateResult, RuntimeError_
from shadow.gate import Decision

# the most cautious first
_ORDER = {"fail": 0, "hold": 1, "inconclusive": 2, "promote": 3, "complete": 4}


class Groups:
    """The group half of `proxy.control.runtime.Runtime`."""

    def group_of(self, name: str) -> GroupSpec | None:
        return self.config.group(name)

    def members(self, name: str) -> list[str]:
        """The routes a change to `name` (a route or a group) moves."""
        group = self.group_of(name)
        if group is not None:
            return list(group.routes)
        self.spec(name)  # 404 for a name that is neither
        return [name]

    def lead(self, name: str) -> str:
        """The route that stands for `name`: a group's first route; a route itself. Unknown
        names are a 404 that lists routes and groups."""
        group = self.group_of(name)
        if group is not None:
            return group.routes[0]
        if self.config.route(name) is None:
            detail: dict = {"routes": [r.name for r in self.config.routes]}
            if self.config.groups:
                detail["groups"] = [g.name for g in self.config.groups]
            raise RuntimeError_(404, f"unknown route '{name}'", detail)
        return name

    def unit(self, name: str) -> tuple[str, list[str]]:
        """What one audit entry is about: (the group's name, its members) or (route, [route])."""
        group = self.group_of(name)
        return (group.name, list(group.routes)) if group is not None else (name, [name])

    def group_extra(self, name: str) -> dict:
        group = self.group_of(name)
        return {} if group is None else {"group": group.name, "routes": list(group.routes)}

    async def _evaluate_group(self, group: GroupSpec, acting: bool) -> GateResult:
        """Every member judged on its own evidence; the group's answer is the most cautious."""
        results = {m: await self._evaluate_route(m, acting) for m in group.routes}
        decisions = [r.decision for r in results.values()]
        worst = min(decisions, key=lambda d: _ORDER.get(d.decision, 0))
        verdict = worst.decision
        agreeing = [d for d in decisions if d.decision == verdict]
        reasons = tuple(f"{d.route}: {reason}" for d in agreeing for reason in d.reasons)
        if verdict == "promote":
            to = min(d.to_weight for d in decisions)
        else:
            to = worst.to_weight
        decision = Decision(group.name, verdict, worst.from_weight, to, reasons,
                            {"group": group.name,
                             "members": {m: r.decision.evidence for m, r in results.items()}})
        view = decision.to_dict()
        view.update(evaluated_at=time.time(), acted=False,
                    step=results[group.routes[0]].view.get("step"), group=group.name,
                    members={m: r.view for m, r in results.items()})
        return GateResult(decision, view)

    def _align_groups(self, why: str) -> list[dict]:
        """Members apart (a group just formed, or a state from before it): all to the lowest
        weight, or all rolled back if any is. Returns what was aligned (already audited)."""
        out = []
        for group in self.config.groups:
            states = {m: (self.effective(m), self.rolled_back(m)) for m in group.routes}
            if len(set(states.values())) <= 1:
                continue
            rolled = any(rb for _, rb in states.values())
            weight = min(w for w, _ in states.values())
            for m in group.routes:
                rt = self.state.route(m)
                rt.rolled_back = rolled
                rt.weight = weight
                self._new_step(m, f"group '{group.name}' aligned ({why})")
            after: Any = "rolled_back" if rolled else weight
            self._audit(action="group_aligned", actor="system", route=group.name,
                        routes=list(group.routes),
                        before={m: ("rolled_back" if rb else w) for m, (w, rb) in states.items()},
                        after=after,
                        reason=f"group '{group.name}' members moved apart ({why}): all now "
                        + ("rolled back" if rolled else f"at {weight:g}%, the lowest"))
            out.append({"group": group.name, "to": after})
        return out
