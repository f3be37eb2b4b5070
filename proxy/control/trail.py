"""The seams of the record: the audit trail and the approvals, each a small interface.

One implementation per file: `proxy.control.audit.AuditLog` (a hash-chained file in state_dir)
and `proxy.control.approvals.FileApprovals` (state_dir/approvals.json), and for several replicas
`proxy.control.audit_pg.PostgresAudit` and `proxy.control.approvals_pg.PostgresApprovals`
(`store.backend: postgres`; `proxy.control.stores` picks). The runtime only ever calls these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from proxy.control.audit import VerifyResult

ApprovalKind = Literal["promote", "set_weight"]


class AuditTrail(Protocol):
    def append(self, action: str, actor: str, reason: str, route: str | None = None,
               before: Any = None, after: Any = None, evidence: Any = None,
               **extra: Any) -> dict:
        """Write one entry durably; raises OSError when it cannot."""

    def entries(self, route: str | None = None, limit: int | None = None) -> list[dict]:
        """Newest first."""

    def verify(self) -> VerifyResult: ...

    def wrote_here(self) -> bool:
        """This state_dir has written entries before (a lost state.json is then a loss)."""

    async def settle(self, entry: dict | None, timeout: float = 1.0) -> dict | None:
        """The entry with its place in the chain (seq, prev). A shared trail may return it
        still `pending` (the store is down): it joins the chain when the store is back."""


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A change that waits for a second person (`promotion.approval`)."""

    id: str
    route: str
    step: int  # the step it was asked at: a new step voids it
    kind: ApprovalKind  # promote (the gate's next step) or set_weight (an operator's weight)
    from_weight: float
    to_weight: float
    requested_by: str
    requested_at: float
    expires_at: float
    reason: str
    replica: str = ""  # asked through which replica (shared store): step ids are per replica

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ApprovalRequest:
        return cls(id=str(raw["id"]), route=str(raw["route"]), step=int(raw["step"]),
                   kind=raw["kind"], from_weight=float(raw["from_weight"]),
                   to_weight=float(raw["to_weight"]), requested_by=str(raw["requested_by"]),
                   requested_at=float(raw["requested_at"]),
                   expires_at=float(raw["expires_at"]), reason=str(raw.get("reason", "")),
                   replica=str(raw.get("replica", "")))


class ApprovalStore(Protocol):
    """At most one pending request per route."""

    def pending(self, route: str) -> ApprovalRequest | None: ...

    def all(self) -> list[ApprovalRequest]: ...

    def put(self, request: ApprovalRequest) -> None:
        """Store (replacing the route's request, if any); raises OSError when it cannot."""

    def remove(self, route: str, request_id: str | None = None) -> ApprovalRequest | None:
        """Take the route's request (that one, when `request_id` is given) away; only one
        caller gets it. Returns it. May wait on a shared store: run it off the event loop."""

    def discard(self, route: str) -> ApprovalRequest | None:
        """Void the route's request without waiting (a new step began); returns it."""
