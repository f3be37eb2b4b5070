"""The inventory's rollups in the fleet's PostgreSQL store (`store.backend: postgres`):
`RollupStore` shared by every replica, so that any replica's `strangler inventory`, progress and
retire-check read the whole fleet's traffic.

Tables (schema version 2 of `shadow.pg`): `inventory_traffic` (one row per bucket, endpoint,
route and backend; the latency histogram is a BIGINT[] indexed by latency bucket),
`inventory_shadow`, `inventory_meta` and `inventory_writers`.

Several replicas write at once, safely:
- a write adds into rows (`INSERT ... ON CONFLICT DO UPDATE SET requests = requests + ...`,
  histograms added by `strangler_hist_add`), never replaces them, so concurrent writers lose no
  count; every transaction touches its rows in one order (the key, in "C" collation, which is
  Python's string order), so two writers never deadlock;
- a write is one transaction for every bucket of a flush, and carries (writer, batch): a batch
  whose COMMIT got no answer is sent again by `proxy.control.rollups` and applied at most once
  (`inventory_writers` holds each writer's last applied batch);
- compaction takes a transaction-scoped advisory lock (one compactor per bucket at a time),
  locks the rows it folds in key order and moves them into `other` in one statement
  (`DELETE ... RETURNING` feeding the upsert), so a concurrent add is either folded with them or
  lands after them: nothing is lost, and compacting a compacted bucket does nothing;
- pruning deletes by bucket start only (idempotent).

Never on the event loop: `endpoints()` answers from memory (no I/O), so the open-bucket bound
counts what this replica admitted; a bucket can hold up to 2 x `max_templates` endpoints per
replica (and per restart) until it closes and is compacted to `max_templates` plus `other`.

A short statement timeout bounds every call; while the database is down `shadow.pg.Link`
refuses at once (no network) and the rollups wait in memory (`proxy.control.rollups`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from proxy.config.spec import StoreSpec
from proxy.control.rollups import DAY, Bucket, CommitUnknown, Row, window
from proxy.dataplane.inventory import OTHER
from shadow.pg import Link, scrub

FLUSH_INTERVAL = 2.0  # seconds: the fleet's view is at most this (plus a read) behind
STATEMENT_TIMEOUT_MS = 5000
WRITERS_KEPT = 7 * DAY  # a writer's batch number outlives any retry of its last batch
_COMPACT_LOCK = 0x53544943  # with the bucket start: one compactor per bucket ("STIC")
_C = 'COLLATE "C"'

_UPSERT = (
    "INSERT INTO inventory_traffic (grain, start, method, template, route, backend, requests, "
    "errors, latency) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (grain, start, "
    "method, template, route, backend) DO UPDATE SET "
    "requests = inventory_traffic.requests + excluded.requests, "
    "errors = inventory_traffic.errors + excluded.errors, "
    "latency = strangler_hist_add(inventory_traffic.latency, excluded.latency)")
_UPSERT_SHADOW = (
    "INSERT INTO inventory_shadow (grain, start, route, compared, mismatched, errors) VALUES "
    "(%s, %s, %s, %s, %s, %s) ON CONFLICT (grain, start, route) DO UPDATE SET "
    "compared = inventory_shadow.compared + excluded.compared, "
    "mismatched = inventory_shadow.mismatched + excluded.mismatched, "
    "errors = inventory_shadow.errors + excluded.errors")


def _array(hist: dict[int, int]) -> list[int]:
    """A histogram as the dense array stored (index = latency bucket)."""
    if not hist:
        return []
    out = [0] * (max(hist) + 1)
    for i, n in hist.items():
        out[i] += n
    return out


def _hist(array: list[int] | None) -> dict[int, int]:
    return {i: n for i, n in enumerate(array or ()) if n}


def _upsert(conn: Any, buckets: list[Bucket]) -> None:
    """Add the buckets' rows, in key order (pipelined: one round trip per table)."""
    traffic = sorted((grain, start, *key, s[0], s[1], _array(s[2]))
                     for grain, start, rows, _ in buckets for key, s in rows.items())
    shadow = sorted((grain, start, route, *c)
                    for grain, start, _, routes in buckets for route, c in routes.items())
    with conn.cursor() as cur:
        if traffic:
            cur.executemany(_UPSERT, traffic)
        if shadow:
            cur.executemany(_UPSERT_SHADOW, shadow)


class PostgresRollupStore:
    shared = True
    flush_interval = FLUSH_INTERVAL

    def __init__(self, spec: StoreSpec, dsn: str, replica: str) -> None:
        self.link = Link(spec, dsn, "strangler-inventory")
        self.replica = replica
        # this run's identity as a writer: batch numbers count from 1 for every start
        self.writer = f"{replica}/{uuid.uuid4().hex[:12]}"
        self._configured: Any = None  # the connection the statement timeout was set on
        self._started: float | None = None  # to record with the first write
        self._store_id: str | None = None

    # -- the connection ----------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = self.link.conn()
        if conn is not self._configured:
            try:
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            except Exception as exc:
                raise self.link.failed(exc) from None
            self._configured = conn
        return conn

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.link.lock:
            conn = self._conn()
            try:
                cur = conn.execute(sql, args)
                return cur.fetchall() if cur.description is not None else []
            except Exception as exc:
                raise self._failed(conn, exc) from None

    def _failed(self, conn: Any, exc: BaseException) -> BaseException:
        """The error to raise: StoreUnavailable when the connection is gone or a statement ran
        out of time (a slow store), else `exc`."""
        from psycopg.errors import QueryCanceled

        if conn.broken or conn.closed or isinstance(exc, QueryCanceled):
            return self.link.failed(exc)
        return exc

    def _transaction(self, conn: Any, body: Any) -> Any:
        """Run `body(conn)` in a transaction; an error rolls back (and is raised)."""
        try:
            conn.execute("BEGIN")
            out = body(conn)
        except Exception as exc:
            if not (conn.broken or conn.closed):
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
            raise self._failed(conn, exc) from None
        return out

    # -- RollupStore ---------------------------------------------------------------------------
    def mark_started(self, t: float) -> None:
        self._started = t

    def identity(self) -> str:
        if self._store_id is None:
            rows = self._rows("SELECT value FROM inventory_meta WHERE key = 'store_id'")
            self._store_id = f"postgres:{rows[0][0] if rows else 'unknown'}"
        return self._store_id

    def write(self, buckets: list[Bucket], batch: int) -> None:
        if not any(rows or routes for _, _, rows, routes in buckets):
            return
        started = self._started

        def body(conn: Any) -> bool:
            fresh = conn.execute(
                "INSERT INTO inventory_writers VALUES (%s, %s, %s) ON CONFLICT (writer) DO "
                "UPDATE SET batch = excluded.batch, updated = excluded.updated "
                "WHERE inventory_writers.batch < excluded.batch RETURNING batch",
                (self.writer, batch, time.time())).fetchone()
            if fresh is None:  # this batch was applied already (its commit went unanswered)
                conn.execute("ROLLBACK")
                return False
            if started is not None:
                conn.execute("INSERT INTO inventory_meta VALUES ('started', %s) "
                             "ON CONFLICT (key) DO NOTHING", (str(started),))
            _upsert(conn, buckets)
            return True

        with self.link.lock:
            conn = self._conn()
            if not self._transaction(conn, body):
                self._started = None
                return
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                self._failed(conn, exc)
                raise CommitUnknown("the shared store did not confirm the commit: "
                                    + scrub(str(exc), self.link.dsn)) from None
        self._started = None

    def import_once(self, buckets: list[Bucket], key: str, started: float | None) -> bool:
        """Add another store's buckets (`strangler store migrate`), once per `key`: False when
        that key was imported already. The records then begin at the earlier start."""
        def body(conn: Any) -> bool:
            if conn.execute("INSERT INTO inventory_meta VALUES (%s, %s) ON CONFLICT (key) DO "
                            "NOTHING RETURNING key", (f"imported.{key}", str(time.time()))
                            ).fetchone() is None:
                conn.execute("ROLLBACK")
                return False
            if started is not None:
                conn.execute(
                    "INSERT INTO inventory_meta VALUES ('started', %s) ON CONFLICT (key) DO "
                    "UPDATE SET value = excluded.value WHERE "
                    "CAST(inventory_meta.value AS DOUBLE PRECISION) > %s",
                    (str(started), started))
            _upsert(conn, buckets)
            conn.execute("COMMIT")
            return True

        with self.link.lock:
            return bool(self._transaction(self._conn(), body))

    def read(self, grain: int, since: int, until: int | None = None) -> list[Row]:
        sql, args = window("SELECT start, method, template, route, backend, requests, errors, "
                           "latency FROM inventory_traffic", grain, since, until, "%s")
        return [(int(s), (m, t, r, b), [int(q), int(e), _hist(lat)])
                for s, m, t, r, b, q, e, lat in self._rows(sql, args)]

    def read_shadow(self, grain: int, since: int, until: int | None = None
                    ) -> list[tuple[int, str, list[int]]]:
        sql, args = window("SELECT start, route, compared, mismatched, errors FROM "
                           "inventory_shadow", grain, since, until, "%s")
        return [(int(s), r, [int(c), int(m), int(e)]) for s, r, c, m, e in self._rows(sql, args)]

    def starts(self, grain: int, since: int, until: int) -> list[int]:
        return [int(s) for (s,) in self._rows(
            "SELECT DISTINCT start FROM inventory_traffic WHERE grain = %s AND start >= %s AND "
            "start < %s ORDER BY start", (grain, since, until))]

    def endpoints(self, grain: int, start: int) -> set[tuple[str, str]]:
        return set()  # no I/O on the event loop: each replica bounds what it admits

    def compact(self, grain: int, start: int, keep: int) -> int:
        def body(conn: Any) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                         (_COMPACT_LOCK, int(start // grain) % 2**31))
            drop = conn.execute(
                f"SELECT method, template FROM inventory_traffic WHERE grain = %s AND "
                f"start = %s AND NOT (method = %s AND template = %s) GROUP BY method, template "
                f"ORDER BY SUM(requests) DESC, method {_C}, template {_C} OFFSET %s",
                (grain, start, *OTHER, keep)).fetchall()
            if not drop:
                conn.execute("COMMIT")
                return 0
            methods = [m for m, _ in drop]
            templates = [t for _, t in drop]
            # lock the rows to fold, and `other`'s, in the order every writer locks rows
            conn.execute(
                f"SELECT 1 FROM inventory_traffic x WHERE x.grain = %s AND x.start = %s AND "
                f"((x.method, x.template) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
                f"OR (x.method = %s AND x.template = %s)) ORDER BY x.method {_C}, "
                f"x.template {_C}, x.route {_C}, x.backend {_C} FOR UPDATE",
                (grain, start, methods, templates, *OTHER))
            conn.execute(
                "WITH gone AS (DELETE FROM inventory_traffic x USING unnest(%s::text[], "
                "%s::text[]) AS d(m, t) WHERE x.grain = %s AND x.start = %s AND "
                "x.method = d.m AND x.template = d.t "
                "RETURNING x.route, x.backend, x.requests, x.errors, x.latency) "
                "INSERT INTO inventory_traffic (grain, start, method, template, route, backend, "
                "requests, errors, latency) SELECT %s, %s, %s, %s, route, backend, "
                "SUM(requests), SUM(errors), strangler_hist_sum(latency) FROM gone "
                f"GROUP BY route, backend ORDER BY route {_C}, backend {_C} "
                "ON CONFLICT (grain, start, method, template, route, backend) DO UPDATE SET "
                "requests = inventory_traffic.requests + excluded.requests, "
                "errors = inventory_traffic.errors + excluded.errors, "
                "latency = strangler_hist_add(inventory_traffic.latency, excluded.latency)",
                (methods, templates, grain, start, grain, start, *OTHER))
            conn.execute("COMMIT")
            return len(drop)

        with self.link.lock:
            return int(self._transaction(self._conn(), body))

    def prune(self, grain: int, before: int) -> int:
        def body(conn: Any) -> int:
            n = conn.execute("DELETE FROM inventory_traffic WHERE grain = %s AND start < %s",
                             (grain, before)).rowcount
            conn.execute("DELETE FROM inventory_shadow WHERE grain = %s AND start < %s",
                         (grain, before))
            if grain == DAY:  # what is left begins no earlier than this
                conn.execute("UPDATE inventory_meta SET value = %s WHERE key = 'started' AND "
                             "CAST(value AS DOUBLE PRECISION) < %s", (str(before), before))
                conn.execute("DELETE FROM inventory_writers WHERE updated < %s",
                             (time.time() - WRITERS_KEPT,))
            conn.execute("COMMIT")
            return n

        with self.link.lock:
            return int(self._transaction(self._conn(), body))

    def first(self) -> float | None:
        value = self.get_meta("started")
        if value is not None:
            return float(value)
        return self._started  # not written yet: this replica's start

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM inventory_meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._rows("INSERT INTO inventory_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET "
                   "value = excluded.value", (key, value))

    def size(self) -> int:
        rows = self._rows("SELECT pg_total_relation_size('inventory_traffic') + "
                          "pg_total_relation_size('inventory_shadow')")
        return int(rows[0][0]) if rows else 0

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"up": self.link.up}
        if self.link.error is not None:
            out["error"] = self.link.error
        return out

    def close(self) -> None:
        self.link.close()

