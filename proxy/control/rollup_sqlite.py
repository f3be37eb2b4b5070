"""The inventory's rollups in a SQLite file (state_dir/inventory.sqlite3): `RollupStore` for one
proxy (one control process writes it; its admin API serves it to other replicas' CLIs).

The file is private (0600, like the diff store: request paths are the monolith's data). A row is
one endpoint on one route and backend in one bucket; its latency histogram is JSON
`[[bucket, count], ...]`. `PRAGMA user_version` is the schema version; a newer file is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from proxy.control.rollups import (
    DAY,
    Bucket,
    Key,
    RollupsUnavailable,
    Row,
    Stats,
    add_stats,
    window,
)
from proxy.dataplane.inventory import OTHER
from shadow.dbfile import check_reserve, connect, schema_version

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS traffic (
        grain INTEGER NOT NULL, start INTEGER NOT NULL, method TEXT NOT NULL,
        template TEXT NOT NULL, route TEXT NOT NULL, backend TEXT NOT NULL,
        requests INTEGER NOT NULL, errors INTEGER NOT NULL, latency TEXT NOT NULL,
        PRIMARY KEY (grain, start, method, template, route, backend)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS shadow (
        grain INTEGER NOT NULL, start INTEGER NOT NULL, route TEXT NOT NULL,
        compared INTEGER NOT NULL, mismatched INTEGER NOT NULL, errors INTEGER NOT NULL,
        PRIMARY KEY (grain, start, route)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


log = structlog.get_logger("strangler.rollups")


class NewerInventory(RuntimeError):
    """inventory.sqlite3 was written by a newer strangler."""


def _hist(text: str) -> dict[int, int]:
    return {int(i): int(n) for i, n in json.loads(text)}


def _text(hist: dict[int, int]) -> str:
    return json.dumps(sorted(hist.items()), separators=(",", ":"))


def _merge_latency(old: str, new: str) -> str:
    """SQL function merge_latency(a, b): two histograms added."""
    merged = _hist(old)
    for i, n in json.loads(new):
        merged[i] = merged.get(i, 0) + n
    return _text(merged)


class SqliteRollupStore:
    """One connection per operation, closed after it: nothing in state_dir stays open for
    writing between flushes (a state_dir remounted read-only, or a full disk, is the audit log's
    problem to report, not a file this store holds). A file that cannot be opened or written
    now is not an error at start: the rows wait in memory (`Rollups`) and the next operation
    tries again. A file written by a newer strangler is refused (NewerInventory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ready = False  # the schema is known to be there
        self.error: str | None = None  # why the file could not be opened at start
        try:
            with self._lock, self._session():
                pass
        except (sqlite3.Error, OSError) as exc:
            self.error = str(exc) or type(exc).__name__
            log.warning("inventory file cannot be written now; rollups wait in memory and are "
                        "written when it can be", path=str(self.path), error=self.error)

    @contextlib.contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation (the caller holds self._lock)."""
        conn = connect(self.path, check_same_thread=False)
        try:
            conn.create_function("merge_latency", 2, _merge_latency, deterministic=True)
            if not self._ready:
                version = schema_version(conn)
                if version > SCHEMA_VERSION:
                    raise NewerInventory(f"{self.path} was written by a newer strangler (schema "
                                         f"{version}, this one knows {SCHEMA_VERSION})")
                if version < SCHEMA_VERSION:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for sql in _SCHEMA:
                            conn.execute(sql)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                self._ready = True
            yield conn
        finally:
            conn.close()

    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A session for a write, refused (ENOSPC) while the state_dir's filesystem has less
        than DISK_RESERVE free: the rows wait in memory (bounded, see `Rollups`) and /readyz says
        why. The inventory is telemetry; it must not take the last space from state.json and
        the audit log, which a rollback on a nearly full disk needs (its WAL took the space a
        freed disk had given back before the rollback could be saved)."""
        check_reserve(self.path.parent, "the inventory", "rollups wait in memory")
        return self._session()

    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return _unavailable_on_error(self.path, self._session())

    def write(self, buckets: list[Bucket], batch: int = 0) -> None:
        """Every bucket in one transaction (one writer: a batch is never in doubt here)."""
        if not any(rows or shadow for _, _, rows, shadow in buckets):
            return
        with self._lock, self._writing() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                _upsert(c, buckets)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def read(self, grain: int, since: int, until: int | None = None) -> list[Row]:
        sql, args = window("SELECT start, method, template, route, backend, requests, errors, "
                           "latency FROM traffic", grain, since, until)
        with self._lock, self._reading() as c:
            rows = c.execute(sql, args).fetchall()
        return [(s, (m, t, r, b), [q, e, _hist(lat)]) for s, m, t, r, b, q, e, lat in rows]

    def read_shadow(self, grain: int, since: int, until: int | None = None
                    ) -> list[tuple[int, str, list[int]]]:
        sql, args = window("SELECT start, route, compared, mismatched, errors FROM shadow",
                           grain, since, until)
        with self._lock, self._reading() as c:
            rows = c.execute(sql, args).fetchall()
        return [(s, r, [c, m, e]) for s, r, c, m, e in rows]

    def starts(self, grain: int, since: int, until: int) -> list[int]:
        with self._lock, self._reading() as c:
            return [s for (s,) in c.execute(
                "SELECT DISTINCT start FROM traffic WHERE grain=? AND start>=? AND start<? "
                "ORDER BY start", (grain, since, until))]

    def endpoints(self, grain: int, start: int) -> set[tuple[str, str]]:
        try:
            with self._lock, self._session() as c:
                return {(m, t) for m, t in c.execute(
                    "SELECT DISTINCT method, template FROM traffic WHERE grain=? AND start=?",
                    (grain, start))}
        except (sqlite3.Error, OSError):  # unreadable now: the bound counts from here
            return set()

    def compact(self, grain: int, start: int, keep: int) -> int:
        with self._lock, self._writing() as c:
            busiest = c.execute(
                "SELECT method, template, SUM(requests) AS n FROM traffic WHERE grain=? AND "
                "start=? AND NOT (method=? AND template=?) GROUP BY method, template "
                "ORDER BY n DESC, method, template", (grain, start, *OTHER)).fetchall()
            if len(busiest) <= keep:
                return 0
            drop = busiest[keep:]
            c.execute("BEGIN IMMEDIATE")
            try:
                folded: dict[Key, Stats] = {}
                for method, template, _ in drop:
                    for route, backend, req, err, lat in c.execute(
                            "SELECT route, backend, requests, errors, latency FROM traffic "
                            "WHERE grain=? AND start=? AND method=? AND template=?",
                            (grain, start, method, template)).fetchall():
                        add_stats(folded, (*OTHER, route, backend), req, err, _hist(lat))
                    c.execute("DELETE FROM traffic WHERE grain=? AND start=? AND method=? AND "
                              "template=?", (grain, start, method, template))
                # the folded row in the same transaction: a refused write (a full disk)
                # leaves the endpoints as they were instead of losing their counts
                _upsert(c, [(grain, start, folded, {})])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return len(drop)

    def prune(self, grain: int, before: int) -> int:
        with self._lock, self._writing() as c:
            n = c.execute("DELETE FROM traffic WHERE grain=? AND start<?", (grain, before)).rowcount
            c.execute("DELETE FROM shadow WHERE grain=? AND start<?", (grain, before))
            if grain == DAY:  # what is left begins no earlier than this
                c.execute("UPDATE meta SET value=? WHERE key='started' AND CAST(value AS REAL)<?",
                          (str(before), before))
        return n

    def mark_started(self, t: float) -> None:
        if self.first() is None:
            self.set_meta("started", str(t))

    def identity(self) -> str:
        return "local"

    def first(self) -> float | None:
        value = self.get_meta("started")
        return float(value) if value is not None else None

    def get_meta(self, key: str) -> str | None:
        with self._lock, self._reading() as c:
            row = c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._writing() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        """Nothing stays open between operations."""


@contextlib.contextmanager
def _unavailable_on_error(path: Path, session: contextlib.AbstractContextManager[
        sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
    """A read of a file that cannot be opened now answers RollupsUnavailable (a 503)."""
    try:
        with session as conn:
            yield conn
    except NewerInventory:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise RollupsUnavailable(f"the inventory file {path} cannot be read now: "
                                 f"{exc}") from None


def _upsert(c: sqlite3.Connection, buckets: list[Bucket]) -> None:
    """Add the buckets' counts to what is stored, inside the caller's transaction."""
    c.executemany(
        "INSERT INTO traffic VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (grain, start, "
        "method, template, route, backend) DO UPDATE SET "
        "requests = requests + excluded.requests, errors = errors + excluded.errors, "
        "latency = merge_latency(latency, excluded.latency)",
        [(grain, start, *key, req, err, _text(hist))
         for grain, start, rows, _ in buckets
         for key, (req, err, hist) in rows.items()])
    c.executemany(
        "INSERT INTO shadow VALUES (?,?,?,?,?,?) ON CONFLICT (grain, start, route) "
        "DO UPDATE SET compared = compared + excluded.compared, "
        "mismatched = mismatched + excluded.mismatched, "
        "errors = errors + excluded.errors",
        [(grain, start, r, *counts) for grain, start, _, shadow in buckets
         for r, counts in shadow.items()])
