"""The seams of the record: the audit trail and the approvals, each a small interface.

One implementation per file: `proxy.control.audit.AuditLog` (a hash-chained file in state_dir)
and `proxy.control.approvals.FileApprovals` (state_dir/approvals.json). A shared backend (e.g.
PostgreSQL for several replicas) implements the same methods in a file of its own; the runtime
only ever calls these.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ApprovalRequest:
        return cls(id=str(raw["id"]), route=str(raw["route"]), step=int(raw["step"]),
                   kind=raw["kind"], from_weight=float(raw["from_weight"]),
                   to_weight=float(raw["to_weight"]), requested_by=str(raw["requested_by"]),
                   requested_at=float(raw["requested_at"]),
                   expires_at=float(raw["expires_at"]), reason=str(raw.get("reason", "")))


class ApprovalStore(Protocol):
    """At most one pending request per route."""

    def pending(self, route: str) -> ApprovalRequest | None: ...

    def all(self) -> list[ApprovalRequest]: ...

    def put(self, request: ApprovalRequest) -> None:
        """Store (replacing the route's request, if any); raises OSError when it cannot."""

    def remove(self, route: str) -> ApprovalRequest | None:
        """Drop the route's request; returns it."""
