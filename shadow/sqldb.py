"""The two databases the diff store and reconcile runs live in, behind one small surface.

`SqliteDb`: state_dir/diffs.sqlite3 (`store.backend: local`, one replica). `PostgresDb`: the
fleet's shared store (`store.backend: postgres`, `shadow.pg`). The stores write one SQL text
for both (qmark placeholders, `ON CONFLICT` upserts, `LIMIT ? OFFSET ?`, CASTs around sums);
what differs is here: placeholders, how a write transaction starts, how an inserted row's id
comes back, the scalar maximum, which error means what, and who may prune at a time.

`locator(config)` describes where the store is in a form that crosses a process boundary (the
comparer process opens its own connection): a path for SQLite, the store spec for PostgreSQL
(the DSN itself stays in the environment).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.config.spec import Config, StoreSpec

__all__ = ["NO_LIMIT", "PostgresDb", "SqliteDb", "connector", "locator"]

NO_LIMIT = 2**62  # `LIMIT ?` with this is "no limit" in both dialects
_PRUNE_LOCK = 0x53545250  # one pruner at a time across the fleet ("STRP")


class SqliteDb:
    GREATEST = "MAX"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.Error: Any = sqlite3.Error

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: list) -> None:
        self.conn.executemany(sql, rows)

    def insert_id(self, sql: str, args: Any) -> int:
        return int(self.conn.execute(sql, args).lastrowid or 0)

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    def maintenance_lock(self) -> bool:
        return True  # BEGIN IMMEDIATE already excludes the other writers

    def status(self) -> dict[str, Any]:
        return {"up": True}

    def close(self) -> None:
        self.conn.close()


class PostgresDb:
    """A `shadow.pg.Link` seen as the stores' database. A lost connection raises
    `StoreUnavailable` (and is reopened, at most once a second, on a later call); a statement
    that fails on a healthy connection raises psycopg's error. Both are in `Error`."""

    GREATEST = "GREATEST"

    def __init__(self, link: Any) -> None:
        import psycopg

        from shadow.pg import StoreUnavailable

        self.link = link
        self.Error: Any = (psycopg.Error, StoreUnavailable)
        self._psycopg_error = psycopg.Error
        self._sql: dict[str, str] = {}

    def _text(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("?", "%s")
        return out

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        with self.link.lock:
            conn = self.link.conn()
            try:
                return fn(conn)
            except self._psycopg_error as exc:
                if conn.broken or conn.closed:
                    raise self.link.failed(exc) from None
                raise

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self._run(lambda c: c.execute(self._text(sql), tuple(args)))

    def executemany(self, sql: str, rows: list) -> None:
        if not rows:
            return

        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(self._text(sql), rows)  # pipelined: one round trip
        self._run(run)

    def insert_id(self, sql: str, args: Any) -> int:
        return int(self._run(
            lambda c: c.execute(self._text(sql) + " RETURNING id", tuple(args)).fetchone()[0]))

    def begin(self) -> None:
        self._run(lambda c: c.execute("BEGIN"))

    def commit(self) -> None:
        self._run(lambda c: c.execute("COMMIT"))

    def rollback(self) -> None:
        with contextlib.suppress(Exception), self.link.lock:
            conn = self.link._conn
            if conn is not None and not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")

    def maintenance_lock(self) -> bool:
        """Inside a transaction: True for the one process of the fleet that may prune now."""
        return bool(self.execute("SELECT pg_try_advisory_xact_lock(?)",
                                 (_PRUNE_LOCK,)).fetchone()[0])

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"up": self.link.up}
        if self.link.error is not None:
            out["error"] = self.link.error
        return out

    def close(self) -> None:
        self.link.close()


def locator(config: Config) -> str | dict[str, Any]:
    """Where the diff store is, in a form that can be sent to the comparer process."""
    if config.store.shared:
        s = config.store
        return {"backend": "postgres", "dsn_env": s.dsn_env, "sslmode": s.sslmode,
                "sslrootcert": s.sslrootcert, "connect_timeout": s.connect_timeout}
    return str(config.state_dir / "diffs.sqlite3")


def connector(where: str | Path | dict[str, Any], name: str = "strangler-diffs"
              ) -> Callable[[], SqliteDb | PostgresDb]:
    """A function that opens a new connection (one per thread) to the store at `where`."""
    if isinstance(where, dict):
        from shadow import pg

        spec = StoreSpec(**{k: v for k, v in where.items() if k != "backend"},
                         backend="postgres")
        dsn = pg.dsn(spec)
        return lambda: PostgresDb(pg.Link(spec, dsn, name))
    from shadow import store_schema

    path = Path(where)
    return lambda: SqliteDb(store_schema.open_file(path, check_same_thread=False))
