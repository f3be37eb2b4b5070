"""The shared store's parts against a real PostgreSQL 15: schema versions, the fleet's audit
chain (concurrent appenders, outage, tampering, import), shared approvals, the diff store and
reconcile runs, and what is never shown of the DSN."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from proxy.config.spec import StoreSpec
from proxy.control.approvals_pg import PostgresApprovals
from proxy.control.audit_pg import PostgresAudit
from proxy.control.trail import ApprovalRequest
from shadow import pg
from shadow.model import Comparison, Difference, Exchange, RequestRecord
from shadow.redact import Redactor
from shadow.store import DiffStore

pytestmark = pytest.mark.postgres

SPEC = StoreSpec(backend="postgres", connect_timeout=2.0)


@pytest.fixture
def env_dsn(pg_db, monkeypatch) -> str:
    monkeypatch.setenv("STRANGLER_DATABASE_URL", pg_db)
    return pg_db


def trail(dsn: str, tmp_path: Path, name: str) -> PostgresAudit:
    return PostgresAudit(SPEC, dsn, tmp_path / name, name)


def wait_shipped(*trails: PostgresAudit, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(t.outbox) for t in trails):
        assert time.monotonic() < deadline, [len(t.outbox) for t in trails]
        time.sleep(0.02)


def test_schema_is_versioned_and_a_newer_one_is_refused(pg_db) -> None:
    with psycopg.connect(pg_db, autocommit=True) as conn:
        assert pg.migrate(conn) == 0
        assert pg.migrate(conn) == pg.SCHEMA_VERSION  # idempotent
        assert pg.schema_version(conn) == pg.SCHEMA_VERSION
        conn.execute("UPDATE strangler_schema SET version = 99")
        with pytest.raises(pg.NewerSchema, match="newer than this strangler"):
            pg.migrate(conn)
        assert pg.schema_version(conn) == 99  # nothing was written


def test_concurrent_replicas_append_one_chain(pg_db, tmp_path) -> None:
    trails = [trail(pg_db, tmp_path, f"replica-{i}") for i in range(3)]
    per_thread = 100
    started = time.monotonic()

    def appender(t: PostgresAudit, k: int) -> None:
        for n in range(per_thread):
            t.append("set_weight", f"user{k}", f"step {n}", route="r", before=n, after=n + 1)

    threads = [threading.Thread(target=appender, args=(t, k)) for k, t in enumerate(trails)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wait_shipped(*trails)
    elapsed = time.monotonic() - started
    result = trails[0].verify()
    assert result.ok, result.message
    assert result.entries == 3 * per_thread
    entries = trails[1].entries(limit=None)
    assert [e["seq"] for e in entries] == list(range(300, 0, -1))
    for k, t in enumerate(trails):  # each replica's entries are in the order it made them
        mine = [e for e in reversed(entries) if e["replica"] == t.replica]
        assert [e["reason"] for e in mine] == [f"step {n}" for n in range(per_thread)]
        assert {e["actor"] for e in mine} == {f"user{k}"}
    print(f"\n{3 * per_thread} appends from 3 appenders in {elapsed:.2f}s "
          f"({3 * per_thread / elapsed:.0f}/s)")
    for t in trails:
        t.close()


async def test_outage_buffers_on_disk_and_chains_in_order_when_back(
        postgres_server, pg_db, tmp_path) -> None:
    t = trail(pg_db, tmp_path, "a")
    first = t.append("set_weight", "alice", "before the outage", route="r")
    assert (await t.settle(first))["seq"] == 1
    await asyncio.to_thread(postgres_server.stop)
    try:
        acked = []
        for n in range(5):
            began = time.monotonic()
            entry = t.append("rollback", "bob", f"during {n}", route="r")
            settled = await t.settle(entry)
            acked.append(entry["uid"])
            assert time.monotonic() - began < 1.5  # never waits long for a store that is down
        assert settled["pending"] is True and settled["seq"] is None
        assert len(t.outbox) == 5 and not t.status()["up"]
        with pytest.raises(pg.StoreUnavailable):
            t.verify()
    finally:
        await asyncio.to_thread(postgres_server.start)
    wait_shipped(t)
    result = t.verify()
    assert result.ok and result.entries == 6, result.message
    entries = list(reversed(t.entries()))
    assert [e["uid"] for e in entries[1:]] == acked
    assert [e["reason"] for e in entries] == ["before the outage",
                                               *[f"during {n}" for n in range(5)]]
    assert t.status()["up"]
    t.close()


def test_outbox_is_shipped_by_the_next_start_and_never_twice(pg_db, tmp_path) -> None:
    t = trail(pg_db, tmp_path, "a")
    t.append("set_weight", "alice", "one", route="r")
    wait_shipped(t)
    t.close()
    # a crash after the commit but before the outbox forgot the entry: it is there again
    shipped = t.entries()[0]
    content = {k: v for k, v in shipped.items() if k not in ("seq", "prev")}
    (tmp_path / "a" / "audit.outbox").write_text(json.dumps(content) + "\n")
    t2 = trail(pg_db, tmp_path, "a")
    t2.append("set_weight", "alice", "two", route="r")
    wait_shipped(t2)
    assert [e["reason"] for e in t2.entries()] == ["two", "one"]
    assert t2.verify().ok
    t2.close()


def test_an_edited_or_deleted_entry_is_named(pg_db, tmp_path) -> None:
    t = trail(pg_db, tmp_path, "a")
    for n in range(5):
        t.append("set_weight", "alice", f"n{n}", route="r")
    wait_shipped(t)
    assert t.verify().ok
    with psycopg.connect(pg_db, autocommit=True) as conn:
        line = conn.execute("SELECT line FROM audit_entries WHERE seq = 3").fetchone()[0]
        edited = line.replace('"n2"', '"n2 (edited)"')
        conn.execute("UPDATE audit_entries SET line = %s WHERE seq = 3", (edited,))
        bad = t.verify()
        assert not bad.ok and bad.bad_line == 3 and "entry 3 was edited" in bad.message
        conn.execute("UPDATE audit_entries SET line = %s WHERE seq = 3", (line,))
        assert t.verify().ok
        conn.execute("DELETE FROM audit_entries WHERE seq = 5")
        bad = t.verify()
        assert not bad.ok and "last entries were deleted" in bad.message
    t.close()


def test_approvals_are_shared_and_claimed_once(pg_db) -> None:
    a = PostgresApprovals(SPEC, pg_db, "a")
    b = PostgresApprovals(SPEC, pg_db, "b")
    now = time.time()
    req = ApprovalRequest("id1", "r", 5, "set_weight", 10.0, 50.0, "alice", now, now + 600,
                          "please", replica="a")
    a.put(req)
    b.refresh()
    assert b.pending("r") == req
    claims = [a.remove("r", "id1"), b.remove("r", "id1")]
    assert claims.count(None) == 1 and req in claims
    a.put(req)
    a.discard("r")  # never waits; deleted in the background
    assert a.pending("r") is None
    a.refresh()
    b.refresh()
    assert b.pending("r") is None
    a.close()
    b.close()


def _cmp(path: str) -> Comparison:
    return Comparison((Difference(path, "value", 1, 2),))


def _ex(body: bytes) -> Exchange:
    return Exchange(200, (("content-type", "application/json"),), body, False)


def test_diffs_written_by_one_replica_are_read_by_another(env_dsn) -> None:
    where = {"backend": "postgres", "dsn_env": "STRANGLER_DATABASE_URL", "sslmode": None,
             "sslrootcert": None, "connect_timeout": 2.0}
    writer_a = DiffStore(where)
    writer_b = DiffStore(where)
    reader_c = DiffStore(where)
    red = Redactor(())
    req = RequestRecord("GET", "/x", (), b"")
    for store in (writer_a, writer_b):
        for _ in range(10):
            store.record("r", 7, req, _ex(b'{"a": 1}'), _ex(b'{"a": 2}'), _cmp("$.a"), red)
        store.record_counts("r", 7, "match", 5)
        assert store.flush()
    assert reader_c.counts("r") == (30, 20, 0)
    s = reader_c.summary("r")
    assert s["compared"] == 30 and s["fields"][0]["path"] == "$.a"
    assert s["fields"][0]["count"] == 20 and s["samples"]
    assert reader_c.samples_for_export("r")[0]["path"] == "/x"
    for store in (writer_a, writer_b, reader_c):
        assert store.status()["up"] is True
        store.close()


def test_diff_counters_wait_through_an_outage(postgres_server, env_dsn) -> None:
    where = {"backend": "postgres", "dsn_env": "STRANGLER_DATABASE_URL", "sslmode": None,
             "sslrootcert": None, "connect_timeout": 2.0}
    store = DiffStore(where)
    red = Redactor(())
    req = RequestRecord("GET", "/x", (), b"")
    store.record("r", 1, req, _ex(b'{"a": 1}'), _ex(b'{"a": 2}'), _cmp("$.a"), red)
    assert store.flush()
    postgres_server.stop()
    try:
        began = time.monotonic()
        for _ in range(50):
            store.record("r", 1, req, _ex(b'{"a": 1}'), _ex(b'{"a": 3}'), _cmp("$.a"), red)
        assert time.monotonic() - began < 1.0  # recording never waits for the database
        store.flush(3.0)
        status = store.status()
        assert status["up"] is False and status["rows_waiting"] > 0
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 20
    while store.status()["rows_waiting"]:
        assert time.monotonic() < deadline
        store.flush(2.0)
    assert store.counts("r") == (51, 51, 0)  # nothing counted was lost
    store.close()


def test_reconcile_runs_in_the_shared_store(env_dsn) -> None:
    from shadow.reconcile import RunResult
    from shadow.reconcile_store import ReconcileStore, latest_runs

    where = {"backend": "postgres", "dsn_env": "STRANGLER_DATABASE_URL", "sslmode": None,
             "sslrootcert": None, "connect_timeout": 2.0}
    with ReconcileStore(where) as rs:
        run_id = rs.begin("r", "store", 1.0)
        rs.finish(run_id, RunResult(route="r", source="store", started=1.0, finished=2.0,
                                    requests=3, compared=3, mismatched=1, errors=0, skipped={},
                                    noise=0, fields=(("$.a", "value", 1),),
                                    samples=({"x": 1},)))
    runs = latest_runs(where, "r")
    assert runs["r"]["mismatched"] == 1 and runs["r"]["fields"][0]["path"] == "$.a"


def test_no_credential_in_errors_or_display(postgres_server) -> None:
    secret = "s3cr3t-Pa55"
    bad = postgres_server.dsn.replace("strangler:strangler@", f"strangler:{secret}@")
    assert secret not in pg.display(bad) and "strangler@127.0.0.1" in pg.display(bad)
    link = pg.Link(SPEC, bad, "t")
    with pytest.raises(pg.StoreUnavailable) as info:
        link.conn()
    assert "password authentication failed" in str(info.value)
    assert secret not in str(info.value) and secret not in (link.error or "")
    assert pg.scrub(f"oops {bad}", bad) == f"oops {pg.display(bad)}"


def test_sslmode_from_the_config_is_what_libpq_uses(postgres_server) -> None:
    spec = StoreSpec(backend="postgres", sslmode="require", connect_timeout=2.0)
    link = pg.Link(spec, postgres_server.dsn, "t")
    with pytest.raises(pg.StoreUnavailable, match=r"SSL|ssl"):
        link.conn()  # the dev server has no TLS: require refuses to go on in clear text
    assert "sslmode=require" in pg.conninfo(spec, postgres_server.dsn, "x")


def test_settle_waits_for_the_chain_when_the_store_is_up(pg_db, tmp_path) -> None:
    t = trail(pg_db, tmp_path, "a")

    async def go() -> dict:
        return await t.settle(t.append("rollback", "alice", "now", route="r"))

    entry = asyncio.run(go())
    assert entry["seq"] == 1 and entry["prev"] == pg.GENESIS and "pending" not in entry
    t.close()


async def test_store_migrate_imports_a_file_trail_keeping_its_hashes(pg_db, tmp_path) -> None:
    import hashlib

    from proxy.control.approvals import FileApprovals
    from proxy.control.audit import AuditLog
    from tests.support import run_cli

    state = tmp_path / "old-state"
    log = AuditLog(state / "audit.log")
    for n in range(5):
        log.append("set_weight", "alice", f"old {n}", route="r", before=n, after=n + 1)
    now = time.time()
    FileApprovals(state / "approvals.json").put(ApprovalRequest(
        "id9", "r", 1, "set_weight", 1.0, 60.0, "alice", now, now + 600, "go"))
    file_hashes = [hashlib.sha256(ln).hexdigest()
                   for ln in (state / "audit.log").read_bytes().splitlines()]
    cfg = tmp_path / "routes.yaml"
    cfg.write_text("version: 1\nupstreams: {m: {url: 'http://127.0.0.1:1'}}\n"
                   "default_upstream: m\nstore: {backend: postgres}\n")
    env = {"STRANGLER_DATABASE_URL": pg_db}
    # a replica of the fleet wrote first: the import joins the chain after it
    fleet = trail(pg_db, tmp_path, "a")
    fleet.append("serve_started", "system", "first")
    wait_shipped(fleet)
    code, out, err = await run_cli("store", "migrate", "-c", str(cfg), "--from-state-dir",
                                   str(state), "--json", env=env)
    assert code == 0, err
    body = json.loads(out)
    assert body["added"] == 5 and body["fleet_seq"] == [2, 6]
    assert body["approvals_imported"] == 1
    code, out, _ = await run_cli("store", "migrate", "-c", str(cfg), "--from-state-dir",
                                 str(state), "--json", env=env)
    assert code == 0 and json.loads(out)["added"] == 0  # again: nothing twice
    fleet.append("set_weight", "bob", "after the import", route="r")
    wait_shipped(fleet)
    entries = list(reversed(fleet.entries()))
    assert [e["imported"]["hash"] for e in entries[1:6]] == file_hashes  # hashes kept
    assert [e["reason"] for e in entries] == ["first", *[f"old {n}" for n in range(5)],
                                              "after the import"]
    code, out, err = await run_cli("store", "verify", "-c", str(cfg), env=env)
    assert code == 0 and "7 entries, chain intact" in out, (out, err)
    with psycopg.connect(pg_db, autocommit=True) as conn:  # an imported line edited in place
        row = conn.execute("SELECT line FROM audit_entries WHERE seq = 3").fetchone()[0]
        entry = json.loads(row)
        entry["imported"]["line"] = entry["imported"]["line"].replace("old 1", "new 1")
        conn.execute("UPDATE audit_entries SET line = %s WHERE seq = 3",
                     (json.dumps(entry, sort_keys=True, separators=(",", ":")),))
    code, _, err = await run_cli("store", "verify", "-c", str(cfg), env=env)
    assert code == 1 and "entry 3" in err
    code, out, _ = await run_cli("store", "status", "-c", str(cfg), env=env)
    assert code == 0 and "schema 1" in out and "1 pending approval" in out
    fleet.close()
