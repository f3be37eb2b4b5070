"""`strangler reconcile`: replay reads against a route's legacy and target (real servers on
127.0.0.1), compare with the route's rules, record the run in diffs.sqlite3, exit 0/1/2."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.config.spec import CompareSpec
from shadow.export import render_hurl
from shadow.reconcile import Tally
from shadow.reconcile_store import ReconcileStore, latest_runs
from shadow.redact import Redactor
from shadow.requestset import RequestSetError, parse, safe_headers
from tests.support import free_port, routes_yaml, run_cli, wait_for

CARD = "4111111111111111"
BEARER = "Bearer sk-live-7f3a9c21d0"
TOKEN = "qtok-51e0c7aa"

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      monolith-2: {{url: "http://127.0.0.1:{mono2}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    routes:
      - name: balance
        match: {{path_prefix: /api/v1/balance, methods: [GET, HEAD, POST]}}
        legacy: monolith
        target: svc
        weight: 0
        shadow:
          compare:
            ignore: ["$.server_time"]
            redact: ["$.card_number", "$..token"]
            numeric_tolerance: 0.01
            array_keys: {{"$.items": id}}
            {noise}
      - name: orders
        match: {{path_prefix: /api/v1/orders}}
        legacy: monolith
        target: svc
"""


def balance(who: str, *, currency: str = "EUR", drift_on: str | None = None,
            card: str = CARD, nonce: bool = False, arrivals: list | None = None):
    """A balance service: legacy and target answer the same document, target in its own way
    (items in another order, amounts off by 0.001: forgiven by array_keys and the tolerance).
    `drift_on`: on that account the currency differs (the planted difference)."""

    async def handler(request: web.Request) -> web.Response:
        if arrivals is not None:
            arrivals.append(time.monotonic())
        account = request.path.rsplit("/", 1)[-1]
        items = [{"id": 1, "q": 2}, {"id": 2, "q": 5}]
        doc = {
            "served_by_kind": "balance", "account": account,
            "amount": 10.0 if who == "legacy" else 10.001,
            "currency": currency if account != drift_on else "USD",
            "server_time": time.time(), "card_number": card,
            "items": items if who == "legacy" else items[::-1],
        }
        if nonce:
            doc["nonce"] = f"{who}-{time.monotonic_ns()}"
        return web.json_response(doc)

    return handler


async def setup(tmp_path: Path, upstreams, *, target=None, legacy=None, noise: bool = False,
                target_port: int | None = None) -> tuple[Path, dict]:
    ups = {
        "mono": await upstreams("monolith", handler=legacy or balance("legacy")),
        "mono2": await upstreams("monolith-2", handler=balance("legacy", nonce=noise)),
    }
    if target_port is None:
        ups["svc"] = await upstreams("svc", handler=target or balance("target"))
    ports = {k: u.port for k, u in ups.items()}
    if target_port is not None:
        ports["svc"] = target_port
    text = routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                       noise="noise_upstream: monolith-2" if noise else "", **ports)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(text)
    return cfg, ups


def requests_file(tmp_path: Path, text: str, name: str = "requests.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


async def reconcile(cfg: Path, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    return await run_cli("reconcile", "balance", "-c", str(cfg), *args, env=env)


def store_bytes(cfg: Path) -> bytes:
    state = cfg.parent / "state"
    return b"".join(p.read_bytes() for p in sorted(state.glob("diffs.sqlite3*")))


def db(cfg: Path) -> sqlite3.Connection:
    return sqlite3.connect(cfg.parent / "state" / "diffs.sqlite3")


# -- end to end, against real upstreams ---------------------------------------------------------

async def test_clean_replay_exits_0_skips_unsafe_and_records_the_run(tmp_path, upstreams):
    cfg, ups = await setup(tmp_path, upstreams)
    f = requests_file(tmp_path, "# nightly reads\n/api/v1/balance/1\nGET /api/v1/balance/2?x=1\n"
                      "HEAD /api/v1/balance/3\n\nPOST /api/v1/balance/4\n/api/v1/orders/9\n")
    code, out, err = await reconcile(cfg, "--requests", str(f), "--json")
    assert code == 0, (out, err)
    body = json.loads(out)
    assert body["route"] == "balance" and body["clean"] is True
    assert (body["requests"], body["compared"], body["mismatched"]) == (3, 3, 0)
    assert body["skipped_by_reason"] == {"unsafe_method": 1, "not_routed": 1}
    for name in ("mono", "svc"):
        seen = ups[name].seen
        assert sorted((s.method, s.path) for s in seen) == [
            ("GET", "/api/v1/balance/1"), ("GET", "/api/v1/balance/2?x=1"),
            ("HEAD", "/api/v1/balance/3")]  # never the POST, never another route's path
        assert all(s.headers.get("x-strangler-reconcile") == "1" for s in seen)
    assert ups["mono2"].seen == []  # no noise twin on this route
    with db(cfg) as c:
        row = c.execute("SELECT route, requests, compared, mismatched, errors, skipped, source, "
                        "finished IS NOT NULL FROM reconcile_runs WHERE id=?",
                        (body["run_id"],)).fetchone()
    assert row == ("balance", 3, 3, 0, 0, 2, "file:requests.txt", 1)

    code, out, _ = await reconcile(cfg, "--requests", str(f))
    assert code == 0
    assert "3 compared, 0 mismatched" in out and "clean" in out


async def test_planted_difference_exits_1_with_its_field_path_in_summary_and_store(
        tmp_path, upstreams):
    cfg, _ = await setup(tmp_path, upstreams, target=balance("target", drift_on="7"))
    f = requests_file(tmp_path, "".join(f"/api/v1/balance/{i}\n" for i in range(5, 10)))
    code, out, err = await reconcile(cfg, "--requests", str(f))
    assert code == 1, (out, err)
    assert "5 compared, 1 mismatched" in out
    table = out.split("FIELD", 1)[1]
    assert "$.currency" in table and "value" in table
    assert "$.amount" not in out and "$.items" not in out and "server_time" not in out
    with db(cfg) as c:
        run_id = c.execute("SELECT MAX(id) FROM reconcile_runs").fetchone()[0]
        fields = c.execute("SELECT path, kind, count FROM reconcile_fields WHERE run_id=?",
                           (run_id,)).fetchall()
        samples = [json.loads(d) for (d,) in c.execute(
            "SELECT data FROM reconcile_samples WHERE run_id=?", (run_id,))]
    assert fields == [("$.currency", "value", 1)]
    assert [s["path"] for s in samples] == ["/api/v1/balance/7"]
    assert samples[0]["differences"][0] == {"path": "$.currency", "kind": "value",
                                            "legacy": "EUR", "target": "USD"}
    latest = latest_runs(cfg.parent / "state" / "diffs.sqlite3", "balance")["balance"]
    assert latest["run_id"] == run_id and latest["mismatched"] == 1


async def test_secrets_never_reach_the_sqlite_file(tmp_path, upstreams):
    # Target answers another card number: a difference on a redacted field.
    cfg, ups = await setup(tmp_path, upstreams,
                           target=balance("target", card="5500000000000004", drift_on="7"))
    lines = [
        {"method": "GET", "path": f"/api/v1/balance/7?token={TOKEN}",
         "headers": [["Authorization", BEARER], ["Cookie", f"sid={TOKEN}"],
                     ["Accept", "application/json"]]},
        {"path": "/api/v1/balance/8", "headers": {"X-Api-Key": TOKEN}},
    ]
    f = requests_file(tmp_path, "".join(json.dumps(x) + "\n" for x in lines), "set.jsonl")
    code, out, err = await reconcile(cfg, "--requests", str(f), "--json")
    assert code == 1, (out, err)
    body = json.loads(out)
    paths = {x["path"] for x in body["fields"]}
    assert paths == {"$.card_number", "$.currency"}
    # credentials were never sent either; the safe header was
    for s in ups["svc"].seen:
        assert "authorization" not in s.headers and "cookie" not in s.headers
        assert "x-api-key" not in s.headers
    assert ups["svc"].seen[0].headers["accept"] == "application/json"
    raw = store_bytes(cfg)
    assert b"[REDACTED]" in raw
    for secret in (CARD, "5500000000000004", TOKEN, "sk-live-7f3a9c21d0"):
        assert secret.encode() not in raw, secret
        assert secret not in out


async def test_noise_twin_cancels_nondeterministic_fields(tmp_path, upstreams):
    cfg, ups = await setup(tmp_path, upstreams, legacy=balance("legacy", nonce=True),
                           target=balance("target", nonce=True), noise=True)
    f = requests_file(tmp_path, "/api/v1/balance/1\n/api/v1/balance/2\n")
    code, out, err = await reconcile(cfg, "--requests", str(f), "--json")
    assert code == 0, (out, err)
    body = json.loads(out)
    assert body["compared"] == 2 and body["mismatched"] == 0 and body["noise"] == 2
    assert ups["mono2"].count() == 2  # the twin was asked too


async def test_unreachable_target_counts_errors_and_is_not_clean(tmp_path, upstreams):
    cfg, _ = await setup(tmp_path, upstreams, target_port=free_port())
    f = requests_file(tmp_path, "/api/v1/balance/1\n")
    code, out, _ = await reconcile(cfg, "--requests", str(f), "--json")
    assert code == 1
    body = json.loads(out)
    assert body["errors"] == 1 and body["error_kinds"] == {"connect": 1}


async def test_rate_limit_spaces_requests(tmp_path, upstreams):
    arrivals: list[float] = []
    cfg, _ = await setup(tmp_path, upstreams, legacy=balance("legacy", arrivals=arrivals))
    n, rate = 6, 5.0
    f = requests_file(tmp_path, "".join(f"/api/v1/balance/{i}\n" for i in range(n)))
    code, out, _ = await reconcile(cfg, "--requests", str(f), "--rate", str(rate),
                                   "--concurrency", "4")
    assert code == 0, out
    assert len(arrivals) == n
    # A lower bound of the limiter (not a performance assertion): n requests at rate r
    # cannot all start within (n - 1) / r seconds.
    assert arrivals[-1] - arrivals[0] >= (n - 1) / rate - 0.05


async def test_from_store_and_exported_jsonl_and_hurl_replay_what_shadow_recorded(
        tmp_path, upstreams, inproc_proxy, monkeypatch):
    monkeypatch.delenv("STRANGLER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("STRANGLER_READ_TOKEN", raising=False)
    cfg, ups = await setup(tmp_path, upstreams, target=balance("target", drift_on="7"))
    proxy = await inproc_proxy(cfg.read_text())
    state_cfg = proxy.path  # the proxy's routes.yaml: its state_dir holds the diff store
    async with aiohttp.ClientSession() as s:
        for account in ("7", "7", "8"):
            async with s.get(f"{proxy.url}/api/v1/balance/{account}",
                             headers={"Authorization": BEARER}) as r:
                assert r.status == 200

        async def recorded() -> bool:
            async with s.get(f"{proxy.admin}/admin/routes/balance/diffs") as r:
                return (await r.json())["mismatched"] >= 2

        await wait_for(recorded, timeout=10, interval=0.1)
    for u in ups.values():
        u.seen.clear()

    # --from-store, while the proxy keeps the same SQLite file open
    code, out, err = await run_cli("reconcile", "balance", "-c", str(state_cfg), "--from-store",
                                   "--json")
    assert code == 1, (out, err)
    body = json.loads(out)
    assert body["source"] == "store"
    assert body["requests"] == 1 and body["mismatched"] == 1  # one distinct recorded request
    assert [x["path"] for x in body["fields"]] == ["$.currency"]
    assert [(s.method, s.path) for s in ups["svc"].seen] == [("GET", "/api/v1/balance/7")]
    assert "authorization" not in ups["svc"].seen[0].headers  # recorded redacted, not replayed

    # the same set exported as jsonl and as hurl, read back by --requests
    for fmt in ("jsonl", "hurl"):
        dest = tmp_path / f"export.{fmt}"
        code, out, err = await run_cli("diffs", "balance", "--admin", proxy.admin, "--export",
                                       fmt, str(dest))
        assert code == 0, (out, err)
        code, out, err = await run_cli("reconcile", "balance", "-c", str(state_cfg),
                                       "--requests", str(dest), "--json")
        assert code == 1, (fmt, out, err)
        assert json.loads(out)["requests"] == 1
    run = latest_runs(proxy.runtime.config.state_dir / "diffs.sqlite3", "balance")["balance"]
    assert run["source"] == "file:export.hurl" and run["fields"][0]["path"] == "$.currency"

    # the admin API (and the dashboard) show the newest run per route
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{proxy.admin}/admin/routes/balance/reconcile") as r:
            latest = (await r.json())["latest"]
        async with s.get(f"{proxy.admin}/admin/reconcile") as r:
            every = (await r.json())["routes"]
        async with s.get(f"{proxy.admin}/admin/routes/nope/reconcile") as r:
            assert r.status == 404
    assert latest["run_id"] == run["run_id"] == 3 and latest["mismatched"] == 1
    assert latest["fields"] == [{"path": "$.currency", "kind": "value", "count": 1, "rate": 1.0}]
    assert set(every) == {"balance"} and every["balance"]["run_id"] == 3


async def test_from_store_without_records_is_clean_and_says_so(tmp_path, upstreams):
    cfg, _ = await setup(tmp_path, upstreams)
    code, out, _ = await reconcile(cfg, "--from-store")
    assert code == 0
    assert "0 replayed" in out and "holds no recorded requests" in out


@pytest.mark.parametrize("case", ["unknown route", "unreadable file", "bad line", "bad config",
                                  "rate", "no source", "both sources", "all skipped",
                                  "empty file", "header env", "store unwritable"])
async def test_usage_and_config_errors_exit_2(tmp_path, upstreams, case):
    cfg, ups = await setup(tmp_path, upstreams)
    good = requests_file(tmp_path, "/api/v1/balance/1\n")
    args: tuple[str, ...]
    route = "balance"
    if case == "unknown route":
        route, args, want = "nope", ("--requests", str(good)), "unknown route 'nope'"
    elif case == "unreadable file":
        args, want = ("--requests", str(tmp_path / "missing.txt")), "cannot read"
    elif case == "bad line":
        bad = requests_file(tmp_path, "/api/v1/balance/1\nGET api/no-slash\n", "bad.txt")
        args, want = ("--requests", str(bad)), "bad.txt:2: expected a path starting with '/'"
    elif case == "bad config":
        cfg.write_text(cfg.read_text().replace("target: svc", "target: nowhere", 1))
        args, want = ("--requests", str(good)), "nowhere"
    elif case == "rate":
        args, want = ("--requests", str(good), "--rate", "0"), "--rate"
    elif case == "no source":
        args, want = (), "one of the arguments --requests --from-store is required"
    elif case == "both sources":
        args, want = ("--requests", str(good), "--from-store"), "not allowed with"
    elif case == "all skipped":
        posts = requests_file(tmp_path, "POST /api/v1/balance/1\n", "posts.txt")
        args, want = ("--requests", str(posts)), "every request was skipped"
    elif case == "empty file":
        empty = requests_file(tmp_path, "# nothing yet\n", "empty.txt")
        args, want = ("--requests", str(empty)), "no requests in it"
    elif case == "store unwritable":
        (tmp_path / "state").write_text("a file where state_dir should be")
        args, want = ("--requests", str(good)), "cannot write the diff store"
    else:
        args, want = ("--requests", str(good), "--header", "X-Token=RECONCILE_UNSET_VAR"), \
            "RECONCILE_UNSET_VAR is not set"
    code, out, err = await run_cli("reconcile", route, "-c", str(cfg), *args)
    assert code == 2, (out, err)
    assert want in err
    assert all(s.method != "POST" for u in ups.values() for s in u.seen)


async def test_header_from_env_is_sent_but_never_stored(tmp_path, upstreams):
    cfg, ups = await setup(tmp_path, upstreams, target=balance("target", drift_on="1"))
    f = requests_file(tmp_path, "/api/v1/balance/1\n")
    code, _, _ = await reconcile(cfg, "--requests", str(f), "--header",
                                 "Authorization=RECONCILE_TOKEN",
                                 env={"RECONCILE_TOKEN": BEARER})
    assert code == 1
    assert ups["svc"].seen[0].headers["authorization"] == BEARER
    assert b"sk-live-7f3a9c21d0" not in store_bytes(cfg)


# -- the pieces, with plain values ---------------------------------------------------------------

def test_plain_lines_jsonl_and_hurl_are_read():
    plain = parse("# c\n/a\nget /b?q=1\nHEAD /c\n", "f.txt")
    assert [(r.method, r.path, r.line) for r in plain] == [
        ("GET", "/a", 2), ("GET", "/b?q=1", 3), ("HEAD", "/c", 4)]
    jl = parse('{"path": "/x", "headers": [["Accept", "a/b"], ["Cookie", "s=1"]]}\n', "f.jsonl")
    assert [(r.method, r.path, r.headers) for r in jl] == [("GET", "/x", (("accept", "a/b"),))]
    from shadow.export import _Case

    hurl = render_hurl("r", [_Case("GET", "/p?a=1", (("accept", "x/y#z"),), b"", 200, ())])
    got = parse(hurl, "f.hurl")
    assert [(r.method, r.path, r.headers) for r in got] == [
        ("GET", "/p?a=1", (("accept", "x/y#z"),))]
    with pytest.raises(RequestSetError) as exc:
        parse('{"path": "/ok"}\n{"path": 3}\nnot json\n', "f.jsonl")
    assert [p.split(":")[1] for p in exc.value.problems] == ["2", "3"]


def test_safe_headers_drop_credentials_and_plumbing():
    got = safe_headers([("Authorization", "x"), ("Cookie", "y"), ("X-Forwarded-For", "1"),
                        ("Host", "h"), ("X-Secret", "s"), ("Accept", "a"),
                        ("X-Trace", "[REDACTED]"), ("X-Strangler-Shadow", "1")],
                       redacted=["x-secret"])
    assert got == (("accept", "a"),)


def test_samples_are_bounded_per_field_and_per_run(tmp_path, monkeypatch):
    from shadow import reconcile
    from shadow.model import Comparison, Difference
    from shadow.requestset import ReplayRequest

    monkeypatch.setattr(reconcile, "MAX_FIELDS", 3)
    wide = Tally("r", "file:x", 0.0, Redactor(), noise=False)
    many = Comparison(tuple(Difference(f"$.f{i}", "value", i, -i) for i in range(60)))
    wide.compared_one(ReplayRequest("GET", "/wide"), 200, 200, many, None)
    w = wide.result(1.0)
    assert len(w.fields) == 3 and w.fields_dropped == 57 and w.mismatched == 1
    assert len(w.samples[0]["differences"]) == 50 and w.samples[0]["more_differences"] == 10
    monkeypatch.undo()

    tally = Tally("r", "file:x", 0.0, Redactor(CompareSpec().redact), noise=False)
    for i in range(40):
        c = Comparison((Difference("$.a", "value", i, i + 1),))
        tally.compared_one(ReplayRequest("GET", f"/{i}"), 200, 200, c, None)
    tally.compared_one(ReplayRequest("GET", "/b"), 200, 200,
                       Comparison((Difference("$.b", "value", 1, 2),)), None)
    r = tally.result(1.0)
    assert r.mismatched == 41 and r.fields[0] == ("$.a", "value", 40)
    assert [s["path"] for s in r.samples] == ["/0", "/1", "/2", "/b"]
    with ReconcileStore(tmp_path / "d.sqlite3") as store:
        for _ in range(3):
            store.finish(store.begin("r", "file:x", 0.0), r)
    runs = latest_runs(tmp_path / "d.sqlite3")
    assert runs["r"]["run_id"] == 3 and runs["r"]["fields"][0]["count"] == 40
