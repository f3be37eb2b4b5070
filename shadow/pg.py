"""The shared PostgreSQL store (`store: {backend: postgres}`): connections and the schema.

One database holds what several replicas share: the audit trail, pending approvals, the diff
store and reconcile runs. Its tables are versioned here, in one place, as `shadow.store_schema`
versions the SQLite file: `migrate` applies the missing steps in one transaction under an
advisory lock (replicas starting together migrate once) and refuses a database whose schema is
newer than this strangler knows (`NewerSchema`). The control plane's tables (audit, approvals)
are listed with the diff store's because the version is the database's, not a module's.

Driver: psycopg 3. It is libpq underneath, so the DSN is the standard one (URI or key=value),
every `sslmode` and `sslrootcert` behaves as in psql, and the PG* environment variables work;
it has a sync API for the comparer's writer thread and the control plane's background threads
(an async one too, unused so far), and pipeline mode, which sends a batch of upserts in one
round trip (`executemany`). asyncpg would need an event loop in every writer thread and has its
own TLS and DSN handling.

Credentials: the DSN comes from the environment (`store.dsn_env`), never from routes.yaml. It
is never logged: `display` gives `user@host:port/dbname`, and `scrub` removes the password and the
DSN from any error text before it reaches a log, /readyz or an API answer.

`Link` is one connection that reconnects on demand. After a failure it refuses further attempts
for `retry` seconds without touching the network (`StoreUnavailable`), so a caller that tries on
every comparison costs nothing while the database is down.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog

from proxy.config.spec import StoreSpec

log = structlog.get_logger("strangler.store")

__all__ = ["SCHEMA_VERSION", "Link", "NewerSchema", "StoreUnavailable", "display", "dsn",
           "migrate", "replica_name", "scrub"]

_MIGRATE_LOCK = 0x5354524E  # advisory lock key held while the schema is migrated ("STRN")
RETRY = 1.0  # seconds between two connection attempts after a failure
STATEMENT_TIMEOUT_MS = 30_000
IDLE_TX_MS = 10_000  # a replica that stops mid-transaction releases the audit head
GENESIS = "0" * 64


class StoreUnavailable(OSError):
    """The shared store cannot be reached now (the message never holds a credential)."""


class NewerSchema(RuntimeError):
    """The database was migrated by a newer strangler."""


def dsn(spec: StoreSpec) -> str:
    """The DSN from `spec.dsn_env`; ValueError naming the variable when it is unset."""
    value = os.environ.get(spec.dsn_env, "").strip()
    if not value:
        raise ValueError(f"store.backend is postgres but the environment variable "
                         f"{spec.dsn_env} (store.dsn_env) is not set: put the PostgreSQL "
                         "connection string there (e.g. from a Kubernetes Secret)")
    return value


def replica_name() -> str:
    """Who this replica is in the audit trail: $STRANGLER_REPLICA, else the host name (the
    pod's name in Kubernetes)."""
    import socket

    return os.environ.get("STRANGLER_REPLICA") or socket.gethostname() or "unknown"


def _params(dsn_text: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn_text).items() if v is not None}
    except Exception:
        return {}


def display(dsn_text: str) -> str:
    """What may be shown of a DSN: user@host:port/dbname (no password, no other options)."""
    p = _params(dsn_text)
    if not p:
        return "<unparsable DSN>"
    host = p.get("host") or p.get("hostaddr") or "localhost"
    return f"{p.get('user', '')}@{host}:{p.get('port', '5432')}/{p.get('dbname', '')}"


def scrub(text: str, dsn_text: str) -> str:
    """`text` without the DSN or its password (psycopg may quote either in an error)."""
    out = text.replace(dsn_text, display(dsn_text)) if dsn_text else text
    password = _params(dsn_text).get("password")
    if password:
        out = out.replace(password, "***")
    return out


def conninfo(spec: StoreSpec, dsn_text: str, application_name: str) -> str:
    """The DSN with the settings of `spec` (sslmode, sslrootcert, connect_timeout) applied, and
    keepalives so that a vanished server is noticed within seconds."""
    from psycopg.conninfo import make_conninfo

    have = _params(dsn_text)
    extra: dict[str, Any] = {"application_name": application_name,
                             "connect_timeout": max(1, round(spec.connect_timeout))}
    if spec.sslmode is not None:
        extra["sslmode"] = spec.sslmode
    if spec.sslrootcert is not None:
        extra["sslrootcert"] = spec.sslrootcert
    for key, value in (("keepalives", 1), ("keepalives_idle", 5), ("keepalives_interval", 2),
                       ("keepalives_count", 3), ("tcp_user_timeout", 10_000)):
        if key not in have:
            extra[key] = value
    return make_conninfo(dsn_text, **extra)


# -- the schema --------------------------------------------------------------------------------

_V1 = (
    # the audit trail: one hash chain for the fleet (proxy.control.audit_pg)
    """CREATE TABLE audit_entries (
        seq BIGINT PRIMARY KEY, uid TEXT NOT NULL UNIQUE, route TEXT, replica TEXT NOT NULL,
        line TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE INDEX audit_entries_route ON audit_entries (route, seq)",
    """CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL)""",
    f"INSERT INTO audit_head VALUES (1, 0, '{GENESIS}')",
    # pending approvals (proxy.control.approvals_pg)
    "CREATE TABLE approvals (route TEXT PRIMARY KEY, id TEXT NOT NULL, data TEXT NOT NULL)",
    # the diff store (shadow.store; the same tables as shadow.store_schema version 1)
    """CREATE TABLE comparisons (
        route TEXT NOT NULL, step BIGINT NOT NULL, rules TEXT NOT NULL,
        compared BIGINT NOT NULL, mismatched BIGINT NOT NULL, errors BIGINT NOT NULL,
        updated DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (route, step, rules))""",
    """CREATE TABLE fields (
        route TEXT NOT NULL, step BIGINT NOT NULL, rules TEXT NOT NULL, path TEXT NOT NULL,
        kind TEXT NOT NULL, count BIGINT NOT NULL, elements BIGINT NOT NULL,
        of_elements BIGINT NOT NULL, updated DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (route, step, rules, path, kind))""",
    """CREATE TABLE renames (
        route TEXT NOT NULL, step BIGINT NOT NULL, rules TEXT NOT NULL, missing TEXT NOT NULL,
        extra TEXT NOT NULL, count BIGINT NOT NULL, updated DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (route, step, rules, missing, extra))""",
    """CREATE TABLE samples (
        id BIGSERIAL PRIMARY KEY, route TEXT NOT NULL, step BIGINT NOT NULL,
        ts DOUBLE PRECISION NOT NULL, method TEXT NOT NULL, data TEXT NOT NULL,
        rules TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE sample_refs (
        route TEXT NOT NULL, step BIGINT NOT NULL, rules TEXT NOT NULL, path TEXT NOT NULL,
        kind TEXT NOT NULL, role TEXT NOT NULL, sample_id BIGINT NOT NULL,
        PRIMARY KEY (route, step, rules, path, kind, role, sample_id))""",
    """CREATE TABLE field_values (
        route TEXT NOT NULL, path TEXT NOT NULL, sig TEXT NOT NULL, varies INTEGER NOT NULL,
        PRIMARY KEY (route, path))""",
    "CREATE INDEX samples_route ON samples (route, id)",
    "CREATE INDEX sample_refs_id ON sample_refs (sample_id)",
    # reconcile runs (shadow.reconcile_store)
    """CREATE TABLE reconcile_runs (
        id BIGSERIAL PRIMARY KEY, route TEXT NOT NULL, source TEXT NOT NULL,
        started DOUBLE PRECISION NOT NULL, finished DOUBLE PRECISION,
        requests BIGINT NOT NULL DEFAULT 0, compared BIGINT NOT NULL DEFAULT 0,
        mismatched BIGINT NOT NULL DEFAULT 0, errors BIGINT NOT NULL DEFAULT 0,
        skipped BIGINT NOT NULL DEFAULT 0, noise BIGINT NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '{}')""",
    "CREATE INDEX reconcile_runs_route ON reconcile_runs (route, id)",
    """CREATE TABLE reconcile_fields (
        run_id BIGINT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (run_id, path, kind))""",
    """CREATE TABLE reconcile_samples (
        run_id BIGINT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq))""",
)

# MIGRATIONS[i] moves a database at version i to i + 1 (0: no strangler tables yet).
MIGRATIONS: list[tuple[str, ...]] = [_V1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: Any) -> int:
    """The database's version (0 before the first migration)."""
    row = conn.execute("SELECT to_regclass('strangler_schema') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT MAX(version) FROM strangler_schema").fetchone()
    return int(row[0] or 0)


def migrate(conn: Any, steps: list[tuple[str, ...]] | None = None) -> int:
    """Bring the database to the latest version (one transaction); returns the version found.
    `conn` is in autocommit mode. Raises NewerSchema for a database from a newer strangler."""
    steps = MIGRATIONS if steps is None else steps
    latest = len(steps)
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS strangler_schema (version INTEGER NOT NULL)")
        found = schema_version(conn)
        if found > latest:
            raise NewerSchema(
                f"the shared store's schema is version {found}, newer than this strangler's "
                f"{latest}: a newer release migrated it; upgrade strangler (an older one does "
                "not write a schema it does not know)")
        for version in range(found, latest):
            for sql in steps[version]:
                conn.execute(sql)
        if found != latest:
            conn.execute("DELETE FROM strangler_schema")
            conn.execute("INSERT INTO strangler_schema VALUES (%s)", (latest,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK") if not conn.closed else None
        raise
    if found != latest:
        log.info("shared store migrated", schema_from=found, schema_to=latest)
    return found


class Link:
    """One connection to the shared store, opened (and migrated) on first use and again after
    a failure, at most once every `retry` seconds. Thread-safe to hand out; the caller
    serialises its use of the connection (`with link.lock:`)."""

    def __init__(self, spec: StoreSpec, dsn_text: str, name: str, *, retry: float = RETRY,
                 migrate_schema: bool = True) -> None:
        self.spec = spec
        self.dsn = dsn_text
        self.name = name
        self.retry = retry
        self.migrate_schema = migrate_schema
        self.lock = threading.RLock()
        self._conn: Any = None
        self._next_try = 0.0
        self.error: str | None = None  # why the store is unavailable (scrubbed), or None
        self.fatal: str | None = None  # the schema is newer than ours: never written
        self.down_since: float | None = None
        self.failures = 0  # connections lost or refused since start

    @property
    def up(self) -> bool:
        return self.error is None

    def conn(self) -> Any:
        """The open connection; StoreUnavailable when it cannot be had now."""
        with self.lock:
            if self._conn is not None and not self._conn.closed and not self._conn.broken:
                return self._conn
            now = time.monotonic()
            if now < self._next_try and self.error is not None:
                raise StoreUnavailable(self.error)
            return self._open()

    def _open(self) -> Any:
        import psycopg

        self._close_quietly()
        try:
            conn = psycopg.connect(conninfo(self.spec, self.dsn, self.name), autocommit=True,
                                   options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                                   f"-c idle_in_transaction_session_timeout={IDLE_TX_MS}")
        except Exception as exc:
            raise self.failed(exc) from None
        try:
            if self.migrate_schema:
                migrate(conn)
        except NewerSchema as exc:
            conn.close()
            self.fatal = str(exc)
            raise self.failed(exc) from None
        except Exception as exc:
            conn.close()
            raise self.failed(exc) from None
        self._conn = conn
        if self.error is not None:
            log.info("shared store reachable again", store=display(self.dsn), link=self.name,
                     down_seconds=round(time.time() - (self.down_since or time.time()), 1))
        self.error = None
        self.down_since = None
        return conn

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Note a failure (the connection is dropped); returns the error to raise."""
        with self.lock:
            message = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else
                            type(exc).__name__, self.dsn)
            if self.error is None:
                self.down_since = time.time()
                self.failures += 1
                log.warning("shared store unavailable", store=display(self.dsn),
                            link=self.name, error=message)
            self.error = message
            self._next_try = time.monotonic() + self.retry
            self._close_quietly()
            return StoreUnavailable(message)

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        with self.lock:
            self._close_quietly()
