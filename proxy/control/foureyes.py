"""Four eyes (`promotion.approval`): a change to `from_weight` or above waits for a second
named admin, who approves it within `expires`; the requester cannot. Part of `Runtime` (a mixin:
it uses the runtime's lock, audit, approvals store and weight changes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog

from proxy.control.audit import entry_hash
from proxy.control.results import GateResult, MutationResult, RuntimeError_
from proxy.control.trail import ApprovalRequest
from shadow.gate import Decision

log = structlog.get_logger("strangler.approvals")

STORE_TIMEOUT = 2.0  # a shared approvals store that does not answer within this refuses


class FourEyes:
    """The approval half of `proxy.control.runtime.Runtime`."""

    def _needs_approval(self, name: str, weight: float) -> bool:
        approval = self.spec(name).promotion.approval
        return (approval is not None and weight >= approval.from_weight
                and weight > self.effective(name))

    async def _request_approval(self, name: str, kind: str, before: float, weight: float,
                                actor: str, reason: str, evidence: Any) -> ApprovalRequest:
        """Record (or keep) the route's request for a second person's approval."""
        spec = self.spec(name)
        assert spec.promotion.approval is not None
        now = time.time()
        step = self.state.route(name).step
        async with self.lock:
            current = self._live_request(name, now)
            if current is not None and current.kind == kind and current.to_weight == weight:
                return current
            request = ApprovalRequest(
                id=uuid.uuid4().hex[:12], route=name, step=step, kind=kind,  # type: ignore
                from_weight=before, to_weight=weight, requested_by=actor, requested_at=now,
                expires_at=now + spec.promotion.approval.expires, reason=reason,
                replica=self.replica)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.approvals.put, request),
                                       STORE_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise RuntimeError_(503, f"the approval request could not be stored: {exc}",
                                    {"route": name}) from exc
            entry, _ = self._audit(action="approval_requested", actor=actor, route=name,
                                   before=before, after=weight, reason=reason,
                                   evidence={"request": request.to_dict(),
                                             "gate": evidence})
        result = MutationResult(name, before, weight, audit=entry,
                                audit_hash=entry_hash(entry) if entry else None)
        self._notify("approval_requested", result, kind, actor,
                     f"{reason} (needs `strangler approve {name}` by another named admin "
                     f"before {stamp(request.expires_at)})", evidence=evidence,
                     decision="approval_requested")
        log.info("approval requested", route=name, to=weight, actor=actor, id=request.id)
        return request

    def _awaited_request(self, name: str, decision: Decision,
                         now: float) -> ApprovalRequest | None:
        """The pending request `decision`'s promotion waits for: the route's unexpired
        promotion request to the weight the gate says promote to (the one `promote` would keep
        rather than ask again). A read: an expired request is left for a change to drop."""
        if decision.decision != "promote" or not self._needs_approval(name, decision.to_weight):
            return None
        request = self.approvals.pending(name)
        if (request is None or request.kind != "promote"
                or request.to_weight != decision.to_weight or now > request.expires_at):
            return None
        return request

    def _live_request(self, name: str, now: float) -> ApprovalRequest | None:
        """The route's pending request; an expired one is dropped (and audited)."""
        request = self.approvals.pending(name)
        if request is not None and now > request.expires_at:
            self._drop_request(name, "approval_expired",
                               f"not approved before {stamp(request.expires_at)}")
            return None
        return request

    def _drop_request(self, name: str, action: str, reason: str) -> None:
        try:
            request = self.approvals.discard(name)
        except OSError as exc:
            log.error("approval not removed", route=name, error=str(exc))
            return
        if request is not None:
            self._audit(action=action, actor="system", route=name, reason=reason,
                        before=request.from_weight, after=request.to_weight,
                        evidence={"request": request.to_dict()})

    def _void_approval(self, name: str, reason: str) -> None:
        if self.approvals.pending(name) is not None:
            self._drop_request(name, "approval_void", reason)

    async def approve(self, name: str, actor: str, named: bool, reason: str) -> GateResult:
        """A second person approves the route's pending request: the change is made now."""
        spec = self.spec(name)
        policy = spec.promotion.approval
        if not named:
            raise RuntimeError_(403, "an approval needs a named credential (admin.tokens): the "
                                "approver is told apart from the requester by their token",
                                {"route": name})
        now = time.time()
        request = self.approvals.pending(name)
        if request is not None and now > request.expires_at:
            self._drop_request(name, "approval_expired",
                               f"not approved before {stamp(request.expires_at)}")
            raise RuntimeError_(409, f"the request by {request.requested_by} on '{name}' expired "
                                f"at {stamp(request.expires_at)}; nothing changed (`strangler "
                                f"promote {name}` asks again)",
                                {"route": name, "expired": request.to_dict()})
        if request is None:
            raise RuntimeError_(409, f"nothing to approve on '{name}': no pending request (a "
                                "new step voids one; `strangler promote` or `set-weight` asks "
                                "again)", {"route": name})
        # A request asked through another replica carries that replica's step id: its own new
        # steps void it there (and so in the shared store).
        if request.step != self.state.route(name).step and request.replica == self.replica:
            self._void_approval(name, "a new step began")
            raise RuntimeError_(409, f"the request on '{name}' was for an earlier step; ask "
                                "again", {"route": name})
        if actor == request.requested_by:
            raise RuntimeError_(409, f"four eyes: {actor} asked for this change and cannot "
                                "approve it; another named admin must",
                                {"route": name, "requested_by": request.requested_by})
        if policy is not None and policy.approvers is not None and actor not in policy.approvers:
            raise RuntimeError_(403, f"{actor} is not an approver of '{name}' (approvers: "
                                f"{', '.join(policy.approvers)})", {"route": name})
        approval = {"id": request.id, "requested_by": request.requested_by,
                    "requested_at": request.requested_at, "approved_by": actor,
                    "approved_at": now, "reason": reason}
        if request.kind == "promote":
            result = await self._evaluate(name, acting=True)
            decision = result.decision
            if decision.decision != "promote" or decision.to_weight != request.to_weight:
                raise RuntimeError_(409, f"the gate no longer says promote to "
                                    f"{request.to_weight:g}%: it says {decision.decision} "
                                    "(the request stays pending)", {
                                        "route": name, "decision": decision.to_dict()})
            await self._claim(name, request)
            self._count("gate_decisions", name, "promote")
            view = {**result.view, "approval": approval}
            self._audit(action="approve", actor=actor, route=name, reason=reason,
                        before=request.from_weight, after=request.to_weight,
                        evidence={"request": request.to_dict()})
            await self._apply_weight(name, request.to_weight, actor,
                                     "promotion gate (approved): "
                                     + " ".join(decision.reasons), "promote", view,
                                     approval=approval)
            view["acted"] = True
            result.view = view
            self._remember(name, view, view["step"])
            return result
        await self._claim(name, request)
        self._audit(action="approve", actor=actor, route=name, reason=reason,
                    before=request.from_weight, after=request.to_weight,
                    evidence={"request": request.to_dict()})
        applied = await self._apply_weight(name, request.to_weight, actor,
                                           f"{request.reason} (approved: {reason})",
                                           "set_weight", None, approval=approval)
        view = {"route": name, "decision": "set_weight", "from_weight": applied.before,
                "to_weight": applied.after, "reasons": [request.reason], "acted": True,
                "approval": approval, "evaluated_at": now,
                "step": self.state.route(name).step}
        return GateResult(Decision(name, "promote", applied.before, applied.after,
                                   (request.reason,)), view)


    async def _claim(self, name: str, request: ApprovalRequest) -> None:
        """Take the request out of the store before acting on it: with a shared store, of two
        replicas approving at once only one gets it."""
        try:
            got = await asyncio.wait_for(
                asyncio.to_thread(self.approvals.remove, name, request.id), STORE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError_(503, f"the approval could not be recorded: {exc}",
                                {"route": name}) from exc
        if got is None:
            raise RuntimeError_(409, f"the request on '{name}' was approved or voided through "
                                "another replica meanwhile; nothing changed here",
                                {"route": name})


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def approval_view(request: ApprovalRequest, now: float) -> dict:
    return {**request.to_dict(), "state": "pending",
            "expires_in_seconds": round(max(0.0, request.expires_at - now), 1)}
