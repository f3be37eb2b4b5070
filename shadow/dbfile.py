"""The diff store's SQLite file (state_dir/diffs.sqlite3): private to its owner, versioned.

Every connection that may create or write the file comes through `connect`:

- The file is created 0600 before SQLite opens it, and an older file (or its -wal and -shm) is
  made 0600 when opened: samples are redacted, but request paths, headers that are not
  credentials and response bodies are the monolith's data. SQLite creates -wal and -shm with the
  database file's mode.
- `PRAGMA user_version` is the schema version of the whole file (the diff store's tables and
  reconcile's). `migrate` brings an older file up to `SCHEMA_VERSION` step by step, each step in
  one transaction; a file from a newer strangler is refused (`NewerSchema`), never written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["DISK_RESERVE", "NewerSchema", "check_reserve", "connect", "make_private", "migrate",
           "schema_version"]

BUSY_TIMEOUT = 30.0
# What telemetry files in state_dir (the inventory's, the diff store's) leave free on its
# filesystem: the last space belongs to state.json and the audit log, which a rollback on a
# nearly full disk needs (the inventory's WAL once took the space a freed disk gave back).
DISK_RESERVE = 1 << 20


class NewerSchema(RuntimeError):
    """The file was written by a newer strangler (its user_version is above ours)."""


def make_private(path: Path) -> None:
    """Create `path` 0600 if missing; make it and its -wal/-shm 0600 if they are not.

    An existing file is changed by path only: opening and closing a descriptor of a database
    this process has open would drop SQLite's POSIX locks on it."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if side.stat().st_mode & 0o077:
                os.chmod(side, 0o600)


def check_reserve(path: Path, who: str, meanwhile: str) -> None:
    """Raise ENOSPC (naming the reserve, `who` keeps it and what happens `meanwhile`) when
    `path`'s filesystem has less than DISK_RESERVE free; a directory that does not exist yet is
    not checked (its first write makes it)."""
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        return
    free = st.f_bavail * st.f_frsize
    if free < DISK_RESERVE:
        raise OSError(errno.ENOSPC, f"{free} bytes free on the filesystem of {path}, under the "
                      f"{DISK_RESERVE} {who} leaves to state.json and the audit log: "
                      f"{meanwhile}")


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN), WAL, to a private file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_private(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=check_same_thread,
                           isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


Step = Callable[[sqlite3.Connection], None]


def migrate(conn: sqlite3.Connection, steps: list[Step], create: Step) -> int:
    """Bring the file to version len(steps), in one transaction.

    `create` makes the current schema in a new file. `steps[i]` moves a file at version i to
    i + 1 (version 0 is a file from before versioning). Returns the version found."""
    latest = len(steps)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > latest:
            raise NewerSchema(
                f"{found} is newer than this strangler's {latest}: upgrade strangler, or move "
                "the file aside")
        fresh = found == 0 and not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name IN ('comparisons', "
            "'reconcile_runs')").fetchone()
        if fresh:
            create(conn)
        else:
            for version in range(found, latest):
                steps[version](conn)
        if found != latest:
            conn.execute(f"PRAGMA user_version={latest}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return found
