"""Reconcile runs in the diff store's database, in tables of their own: state_dir/diffs.sqlite3,
or the fleet's PostgreSQL store (`store.backend: postgres`; `shadow.sqldb`).

The proxy's diff store may be writing the same file at the same moment: the connection uses WAL
and a busy timeout, each write is one short transaction, and the tables are created by
`shadow.store_schema` with the diff store's (the diff store never writes them). A run is
inserted when it starts
(`finished` NULL: still running, or the process died) and completed in one transaction. What is
written is already redacted (see `shadow.reconcile`); no body is stored. Only the newest
`KEEP_RUNS` runs of a route are kept.

Readers (`latest`, `latest_all`) never create the file or the tables: no reconcile yet is None.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from shadow.dbfile import check_reserve
from shadow.reconcile import RunResult
from shadow.sqldb import NO_LIMIT, SqliteDb, connector

__all__ = ["KEEP_RUNS", "ReconcileStore", "latest_runs"]

KEEP_RUNS = 50
BUSY_TIMEOUT = 30.0


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    return conn


class ReconcileStore:
    """The writer of `strangler reconcile` (one run at a time)."""

    def __init__(self, where: Path | str | dict) -> None:
        # SQLite: created 0600 and at the current schema version, like the diff store
        self._dir = None if isinstance(where, dict) else Path(where).parent
        self._check_reserve()
        self._conn = connector(where, "strangler-reconcile")()

    def _check_reserve(self) -> None:
        """The SQLite file sits in state_dir: below the disk reserve nothing is written (the
        last space is for the proxy's state.json and audit log, which a rollback needs)."""
        if self._dir is not None:
            check_reserve(self._dir, "strangler reconcile", "the run is not recorded")

    def begin(self, route: str, source: str, started: float | None = None) -> int:
        self._check_reserve()
        return self._conn.insert_id(
            "INSERT INTO reconcile_runs (route, source, started) VALUES (?, ?, ?)",
            (route, source, time.time() if started is None else started))

    def finish(self, run_id: int, r: RunResult) -> None:
        detail = {"skipped_by_reason": r.skipped, "error_kinds": r.error_kinds,
                  "fields_dropped": r.fields_dropped}
        self._check_reserve()
        c = self._conn
        c.begin()
        try:
            c.execute(
                "UPDATE reconcile_runs SET finished=?, requests=?, compared=?, mismatched=?, "
                "errors=?, skipped=?, noise=?, detail=? WHERE id=?",
                (r.finished, r.requests, r.compared, r.mismatched, r.errors,
                 sum(r.skipped.values()), r.noise, json.dumps(detail), run_id))
            c.executemany("INSERT INTO reconcile_fields (run_id, path, kind, count) "
                          "VALUES (?, ?, ?, ?)", [(run_id, p, k, n) for p, k, n in r.fields])
            c.executemany("INSERT INTO reconcile_samples (run_id, seq, data) VALUES (?, ?, ?)",
                          [(run_id, i, json.dumps(s, ensure_ascii=False, default=str))
                           for i, s in enumerate(r.samples)])
            old = [row[0] for row in c.execute(
                "SELECT id FROM reconcile_runs WHERE route=? ORDER BY id DESC LIMIT ? OFFSET ?",
                (r.route, NO_LIMIT, KEEP_RUNS)).fetchall()]
            for table, col in (("reconcile_fields", "run_id"), ("reconcile_samples", "run_id"),
                               ("reconcile_runs", "id")):
                c.executemany(f"DELETE FROM {table} WHERE {col}=?", [(i,) for i in old])
            c.commit()
        except BaseException:
            c.rollback()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReconcileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_view(c: Any, row: tuple, fields: int, samples: int) -> dict[str, object]:
    (rid, route, source, started, finished, requests, compared, mismatched, errors, skipped,
     noise, detail) = row
    out: dict[str, object] = {
        "route": route, "run_id": rid, "source": source, "started": started,
        "finished": finished, "requests": requests, "compared": compared,
        "mismatched": mismatched, "errors": errors, "skipped": skipped, "noise": noise,
        **json.loads(detail or "{}"),
    }
    rows = c.execute("SELECT path, kind, count FROM reconcile_fields WHERE run_id=? "
                     "ORDER BY count DESC, path, kind LIMIT ?", (rid, fields)).fetchall()
    out["fields"] = [{"path": p, "kind": k, "count": n, "rate": n / compared if compared else 0.0}
                     for p, k, n in rows]
    out["samples"] = [json.loads(d) for (d,) in c.execute(
        "SELECT data FROM reconcile_samples WHERE run_id=? ORDER BY seq LIMIT ?",
        (rid, samples)).fetchall()]
    return out


_COLUMNS = ("id, route, source, started, finished, requests, compared, mismatched, errors, "
            "skipped, noise, detail")


def latest_runs(where: Path | str | dict, route: str | None = None, fields: int = 20,
                samples: int = 5) -> dict[str, dict[str, object]]:
    """route -> its newest reconcile run (all routes, or one). Empty when there is none yet.
    A shared store that cannot be reached raises `shadow.pg.StoreUnavailable`."""
    c: Any
    if isinstance(where, dict):
        c = connector(where, "strangler-reconcile-read")()
    else:
        p = Path(where)
        if not p.exists():
            return {}
        try:
            c = SqliteDb(_connect(p))
        except sqlite3.Error:
            return {}
    try:
        q = (f"SELECT {_COLUMNS} FROM reconcile_runs WHERE id IN "
             "(SELECT MAX(id) FROM reconcile_runs {where} GROUP BY route)")
        rows = c.execute(q.format(where="WHERE route=?"), (route,)).fetchall() if route else \
            c.execute(q.format(where="")).fetchall()
        return {row[1]: _run_view(c, row, fields, samples) for row in rows}
    except sqlite3.OperationalError:  # no reconcile tables yet (an old SQLite file)
        return {}
    finally:
        c.close()
