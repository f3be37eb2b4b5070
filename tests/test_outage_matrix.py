"""The outage matrix (issue 17 part 3): the cells the other tiers do not already cover.

Each test runs `strangler serve` subprocesses against real servers on 127.0.0.1 and takes one
dependency away at start, under load, or while a rollback happens, asserting what the operator
expects: serving continues on the last known weights, /readyz says what is degraded or not
durable, the gate holds rather than promotes, a rollback takes effect here at once (and says when
it is not durable), and the proxy says so in one log line, not one per request. The full table,
with the cells proven elsewhere, is SECURITY.md "Reliability".
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support import REPO, ProxyProcess, free_port, routes_yaml, run_cli, wait_for
from tests.test_chaos import (  # noqa: F401  (tmpfs is a fixture)
    Load,
    admin_json,
    config,
    fill,
    metric,
    remount,
    running,
    served,
    tmpfs,
)


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)


def stderr_events(p: ProxyProcess, event: str) -> list[dict]:
    out = []
    for line in p.stderr_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


def stderr_lines(p: ProxyProcess) -> list[str]:
    return p.stderr_path.read_text().splitlines()


async def rollback(p: ProxyProcess, reason: str) -> tuple[int, dict, str]:
    code, out, err = await run_cli("rollback", "balance", "--reason", reason, "--json",
                                   env={"STRANGLER_ADMIN_URL": p.admin})
    return code, json.loads(out) if out.strip() else {}, err


def refused_json(outcome: str) -> bool:
    """A failed request the proxy answered cleanly: 502 with the JSON error body."""
    return outcome.startswith("HTTP 502 {") and "'request_id'" in outcome


# -- legacy upstream down -----------------------------------------------------------------------
async def test_legacy_down_at_start_mid_load_and_during_rollback(upstreams, proxy_process):
    """Legacy is what a rollback falls back to: with it down, the proxy answers clean 502s,
    never 500, never sends the legacy share to the target, and a rollback still moves traffic
    (the target gets nothing afterwards)."""
    svc = await upstreams("svc")
    mono_port = free_port()  # nothing listens yet: legacy down at start
    p = await proxy_process(config(mono_port, svc.port, 50), args=("--no-access-log",))
    ready = (await admin_json(p.admin, "GET", "/readyz"))[1]
    assert ready["status"] == "ready"

    async with running(Load(p.url, workers=4)) as load:
        await load.more(200)
    sides = {o if o == "svc" else "502" if refused_json(o) else o for o in load.outcomes}
    assert sides == {"svc", "502"}, set(load.outcomes)
    assert 0.3 < load.outcomes.count("svc") / len(load.outcomes) < 0.7

    # Legacy comes up, then dies under load: the same clean 502s, only for legacy's share.
    mono = await upstreams("monolith", port=mono_port)
    assert set(await served(p.url, 20)) == {"monolith", "svc"}
    async with running(Load(p.url, workers=4)) as load:
        await load.more(100)
        await mono.stop()
        at = len(load.outcomes)
        await load.more(200)
        # Rolled back while legacy is down: takes effect at once, the target is left alone.
        code, body, err = await rollback(p, "target suspect, legacy down")
        assert code == 0, err
        assert (body["state"], body["weight"], body["durable"]) == ("rolled_back", 0, True)
        target_before = svc.count()
        after = len(load.outcomes)
        await load.more(200)
    assert all(o in ("monolith", "svc") or refused_json(o) for o in load.outcomes[at:])
    assert all(refused_json(o) for o in load.outcomes[after + 8:])  # 8 may be in flight
    assert svc.count() - target_before <= 4  # at most the requests in flight
    assert await metric(p.admin, "strangler_upstream_errors_total", upstream="monolith",
                        kind="connect") > 0
    # No error log line per failed request (the access log is stdout and off here).
    assert len(stderr_lines(p)) < 20, stderr_lines(p)[-5:]
    assert "Traceback" not in p.stderr_path.read_text()

    # Legacy back: served again, the rollback holds.
    await upstreams("monolith", port=mono_port)
    assert await served(p.url, 20) == {"monolith": 20}


# -- target upstream down -----------------------------------------------------------------------
async def test_target_down_at_start_falls_back_and_the_guardrail_rolls_back(upstreams,
                                                                            proxy_process):
    mono = await upstreams("monolith")
    svc_port = free_port()  # the new service never came up
    p = await proxy_process(config(mono.port, svc_port, 40), args=("--no-access-log",))
    async with running(Load(p.url, workers=4)) as load:

        async def rolled_back() -> bool:
            return (await admin_json(p.admin, "GET", "/admin/routes/balance"))[1]["state"] \
                == "rolled_back"

        await wait_for(rolled_back, timeout=30)
        await load.more(200)
    assert load.failed() == []  # every GET the dead target could not answer fell back
    assert set(load.outcomes) == {"monolith"}
    _, history = await admin_json(p.admin, "GET", "/admin/history")
    rollbacks = [e for e in history["entries"] if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["trigger"] == "guardrail"
    # A manual rollback on top (the SRE at 3 a.m.) is accepted and changes nothing.
    code, body, err = await rollback(p, "target down")
    assert code == 0 and body["state"] == "rolled_back", err
    assert await served(p.url, 20) == {"monolith": 20}


# -- state_dir read-only or full at start -------------------------------------------------------
async def _prepared_state(disk: Path, mono: int, svc: int) -> tuple[str, ProxyProcess]:
    """A state_dir on `disk` where route `balance` was rolled back (durably) by a real serve."""
    text = config(mono, svc, 100, state=str(disk / "state"))
    p = ProxyProcess(disk.parent / "proxy", text, ("--no-access-log",))
    await p.start()
    code, body, err = await rollback(p, "before the outage")
    assert code == 0 and body["durable"] is True, err
    assert await p.stop() == 0
    return text, p


@pytest.mark.parametrize("outage", ["read_only", "full"])
async def test_state_dir_unwritable_at_start_serves_the_saved_rollback(upstreams, tmpfs,  # noqa: F811
                                                                       outage):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    disk = tmpfs("statefs", "1m" if outage == "read_only" else "256k")
    _, p = await _prepared_state(disk, mono.port, svc.port)
    filler = None
    if outage == "read_only":
        remount(disk, "ro")
    else:
        filler = fill(disk)
    try:
        await p.start()
        # The saved rollback holds: the file's weight (100) is not what routes.
        assert await served(p.url, 20) == {"monolith": 20}
        status, ready = await admin_json(p.admin, "GET", "/readyz")
        assert status == 200 and ready["durable"] is False, ready
        problem = "Read-only file system" if outage == "read_only" else "No space left"
        assert problem in ready["persist_error"]
        # Resume and a new rollback take effect here and say they are not durable.
        code, out, err = await run_cli("resume", "balance", "--reason", "try", "--json",
                                       env={"STRANGLER_ADMIN_URL": p.admin})
        assert code == 0 and json.loads(out)["durable"] is False, out + err
        code, body, err = await rollback(p, "again, disk still bad")
        assert code == 0 and body["durable"] is False and "NOT DURABLE" in err
        assert problem in body["warning"]
        assert await served(p.url, 20) == {"monolith": 20}
        assert len(stderr_events(p, "state not durable")) <= 4  # start + each mutation
    finally:
        if outage == "read_only":
            remount(disk, "rw")
        elif filler is not None:
            filler.unlink()
    code, body, err = await rollback(p, "disk fine again")
    assert code == 0 and body["durable"] is True, err
    assert await p.stop() == 0


# -- Prometheus down (gate.metrics: prometheus) ---------------------------------------------------
PROM_ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    gate: {{metrics: prometheus, url: "http://127.0.0.1:{prom}"}}
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
        promotion:
          steps: [5, 25, 50, 100]
          min_requests: 20
          min_latency_samples: 20
          max_p99_ratio: 50
          auto: {{enabled: true, interval: 1s}}
"""

PROMETHEUS_DEV = str(REPO / "scripts" / "prometheus-dev")


@pytest.fixture
def prometheus_dir(tmp_path):
    if not Path("/usr/bin/prometheus").exists():
        pytest.skip("prometheus not installed (scripts/install-test-deps)")
    d = tmp_path / "prom"
    yield d
    subprocess.run([PROMETHEUS_DEV, "stop", str(d)], check=False, timeout=30)


async def gate_cli(p: ProxyProcess) -> tuple[int, dict]:
    code, out, err = await run_cli("gate", "balance", "--json",
                                   env={"STRANGLER_ADMIN_URL": p.admin})
    return code, json.loads(out) if out.strip() else {"err": err}


async def weight(p: ProxyProcess) -> float:
    return (await admin_json(p.admin, "GET", "/admin/routes/balance"))[1]["weight"]


async def test_prometheus_down_the_gate_holds_and_rollback_still_works(upstreams, proxy_process,
                                                                       prometheus_dir):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    prom_port = free_port()
    p = await proxy_process(routes_yaml(PROM_ROUTES, port=free_port(), admin=free_port(),
                                        mono=mono.port, svc=svc.port, prom=prom_port),
                            args=("--no-access-log",))
    env = {"STRANGLER_ADMIN_URL": p.admin}
    # Bounded, but Prometheus' start-up alone can take 20 s of closed-loop requests.
    async with running(Load(p.url, workers=4, max_requests=400_000, max_seconds=150)) as load:
        # At start, Prometheus down: every evaluation holds (exit 4), saying why; the auto
        # loop promotes nothing however much traffic passes.
        await load.more(400)
        await asyncio.sleep(3)  # three auto intervals
        code, body = await gate_cli(p)
        assert code == 4 and body["decision"] == "hold", body
        assert any("metrics unavailable" in r for r in body["reasons"])
        assert body["reasons"][0].startswith("Evidence since ")  # first, as in every decision
        code, _, err = await run_cli("promote", "balance", env=env)
        assert code == 4, err
        assert await weight(p) == 5.0
        ready = (await admin_json(p.admin, "GET", "/readyz"))[1]
        assert ready["status"] == "ready"  # serving is not degraded by the gate's metrics
        assert len(stderr_events(
            p, "gate metrics unavailable: every gate decision holds until they return")) == 1

        # Prometheus comes up: the gate has evidence again.
        await asyncio.to_thread(subprocess.run, [PROMETHEUS_DEV, "start", str(prometheus_dir),
                                                 str(prom_port), f"127.0.0.1:{p.admin_port}"],
                                check=True, timeout=60)

        async def evidence_back() -> bool:
            _, body = await gate_cli(p)
            return not any("metrics unavailable" in r for r in body.get("reasons", ["x"]))

        await wait_for(evidence_back, timeout=30, interval=0.5)
        assert len(stderr_events(p, "gate metrics available again")) == 1

        # Mid-load, Prometheus dies: the weight stays where it is.
        await asyncio.to_thread(subprocess.run, [PROMETHEUS_DEV, "stop", str(prometheus_dir)],
                                check=True, timeout=30)
        await wait_for(lambda: len(stderr_events(
            p, "gate metrics unavailable: every gate decision holds until they return")) == 2,
            timeout=10)
        held = await weight(p)
        await load.more(300)
        await asyncio.sleep(3)
        assert await weight(p) == held
        code, body = await gate_cli(p)
        assert code == 4 and any("metrics unavailable" in r for r in body["reasons"])

        # During the outage a rollback needs no metrics: it takes effect at once, durably.
        code, body, err = await rollback(p, "errors seen in the logs, metrics down")
        assert code == 0 and (body["state"], body["durable"]) == ("rolled_back", True), err
        at = len(load.outcomes)
        await load.more(200)
    assert load.failed() == []
    assert set(load.outcomes[at + 8:]) == {"monolith"}
    _, history = await admin_json(p.admin, "GET", "/admin/history")
    promotes_while_down = [e for e in history["entries"] if e["action"] == "promote"
                           and e["to"] > held]
    assert promotes_while_down == []
    # Once per outage, not once per evaluation (the auto loop ran every second).
    assert len(stderr_events(
        p, "gate metrics unavailable: every gate decision holds until they return")) == 2


# -- the noise twin down ------------------------------------------------------------------------
NOISE_ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      twin: {{url: "http://127.0.0.1:{twin}", connect_timeout: 300ms}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow:
          sample: 1.0
          compare: {{noise_upstream: twin}}
"""

NOISE_DOWN = "noise upstream unreachable: comparisons run without noise cancellation"


async def compared(p: ProxyProcess) -> int:
    # all time: the rollback below starts a new step (a new evidence window)
    return (await admin_json(p.admin, "GET", "/admin/routes/balance/diffs?all=1"))[1]["compared"]


async def test_noise_twin_down_clients_untouched_comparisons_go_on_said_once(upstreams,
                                                                            proxy_process):
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    twin_port = free_port()  # down at start
    p = await proxy_process(routes_yaml(NOISE_ROUTES, port=free_port(), admin=free_port(),
                                        mono=mono.port, svc=svc.port, twin=twin_port),
                            args=("--no-access-log",))
    async with running(Load(p.url, workers=4)) as load:
        await load.more(300)
        assert await wait_for(lambda: compared(p), timeout=10) > 0
        # Mid-load the twin comes up, then goes down again.
        twin = await upstreams("twin", port=twin_port)
        await wait_for(lambda: twin.count() >= 20, timeout=10)
        await twin.stop()
        before = await compared(p)
        await load.more(300)
        # During a rollback (weight is 0 already: roll back anyway, the SRE's reflex).
        code, body, err = await rollback(p, "noise twin down")
        assert code == 0 and body["state"] == "rolled_back", err
        await load.more(100)
    assert load.failed() == [] and set(load.outcomes) == {"monolith"}
    assert await wait_for(lambda: compared(p), timeout=10) > before
    # One line per outage of the twin, one when it answers again, none per mirror.
    down = stderr_events(p, NOISE_DOWN)
    assert len(down) == 2 and down[0]["route"] == "balance" and down[0]["upstream"] == "twin"
    assert len(stderr_events(p, "noise upstream answering again")) == 1
    assert len(stderr_lines(p)) < 20, stderr_lines(p)[-5:]


# -- PostgreSQL under Unleash down --------------------------------------------------------------
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture
def postgres_outage(unleash_server):
    """Stop the PostgreSQL under Unleash (fast shutdown, Unleash keeps running); it is started
    again after the test whatever happens, and Unleash is waited for."""
    server = unleash_server

    def stop() -> None:
        as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(server.dir / "pgdata"),
                        "-m", "fast", "-w", "stop"], check=True, capture_output=True,
                       timeout=60)

    def start() -> None:
        # scripts/unleash-dev start brings up whatever of the two is not running.
        r = subprocess.run([str(REPO / "scripts" / "unleash-dev"), "start", "--dir",
                            str(server.dir)], capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            tail = " | ".join(r.stderr.splitlines()[-4:])
            raise RuntimeError(f"unleash-dev start failed: {tail}")

    yield stop, start
    start()


@pytest.mark.unleash
async def test_postgres_under_unleash_down_routing_holds_and_rollback_takes_effect(
        unleash_server, unleash_admin, upstreams, proxy_process, postgres_outage):
    from tests.test_unleash_backend import (
        config_text as unleash_config,
    )
    from tests.test_unleash_backend import (
        create_toggle,
        eventually,
        log_events,
        route_view,
        sides,
        toggle,
    )

    stop_pg, start_pg = postgres_outage
    mono, svc = await upstreams("monolith"), await upstreams("svc")
    flag = unleash_server.flag_name("pgdown")
    await create_toggle(unleash_admin, flag, 50)
    p = await proxy_process(unleash_config(unleash_server.url, flag, mono, svc),
                            env=unleash_server.env(), args=("--no-access-log",))
    users = [f"u{i}" for i in range(60)]
    async with aiohttp.ClientSession() as s:
        before = await sides(s, p, users)
        assert set(before.values()) == {"monolith", "svc"}
        # Bounded; Unleash's write timeout and polls add seconds of closed-loop requests.
        async with running(Load(p.url, workers=4, max_requests=400_000,
                                max_seconds=150)) as load:
            await load.more(100)
            await asyncio.to_thread(stop_pg)
            await asyncio.sleep(3.5)  # polls against an Unleash without its database
            await load.more(300)
            # Serving on the last known weights: the same users on the same sides.
            assert await sides(s, p, users) == before
            status, ready = await admin_json(p.admin, "GET", "/readyz")
            assert status == 200, ready
            # A rollback takes effect here at once whatever Unleash can store.
            async with s.post(f"{p.admin}/admin/routes/balance/rollback",
                              json={"reason": "pg down drill"}) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            # ... and says that Unleash (so every other replica) does not have it yet.
            assert body["state"] == "rolled_back" and body["durable"] is False, body
            assert "NOT IN UNLEASH YET" in body["warning"]
            assert len(log_events(p, "flags.rollback_write_failed")) == 1
            at = len(load.outcomes)
            await load.more(300)
            assert set((await sides(s, p, users)).values()) == {"monolith"}
        assert load.failed() == []
        assert set(load.outcomes[at + 8:]) == {"monolith"}
        # The database returns. This Unleash (8, dev server) hangs writes while its database is
        # gone and exits about a minute later; its operator restarts it. The rollback that was
        # held here then reaches Unleash by the proxy's retry, without anyone repeating it.
        await asyncio.to_thread(start_pg)
        await asyncio.to_thread(unleash_server.kill_unleash)
        await asyncio.to_thread(unleash_server.restart_unleash)

        async def disabled_in_unleash() -> bool:
            try:
                return (await toggle(unleash_admin, flag))[0] is False
            except aiohttp.ClientError:
                return False

        await eventually(disabled_in_unleash, within=30)
        await asyncio.sleep(2.5)
        view = await route_view(s, p)
        assert (view["weight"], view["state"]) == (0.0, "rolled_back")
    assert await p.stop() == 0


# -- Unleash down under load --------------------------------------------------------------------
@pytest.mark.unleash
async def test_unleash_down_under_load_serves_last_state_and_rollback_says_not_in_unleash(
        unleash_server, unleash_admin, upstreams, proxy_process, outage):
    from tests.test_unleash_backend import config_text as unleash_config
    from tests.test_unleash_backend import create_toggle, eventually, log_events, sides, toggle

    mono, svc = await upstreams("monolith"), await upstreams("svc")
    flag = unleash_server.flag_name("load")
    await create_toggle(unleash_admin, flag, 50)
    p = await proxy_process(unleash_config(unleash_server.url, flag, mono, svc),
                            env=unleash_server.env(), args=("--no-access-log",))
    users = [f"u{i}" for i in range(60)]
    async with aiohttp.ClientSession() as s:
        before = await sides(s, p, users)
        ready = (await admin_json(p.admin, "GET", "/readyz"))[1]
        assert ready["status"] == "ready" and "flags_stale" not in ready
        # Bounded; Unleash's write timeout and polls add seconds of closed-loop requests.
        async with running(Load(p.url, workers=4, max_requests=400_000,
                                max_seconds=150)) as load:
            await load.more(100)
            outage()
            await wait_for(lambda: log_events(p, "unleash.unreachable"), timeout=10)
            await load.more(400)
            assert await sides(s, p, users) == before
            status, ready = await admin_json(p.admin, "GET", "/readyz")
            assert status == 200 and ready["status"] == "ready"
            assert "unreachable: routing on the last known flag state" in ready["flags_stale"]
            status, body = await admin_json(p.admin, "PUT", "/admin/routes/balance/weight",
                                            {"weight": 100, "reason": "during outage"})
            assert status == 503 and "Unleash unreachable" in body["error"]
            code, out, err = await run_cli("rollback", "balance", "--reason", "drill", "--json",
                                           env={"STRANGLER_ADMIN_URL": p.admin})
            assert code == 0, err
            body = json.loads(out)
            assert (body["state"], body["durable"]) == ("rolled_back", False)
            assert "NOT IN UNLEASH YET" in body["warning"]
            at = len(load.outcomes)
            await load.more(300)
        assert load.failed() == []
        assert set(load.outcomes[at + 8:]) == {"monolith"}
        assert len(log_events(p, "unleash.unreachable")) == 1  # once, not per poll/request
        assert len(log_events(p, "flags.rollback_write_failed")) == 1
        unleash_server.restart_unleash()

        async def disabled_in_unleash() -> bool:
            return (await toggle(unleash_admin, flag))[0] is False

        async def reconnected() -> bool:
            return "flags_stale" not in (await admin_json(p.admin, "GET", "/readyz"))[1]

        await eventually(disabled_in_unleash, within=15)
        # The held rollback is written by its own retry; the stale flag clears on the next
        # successful poll, which may come a refresh interval later.
        await eventually(reconnected, within=15)
        assert set((await sides(s, p, users)).values()) == {"monolith"}
    assert await p.stop() == 0
