"""The audit log as an auditor relies on it: every change recorded with who, why and evidence,
and `strangler history --verify` fails, naming the line, once any line is edited or deleted."""

from __future__ import annotations

import hashlib
import json

import pytest

from proxy.control.audit import GENESIS, AuditLog
from tests.support import TWO_UPSTREAMS, free_port, routes_yaml, run_cli

ROUTES = TWO_UPSTREAMS + """
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance}}
        legacy: monolith
        target: svc
        weight: 0
        shadow: false
    """


@pytest.fixture
async def proxy(upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p = await inproc_proxy(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                       mono=mono.port, svc=svc.port))
    p.env = {"STRANGLER_ADMIN_URL": p.admin}
    p.log = p.runtime.config.state_dir / "audit.log"
    return p


async def _changes(p) -> None:
    for args in (("promote", "balance"),
                 ("set-weight", "balance", "5", "--reason", "first canary"),
                 ("rollback", "balance", "--reason", "p99 regression"),
                 ("resume", "balance", "--reason", "fixed in 1.4.2")):
        code, _, err = await run_cli(*args, "--actor", "dana", env=p.env)
        assert code == 0, (args, err)


async def test_every_change_is_recorded_with_actor_reason_and_evidence(proxy):
    await _changes(proxy)
    code, out, _ = await run_cli("history", "--json", env=proxy.env)
    assert code == 0
    entries = json.loads(out)["entries"]
    assert [(e["action"], e["from"], e["to"]) for e in entries] == [
        ("resume", "rolled_back", "active"),
        ("rollback", 5, 0),
        ("set_weight", 1, 5),
        ("promote", 0, 1),
        ("serve_started", None, None),
    ]
    entries = entries[:4]
    for e in entries:
        assert e["actor"] == "dana (no token)"
        assert e["time"].endswith("Z") and len(e["prev"]) == 64
    assert [e["reason"] for e in entries[:3]] == ["fixed in 1.4.2", "p99 regression",
                                                  "first canary"]
    promote = entries[3]
    assert promote["reason"].startswith("promotion gate:")
    assert promote["evidence"]["decision"] == "promote"
    assert "legacy" in promote["evidence"]["evidence"]


async def test_verify_names_an_edited_line(proxy):
    await _changes(proxy)
    code, out, _ = await run_cli("history", "--verify", env=proxy.env)
    assert code == 0 and "chain intact" in out
    lines = proxy.log.read_text().splitlines()
    assert len(lines) >= 3
    entry = json.loads(lines[1])
    entry["reason"] = "nothing to see here"  # still valid JSON, same shape
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    proxy.log.write_text("\n".join(lines) + "\n")
    code, out, err = await run_cli("history", "--verify", env=proxy.env)
    assert code == 1
    assert "BROKEN" in err and "line 2 was edited" in err
    code, out, _ = await run_cli("history", "--verify", "--json", env=proxy.env)
    body = json.loads(out)
    assert code == 1 and body["ok"] is False and body["bad_line"] == 2  # the edited line
    assert body["suspect_lines"] == [2, 3]


async def test_verify_detects_a_deleted_line(proxy):
    await _changes(proxy)
    lines = proxy.log.read_text().splitlines()
    del lines[0]
    proxy.log.write_text("\n".join(lines) + "\n")
    code, _, err = await run_cli("history", "--verify", env=proxy.env)
    assert code == 1 and "line 1" in err


async def test_verify_detects_an_edited_last_line_while_the_proxy_runs(proxy):
    await _changes(proxy)
    lines = proxy.log.read_text().splitlines()
    last = json.loads(lines[-1])
    last["actor"] = "someone else"
    lines[-1] = json.dumps(last, sort_keys=True, separators=(",", ":"))
    proxy.log.write_text("\n".join(lines) + "\n")
    code, _, err = await run_cli("history", "--verify", env=proxy.env)
    assert code == 1
    assert f"line {len(lines)} (the last entry)" in err


def test_audit_log_chain_and_verify(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    a = log.append("set_weight", "eve (admin token)", "canary", route="r", before=0, after=5)
    b = log.append("rollback", "eve (admin token)", "errors", route="r", before=5, after=0,
                   evidence={"target": {"errors": 9}})
    raw = (tmp_path / "audit.log").read_bytes().splitlines()
    assert a["prev"] == GENESIS
    assert b["prev"] == hashlib.sha256(raw[0]).hexdigest()
    for key in ("time", "actor", "action", "route", "from", "to", "reason", "evidence", "prev"):
        assert key in b
    assert log.verify().ok and log.verify().entries == 2
    assert [e["seq"] for e in log.entries()] == [2, 1]
    assert [e["seq"] for e in AuditLog(tmp_path / "audit.log").entries("r", limit=1)] == [2]
