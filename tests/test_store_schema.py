"""Issue 26 (diff store part): the store file carries a schema version (`PRAGMA user_version`);
a file from before versioning is migrated in place, one from a newer strangler is moved aside."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

from shadow.store import DiffStore
from shadow.store_check import quarantine_if_corrupt
from shadow.store_schema import SCHEMA_VERSION

# The tables as the store created them before versioning (user_version 0).
V0 = """
CREATE TABLE comparisons (
    route TEXT NOT NULL, step INTEGER NOT NULL,
    compared INTEGER NOT NULL, mismatched INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (route, step));
CREATE TABLE fields (
    route TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
    count INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (route, step, path, kind));
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, step INTEGER NOT NULL,
    ts REAL NOT NULL, method TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX samples_route ON samples (route, id);
CREATE TABLE sample_refs (
    route TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, role TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    PRIMARY KEY (route, path, kind, role, sample_id));
CREATE INDEX sample_refs_id ON sample_refs (sample_id);
CREATE TABLE field_values (
    route TEXT NOT NULL, path TEXT NOT NULL, sig TEXT NOT NULL, varies INTEGER NOT NULL,
    PRIMARY KEY (route, path));
CREATE TABLE reconcile_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, source TEXT NOT NULL,
    started REAL NOT NULL, finished REAL,
    requests INTEGER NOT NULL DEFAULT 0, compared INTEGER NOT NULL DEFAULT 0,
    mismatched INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0, noise INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '{}');
"""


def _v0_file(path: Path) -> None:
    sample = {"request": {"method": "GET", "path": "/accounts", "headers": [],
                          "body": {"size": 0, "cut": False, "text": ""}},
              "legacy": {"status": 200, "headers": [], "truncated": False,
                         "body": {"size": 2, "cut": False, "text": "[]"}},
              "target": {"status": 200, "headers": [], "truncated": False,
                         "body": {"size": 2, "cut": False, "text": "[]"}},
              "differences": [{"path": "$[4].owner", "kind": "missing", "legacy": "Ada",
                               "target": None}], "noise": [], "body_compared": True}
    now = time.time()  # recent: retention keeps it
    with sqlite3.connect(path) as db:
        db.executescript(V0)
        db.executemany("INSERT INTO comparisons VALUES (?, ?, ?, ?, ?)",
                       [("accounts", 2, 10, 6, now), ("accounts", -1, 30, 20, now)])
        db.executemany("INSERT INTO fields VALUES (?, ?, ?, ?, ?, ?)", [
            ("accounts", 2, "$[4].owner", "missing", 6, now),
            ("accounts", 2, "$[14].owner", "missing", 5, now),
            ("accounts", 2, "$.total", "value", 3, now)])
        db.execute("INSERT INTO samples (route, step, ts, method, data) VALUES (?, ?, ?, ?, ?)",
                   ("accounts", 2, now, "GET", json.dumps(sample)))
        db.execute("INSERT INTO sample_refs VALUES ('accounts', '$[4].owner', 'missing', "
                   "'first', 1)")
        db.execute("INSERT INTO reconcile_runs (route, source, started) VALUES ('a', 's', 1)")


def test_a_file_from_before_versioning_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "diffs.sqlite3"
    _v0_file(path)
    os.chmod(path, 0o644)  # as older releases created it
    store = DiffStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # made private when opened
    try:
        assert store.counts("accounts") == (30, 20, 0)
        assert store.counts("accounts", step=2) == (10, 6, 0)
        s = store.summary("accounts", step=2, rules="")
        rows = {(f["path"], f["kind"]): f for f in s["fields"]}
        # per-index rows collapse into one canonical row: at least 6 comparisons, 11 elements
        owner = rows[("$[*].owner", "missing")]
        assert (owner["count"], owner["elements"]) == (6, 11)
        assert (owner["of"], owner["share"]) == (None, None)  # the list's length: never counted
        assert owner["sample_ids"] == {"first": [1], "latest": []}
        assert rows[("$.total", "value")]["count"] == 3
        assert [x["id"] for x in s["samples"]] == [1]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("SELECT COUNT(*) FROM reconcile_runs").fetchone() == (1,)
    again = DiffStore(path)  # opening a current file changes nothing
    assert again.counts("accounts") == (30, 20, 0)
    again.close()


def test_a_fresh_file_starts_at_the_current_version_and_a_newer_one_is_moved_aside(
        tmp_path: Path) -> None:
    path = tmp_path / "diffs.sqlite3"
    DiffStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    info = quarantine_if_corrupt(path)
    assert info is not None and "newer than this strangler's" in info["problem"]
    assert not path.exists() and Path(info["moved_to"]).exists()
    DiffStore(path).close()  # and a fresh one takes its place
