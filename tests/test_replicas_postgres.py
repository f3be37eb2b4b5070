"""Three `strangler serve` replicas sharing one real PostgreSQL 15 (`store.backend: postgres`):
one audit chain for the fleet under concurrent actions, diffs recorded through one replica read
through another, the database stopped under load and during a rollback, a replica killed with
SIGKILL, and the start-up refusals."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import ProxyProcess, free_port, routes_yaml, run_cli, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUTES_PER_REPLICA = 10
ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    store: {{backend: postgres, connect_timeout: 2s}}
    upstreams:
      legacy: {{url: "http://127.0.0.1:{legacy}"}}
      target: {{url: "http://127.0.0.1:{target}"}}
    default_upstream: legacy
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: shop
        match: {{path_prefix: /shop}}
        legacy: legacy
        target: target
        weight: 0
        shadow: {{sample: 1.0, max_rate: unlimited}}
"""
EXTRA_ROUTE = """
      - name: r{i}
        match: {{path_prefix: /r{i}}}
        legacy: legacy
        target: target
        weight: 0
"""

MUTATE = {"Content-Type": "application/json"}


def config(legacy: int, target: int) -> str:
    extra = "".join(EXTRA_ROUTE.replace("{i}", str(i)) for i in range(ROUTES_PER_REPLICA))
    return routes_yaml(ROUTES + extra, port=free_port(), admin=free_port(), legacy=legacy,
                       target=target)


@pytest.fixture
async def fleet(pg_db, upstreams, tmp_path):
    """Factory: `await fleet(n)` -> n started replicas on one database (each its own
    state_dir, as pods have); stopped at the end. `restart(p)` starts p again in its dir."""
    legacy = await upstreams("legacy", handler=_json({"total": 10, "by": "legacy"}))
    target = await upstreams("target", handler=_json({"total": 11, "by": "target"}))
    procs: list[ProxyProcess] = []

    async def make(n: int) -> list[ProxyProcess]:
        started = []
        for i in range(n):
            name = f"replica-{chr(ord('a') + i)}"
            p = ProxyProcess(tmp_path / name, config(legacy.port, target.port),
                             env={"STRANGLER_DATABASE_URL": pg_db, "STRANGLER_REPLICA": name})
            procs.append(p)
            started.append(p)
        await asyncio.gather(*(p.start(timeout=40) for p in started))
        return started

    async def restart(p: ProxyProcess) -> ProxyProcess:
        again = ProxyProcess(p.dir, p.config.read_text(), env={
            "STRANGLER_DATABASE_URL": pg_db, "STRANGLER_REPLICA": p.dir.name})
        procs.append(again)
        return await again.start(timeout=40)

    make.restart = restart  # type: ignore[attr-defined]
    yield make
    for p in procs:
        try:
            await p.stop()
        except Exception:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.kill()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _json(payload: dict):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(payload)
    return handler


async def act(s: aiohttp.ClientSession, p: ProxyProcess, route: str, action: str,
              weight: float = 0.0) -> dict:
    """One admin action; returns the answer (status included) and how long it took."""
    body: dict = {"reason": f"{action} via {p.dir.name}"}
    if action == "weight":
        body["weight"] = weight
        url = f"{p.admin}/admin/routes/{route}/weight"
    else:
        url = f"{p.admin}/admin/routes/{route}/{action}"
    began = time.monotonic()
    async with s.post(url, json=body, headers=MUTATE) as r:
        out = await r.json()
        out["_status"] = r.status
    out["_seconds"] = time.monotonic() - began
    out["_replica"] = p.dir.name
    return out


async def cycle(s: aiohttp.ClientSession, p: ProxyProcess, route: str, n: int) -> list[dict]:
    """`n` actions on one route of one replica, each of which succeeds: weight, rollback,
    resume, weight, ..."""
    out = []
    for k in range(n):
        kind = ("weight", "rollback", "resume")[k % 3]
        out.append(await act(s, p, route, kind, weight=float(random.randint(1, 50))))
    return out


async def history(s: aiohttp.ClientSession, p: ProxyProcess) -> list[dict]:
    async with s.get(f"{p.admin}/admin/history", params={"limit": "100000"}) as r:
        assert r.status == 200, await r.text()
        return list(reversed((await r.json())["entries"]))


async def verify(s: aiohttp.ClientSession, p: ProxyProcess) -> dict:
    async with s.get(f"{p.admin}/admin/history/verify") as r:
        return await r.json()


async def readyz(s: aiohttp.ClientSession, p: ProxyProcess) -> dict:
    async with s.get(f"{p.admin}/readyz") as r:
        return await r.json()


async def test_three_replicas_300_concurrent_actions_form_one_chain(fleet) -> None:
    replicas = await fleet(3)
    async with aiohttp.ClientSession() as s:
        began = time.monotonic()
        results = await asyncio.gather(*(
            cycle(s, p, f"r{i}", 10) for p in replicas for i in range(ROUTES_PER_REPLICA)))
        elapsed = time.monotonic() - began
        answers = [a for batch in results for a in batch]
        assert len(answers) == 300
        assert all(a["_status"] == 200 for a in answers), [a for a in answers
                                                           if a["_status"] != 200][:3]
        # every answer names its entry's place in the fleet's chain
        seqs = [a["audit"]["seq"] for a in answers]
        assert None not in seqs and len(set(seqs)) == 300
        for p in replicas:
            v = await verify(s, p)
            assert v["ok"], v
            assert v["entries"] >= 303  # + each replica's serve_started
        chain = await history(s, replicas[2])
        assert [e["seq"] for e in chain] == list(range(1, len(chain) + 1))
        by_uid = {e["uid"]: e for e in chain}
        for a in answers:  # the acting replica and the actor are recorded
            entry = by_uid[a["audit"]["uid"]]
            assert entry["replica"] == a["_replica"] and entry["seq"] == a["audit"]["seq"]
        assert {e["replica"] for e in chain} == {p.dir.name for p in replicas}
        code, out, err = await run_cli("history", "--verify", "--admin", replicas[1].admin)
        assert code == 0 and "chain intact" in out, (out, err)
    print(f"\n300 actions through 3 replicas in {elapsed:.2f}s ({300 / elapsed:.0f}/s, "
          f"each answered with its chained entry)")


async def test_diffs_recorded_through_a_are_shown_by_c(fleet) -> None:
    a, _b, c = await fleet(3)
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(f"{a.url}/shop/cart") as r:
                assert r.status == 200 and (await r.json())["by"] == "legacy"

        async def seen_by_c() -> dict | None:
            async with s.get(f"{c.admin}/admin/routes/shop/diffs", params={"all": "1"}) as r:
                body = await r.json()
            return body if body["mismatched"] >= 20 else None

        body = await wait_for(seen_by_c, timeout=20, interval=0.2)
        assert body["fields"][0]["path"] == "$.by" or any(
            f["path"] == "$.total" for f in body["fields"])
        assert body["samples"], body
        async with s.get(f"{c.admin}/admin/routes/shop/diffs/export",
                         params={"format": "jsonl"}) as r:
            assert r.status == 200 and "/shop/cart" in await r.text()


async def _diffs(s: aiohttp.ClientSession, p: ProxyProcess, **params: str) -> dict:
    async with s.get(f"{p.admin}/admin/routes/shop/diffs", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _shop(s: aiohttp.ClientSession, p: ProxyProcess, n: int) -> None:
    for k in range(n):
        async with s.get(f"{p.url}/shop/item/{k}") as r:
            assert r.status == 200
            await r.read()


async def _until(s: aiohttp.ClientSession, p: ProxyProcess, mismatched: int, **params: str
                 ) -> dict:
    """`p`'s diffs once they count `mismatched` (each replica's comparer writes within 0.2 s)."""
    last: list[dict] = []

    async def enough() -> dict | None:
        last[:] = [await _diffs(s, p, **params)]
        return last[0] if last[0]["mismatched"] >= mismatched else None
    try:
        return await wait_for(enough, timeout=20, interval=0.2)
    except AssertionError as exc:
        got = {k: last[0].get(k) for k in ("compared", "mismatched", "errors")}
        raise AssertionError(f"{exc}: {p.dir.name} counts {got}, wanted {mismatched} "
                             f"mismatched; its window {last[0]['window']}") from None


# A replica's new step reaches every comparer within a writer cycle (0.2 s) plus the marks'
# read interval (shadow.store.MARK_EVERY, 1 s), once the replica has written its mark, when
# the comparer's process gets the CPU: on CI's loaded machine (two test tiers side by side) a
# comparer had not read it after 3 s, and filed its next comparison under the older step (19
# of 20 counted). The comparers expose no "marks read" signal to wait for; 6 s is the margin.
MARK_SETTLE = 6.0


async def _marked(s: aiohttp.ClientSession, dsn: str, *replicas: ProxyProcess) -> None:
    """Wait until the shared store holds the step mark of the replicas' newest `shop` step (a
    busy machine can take seconds to write it), then for every comparer to have read it: a
    comparison recorded before is kept under an older step (shadow.store)."""
    import psycopg

    newest = 0
    for p in replicas:
        async with s.get(f"{p.admin}/admin/routes/shop") as r:
            newest = max(newest, (await r.json())["step"]["id"])

    def marked() -> bool:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT step FROM step_marks WHERE route = 'shop'").fetchone()
        return row is not None and row[0] >= newest

    await wait_for(lambda: asyncio.to_thread(marked), timeout=30, interval=0.2)
    await asyncio.sleep(MARK_SETTLE)


async def test_default_diffs_view_is_the_fleets_evidence_since_the_step_began(fleet,
                                                                              pg_db) -> None:
    """Issue 28b.2: `strangler diffs` (default view) on one replica shows every replica's
    comparisons since that replica's current step began, under its current compare rules."""
    a, b, c = await fleet(3)
    async with aiohttp.ClientSession() as s:
        await _marked(s, pg_db, a, b, c)  # the fleet's view counts from C's (the newest) step
        await _shop(s, a, 12)
        await _shop(s, b, 8)
        body = await _until(s, c, 20)  # C's step began at its start, before any of them
        assert (body["compared"], body["mismatched"]) == (20, 20), body
        window = body["window"]
        assert window["fleet"] is True and window["all"] is False
        async with s.get(f"{c.admin}/admin/routes/shop") as r:
            assert window["step"] == (await r.json())["step"]["id"]
        assert {f["path"] for f in body["fields"]} == {"$.by", "$.total"}
        assert body["samples"]
        code, out, err = await run_cli("diffs", "shop", "--admin", c.admin)
        assert code == 0 and "shop: 20 compared, 20 mismatched" in out, (out, err)
        assert "current evidence of every replica" in out

        # C begins a new step: what the fleet recorded before it is not C's evidence
        async with s.post(f"{c.admin}/admin/routes/shop/reset-evidence",
                          json={"reason": "judge afresh"}, headers=MUTATE) as r:
            assert r.status == 200, await r.text()
        await _marked(s, pg_db, c)
        assert (await _diffs(s, c))["compared"] == 0
        assert (await _diffs(s, c, all="1"))["mismatched"] == 20  # still in the store
        await _shop(s, a, 3)
        await _shop(s, b, 4)
        body = await _until(s, c, 7)
        assert (body["compared"], body["mismatched"]) == (7, 7)
        assert all(x["time"] >= body["window"]["step_started"] for x in body["samples"])
        assert (await _until(s, a, 27))["mismatched"] == 27  # A's step began before all

        # C's compare rules change (a new step under new rules): A and B, still on the old
        # rules, record nothing C counts; what C compares under its new rules it does
        c.config.write_text(c.config.read_text().replace(
            "shadow: {sample: 1.0, max_rate: unlimited}",
            'shadow: {sample: 1.0, max_rate: unlimited, compare: {ignore: ["$.total"]}}'))
        async with s.post(f"{c.admin}/admin/reload", json={"reason": "ignore total"},
                          headers=MUTATE) as r:
            assert r.status == 200, await r.text()
        await _marked(s, pg_db, c)
        await _shop(s, a, 5)
        assert (await _until(s, a, 32))["mismatched"] == 32
        assert (await _diffs(s, c))["compared"] == 0
        await _shop(s, c, 2)
        body = await _until(s, c, 2)
        assert (body["compared"], body["mismatched"]) == (2, 2)
        assert [f["path"] for f in body["fields"]] == ["$.by"]
        assert body["window"]["rules"] != (await _diffs(s, a))["window"]["rules"]


async def test_database_outage_under_load_and_during_a_rollback(fleet, postgres_server) -> None:
    replicas = await fleet(3)
    a, b, c = replicas
    stop = asyncio.Event()
    latencies: list[float] = []
    failures: list[str] = []

    async def clients(s: aiohttp.ClientSession) -> None:
        """Client traffic through every replica until told to stop (bounded: 60 s)."""
        deadline = time.monotonic() + 60
        k = 0
        while not stop.is_set() and time.monotonic() < deadline:
            p = replicas[k % 3]
            k += 1
            began = time.monotonic()
            try:
                async with s.get(f"{p.url}/shop/item/{k}") as r:
                    await r.read()
                    if r.status != 200:
                        failures.append(f"{p.dir.name}: {r.status}")
            except aiohttp.ClientError as exc:
                failures.append(f"{p.dir.name}: {exc}")
            latencies.append(time.monotonic() - began)
            await asyncio.sleep(0.005)

    acked: dict[str, list[str]] = {p.dir.name: [] for p in replicas}
    async with aiohttp.ClientSession() as s:
        load = [asyncio.create_task(clients(s)) for _ in range(4)]
        before = [await act(s, p, "r1", "weight", 5.0) for p in replicas]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(postgres_server.stop)  # off the clients' loop
        try:
            rollback = await act(s, b, "r2", "rollback")
            assert rollback["_status"] == 200 and rollback["_seconds"] < 2.0, rollback
            assert rollback["audit"]["pending"] is True
            assert "AUDIT BUFFERED" in rollback["warning"]
            during = [rollback]
            for n in range(3):
                for p in replicas:
                    d = await act(s, p, "r3", "weight", float(n + 1))
                    assert d["_status"] == 200 and d["_seconds"] < 2.0, d
                    during.append(d)
            for p in replicas:
                ready = await readyz(s, p)
                assert ready["status"] == "degraded", ready
                assert ready["degraded"]["store"]["audit"]["up"] is False
                assert ready["degraded"]["store"]["audit"]["buffered"] >= 3
                async with s.get(f"{p.admin}/admin/history/verify") as r:
                    assert r.status == 503  # the trail cannot be read; nothing pretends
            await asyncio.sleep(1.0)  # load keeps going while the database is down
        finally:
            await asyncio.to_thread(postgres_server.start)
        after = await act(s, c, "r4", "rollback")
        for p in replicas:
            async def clean(p: ProxyProcess = p) -> bool:
                return (await readyz(s, p))["status"] == "ready"
            await wait_for(clean, timeout=30, interval=0.2)
        stop.set()
        await asyncio.gather(*load)
        for x in (*before, *during, after):
            acked[x["_replica"]].append(x["audit"]["uid"])
        v = await verify(s, a)
        assert v["ok"], v
        chain = await history(s, c)
        assert [e["seq"] for e in chain] == list(range(1, len(chain) + 1))
        order = {e["uid"]: e["seq"] for e in chain}
        for name, uids in acked.items():  # every acknowledged entry, in the order it was made
            seqs = [order[u] for u in uids]
            assert seqs == sorted(seqs), name
    assert not failures, failures[:5]
    assert len(latencies) > 100
    assert max(latencies) < 1.0, sorted(latencies)[-5:]  # generous: no request waited on it


async def test_sigkill_loses_nothing_acknowledged(fleet, postgres_server) -> None:
    (a, c) = await fleet(2)
    async with aiohttp.ClientSession() as s:
        # acknowledged while the database is up: in the shared trail when the answer came
        up = [await act(s, a, f"r{i}", "rollback") for i in range(3)]
        assert all(x["audit"]["seq"] for x in up)
        # acknowledged while it is down: on a's disk only
        await asyncio.to_thread(postgres_server.stop)  # off the clients' loop
        try:
            down = [await act(s, a, f"r{i}", "resume") for i in range(3)]
            assert all(x["_status"] == 200 and x["audit"]["pending"] for x in down)
            assert a.proc is not None
            a.proc.kill()  # SIGKILL: no shutdown, nothing shipped
            await a.proc.wait()
        finally:
            await asyncio.to_thread(postgres_server.start)
        a2 = await fleet.restart(a)

        async def shipped() -> bool:
            return (await readyz(s, a2))["status"] == "ready"
        await wait_for(shipped, timeout=30, interval=0.2)
        chain = await history(s, c)
        order = {e["uid"]: e["seq"] for e in chain}
        acked = [x["audit"]["uid"] for x in (*up, *down)]
        assert all(u in order for u in acked), [u for u in acked if u not in order]
        seqs = [order[u] for u in acked]
        assert seqs == sorted(seqs)
        assert (await verify(s, c))["ok"]


async def test_serve_refuses_an_unset_dsn_and_a_newer_schema(pg_db, tmp_path, upstreams,
                                                            postgres_server) -> None:
    import psycopg

    legacy = await upstreams("legacy")
    text = config(legacy.port, legacy.port)
    cfg = _write(tmp_path / "routes.yaml", text)
    code, _, err = await run_cli("serve", "-c", str(cfg), env={"STRANGLER_DATABASE_URL": ""})
    assert code == 2 and "STRANGLER_DATABASE_URL" in err and "not set" in err
    with psycopg.connect(pg_db, autocommit=True) as conn:
        from shadow import pg

        pg.migrate(conn)
        conn.execute("UPDATE strangler_schema SET version = 99")
    code, _, err = await run_cli("serve", "-c", str(cfg), env={"STRANGLER_DATABASE_URL": pg_db})
    assert code == 2 and "newer than this strangler" in err
    assert "strangler:strangler@" not in err  # the DSN's password never reaches a log


async def test_a_notification_quotes_the_entry_of_the_fleet_chain(pg_db, upstreams, tmp_path,
                                                                  postgres_server) -> None:
    import hashlib
    import json

    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    sink = await upstreams("sink", handler=hook)
    legacy = await upstreams("legacy")
    text = config(legacy.port, legacy.port) + f'notify:\n  - url: "{sink.url}/hook"\n'
    p = ProxyProcess(tmp_path / "replica-n", text,
                     env={"STRANGLER_DATABASE_URL": pg_db, "STRANGLER_REPLICA": "replica-n"})
    await p.start(timeout=40)
    try:
        async with aiohttp.ClientSession() as s:
            up = await act(s, p, "r1", "rollback")
            await wait_for(lambda: len(received) >= 1, timeout=10)
            await asyncio.to_thread(postgres_server.stop)  # off the clients' loop
            try:
                down = await act(s, p, "r1", "resume")
                assert down["audit"]["pending"]
            finally:
                await asyncio.to_thread(postgres_server.start)
            await wait_for(lambda: len(received) >= 2, timeout=20)
            chain = {e["uid"]: e for e in await history(s, p)}
        entry = chain[up["audit"]["uid"]]
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        # the notification names the entry's place in the one chain and its hash
        assert received[0]["audit"]["seq"] == entry["seq"]
        assert received[0]["audit"]["hash"] == hashlib.sha256(line).hexdigest()
        # sent at once while the database was down: the entry's uid, which the chain has now
        assert received[1]["audit"] == {"seq": None, "hash": None,
                                        "uid": down["audit"]["uid"], "pending": True}
        assert down["audit"]["uid"] in chain
    finally:
        await p.stop()


async def test_a_frozen_database_delays_no_rollback_and_no_request(fleet, postgres_server) -> None:
    """Slow, not down: every PostgreSQL process stopped (SIGSTOP) answers nothing and refuses
    nothing. The first change waits at most the trail's settle bound, later ones not at all."""
    import os
    import signal

    from tests.postgres_server import server_pids

    (a,) = await fleet(1)
    async with aiohttp.ClientSession() as s:
        assert (await act(s, a, "r1", "weight", 5.0))["audit"]["seq"]
        pids = server_pids(postgres_server)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            answers = [await act(s, a, "r1", kind) for kind in ("rollback", "resume")]
            answers.append(await act(s, a, "r2", "rollback"))
            assert all(x["_status"] == 200 and x["_seconds"] < 2.0 for x in answers), answers
            assert all(x["audit"]["pending"] for x in answers)
            assert answers[-1]["_seconds"] < 0.5  # known slow: nobody waits any more
            began = time.monotonic()
            async with s.get(f"{a.url}/shop/x") as r:
                assert r.status == 200
            assert time.monotonic() - began < 1.0
            ready = await readyz(s, a)
            assert ready["status"] == "degraded" and ready["degraded"]["store"]["audit"]["buffered"]
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        async def drained() -> bool:
            return (await readyz(s, a))["status"] == "ready"
        await wait_for(drained, timeout=30, interval=0.2)
        chain = {e["uid"]: e["seq"] for e in await history(s, a)}
        seqs = [chain[x["audit"]["uid"]] for x in answers]
        assert seqs == sorted(seqs)
        assert (await verify(s, a))["ok"]
