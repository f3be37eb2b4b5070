"""A damaged state_dir, as `strangler serve` and `strangler history --verify` meet it.

Each test prepares a real state_dir with a real `strangler serve` (route `a` set to 100%, route
`b` rolled back), damages one file, and runs the real processes again. What serve must do is
decided per file in proxy/control/recovery.py and SECURITY.md ("Reliability"): an unreadable
state.json starts with every route rolled back (never a forgotten rollback); a torn audit line
is moved aside; an edited, cut or missing audit log is refused with exit 2; a corrupt diff store
is moved aside and replaced.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    TWO_UPSTREAMS,
    ProxyProcess,
    free_port,
    routes_yaml,
    run_cli,
    wait_for,
)

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: a
        match: {{path_prefix: /a}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: {shadow}
      - name: b
        match: {{path_prefix: /b}}
        legacy: monolith
        target: svc
        weight: 100
        shadow: false
    """


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)


@pytest.fixture
async def backends(upstreams):
    return await upstreams("monolith"), await upstreams("svc")


def config_text(backends, shadow: str = "false") -> str:
    mono, svc = backends
    return routes_yaml(ROUTES, port=free_port(), admin=free_port(), mono=mono.port,
                       svc=svc.port, shadow=shadow)


async def served(url: str, paths: tuple[str, ...] = ("/a/1", "/b/1"), n: int = 10) -> dict:
    """path -> set of `served_by` over n GETs each."""
    out: dict[str, set] = {}
    async with aiohttp.ClientSession() as s:
        for path in paths:
            for _ in range(n):
                async with s.get(url + path) as r:
                    assert r.status == 200
                    out.setdefault(path, set()).add((await r.json())["served_by"])
    return out


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def prepared(tmp_path: Path, backends, shadow: str = "false") -> ProxyProcess:
    """A state_dir written by a real serve: `a` set to 50 then 100 (active), `b` rolled back."""
    p = ProxyProcess(tmp_path / "proxy", config_text(backends, shadow), ("--no-access-log",))
    await p.start()
    env = {"STRANGLER_ADMIN_URL": p.admin}
    for args in (("set-weight", "a", "50", "--reason", "canary"),
                 ("set-weight", "a", "100", "--reason", "canary done"),
                 ("rollback", "b", "--reason", "5xx on b")):
        code, _, err = await run_cli(*args, env=env)
        assert code == 0, err
    assert await served(p.url) == {"/a/1": {"svc"}, "/b/1": {"monolith"}}
    assert await p.stop() == 0
    return p


def read(path: Path) -> bytes:
    return path.read_bytes()


def state_dir(p: ProxyProcess) -> Path:
    return p.dir / "state"


async def serve_refused(p: ProxyProcess) -> str:
    """Run serve on p's files; it must exit 2 before serving. Returns its stderr."""
    code, out, err = await run_cli("serve", "-c", str(p.config), "--no-access-log", timeout=30)
    assert code == 2, (code, out, err)
    return err


def log_lines(p: ProxyProcess, event: str) -> list[dict]:
    out = []
    for line in p.stderr_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


# -- state.json ---------------------------------------------------------------------------------
DAMAGE = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "not_json": lambda raw: b"\x00\x17garbage from a bad disk\xff",
    "wrong_shape": lambda raw: b'["not", "a", "state"]',
    "wrong_types": lambda raw: raw.replace(b'"weight": 100.0', b'"weight": "lots"'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_unreadable_state_starts_every_route_rolled_back(tmp_path, backends, damage):
    p = await prepared(tmp_path, backends)
    path = state_dir(p) / "state.json"
    raw = path.read_bytes()
    assert b'"weight": 100.0' in raw
    damaged = DAMAGE[damage](raw)
    path.write_bytes(damaged)

    await p.start()
    # Which routes were rolled back is unknown: none is forgotten, all go to legacy.
    assert await served(p.url) == {"/a/1": {"monolith"}, "/b/1": {"monolith"}}
    ready = await get_json(p.admin + "/readyz")
    assert ready["status"] == "degraded"
    rec = ready["state_recovered"]
    assert rec["file"] == str(path) and rec["routes_rolled_back"] == ["a", "b"]
    assert "rolled back" in rec["action"] and rec["problem"]
    moved = Path(rec["moved_to"])
    assert moved.name.startswith("state.json.corrupt-") and read(moved) == damaged
    routes = (await get_json(p.admin + "/admin/routes"))["routes"]
    assert {r["name"]: r["state"] for r in routes} == {"a": "rolled_back", "b": "rolled_back"}
    # Said once in the log, and audited.
    lines = log_lines(p, "state.json unusable: every route rolled back")
    assert len(lines) == 1 and lines[0]["file"] == str(path)
    history = (await get_json(p.admin + "/admin/history?limit=2"))["entries"]
    assert [e["action"] for e in history] == ["serve_started", "state_recovered"]
    assert history[1]["actor"] == "system"
    code, out, err = await run_cli("history", "--verify", env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, out + err
    # resume lifts a freeze (weight 0 until set), the others hold.
    code, _, err = await run_cli("resume", "a", "--reason", "checked",
                                 env={"STRANGLER_ADMIN_URL": p.admin})
    assert code == 0, err
    assert await p.stop() == 0

    # The recovered state was saved: a restart is not degraded and keeps b's freeze.
    await p.start()
    ready = await get_json(p.admin + "/readyz")
    assert ready["status"] == "ready" and "state_recovered" not in ready
    routes = (await get_json(p.admin + "/admin/routes"))["routes"]
    assert {r["name"]: (r["state"], r["weight"]) for r in routes} == {
        "a": ("active", 0), "b": ("rolled_back", 0)}
    assert await p.stop() == 0


async def test_missing_state_with_an_audit_history_starts_rolled_back(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    (state_dir(p) / "state.json").unlink()
    await p.start()
    assert await served(p.url) == {"/a/1": {"monolith"}, "/b/1": {"monolith"}}
    ready = await get_json(p.admin + "/readyz")
    assert ready["status"] == "degraded"
    assert "missing, but the audit log has entries" in ready["state_recovered"]["problem"]
    assert ready["state_recovered"]["moved_to"] is None
    assert await p.stop() == 0


async def test_fresh_state_dir_is_not_a_recovery(tmp_path, backends):
    p = ProxyProcess(tmp_path / "fresh", config_text(backends), ("--no-access-log",))
    await p.start()
    ready = await get_json(p.admin + "/readyz")
    assert ready["status"] == "ready" and "state_recovered" not in ready
    assert await served(p.url) == {"/a/1": {"monolith"}, "/b/1": {"svc"}}
    assert await p.stop() == 0


# -- audit.log ----------------------------------------------------------------------------------
def edit_line(path: Path, index: int, **changes) -> None:
    lines = path.read_text().splitlines()
    entry = json.loads(lines[index])
    entry.update(changes)
    lines[index] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


async def verify_offline(p: ProxyProcess) -> tuple[int, dict, str]:
    code, out, err = await run_cli("history", "--verify", "--json", "--state-dir",
                                   str(state_dir(p)))
    return code, json.loads(out), err


async def test_edited_audit_line_refuses_to_start_and_verify_names_it(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    log = state_dir(p) / "audit.log"
    actions = [json.loads(x)["action"] for x in log.read_text().splitlines()]
    assert actions == ["serve_started", "set_weight", "set_weight", "rollback", "serve_stopped"]
    edit_line(log, 1, reason="nothing to see here")
    err = await serve_refused(p)
    assert str(log) in err and "line 2 was edited" in err
    assert f"history --verify --state-dir {state_dir(p)}" in err and "mv audit.log" in err
    code, body, err = await verify_offline(p)
    assert code == 1 and body["bad_line"] == 2 and body["ok"] is False
    assert "BROKEN" in err and "line 2 was edited" in err
    # Nothing was changed by the refused start.
    assert not list(state_dir(p).glob("*.corrupt-*"))


async def test_deleted_last_audit_lines_refuse_to_start(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    log = state_dir(p) / "audit.log"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")
    err = await serve_refused(p)
    assert "the last entries were deleted" in err
    code, body, _ = await verify_offline(p)
    assert code == 1 and body["bad_line"] == len(lines)


async def test_deleted_middle_audit_line_is_named(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    log = state_dir(p) / "audit.log"
    lines = log.read_text().splitlines()
    del lines[1]
    log.write_text("\n".join(lines) + "\n")
    err = await serve_refused(p)
    assert "line 2 does not chain to the line before it: entry 2 deleted after line 1" in err
    code, body, _ = await verify_offline(p)
    assert code == 1 and body["bad_line"] == 2


async def test_missing_audit_log_with_its_anchor_refuses_to_start(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    (state_dir(p) / "audit.log").unlink()
    err = await serve_refused(p)
    assert "audit.log is missing but audit.log.tail says" in err
    code, body, err = await verify_offline(p)
    assert code == 1 and body["bad_line"] == 1 and "was deleted or moved" in err
    # The documented way out: move the anchor aside too, and a new chain starts.
    (state_dir(p) / "audit.log.tail").rename(state_dir(p) / "audit.log.tail.broken")
    await p.start()
    assert await served(p.url) == {"/a/1": {"svc"}, "/b/1": {"monolith"}}
    assert await p.stop() == 0


async def test_torn_last_audit_line_is_moved_aside_and_serve_starts(tmp_path, backends):
    p = await prepared(tmp_path, backends)
    log = state_dir(p) / "audit.log"
    whole = log.read_bytes()
    lines = whole.splitlines()
    # An append that a crash interrupted: the anchor still names the line before it.
    torn = b'{"action":"set_weight","actor":"carol","from":100,"prev":"ab'
    log.write_bytes(whole + torn)
    code, body, err = await verify_offline(p)
    assert code == 1 and body["bad_line"] == len(lines) + 1 and "is torn" in err

    await p.start()
    assert await served(p.url) == {"/a/1": {"svc"}, "/b/1": {"monolith"}}
    moved = list(state_dir(p).glob("audit.log.torn-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == torn
    assert log.read_bytes().startswith(whole)
    lines_logged = log_lines(p, "audit log repaired: torn last line")
    assert len(lines_logged) == 1 and lines_logged[0]["line"] == len(lines) + 1
    entries = (await get_json(p.admin + "/admin/history?limit=2"))["entries"]
    assert [e["action"] for e in entries] == ["serve_started", "audit_repaired"]
    assert entries[1]["evidence"]["bytes"] == len(torn)
    env = {"STRANGLER_ADMIN_URL": p.admin}
    code, _, err = await run_cli("set-weight", "a", "50", "--reason", "after repair", env=env)
    assert code == 0, err
    code, out, err = await run_cli("history", "--verify", env=env)
    assert code == 0 and "chain intact" in out, out + err
    assert await p.stop() == 0


async def test_verify_offline_usage(tmp_path):
    code, _, err = await run_cli("history", "--state-dir", str(tmp_path))
    assert code == 2 and "--state-dir needs --verify" in err
    code, _, err = await run_cli("history", "--verify", "--state-dir", str(tmp_path / "nope"))
    assert code == 2 and "not a directory" in err
    code, out, _ = await run_cli("history", "--verify", "--state-dir", str(tmp_path))
    assert code == 0 and "no audit log yet" in out


# -- diffs.sqlite3 ------------------------------------------------------------------------------
def corrupt_sqlite(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this was never a database\n" * 200)
    else:  # a real database whose pages were overwritten after the header
        raw = bytearray(path.read_bytes())
        assert raw.startswith(b"SQLite format 3\x00") and len(raw) >= 4096
        raw[100:] = b"\xa5" * (len(raw) - 100)
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["garbage", "pages"])
async def test_corrupt_diff_store_is_moved_aside_and_shadowing_continues(tmp_path, backends,
                                                                         how):
    p = ProxyProcess(tmp_path / "proxy", config_text(backends, shadow="{sample: 1.0}"),
                     ("--no-access-log",))

    async def compared() -> int:
        return (await get_json(p.admin + "/admin/routes/a/diffs"))["compared"]

    await p.start()
    assert await served(p.url, ("/a/1",), n=20) == {"/a/1": {"monolith"}}
    assert await wait_for(compared) >= 1
    assert await p.stop() == 0
    store = state_dir(p) / "diffs.sqlite3"
    corrupt_sqlite(store, how)
    damaged = store.read_bytes()

    await p.start()
    moved = [m for m in state_dir(p).glob("diffs.sqlite3.corrupt-*")
             if not m.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and moved[0].read_bytes() == damaged
    lines = log_lines(p, "diff store corrupt: moved aside, starting with an empty one (shadow "
                         "evidence so far is lost; the gate holds until it has new comparisons)")
    assert len(lines) == 1 and lines[0]["file"] == str(store) and lines[0]["problem"]
    # Shadow evidence is not a promise: serving is not degraded, routing state is untouched.
    ready = await get_json(p.admin + "/readyz")
    assert ready["status"] == "ready"
    assert await compared() == 0  # the evidence before is gone, not invented
    assert await served(p.url, ("/a/1",), n=20) == {"/a/1": {"monolith"}}
    assert await wait_for(compared) >= 1
    assert await p.stop() == 0
    conn = sqlite3.connect(store)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()
