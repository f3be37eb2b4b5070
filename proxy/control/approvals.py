"""Pending approvals in state_dir/approvals.json (the single-node `ApprovalStore`).

Written atomically like state.json; read once at start. An unreadable file is moved aside and
its requests are gone (logged): a pending approval is a request, not a change, and asking again
is the remedy; every request and approval is also in the audit log.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from proxy.control.state import atomic_write
from proxy.control.trail import ApprovalRequest

log = structlog.get_logger("strangler.approvals")


class FileApprovals:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._requests: dict[str, ApprovalRequest] = {}
        try:
            raw = json.loads(path.read_bytes())
            for item in raw.get("requests", []):
                req = ApprovalRequest.from_dict(item)
                self._requests[req.route] = req
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            moved = path.with_name(path.name + ".unreadable")
            path.replace(moved)
            log.error("approvals file unreadable: moved aside, pending approvals dropped",
                      file=str(path), moved_to=str(moved), error=str(exc))

    def pending(self, route: str) -> ApprovalRequest | None:
        return self._requests.get(route)

    def all(self) -> list[ApprovalRequest]:
        return sorted(self._requests.values(), key=lambda r: r.requested_at)

    def put(self, request: ApprovalRequest) -> None:
        requests = {**self._requests, request.route: request}
        self._save(requests)
        self._requests = requests

    def remove(self, route: str, request_id: str | None = None) -> ApprovalRequest | None:
        current = self._requests.get(route)
        if current is None or (request_id is not None and current.id != request_id):
            return None
        requests = {k: v for k, v in self._requests.items() if k != route}
        self._save(requests)
        return self._requests.pop(route)

    def discard(self, route: str) -> ApprovalRequest | None:
        return self.remove(route)

    def _save(self, requests: dict[str, ApprovalRequest]) -> None:
        data = {"version": 1, "requests": [r.to_dict() for r in requests.values()]}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
