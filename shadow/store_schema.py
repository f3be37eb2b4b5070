"""The tables of state_dir/diffs.sqlite3 and how an older file is brought up to date.

`PRAGMA user_version` numbers the schema of the whole file (the diff store's tables and
reconcile's). `open_file` connects (0600, WAL: `shadow.dbfile`) and migrates; each step runs in
one transaction, so a crash mid-way leaves the old version, which the next start migrates again.

Versions:
  0  before versioning: counters per (route, step); field rows per concrete path (`$[3].x`).
  1  evidence windows: counters, fields, renames and samples per (route, step, rules), where
     `rules` identifies the route's compare rules (step -1, rules '' hold the totals); errors
     counted beside comparisons; field paths in canonical form (`$[*].x`) with the elements
     they were seen in; version-0 rows are collapsed into that form (their `count` becomes the
     largest per-index count: the comparisons it differed in are at least that many).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shadow import dbfile
from shadow.jsonpath import generalize

__all__ = ["SCHEMA_VERSION", "open_file"]

_TABLES = {
    "comparisons": """CREATE TABLE comparisons (
        route TEXT NOT NULL, step INTEGER NOT NULL, rules TEXT NOT NULL,
        compared INTEGER NOT NULL, mismatched INTEGER NOT NULL, errors INTEGER NOT NULL,
        updated REAL NOT NULL, started REAL NOT NULL,
        PRIMARY KEY (route, step, rules))""",
    "fields": """CREATE TABLE fields (
        route TEXT NOT NULL, step INTEGER NOT NULL, rules TEXT NOT NULL, path TEXT NOT NULL,
        kind TEXT NOT NULL, count INTEGER NOT NULL, elements INTEGER NOT NULL,
        of_elements INTEGER NOT NULL, updated REAL NOT NULL,
        PRIMARY KEY (route, step, rules, path, kind))""",
    "renames": """CREATE TABLE renames (
        route TEXT NOT NULL, step INTEGER NOT NULL, rules TEXT NOT NULL, missing TEXT NOT NULL,
        extra TEXT NOT NULL, count INTEGER NOT NULL, updated REAL NOT NULL,
        PRIMARY KEY (route, step, rules, missing, extra))""",
    "samples": """CREATE TABLE samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, step INTEGER NOT NULL,
        ts REAL NOT NULL, method TEXT NOT NULL, data TEXT NOT NULL,
        rules TEXT NOT NULL DEFAULT '')""",
    "sample_refs": """CREATE TABLE sample_refs (
        route TEXT NOT NULL, step INTEGER NOT NULL, rules TEXT NOT NULL, path TEXT NOT NULL,
        kind TEXT NOT NULL, role TEXT NOT NULL, sample_id INTEGER NOT NULL,
        PRIMARY KEY (route, step, rules, path, kind, role, sample_id))""",
    "field_values": """CREATE TABLE field_values (
        route TEXT NOT NULL, path TEXT NOT NULL, sig TEXT NOT NULL, varies INTEGER NOT NULL,
        PRIMARY KEY (route, path))""",
}
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS samples_route ON samples (route, id)",
    "CREATE INDEX IF NOT EXISTS sample_refs_id ON sample_refs (sample_id)",
)
# reconcile's tables (shadow.reconcile_store) are unchanged since version 0
_RECONCILE = (
    """CREATE TABLE IF NOT EXISTS reconcile_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, source TEXT NOT NULL,
    started REAL NOT NULL, finished REAL,
    requests INTEGER NOT NULL DEFAULT 0, compared INTEGER NOT NULL DEFAULT 0,
    mismatched INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0, noise INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '{}')""",
    "CREATE INDEX IF NOT EXISTS reconcile_runs_route ON reconcile_runs (route, id)",
    """CREATE TABLE IF NOT EXISTS reconcile_fields (
    run_id INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (run_id, path, kind))""",
    """CREATE TABLE IF NOT EXISTS reconcile_samples (
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq))""",
)


def _create(conn: sqlite3.Connection) -> None:
    for sql in _TABLES.values():
        conn.execute(sql)
    for sql in (*_INDEXES, *_RECONCILE):
        conn.execute(sql)


def _exists(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (table,)).fetchone() is not None


def _replace(conn: sqlite3.Connection, table: str, copy: str) -> None:
    """Rebuild `table` in its new form from the old one (`copy` selects the new columns)."""
    if not _exists(conn, table):
        conn.execute(_TABLES[table])
        return
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
    conn.execute(_TABLES[table])
    conn.execute(copy.format(old=f"{table}_v0"))
    conn.execute(f"DROP TABLE {table}_v0")


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    conn.create_function("strangler_collapse", 1, generalize, deterministic=True)
    for idx in ("samples_route", "sample_refs_id"):
        conn.execute(f"DROP INDEX IF EXISTS {idx}")
    _replace(conn, "comparisons",
             "INSERT INTO comparisons SELECT route, step, '', compared, mismatched, 0, updated, "
             "updated FROM {old}")
    _replace(conn, "fields",
             "INSERT INTO fields SELECT route, step, '', strangler_collapse(path), kind, "
             "MAX(count), SUM(count), 0, MAX(updated) FROM {old} "
             "GROUP BY route, step, strangler_collapse(path), kind")
    if _exists(conn, "samples"):
        conn.execute("ALTER TABLE samples ADD COLUMN rules TEXT NOT NULL DEFAULT ''")
    else:
        conn.execute(_TABLES["samples"])
    _replace(conn, "sample_refs",
             "INSERT OR IGNORE INTO sample_refs SELECT r.route, s.step, '', "
             "strangler_collapse(r.path), r.kind, r.role, r.sample_id FROM {old} r "
             "JOIN samples s ON s.id = r.sample_id")
    _replace(conn, "field_values",
             "INSERT INTO field_values SELECT route, strangler_collapse(path), MIN(sig), "
             "MAX(varies) FROM {old} GROUP BY route, strangler_collapse(path)")
    _replace(conn, "renames", "")
    for sql in (*_INDEXES, *_RECONCILE):
        conn.execute(sql)


MIGRATIONS: list[dbfile.Step] = [_v0_to_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def open_file(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to the store file, created 0600 and migrated to `SCHEMA_VERSION`.
    Raises `dbfile.NewerSchema` for a file written by a newer strangler."""
    conn = dbfile.connect(path, check_same_thread=check_same_thread)
    try:
        dbfile.migrate(conn, MIGRATIONS, _create)
    except BaseException:
        conn.close()
        raise
    return conn
