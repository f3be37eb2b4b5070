"""What the control plane's actions answer: a change's result, a gate evaluation, a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shadow.gate import Decision


class RuntimeError_(Exception):
    """A refused admin action: `status` is the HTTP status the admin API answers with."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(slots=True)
class MutationResult:
    route: str | None
    before: Any
    after: Any
    durable: bool = True
    warning: str | None = None
    audit: dict | None = None
    extra: dict = field(default_factory=dict)
    audit_hash: str | None = None  # SHA-256 of the audit entry's line (notifications quote it)


@dataclass(slots=True)
class GateResult:
    """A gate evaluation: the decision, what was done about it, and remarks."""

    decision: Decision
    view: dict  # the decision object plus evaluated_at, acted, step (and approval)
    notes: list[str] = field(default_factory=list)
