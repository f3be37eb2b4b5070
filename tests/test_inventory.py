"""The traffic inventory's parts without a server: template inference and declared templates, the
data plane's bounded counter, the routes.yaml `inventory:` block and the OpenAPI reader (problems
at file:line), and the rollups in a real SQLite file (restart, compaction to top-N, retention)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import InventorySpec
from proxy.config.templates import DeclaredTemplate
from proxy.control.migration import inventory_view, merge_raw, parse_since, progress
from proxy.control.rollup_sqlite import SqliteRollupStore
from proxy.control.rollups import DAY, HOUR, HOURLY_DAYS, Rollups, RollupsUnavailable
from proxy.dataplane.inventory import (
    CACHE_SIZE,
    OTHER,
    EndpointCounter,
    TemplateMatcher,
    infer_template,
    latency_index,
    quantile,
)

UUID = "3f2b8c1e-9a4d-4e5f-8b6a-1c2d3e4f5a6b"


@pytest.mark.parametrize(("path", "template"), [
    ("/users/42", "/users/{id}"),
    ("/users/42/orders/7", "/users/{id}/orders/{id}"),
    (f"/carts/{UUID}/items", "/carts/{id}/items"),
    ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),  # hex digest
    ("/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9", "/t/{id}"),  # base64url token with a digit
    ("/obj/507f1f77bcf86cd799439011", "/obj/{id}"),  # Mongo ObjectId
    ("/api/v1/users", "/api/v1/users"),  # short words and versions stay
    ("/blog/how-to-migrate-a-monolith", "/blog/how-to-migrate-a-monolith"),  # no digit: a word
    ("/files/report2024", "/files/report2024"),  # short, mixed: kept (declare it if it varies)
    ("/", "/"),
    ("/a/12/", "/a/{id}/"),
])
def test_inferred_templates(path: str, template: str) -> None:
    assert infer_template(path) == template


def test_declared_templates_match_by_segment_literal_first() -> None:
    m = TemplateMatcher.build(tuple(DeclaredTemplate(None, p, "t") for p in (
        "/users/me", "/users/{id}", "/users/{id}/orders/{orderId}", "/files/{name}.json",
        "/files/{name}", "/users/me/settings")))

    def match(path: str) -> str | None:
        found = m.match(path.encode().split(b"/")[1:])
        return None if found is None else found.decode()

    assert match("/users/me") == "/users/me"
    assert match("/users/u-1") == "/users/{id}"
    assert match("/users/me/orders/9") == "/users/{id}/orders/{orderId}"  # backtracks from me
    assert match("/users/me/settings") == "/users/me/settings"
    assert match("/files/a.json") == "/files/{name}.json"
    assert match("/files/a.xml") == "/files/{name}"
    assert match("/users") is None and match("/users/1/orders") is None


def test_counter_counts_exactly_and_resolves_once_per_batch() -> None:
    c = EndpointCounter(InventorySpec(declared=(DeclaredTemplate(None, "/carts/{cartId}", "t"),)))
    for i in range(100):
        c.count(b"GET", b"/carts/c%d" % i, "cart", "legacy" if i % 4 else "target", 200, 0.002)
        c.count(b"POST", b"/users/%d" % i, "_default", "legacy", 503 if i < 10 else 201, 0.01)
    rows = {tuple(r[:4]): r[4:] for r in c.take()}
    assert rows[("GET", "/carts/{cartId}", "cart", "legacy")][:2] == [75, 0]
    assert rows[("GET", "/carts/{cartId}", "cart", "target")][:2] == [25, 0]
    assert rows[("POST", "/users/{id}", "_default", "legacy")][:2] == [100, 10]
    lat = dict(rows[("POST", "/users/{id}", "_default", "legacy")][2])
    assert lat == {latency_index(0.01): 100}
    assert c.take() == [] and c.hits == {}


def test_latency_buckets_read_within_ten_percent() -> None:
    for seconds in (0.0003, 0.004, 0.05, 0.7, 3.0):
        got = quantile({latency_index(seconds): 1}, 0.5)
        assert got is not None and abs(got - seconds) / seconds < 0.1


def test_cardinality_is_bounded_and_nothing_is_lost() -> None:
    """100,000 random paths: at most max_templates named endpoints, the rest `other`, every
    request counted once; the path cache and the batch stay bounded."""
    c = EndpointCounter(InventorySpec(max_templates=50,
                                      declared=(DeclaredTemplate("GET", "/health", "t"),)))
    rng = random.Random(7)
    total = 0
    named: set[tuple[str, str]] = set()
    other = 0
    for batch in range(100):
        for _ in range(1000):
            c.count(b"GET", b"/%s/%s" % (rng.randbytes(3).hex().encode(),
                                         rng.choice((b"a", b"b"))), "_default", "legacy", 404,
                    0.001)
            total += 1
        if batch == 50:
            c.count(b"GET", b"/health", "_default", "legacy", 200, 0.001)  # declared: named
            total += 1
        for m, t, _r, _b, n, _e, _l in c.take():
            if (m, t) == OTHER:
                other += n
            else:
                named.add((m, t))
        assert len(c.cache) <= CACHE_SIZE and not c.hits
    assert len(c.admitted) <= 51 and (b"GET", b"/health") in c.admitted
    assert ("GET", "/health") in named
    assert len(named) == 51
    assert other + sum(1 for _ in named) <= total  # named ones have few requests each
    assert other > 90_000


def test_declared_endpoints_take_none_of_the_inferred_places() -> None:
    """Contract: `max_templates` inferred endpoints by name, declared ones always. Declared
    endpoints seen first used up the places: with 5 of them and max_templates 10, only 5
    inferred endpoints got a name (found by a contract audit)."""
    declared = tuple(DeclaredTemplate("GET", f"/d{i}/{{x}}", "t") for i in range(5))
    c = EndpointCounter(InventorySpec(max_templates=10, declared=declared))
    for i in range(5):
        c.count(b"GET", b"/d%d/a" % i, "_default", "legacy", 200, 0.001)
    c.take(now=0.0)
    for i in range(12):
        c.count(b"GET", b"/scan%d/a" % i, "_default", "legacy", 404, 0.001)
    rows = {r[1]: r[4] for r in c.take(now=1.0)}
    assert sorted(t for t in rows if t.startswith("/scan")) == sorted(
        f"/scan{i}/a" for i in range(10))
    assert rows["other"] == 2
    c.take(now=c.aged_at + 3601)  # an hour on: the one-offs give their places back
    for i in range(5):  # declared ones still named, and still no place taken
        c.count(b"GET", b"/d%d/b" % i, "_default", "legacy", 200, 0.001)
    for i in range(10):
        c.count(b"GET", b"/new%d/a" % i, "_default", "legacy", 200, 0.001)
    rows = {r[1]: r[4] for r in c.take(now=c.aged_at + 1)}
    assert "other" not in rows and len([t for t in rows if t.startswith("/new")]) == 10


def test_one_off_templates_give_their_place_back_every_hour() -> None:
    c = EndpointCounter(InventorySpec(max_templates=10))
    for i in range(10):
        c.count(b"GET", b"/scan%d" % i, "_default", "legacy", 404, 0.001)
    c.count(b"GET", b"/scan0", "_default", "legacy", 404, 0.001)
    c.take(now=0.0)
    c.count(b"GET", b"/new", "_default", "legacy", 200, 0.001)
    assert [r[1] for r in c.take(now=1.0)] == ["other"]  # full
    c.take(now=c.aged_at + 3601)  # the hour is over: /scan1../scan9 had one request each
    assert set(c.admitted) == {(b"GET", b"/scan0")}
    c.count(b"GET", b"/new", "_default", "legacy", 200, 0.001)
    assert [r[1] for r in c.take()] == ["/new"]


# -- routes.yaml and OpenAPI ---------------------------------------------------------------------
HEAD = """version: 1
listen: 127.0.0.1:8080
upstreams:
  mono: {url: "http://127.0.0.1:1"}
default_upstream: mono
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "routes.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    return [str(p) for p in exc.value.problems]


def test_inventory_block_problems_name_file_line_and_field(tmp_path: Path) -> None:
    got = _problems(tmp_path, """inventory:
  templates:
    - /ok/{id}
    - users/{id}
    - /x/{}/y
    - "G(T /a"
  max_templates: 5
  retention_days: 0
  openapi_prefix: api/
  colour: blue
""")
    f = tmp_path / "routes.yaml"
    assert f"{f}:9: inventory.templates[1]: 'users/{{id}}' must start with '/'" in got
    assert any(p.startswith(f"{f}:10: inventory.templates[2]: '/x/{{}}/y': parameter {{}}")
               for p in got)
    assert f"{f}:11: inventory.templates[3]: invalid HTTP method 'G(T'" in got
    assert f"{f}:12: inventory.max_templates: 5 is out of range: must be at least 10" in got
    assert f"{f}:13: inventory.retention_days: 0 is out of range: must be at least 1" in got
    assert any(p.startswith(f"{f}:14: inventory.openapi_prefix: invalid value 'api/'")
               for p in got)
    assert any(p.startswith(f"{f}:15: inventory.colour: unknown key 'colour'") for p in got)


def test_openapi_paths_become_declared_endpoints(tmp_path: Path) -> None:
    (tmp_path / "api.yaml").write_text("""openapi: 3.0.3
info: {title: monolith, version: "1"}
paths:
  /pets:
    get:
      responses:
        200: {description: ok}
    post: {}
  /pets/{petId}:
    parameters: []
    delete: {}
  /health:
    $ref: "#/components/pathItems/health"
""")
    (tmp_path / "routes.yaml").write_text(HEAD + "inventory: {openapi: api.yaml, "
                                          "openapi_prefix: /v1}\n")
    config = load_config(str(tmp_path / "routes.yaml"))
    got = [(d.method, d.path, d.source) for d in config.inventory.declared]
    assert got == [("GET", "/v1/pets", "api.yaml:5"), ("POST", "/v1/pets", "api.yaml:8"),
                   ("DELETE", "/v1/pets/{petId}", "api.yaml:11"),
                   (None, "/v1/health", "api.yaml:12")]


def test_openapi_problems_at_their_line(tmp_path: Path) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"openapi": "3.1.0", "paths": {"/ok": {"get": {}},
                                                             "pets/{id}": {}}}, indent=1))
    assert _problems(tmp_path, "inventory:\n  openapi: api.json\n") == [
        f"{api}:7: paths.pets/{{id}}: 'pets/{{id}}' must start with '/'"]
    api.write_text('{"swagger": "2.0", "paths": {}}')
    assert _problems(tmp_path, "inventory:\n  openapi: api.json\n") == [
        f"{api}:1: swagger: Swagger 2.0 is not supported: convert the document to OpenAPI 3 "
        "(e.g. with swagger2openapi)"]
    api.write_text("openapi: [3\n")
    assert _problems(tmp_path, "inventory:\n  openapi: api.json\n")[0].startswith(
        f"{api}:2: syntax: neither JSON nor YAML")
    f = tmp_path / "routes.yaml"
    assert _problems(tmp_path, "inventory:\n  openapi: missing.yaml\n") == [
        f"{f}:7: inventory.openapi: cannot read missing.yaml: No such file or directory"]


def test_openapi_path_problem_line(tmp_path: Path) -> None:
    api = tmp_path / "api.yaml"
    api.write_text("openapi: 3.0.0\npaths:\n  /ok: {get: {}}\n  /a/{b{c}}: {}\n")
    assert _problems(tmp_path, "inventory: {openapi: api.yaml}\n") == [
        f"{api}:4: paths./a/{{b{{c}}}}: '/a/{{b{{c}}}}': parameter {{b{{c}} needs a name of "
        "letters, digits, '_', '.' or '-'"]


# -- rollups --------------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _row(method: str, template: str, route: str, backend: str, n: int, errors: int = 0,
         ms: float = 2.0) -> list:
    return [method, template, route, backend, n, errors, [[latency_index(ms / 1000), n]]]


def test_rollups_survive_a_restart_and_reads_include_what_waits(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    path = tmp_path / "inventory.sqlite3"
    r = Rollups(SqliteRollupStore(path), InventorySpec(), clock=clock)
    r.add([_row("GET", "/users/{id}", "users", "target", 30),
           _row("GET", "/users/{id}", "users", "legacy", 70)])
    r.flush_now()
    clock.t += 120
    r.add([_row("GET", "/users/{id}", "users", "legacy", 5, errors=5)])  # not flushed yet
    t = r.read_now(clock.t - 600).totals()
    assert t[("GET", "/users/{id}", "users", "legacy")][:2] == [75, 5]
    r.flush_now()
    r.store.close()
    again = Rollups(SqliteRollupStore(path), InventorySpec(), clock=clock)
    t = again.read_now(clock.t - 600).totals()
    assert t[("GET", "/users/{id}", "users", "legacy")][:2] == [75, 5]
    assert t[("GET", "/users/{id}", "users", "target")][:2] == [30, 0]
    assert again.store.first() == 1_800_000_000.0  # when recording began, kept across restarts
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def _open_files(path: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


def test_an_inventory_file_that_cannot_be_written_waits_in_memory(tmp_path: Path) -> None:
    """serve starts on a state_dir it cannot write (the saved rollback is what matters): the
    rollups wait in memory, reads say the file is unavailable, and the first flush that can write
    stores everything, with when counting began."""
    clock = Clock(1_800_000_000.0)
    state = tmp_path / "state"
    state.write_text("a file where the directory should be")  # ENOTDIR for root too
    store = SqliteRollupStore(state / "inventory.sqlite3")
    assert store.error
    r = Rollups(store, InventorySpec(), clock=clock)
    r.add([_row("GET", "/users/{id}", "users", "legacy", 7)])
    with pytest.raises(OSError):
        r.flush_now()
    assert r.write_error and r.waiting() == 1
    with pytest.raises(RollupsUnavailable):
        r.read_now(clock.t - 600)
    state.unlink()  # the directory can be made now
    clock.t += 60
    r.flush_now()
    assert r.write_error is None and r.waiting() == 0
    again = Rollups(SqliteRollupStore(state / "inventory.sqlite3"), InventorySpec(), clock=clock)
    assert again.read_now(clock.t - 600).totals()[("GET", "/users/{id}", "users", "legacy")][0] == 7
    assert again.store.first() == 1_800_000_000.0


def test_the_inventory_file_is_not_held_open_between_flushes(tmp_path: Path) -> None:
    """Nothing in state_dir stays open for writing: a state_dir can be remounted read-only under
    a running proxy (the audit log then reports it)."""
    clock = Clock(1_800_000_000.0)
    path = tmp_path / "inventory.sqlite3"
    r = Rollups(SqliteRollupStore(path), InventorySpec(), clock=clock)
    r.add([_row("GET", "/users/{id}", "users", "legacy", 3)])
    r.flush_now()
    r.read_now(clock.t - 600)
    assert path.exists()
    assert _open_files(path) == []


def test_closed_buckets_keep_the_top_n_plus_other(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0 // HOUR * HOUR + 10)
    r = Rollups(SqliteRollupStore(tmp_path / "i.sqlite3"), InventorySpec(max_templates=10),
                clock=clock)
    rows = [_row("GET", f"/e{i}", "_default", "legacy", i + 1) for i in range(30)]
    r.add(rows)
    assert r.folded == 10  # open bucket: 2 x max_templates, then `other`
    r.flush_now()
    clock.t += HOUR
    r.flush_now()  # the hour closed: compacted
    hour = r.read_now(clock.t - 2 * HOUR)
    names = {k[1] for s, k, _ in hour.rows if s < clock.t // HOUR * HOUR}
    assert names == {f"/e{i}" for i in range(10, 20)} | {"other"}
    t = hour.totals()
    assert sum(s[0] for s in t.values()) == sum(range(1, 31))  # nothing lost
    assert t[("*", "other", "_default", "legacy")][0] == sum(range(1, 11)) + sum(range(21, 31))


def test_a_compaction_whose_write_is_refused_loses_no_count(tmp_path: Path) -> None:
    """Folding a closed bucket into `other` is one transaction: when the folded row cannot be
    written (a full disk refuses it; here a trigger in the real SQLite file does), the
    endpoints stay as they were and the next flush compacts them. It used to delete them in one
    transaction and write `other` in a second: a refusal between the two lost their counts."""
    import sqlite3

    clock = Clock(1_800_000_000.0 // HOUR * HOUR + 10)
    path = tmp_path / "i.sqlite3"
    r = Rollups(SqliteRollupStore(path), InventorySpec(max_templates=10), clock=clock)
    r.add([_row("GET", f"/e{i}", "_default", "legacy", i + 1) for i in range(15)])
    r.flush_now()
    hour = int(clock.t // HOUR * HOUR)
    with sqlite3.connect(path) as c:
        c.execute("CREATE TRIGGER refuse_other BEFORE INSERT ON traffic WHEN NEW.template = "
                  "'other' BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    clock.t += HOUR
    r.flush_now()  # the hour closed: its compaction is refused, and tried again later

    def totals() -> dict[str, int]:
        with sqlite3.connect(path) as c:
            return dict(c.execute("SELECT template, SUM(requests) FROM traffic WHERE grain=? "
                                  "AND start=? GROUP BY template", (HOUR, hour)).fetchall())

    assert totals() == {f"/e{i}": i + 1 for i in range(15)}  # all there, none folded
    with sqlite3.connect(path) as c:
        c.execute("DROP TRIGGER refuse_other")
    clock.t += 60
    r.flush_now()
    after = totals()
    assert after == {**{f"/e{i}": i + 1 for i in range(5, 15)}, "other": sum(range(1, 6))}


def test_retention_drops_old_buckets(tmp_path: Path) -> None:
    """40 simulated days of 50 endpoints on 2 backends, a flush every 4 hours: hourly buckets
    beyond 15 days and daily ones beyond retention_days are gone, and the start of the kept
    records moves with them (bench/inventory.py measures the file after 90 days)."""
    start = 1_800_000_000.0 // DAY * DAY
    clock = Clock(start)
    r = Rollups(SqliteRollupStore(tmp_path / "i.sqlite3"), InventorySpec(retention_days=30),
                clock=clock)
    for hour in range(0, 40 * 24, 4):
        clock.t = start + hour * HOUR + 5
        r.add([_row("GET", f"/api/e{e}/{{id}}", f"r{e % 10}", b, 10, ms=1 + e % 7)
               for e in range(50) for b in ("legacy", "target")])
        r.flush_now()
    days = {s for s, _, _ in r.store.read(DAY, 0)}
    hours = {s for s, _, _ in r.store.read(HOUR, 0)}
    assert min(days) == clock.t // DAY * DAY - 30 * DAY and len(days) == 31
    assert min(hours) >= clock.t - (HOURLY_DAYS + 1) * DAY
    assert r.store.first() == clock.t // DAY * DAY - 30 * DAY
    old = r.read_now(clock.t - 35 * DAY)  # older than the hours: read from the days
    assert old.grain == DAY and old.since == clock.t // DAY * DAY - 35 * DAY
    assert sum(s[0] for _, _, s in old.rows) == 31 * 6 * 50 * 2 * 10  # 31 whole days kept


def test_progress_and_merge_of_replicas() -> None:
    a = {"since": 0.0, "until": 10.0, "first": 0.0, "grain": HOUR, "routes": {},
         "declared": [], "rows": [_row("GET", "/a", "ra", "target", 99),
                                  _row("GET", "/a", "ra", "legacy", 1),
                                  _row("GET", "/b", "_default", "legacy", 50)]}
    b = {**a, "first": 5.0, "rows": [_row("GET", "/b", "rb", "target", 25),
                                     _row("GET", "/b", "_default", "legacy", 25)]}
    merged = merge_raw([a, b])
    assert merged["first"] == 5.0 and merged["replicas"] == 2
    view = inventory_view(merged)
    p = progress({(r[0], r[1], r[2], r[3]): [r[4], r[5], {}] for r in merged["rows"]})
    assert p["requests"] == {"total": 200, "legacy": 76, "target": 124, "share": 0.62}
    assert p["endpoints"] == {"total": 2, "migrated": 1, "partly": 1, "share": 0.5}
    assert [(e["template"], e["requests"], e["unrouted"], e["route"])
            for e in view["endpoints"]] == [("/a", 100, 0, "ra"), ("/b", 100, 75, "rb")]
    assert [e["template"] for e in inventory_view(merged, unrouted=True)["endpoints"]] == ["/b"]


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("24h", 86400), ("7d", 604800),
                                               ("2w", 1209600), ("1.5h", 5400)])
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("bad", ["", "7", "d", "-1d", "0h", "7 days", "1y"])
def test_parse_since_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid window"):
        parse_since(bad)


def test_the_cli_shows_hostile_templates_escaped() -> None:
    from proxy.cli.migration_output import printable

    assert printable("/a\u202eb/\x1b[31mred/caf\u00e9") == \
        "/a\\u202eb/\\x1b[31mred/caf\u00e9"
    c = EndpointCounter()
    c.count(b"GET", b"/caf\xc3\xa9/\xff\xfe", "_default", "legacy", 200, 0.001)
    assert [r[1] for r in c.take()] == ["/caf\u00e9/\\xff\\xfe"]
