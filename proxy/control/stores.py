"""Which audit trail and approvals store a replica uses (`store.backend`), and the shared
store's start-up check.

`local` (the default): the hash-chained file and approvals.json in state_dir, one replica.
`postgres`: the fleet's chain and approvals in PostgreSQL (`proxy.control.audit_pg`,
`proxy.control.approvals_pg`); the DSN from `store.dsn_env`.

At start (`check_shared`): an unset DSN variable or a database whose schema is newer than this
strangler knows refuses the start (exit 2). A database that cannot be reached does not: the
replica serves, buffers its audit entries on disk and reports the store as degraded in /readyz
until it is back (the outage behaviour of docs/kubernetes.md).
"""

from __future__ import annotations

from typing import Any

import structlog

from proxy.config.spec import Config
from proxy.control.approvals import FileApprovals
from proxy.control.audit import AuditLog

log = structlog.get_logger("strangler.store")


class StoreRefused(Exception):
    """The shared store cannot be used as configured (the message says why)."""


def open_trail(config: Config) -> tuple[Any, Any, str]:
    """(audit trail, approvals store, replica name) for `config.store`."""
    if not config.store.shared:
        return (AuditLog(config.state_dir / "audit.log"),
                FileApprovals(config.state_dir / "approvals.json"), "")
    from proxy.control.approvals_pg import PostgresApprovals
    from proxy.control.audit_pg import PostgresAudit
    from shadow import pg

    dsn = pg.dsn(config.store)
    replica = pg.replica_name()
    return (PostgresAudit(config.store, dsn, config.state_dir, replica),
            PostgresApprovals(config.store, dsn, replica), replica)


def check_shared(config: Config) -> dict | None:
    """Before serving with `store.backend: postgres`: the DSN is set and the schema is one this
    strangler can write (migrated when older). Returns None when ready, or what is wrong when the
    database cannot be reached now (serve starts degraded). Raises StoreRefused."""
    if not config.store.shared:
        return None
    from shadow import pg

    try:
        dsn = pg.dsn(config.store)
    except ValueError as exc:
        raise StoreRefused(str(exc)) from None
    link = pg.Link(config.store, dsn, "strangler-migrate")
    try:
        with link.lock:
            link.conn()
    except pg.StoreUnavailable as exc:
        if link.fatal is not None:
            raise StoreRefused(link.fatal) from None
        log.warning("shared store unreachable at start: serving, audit entries buffer on disk "
                    "until it is back", store=pg.display(dsn), error=str(exc))
        return {"store": pg.display(dsn), "error": str(exc)}
    finally:
        link.close()
    log.info("shared store ready", store=pg.display(dsn), schema=pg.SCHEMA_VERSION)
    old = config.state_dir / "audit.log"
    if old.exists() and old.stat().st_size:
        log.warning("state_dir has a file audit trail that is not in the shared store: import it "
                    "with `strangler store migrate --from-state-dir DIR` (kept as it is)",
                    file=str(old))
    return None
