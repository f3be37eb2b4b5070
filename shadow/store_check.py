"""A corrupt diff store (or one written by a newer strangler) is moved aside and replaced by a
fresh one; `serve` does not refuse.

Shadow evidence is not a promise to anyone: losing it costs time, never safety. The gate
judges each weight step on its own counters and holds until it has `min_comparisons` again, so a
fresh store can delay a promotion but never cause one. Refusing to start would take every route
(and the monolith behind it) down over a file whose only job is to explain diffs. The damaged
file is kept (`diffs.sqlite3.corrupt-<ts>`, with its -wal/-shm) for inspection.

Run once in the control process before anything opens the store (workers open it after).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import structlog

from shadow.store_schema import SCHEMA_VERSION

log = structlog.get_logger("strangler.shadow.store")

__all__ = ["quarantine_if_corrupt"]


def _problem(path: Path) -> str | None:
    """None when SQLite can read the file, `PRAGMA quick_check` says ok and its schema
    version is one this strangler knows."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    found = [str(r[0]) for r in rows]
    if found != ["ok"]:
        return "; ".join(found[:3])
    if version > SCHEMA_VERSION:
        return (f"schema version {version} is newer than this strangler's {SCHEMA_VERSION} "
                "(written by a newer release)")
    return None


def quarantine_if_corrupt(path: Path) -> dict | None:
    """Move a corrupt store aside; returns what was wrong and where it went, or None."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    problem = _problem(path)
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, dest)
    except OSError as exc:
        log.error("diff store corrupt and cannot be moved aside: shadow comparisons will fail",
                  file=str(path), problem=problem, error=exc.strerror)
        return {"file": str(path), "problem": problem, "moved_to": None}
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.replace(side, dest.with_name(dest.name + suffix))
    info = {"file": str(path), "problem": problem, "moved_to": str(dest)}
    log.error("diff store corrupt: moved aside, starting with an empty one (shadow evidence "
              "so far is lost; the gate holds until it has new comparisons)", **info)
    return info
