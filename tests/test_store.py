"""The SQLite diff store: counters per step and in total, redacted samples, retention."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from proxy.config.spec import CompareSpec
from shadow.diff import Comparator
from shadow.model import Comparison, Difference, Exchange, RequestRecord
from shadow.redact import Redactor
from shadow.store import DiffStore

JSON = (("content-type", "application/json"),)
SECRET = "DE89370400440532013000"
CARD = "4111111111111111"


@pytest.fixture
def make_store(tmp_path: Path):
    stores: list[DiffStore] = []

    def make(**kw) -> DiffStore:
        s = DiffStore(tmp_path / "state" / "diffs.sqlite3", **kw)
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


def req(path: str = "/api/v1/balance/7", method: str = "GET", body: bytes = b"") -> RequestRecord:
    return RequestRecord(method, path, (("accept", "application/json"),), body)


def resp(doc: object, status: int = 200) -> Exchange:
    return Exchange(status, JSON, json.dumps(doc).encode())


MATCH = Comparison(())
REDACTOR = Redactor()


def mismatch(*paths: str) -> Comparison:
    return Comparison(tuple(Difference(p, "value", 1, 2) for p in paths))


def test_counts_and_summary_exact_before_and_after_flush(make_store) -> None:
    store = make_store()
    for i in range(30):
        c = mismatch("$.amount", "$.ts") if i % 3 == 0 else mismatch("$.ts")
        store.record("balance", 0, req(), resp({"amount": 1}), resp({"amount": 2}), c, REDACTOR)
    for _ in range(10):
        store.record("balance", 0, req(), resp({}), resp({}), MATCH, REDACTOR)
    assert store.counts("balance")[:2] == (40, 30)  # not flushed yet: still exact
    assert store.flush()
    assert store.counts("balance")[:2] == (40, 30)
    assert store.counts("balance", step=0)[:2] == (40, 30)
    assert store.counts("other")[:2] == (0, 0)
    s = store.summary("balance", limit=5)
    assert set(s) == {"route", "window", "compared", "mismatched", "errors", "fields",
                      "fields_total", "samples"}
    assert (s["route"], s["compared"], s["mismatched"], s["errors"]) == ("balance", 40, 30, 0)
    assert s["window"]["all"] and s["window"]["first"] <= s["window"]["last"]
    # Counters are exact; samples are the first three per field and one "latest" per field
    # per LATEST_EVERY second: 6 rows for 30 mismatches (each mismatch is 1 or 2 fields).
    # no list on these paths: elements / of / share are null (docs/contract.md, diffs)
    plain = {"elements": None, "of": None, "share": None, "ignored": False}
    assert s["fields"] == [
        {"path": "$.ts", "kind": "value", "count": 30, "rate": 0.75, "likely_noise": False,
         **plain, "sample_ids": {"first": [1, 2, 3], "latest": [4]}},
        {"path": "$.amount", "kind": "value", "count": 10, "rate": 0.25, "likely_noise": False,
         **plain, "sample_ids": {"first": [1, 4, 5], "latest": [6]}},
    ]
    assert [x["id"] for x in s["samples"]] == [6, 5, 4, 3, 2, 1]
    sample = s["samples"][1]
    assert sample["request"]["path"] == "/api/v1/balance/7"
    assert sample["legacy"]["status"] == 200 and json.loads(sample["legacy"]["body"]) == {
        "amount": 1
    }
    assert sample["differences"] == [
        {"path": "$.amount", "kind": "value", "legacy": 1, "target": 2},
        {"path": "$.ts", "kind": "value", "legacy": 1, "target": 2}]
    json.dumps(s)  # the admin API returns it as is


def test_likely_noise_flag(make_store) -> None:
    store = make_store()
    for i in range(20):  # legacy's own value changes every time: a clock, a nonce
        c = Comparison((Difference("$.now", "value", 1000 + i, 2000 + i),))
        store.record("r", 0, req(), resp({}), resp({}), c, REDACTOR)
    (f,) = store.summary("r")["fields"]
    assert f["likely_noise"] and f["rate"] == 1.0
    assert store.summary("r", likely_noise=lambda p: False)["fields"][0]["likely_noise"]
    assert store.flush()  # the same answer from disk
    assert store.summary("r")["fields"][0]["likely_noise"]
    assert not store.summary("r", heuristic=False)["fields"][0]["likely_noise"]


def test_a_constant_wrong_value_or_type_is_never_called_noise(make_store) -> None:
    store = make_store()
    for _ in range(30):
        c = Comparison((Difference("$.currency", "value", "EUR", "USD"),
                        Difference("$.risk.score", "type", 12, "12")))
        store.record("r", 0, req(), resp({}), resp({}), c, REDACTOR)
    assert store.flush()
    fields = store.summary("r")["fields"]
    assert [f["likely_noise"] for f in fields] == [False, False]
    assert {f["rate"] for f in fields} == {1.0}


def test_steps_kept_apart_from_totals(make_store) -> None:
    store = make_store()
    for _ in range(5):
        store.record("r", 0, req(), resp({}), resp({}), mismatch("$.a"), REDACTOR)
    store.flush()
    for _ in range(3):
        store.record("r", 1, req(), resp({}), resp({}), MATCH, REDACTOR)
    store.record("r", 1, req("/b"), resp({}), resp({}), mismatch("$.b"), REDACTOR)
    assert store.counts("r", step=0)[:2] == (5, 5)
    assert store.counts("r", step=1)[:2] == (4, 1)
    assert store.counts("r")[:2] == (9, 6)
    store.flush()
    s1 = store.summary("r", step=1)
    assert [f["path"] for f in s1["fields"]] == ["$.b"]
    assert [x["request"]["path"] for x in s1["samples"]] == ["/b"]
    assert {f["path"] for f in store.summary("r")["fields"]} == {"$.a", "$.b"}


def test_samples_are_the_first_and_latest_per_field(make_store) -> None:
    now = [1_000_000.0]
    store = make_store(clock=lambda: now[0])
    for i in range(40):
        now[0] += 0.5  # a "latest" sample at most once a second: every other mismatch
        store.record("r", 0, req(f"/p/{i}"), resp({}), resp({}), mismatch("$.a"), REDACTOR)
        if i % 4 == 0:
            store.flush()
    store.record("other", 0, req("/o"), resp({}), resp({}), mismatch("$.a"), REDACTOR)
    store.flush()
    s = store.summary("r", samples=50)
    assert s["mismatched"] == 40  # counted exactly, whatever is sampled
    paths = [x["request"]["path"] for x in s["samples"]]
    latest = [f"/p/{i}" for i in range(39, 29, -2)]  # the newest LATEST_SAMPLES (5)
    assert paths == [*latest, "/p/2", "/p/1", "/p/0"]
    (field,) = s["fields"]
    assert len(field["sample_ids"]["first"]) == 3 and len(field["sample_ids"]["latest"]) == 5
    assert len(store.summary("other")["samples"]) == 1
    with sqlite3.connect(store.path) as db:  # nothing else was kept on disk
        assert db.execute("SELECT COUNT(*) FROM samples WHERE route='r'").fetchone() == (8,)


def test_a_mismatch_on_every_request_costs_no_sample_each(make_store) -> None:
    store = make_store()
    for i in range(2000):
        store.record("r", 0, req(f"/p/{i}"), resp({}), resp({}), mismatch("$.a", "$.b"),
                     REDACTOR)
    assert store.flush()
    assert store.counts("r")[:2] == (2000, 2000)
    assert store.dropped_samples == 0  # the queue never filled: few were kept at all
    with sqlite3.connect(store.path) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM samples").fetchone()
    assert 3 <= n <= 3 + 2 * 5


def test_retention_drops_old_samples_and_old_steps_keeps_totals(make_store) -> None:
    now = [1_000_000.0]
    store = make_store(retention_days=7, clock=lambda: now[0])
    store.record("r", 0, req("/old"), resp({}), resp({}), mismatch("$.a"), REDACTOR)
    store.flush()
    now[0] += 8 * 86400
    store.record("r", 1, req("/new"), resp({}), resp({}), mismatch("$.a"), REDACTOR)
    store.flush()
    assert [x["request"]["path"] for x in store.summary("r")["samples"]] == ["/new"]
    assert store.counts("r", step=0)[:2] == (0, 0)
    assert store.counts("r", step=1)[:2] == (1, 1)
    assert store.counts("r")[:2] == (2, 2)


def test_survives_reopen_and_files_are_shared_additively(make_store, tmp_path: Path) -> None:
    a = make_store()
    a.record("r", 0, req(), resp({}), resp({}), mismatch("$.a"), REDACTOR)
    b = make_store()  # a second worker process on the same file
    b.record("r", 0, req(), resp({}), resp({}), MATCH, REDACTOR)
    a.close()
    b.close()
    c = make_store()
    assert c.counts("r")[:2] == (2, 1)
    assert (tmp_path / "state" / "diffs.sqlite3").exists()
    journal = c._read.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


def test_concurrent_recording_is_exact(make_store) -> None:
    store = make_store()

    def work() -> None:
        for i in range(500):
            c = mismatch("$.x") if i % 2 else MATCH
            store.record("r", 0, req(), resp({}), resp({}), c, REDACTOR)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        store.counts("r")
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert store.counts("r")[:2] == (2000, 1000)
    store.flush()
    assert store.counts("r")[:2] == (2000, 1000)
    assert store.summary("r")["fields"][0]["count"] == 1000


def test_record_never_blocks_and_drops_samples_when_queue_full(make_store) -> None:
    store = make_store()
    big = Exchange(200, JSON, b'{"a": "' + b"x" * (8 * 1024 * 1024) + b'"}')
    started = time.perf_counter()
    for _ in range(40):
        store.record("r", 0, req(), big, big, mismatch("$.a"), REDACTOR)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5  # no redaction, serialisation or I/O on the caller's thread
    assert store.counts("r")[:2] == (40, 40)  # counters are never dropped
    assert store.dropped_samples > 0
    store.flush()
    s = store.summary("r", samples=100)
    assert 0 < len(s["samples"]) < 40
    assert s["samples"][0]["legacy"]["body"].endswith(f"({len(big.body)} bytes)")


def test_planted_secrets_never_reach_the_disk(make_store, tmp_path: Path) -> None:
    spec = CompareSpec(redact=("$.card_number", "$..iban", "header:x-account"))
    comparator = Comparator(spec)
    store = make_store()
    request = RequestRecord(
        "POST",
        f"/pay?iban={SECRET}",
        (("authorization", f"Bearer {SECRET}"), ("x-account", SECRET), ("cookie", SECRET)),
        json.dumps({"card_number": CARD, "to": {"iban": SECRET}}).encode(),
    )
    legacy = Exchange(
        200,
        (*JSON, ("set-cookie", f"sid={SECRET}")),
        json.dumps({"card_number": CARD, "accounts": [{"iban": SECRET, "n": 1}]}).encode(),
    )
    target = Exchange(
        200,
        JSON,
        json.dumps(
            {"card_number": CARD[::-1], "accounts": [{"n": 2}], "x": {"iban": SECRET}}
        ).encode(),
    )
    cut = Exchange(200, JSON, ('{"n": 1, "iban": "' + SECRET[:12]).encode(), truncated=True)
    c = comparator.compare(legacy, target)
    assert not c.matched
    store.record("pay", 0, request, legacy, target, c, comparator.redactor)
    store.record("pay", 0, request, cut, target, Comparison(c.differences), comparator.redactor)
    assert store.flush()
    s = json.dumps(store.summary("pay"))
    assert SECRET not in s and CARD not in s and CARD[::-1] not in s
    assert "[REDACTED]" in s
    files = list((tmp_path / "state").iterdir())
    assert any(f.name.endswith("-wal") for f in files)
    for f in files:
        data = f.read_bytes()
        for planted in (SECRET, SECRET[:12], CARD, CARD[::-1]):
            assert planted.encode() not in data, f"{planted} found in {f.name}"
    store.close()
    for f in (tmp_path / "state").iterdir():
        assert SECRET[:12].encode() not in f.read_bytes()


def test_samples_for_export_safe_requests_only_distinct(make_store) -> None:
    store = make_store()
    for path in ("/a", "/b", "/a"):
        store.record("r", 0, req(path), resp({"p": path}), resp({}), mismatch("$.p"), REDACTOR)
    store.record("r", 0, req("/w", "POST", b"{}"), resp({}), resp({}), mismatch("$.p"), REDACTOR)
    store.flush()
    out = store.samples_for_export("r")
    assert [(x["method"], x["path"]) for x in out] == [("GET", "/a"), ("GET", "/b")]
    assert json.loads(out[0]["legacy"]["body"]) == {"p": "/a"}
    assert out[0]["legacy"]["status"] == 200 and out[0]["legacy"]["truncated"] is False


def test_errors_are_not_comparisons_and_close_is_idempotent(make_store) -> None:
    store = make_store()
    store.record("r", 0, req(), resp({}), resp({}), Comparison((), error="boom"), REDACTOR)
    store.record_counts("r", 0, "error", 2)  # mirrors whose other side did not answer
    assert store.counts("r") == (0, 0, 3)
    assert store.counts("r", step=0) == (0, 0, 3)
    s = store.summary("r")  # as the gate counts: an error is neither compared nor mismatched
    assert (s["compared"], s["mismatched"], s["errors"]) == (0, 0, 3)
    store.close()
    store.close()
    store.record("r", 0, req(), resp({}), resp({}), MATCH, REDACTOR)  # ignored, no exception
    assert not store.flush()


def test_writes_reach_disk_without_flush_even_under_sustained_load(
    make_store, tmp_path: Path
) -> None:
    store = make_store()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            store.record("r", 0, req(), resp({}), resp({}), mismatch("$.a"), REDACTOR)
            time.sleep(0.0005)

    t = threading.Thread(target=load)
    t.start()
    try:
        db = sqlite3.connect(tmp_path / "state" / "diffs.sqlite3")
        on_disk = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not on_disk:
            time.sleep(0.1)
            row = db.execute("SELECT compared FROM comparisons WHERE route='r' AND step=-1")
            on_disk = (row.fetchone() or (0,))[0]
            samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        db.close()
    finally:
        stop.set()
        t.join(5)
    assert on_disk > 0 and samples > 0


def test_only_the_newest_steps_keep_counters_totals_stay_exact(make_store) -> None:
    """Every weight change is a step; a route changed 50 times keeps the counters of its newest
    STEPS_KEPT steps (the gate's current step among them) and exact totals, not 50 sets of rows
    per field path."""
    from shadow.store import STEPS_KEPT

    now = [1_000_000.0]
    store = make_store(clock=lambda: now[0])
    for step in range(50):
        store.record("wide", step, req(), resp({}), resp({}),
                     mismatch(*(f"$.items[{i}].amount" for i in range(30))), REDACTOR)
        store.record("other", step, req(), resp({}), resp({}), mismatch("$.a"), REDACTOR)
        store.flush()
    now[0] += 61  # the next write prunes
    store.record("wide", 49, req(), resp({}), resp({}), MATCH, REDACTOR)
    store.flush()
    with sqlite3.connect(store.path) as db:
        steps = {r: sorted(s for (s,) in db.execute(
            "SELECT step FROM comparisons WHERE route=? AND step >= 0", (r,)))
            for r in ("wide", "other")}
        field_steps = {s for (s,) in db.execute("SELECT DISTINCT step FROM fields WHERE step >= 0")}
        (rows,) = db.execute("SELECT COUNT(*) FROM fields WHERE route='wide'").fetchone()
    kept = list(range(50 - STEPS_KEPT, 50))
    assert steps == {"wide": kept, "other": kept}
    assert field_steps == set(kept)
    assert rows == 30 * (STEPS_KEPT + 1)  # the kept steps and the totals
    assert store.counts("wide", step=49)[:2] == (2, 1)
    assert store.counts("wide", step=0)[:2] == (0, 0)
    assert store.counts("wide")[:2] == (51, 50)
    totals = {f["path"]: f["count"] for f in store.summary("wide", limit=100)["fields"]}
    assert totals["$.items[7].amount"] == 50
