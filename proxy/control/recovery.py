"""What `serve` does with a damaged state_dir, decided per file (SECURITY.md, "Reliability").

- state.json unreadable (truncated, not JSON, wrong shape), or missing while the audit log has
  entries: the file is moved aside (`state.json.corrupt-<ts>`) and serve starts on routes.yaml's
  weights with **every route rolled back** (all traffic to legacy). Which routes were rolled
  back cannot be known, so none is forgotten; `resume` lifts each freeze. Audited, logged once,
  and /readyz says `degraded` until the next restart.
- audit.log with a torn last line (an append interrupted by a crash): the partial bytes are moved
  to `audit.log.torn-<ts>`, the log is cut back to its last complete line, and the repair is the
  next audit entry. Serve starts.
- audit.log edited, lines deleted or inserted, or the file missing while its anchor says entries
  were written: serve refuses to start (exit 2). Appending would extend, and for the last lines
  overwrite the anchor of, a history that can no longer be trusted; none of this happens by
  accident, and the operator's fix is one `mv`.
The diff store has its own check (`shadow.store_check`): shadow evidence is not a promise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from proxy.control.audit import AuditLog
from proxy.control.state import RouteRuntime, RuntimeState, StateCorrupt, StateStore

log = structlog.get_logger("strangler.recovery")


class RefuseToStart(Exception):
    """The state_dir cannot be used as it is; the message says what to do (exit 2)."""


@dataclass(frozen=True, slots=True)
class StateRecovery:
    """state.json could not be used: what was wrong and what serve did instead."""

    file: str
    problem: str
    moved_to: str | None
    routes_rolled_back: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"file": self.file, "problem": self.problem, "moved_to": self.moved_to,
                "routes_rolled_back": list(self.routes_rolled_back),
                "action": "started with every route rolled back (all traffic to legacy); "
                          "`strangler resume ROUTE` lifts each freeze"}


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def check_audit_log(state_dir: Path) -> dict | None:
    """Repair a torn last line; raise RefuseToStart when the chain is broken."""
    audit = AuditLog(state_dir / "audit.log")
    try:
        repaired = audit.repair_torn_tail(stamp())
    except OSError as exc:
        raise RefuseToStart(
            f"{audit.path}: the last line is torn (an append was interrupted) and cannot be "
            f"repaired: {exc.strerror}. Make {state_dir} writable and start again.") from exc
    result = audit.verify()
    if not result.ok:
        raise RefuseToStart(
            f"{audit.path}: the audit log is broken: {result.message}. Nothing was changed and "
            "nothing is served: strangler does not extend a history that cannot be trusted "
            "(routing state in state.json is untouched). Inspect it with `strangler history "
            f"--verify --state-dir {state_dir}`, then restore audit.log and audit.log.tail from "
            "a backup, or move both aside (e.g. `mv audit.log audit.log.broken; mv "
            "audit.log.tail audit.log.tail.broken`) to start a new chain.")
    if repaired is not None:
        entry = {"action": "audit_repaired", "actor": "system",
                 "reason": f"line {repaired['line']} was torn (interrupted append): "
                           f"{repaired['action']}", "evidence": repaired}
        try:
            audit.append(**entry)
        except OSError as exc:
            repaired = {**repaired, "not_audited": str(exc)}
        log.error("audit log repaired: torn last line", file=str(audit.path), **repaired)
    return repaired


def load_state(store: StateStore, audit: Any,
               routes: list[str]) -> tuple[RuntimeState, StateRecovery | None]:
    """The saved state, or (when it cannot be trusted) one with every route rolled back.
    `audit` (an AuditTrail) tells whether this state_dir wrote entries before: a fleet's shared
    trail has entries of other replicas that say nothing about this one's state.json."""
    try:
        if store.exists() or not audit.wrote_here():
            return store.load(), None
        problem = ("missing, but the audit log has entries: the runtime weights and rollbacks "
                   "were lost")
    except StateCorrupt as exc:
        problem = exc.problem
    moved: str | None = None
    if store.exists():
        try:
            moved = str(store.quarantine(stamp()))
        except OSError as exc:
            problem += f" (could not be moved aside: {exc.strerror})"
    state = RuntimeState()
    for name in routes:
        state.routes[name] = RouteRuntime(rolled_back=True)
    recovery = StateRecovery(str(store.path), problem, moved, tuple(routes))
    log.error("state.json unusable: every route rolled back", **recovery.to_dict())
    return state, recovery
