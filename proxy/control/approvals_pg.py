"""Pending approvals in PostgreSQL (`store.backend: postgres`): a request made through one
replica is approved through another.

Reads (`pending`, `all`) answer from a copy in memory that a background thread refreshes every
`REFRESH` seconds, so a route view never waits for the database. `put` and `remove` go to the
database and raise OSError when it cannot be reached (the caller runs them off the event loop):
an approval request that the other replicas cannot see is refused rather than half made, and
`remove` claims the request atomically, so two replicas approving at once change the weight
once. `discard` (a new step voids a request) never waits: the copy forgets the request now and
the thread deletes it (that request, by id) when the database can be reached.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import structlog

from proxy.config.spec import StoreSpec
from proxy.control.trail import ApprovalRequest
from shadow.pg import Link, StoreUnavailable

log = structlog.get_logger("strangler.approvals")

REFRESH = 1.0


class PostgresApprovals:
    def __init__(self, spec: StoreSpec, dsn: str, replica: str) -> None:
        self.link = Link(spec, dsn, f"strangler-approvals {replica}")
        self._copy: dict[str, ApprovalRequest] = {}
        self._discards: list[tuple[str, str]] = []  # (route, id) still to delete
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="strangler-approvals",
                                        daemon=True)
        self._thread.start()

    def pending(self, route: str) -> ApprovalRequest | None:
        return self._copy.get(route)

    def all(self) -> list[ApprovalRequest]:
        return sorted(self._copy.values(), key=lambda r: r.requested_at)

    def put(self, request: ApprovalRequest) -> None:
        data = json.dumps(request.to_dict(), sort_keys=True)
        self._execute("INSERT INTO approvals (route, id, data) VALUES (%s, %s, %s) "
                      "ON CONFLICT (route) DO UPDATE SET id = excluded.id, data = excluded.data",
                      (request.route, request.id, data))
        with self._lock:
            self._copy = {**self._copy, request.route: request}

    def remove(self, route: str, request_id: str | None = None) -> ApprovalRequest | None:
        """Claim the route's request: only one caller in the fleet gets it."""
        if request_id is None:
            rows = self._execute("DELETE FROM approvals WHERE route = %s RETURNING data",
                                 (route,))
        else:
            rows = self._execute("DELETE FROM approvals WHERE route = %s AND id = %s "
                                 "RETURNING data", (route, request_id))
        with self._lock:
            self._copy = {k: v for k, v in self._copy.items() if k != route}
        return ApprovalRequest.from_dict(json.loads(rows[0][0])) if rows else None

    def discard(self, route: str) -> ApprovalRequest | None:
        """Forget the route's request now; delete it from the database in the background."""
        with self._lock:
            request = self._copy.get(route)
            if request is None:
                return None
            self._copy = {k: v for k, v in self._copy.items() if k != route}
            self._discards.append((route, request.id))
        return request

    def _execute(self, sql: str, args: tuple) -> list[tuple]:
        with self.link.lock:
            conn = self.link.conn()
            try:
                cur = conn.execute(sql, args)
                return cur.fetchall() if cur.description is not None else []
            except Exception as exc:
                raise self.link.failed(exc) from None

    def refresh(self) -> None:
        """Apply the discards, then read every pending request (StoreUnavailable if down)."""
        with self._lock:
            discards = list(self._discards)
        for route, rid in discards:
            self._execute("DELETE FROM approvals WHERE route = %s AND id = %s", (route, rid))
            with self._lock:
                self._discards.remove((route, rid))
        rows = self._execute("SELECT data FROM approvals", ())
        fresh: dict[str, ApprovalRequest] = {}
        for (data,) in rows:
            try:
                req = ApprovalRequest.from_dict(json.loads(data))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("approval row unreadable: ignored", error=str(exc))
                continue
            fresh[req.route] = req
        with self._lock:
            gone = {r for _, r in self._discards}
            self._copy = {k: v for k, v in fresh.items() if v.id not in gone}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except StoreUnavailable:
                pass
            self._stop.wait(REFRESH)

    def status(self) -> dict[str, Any]:
        return {"up": self.link.up, "discards_waiting": len(self._discards)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.link.close()
