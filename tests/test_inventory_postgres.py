"""The traffic inventory's rollups in the shared PostgreSQL store (issue 28b.1), against a real
PostgreSQL 15: several replicas' writers and a compactor at once lose no count, a write whose
commit went unanswered is applied exactly once, an outage (stopped, or frozen with SIGSTOP) never
holds up `add` and ends with exact counts, and what waits past the bound is dropped and counted.
End-to-end tests with `strangler serve` replicas are in tests/test_inventory_replicas_postgres.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from proxy.config.spec import InventorySpec, StoreSpec
from proxy.control import rollups as rollups_module
from proxy.control.migration import merge_raw, raw_from
from proxy.control.rollup_pg import PostgresRollupStore
from proxy.control.rollups import (
    DAY,
    HOUR,
    CommitUnknown,
    Rollups,
    RollupsUnavailable,
)
from proxy.dataplane.inventory import OTHER, latency_index

pytestmark = pytest.mark.postgres

SPEC = StoreSpec(backend="postgres", connect_timeout=2.0)
T0 = 1_800_000_000.0 // DAY * DAY + 5 * HOUR + 10  # a fixed hour, well inside a day


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _row(template: str, backend: str, n: int, errors: int = 0, ms: float = 2.0,
         route: str = "r") -> list:
    return ["GET", template, route, backend, n, errors, [[latency_index(ms / 1000), n]]]


def _store(dsn: str, name: str = "replica") -> PostgresRollupStore:
    return PostgresRollupStore(SPEC, dsn, name)


def _totals(r: Rollups, since: float) -> dict:
    return r.read_now(since).totals()


def test_several_replicas_and_a_compactor_at_once_lose_no_count(pg_db) -> None:
    """Three replicas add into the same rows (hour and day) from three threads, 40 flushes
    each; meanwhile a fourth compacts a closed bucket the first also writes into late. Every
    request is counted once, every latency bucket too; the closed bucket ends at max_templates
    plus `other`."""
    clock = Clock(T0)
    spec = InventorySpec(max_templates=10)
    replicas = [Rollups(_store(pg_db, f"replica-{i}"), spec, clock=clock) for i in range(3)]
    closed = int(T0 // HOUR * HOUR - 2 * HOUR)
    late = {("GET", f"/late{i}", "r", "legacy"): [i + 1, 0, {3: i + 1}] for i in range(40)}
    errors: list[BaseException] = []

    def writer(r: Rollups, k: int) -> None:
        latecomer = _store(pg_db, "latecomer")  # a replica whose rows of that hour come late
        try:
            for n in range(40):
                r.add([_row("/a/{id}", "legacy", 3, errors=1, ms=1 + k),
                       _row("/a/{id}", "target", 2, ms=5),
                       _row(f"/only{k}", "legacy", 1)])
                r.flush_now()
                if k == 0 and n % 4 == 0:
                    latecomer.write([(HOUR, closed, {key: [s[0], s[1], dict(s[2])]
                                                      for key, s in late.items()}, {})], n + 1)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            latecomer.close()

    def compactor() -> None:
        store = _store(pg_db, "compactor")
        try:
            for _ in range(60):
                store.compact(HOUR, closed, spec.max_templates)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(r, k)) for k, r in enumerate(replicas)]
    threads.append(threading.Thread(target=compactor))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    reader = Rollups(_store(pg_db, "reader"), spec, clock=clock)
    t = _totals(reader, T0 - 60)
    assert t[("GET", "/a/{id}", "r", "legacy")][:2] == [3 * 40 * 3, 40 * 3]
    assert t[("GET", "/a/{id}", "r", "legacy")][2] == {
        latency_index((1 + k) / 1000): 3 * 40 for k in range(3)}
    assert t[("GET", "/a/{id}", "r", "target")][:2] == [2 * 40 * 3, 0]
    for k in range(3):
        assert t[("GET", f"/only{k}", "r", "legacy")][0] == 40
    day = {k: s for _, k, s in reader.store.read(DAY, int(T0 // DAY * DAY))}
    assert day[("GET", "/a/{id}", "r", "legacy")][:2] == [360, 120]  # the day holds the same
    reader.store.compact(HOUR, closed, spec.max_templates)
    hour = reader.store.read(HOUR, closed, closed + 1)
    assert sum(s[0] for _, _, s in hour) == 10 * sum(range(1, 41))  # 10 late batches, all kept
    assert sum(sum(s[2].values()) for _, _, s in hour) == 10 * sum(range(1, 41))
    assert len({k[:2] for _, k, _ in hour}) == spec.max_templates + 1  # + other
    assert any(k[:2] == OTHER for _, k, _ in hour)
    for r in (*replicas, reader):
        r.store.close()


class LostCommitAnswer:
    """A fault injector around the real store: the connection goes away as the COMMIT is sent,
    after (`applied`) or before the database committed. A real server cannot be made to lose
    exactly that answer on demand; everything else is the real store."""

    def __init__(self, store: PostgresRollupStore, applied: bool) -> None:
        self.store = store
        self.applied = applied
        self.armed = True

    def write(self, buckets: list, batch: int) -> None:
        if self.armed:
            self.armed = False
            if self.applied:
                self.store.write(buckets, batch)
            raise CommitUnknown("the connection went away during COMMIT (injected)")
        self.store.write(buckets, batch)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


@pytest.mark.parametrize("applied", [True, False], ids=["committed", "not-committed"])
def test_a_write_whose_commit_went_unanswered_counts_once(pg_db, applied: bool) -> None:
    clock = Clock(T0)
    real = _store(pg_db)
    r = Rollups(LostCommitAnswer(real, applied), InventorySpec(), clock=clock)  # type: ignore[arg-type]
    r.add([_row("/x", "legacy", 7)])
    with pytest.raises(CommitUnknown):
        r.flush_now()
    assert r.status()["in_doubt"] is True and r.waiting() == 2  # hour and day rows
    r.add([_row("/x", "legacy", 5)])  # meanwhile: a batch of its own, after the one in doubt
    r.flush_now()
    assert r.status()["in_doubt"] is False and r.waiting() == 0
    r.flush_now()
    assert _totals(r, T0 - 60)[("GET", "/x", "r", "legacy")][0] == 12
    day = {k: s for _, k, s in real.read(DAY, int(T0 // DAY * DAY))}
    assert day[("GET", "/x", "r", "legacy")][0] == 12
    # the same batch sent again by anyone holding it is not applied twice
    real.write([(HOUR, int(T0 // HOUR * HOUR), {("GET", "/x", "r", "legacy"): [100, 0, {}]},
                 {})], 2)
    assert _totals(r, T0 - 60)[("GET", "/x", "r", "legacy")][0] == 12
    real.close()


async def _recover(r: Rollups) -> None:
    deadline = time.monotonic() + 20
    while r.status()["rows_waiting"]:
        assert time.monotonic() < deadline, r.status()
        await r.flush()
        await asyncio.sleep(0.2)
    assert r.status()["up"] is True


async def test_outage_rows_wait_in_memory_then_exact_and_past_the_bound_dropped(
        postgres_server, pg_db, monkeypatch) -> None:
    clock = Clock(T0)
    spec = InventorySpec(max_templates=10)
    monkeypatch.setattr(rollups_module, "MAX_WAITING_ROWS", 50)  # > 4 x 10: the bound
    r = Rollups(_store(pg_db), spec, clock=clock)
    r.add([_row("/before", "legacy", 4)])
    await r.flush()
    await asyncio.to_thread(postgres_server.stop)
    try:
        slowest = 0.0
        for _ in range(20):
            began = time.perf_counter()
            r.add([_row("/during", "target", 3), _row("/during", "legacy", 1, errors=1)])
            slowest = max(slowest, time.perf_counter() - began)
            await r.flush()  # fails (at once: the link refuses while down), rows wait
        assert slowest < 0.01  # adding never touches the database
        status = r.status()
        assert status["up"] is False and status["rows_waiting"] == 2
        with pytest.raises(OSError):
            await r.read(T0 - 60)  # the store cannot answer: no partial numbers
    finally:
        await asyncio.to_thread(postgres_server.start)
    await _recover(r)
    t = (await r.read(T0 - 60)).totals()
    assert t[("GET", "/before", "r", "legacy")][0] == 4
    assert t[("GET", "/during", "r", "target")][0] == 60  # every request during the outage
    assert t[("GET", "/during", "r", "legacy")][:2] == [20, 20]
    assert r.dropped == {"requests": 0, "comparisons": 0}

    # A longer outage: four hours of one endpoint on 40 routes (40 rows an hour). Past 50
    # rows waiting the oldest hours go, counted: hours 1, 2 and 3 as the next one fills.
    await asyncio.to_thread(postgres_server.stop)
    try:
        sent = 0
        for hour in range(1, 5):
            for m in range(40):
                clock.t = T0 + hour * HOUR + m * 60
                r.add([_row("/late", "legacy", 2, route=f"r{m}")])
                sent += 2
            await r.flush()
        assert r.waiting() == 40
        assert r.dropped == {"requests": 3 * 80, "comparisons": 0}
    finally:
        await asyncio.to_thread(postgres_server.start)
    await _recover(r)
    t = (await r.read(T0 + HOUR)).totals()
    kept = sum(s[0] for k, s in t.items() if k[1] == "/late")
    assert kept == 80 and kept + r.dropped["requests"] == sent
    r.store.close()


async def test_a_frozen_database_holds_up_no_add_and_a_read_gives_up(
        postgres_server, pg_db, monkeypatch) -> None:
    from tests.postgres_server import server_pids

    monkeypatch.setattr(rollups_module, "READ_WAIT", 1.0)
    r = Rollups(_store(pg_db), InventorySpec(), clock=Clock(T0))
    r.add([_row("/x", "legacy", 1)])
    await r.flush()
    pids = server_pids(postgres_server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        r.add([_row("/x", "legacy", 2)])
        stuck = asyncio.create_task(r.flush())  # its write waits on the frozen server
        await asyncio.sleep(0.3)
        began = time.perf_counter()
        for _ in range(100):
            r.add([_row("/x", "legacy", 1)])
        assert time.perf_counter() - began < 0.05
        began = time.monotonic()
        with pytest.raises(RollupsUnavailable, match="not finished a write"):
            await r.read(T0 - 60)
        assert time.monotonic() - began < 3.0
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    await asyncio.wait_for(stuck, 30)
    await r.flush()
    assert (await r.read(T0 - 60)).totals()[("GET", "/x", "r", "legacy")][0] == 103
    r.store.close()


def test_retention_and_the_start_of_the_records_are_shared(pg_db) -> None:
    clock = Clock(T0)
    a = Rollups(_store(pg_db, "a"), InventorySpec(retention_days=38), clock=clock)
    a.add([_row("/x", "legacy", 1)])
    a.flush_now()
    clock.t = T0 + 5 * DAY
    b = Rollups(_store(pg_db, "b"), InventorySpec(retention_days=38), clock=clock)
    b.add([_row("/x", "legacy", 1)])
    b.flush_now()
    assert b.store.first() == T0  # the fleet's records begin with the first replica's
    clock.t = T0 + 40 * DAY
    b.add([_row("/x", "legacy", 1)])
    b.flush_now()  # compaction and retention run on any replica
    days = sorted({s for s, _, _ in b.store.read(DAY, 0)})
    assert days == [int((T0 + 5 * DAY) // DAY * DAY), int((T0 + 40 * DAY) // DAY * DAY)]
    assert a.store.first() == (T0 + 40 * DAY) // DAY * DAY - 38 * DAY  # the day T0's went
    a.flush_now()  # a second replica's pass changes nothing
    assert sorted({s for s, _, _ in a.store.read(DAY, 0)}) == days
    for r in (a, b):
        r.store.close()


def test_one_store_answered_by_several_replicas_is_counted_once(pg_db) -> None:
    clock = Clock(T0)
    a = Rollups(_store(pg_db, "a"), InventorySpec(), clock=clock)
    b = Rollups(_store(pg_db, "b"), InventorySpec(), clock=clock)
    a.add([_row("/x", "legacy", 5)])
    b.add([_row("/x", "legacy", 7)])
    a.flush_now()
    b.flush_now()
    raws = [raw_from(r.read_now(T0 - 60), {}, ()) for r in (a, b)]
    assert raws[0]["store"] == raws[1]["store"] and raws[0]["store"].startswith("postgres:")
    merged = merge_raw(raws)
    assert merged["rows"][0][4] == 12  # the fleet's rows, not twice
    local = {**raws[0], "store": "local"}
    assert sum(row[4] for row in merge_raw([raws[0], raws[1], local])["rows"]) == 24
    for r in (a, b):
        r.store.close()
