"""The diff store: shadow comparison counters and redacted mismatch samples in SQLite (WAL).

`record()` runs in the comparer process (`shadow.comparer`), once per comparison: it bumps
in-memory counters under a lock (exact, per field path) and, for a mismatch, decides whether the
pair is kept as a sample. Per route and field path (and kind) the store keeps the first
`FIRST_SAMPLES` mismatches ever seen and the latest `LATEST_SAMPLES`, taking a new "latest" at
most every `LATEST_EVERY` seconds: a mismatch that happens on every request costs counters, not
a redaction and a row each. A kept sample goes on a bounded queue (dropped, and counted in
`dropped_samples`, when full). A background thread redacts the samples, cuts their bodies to
16 KiB and writes everything in one transaction at least every 0.2 s. Nothing unredacted is ever
written: the redactor runs before a sample reaches SQLite.

Counters are additive upserts, so several worker processes may share one file. Per route they
are kept per weight step (`step`, an integer bumped by the caller on every weight change) and as
totals (stored under step -1); `summary(step=None)` and `counts(step=None)` answer with totals.
Reads combine what is on disk with what is still queued, so they are exact at any moment.

Retention: samples older than `retention_days`, and the counters of steps (other than a route's
newest) not updated for that long, are deleted; so are the counters of all but a route's newest
`STEPS_KEPT` steps (every weight change or reload that moves a weight is a step, and a wide
answer costs a row per field path and step: in bench/soak.py 2,000 of them left 1M rows, 100 MB);
totals are kept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.config.spec import SAFE_METHODS
from shadow import dbfile
from shadow.model import Comparison, Exchange, RequestRecord
from shadow.redact import Redactor

__all__ = ["SAMPLE_BODY_LIMIT", "TOTAL", "DiffStore"]

TOTAL = -1  # the step under which totals are stored
SAMPLE_BODY_LIMIT = 16 * 1024
FLUSH_INTERVAL = 0.2
LIKELY_NOISE_RATE = 0.9
LIKELY_NOISE_MIN = 20
_QUEUE_ITEMS = 256
_QUEUE_BYTES = 32 * 1024 * 1024
_RETENTION_EVERY = 60.0
_BATCH_MAX = 500
FIRST_SAMPLES = 3  # per (route, field path, kind): the first mismatches ever seen
LATEST_SAMPLES = 5  # ... and the latest ones
LATEST_EVERY = 1.0  # seconds between two "latest" samples of one field
MAX_FIELDS_SAMPLED = 100  # field paths per route that get samples of their own
STEPS_KEPT = 20  # per route: counters of older steps are deleted at the next prune

_SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    route TEXT NOT NULL, step INTEGER NOT NULL,
    compared INTEGER NOT NULL, mismatched INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (route, step));
CREATE TABLE IF NOT EXISTS fields (
    route TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
    count INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (route, step, path, kind));
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, step INTEGER NOT NULL,
    ts REAL NOT NULL, method TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_route ON samples (route, id);
CREATE TABLE IF NOT EXISTS sample_refs (
    route TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, role TEXT NOT NULL,
    sample_id INTEGER NOT NULL,
    PRIMARY KEY (route, path, kind, role, sample_id));
CREATE INDEX IF NOT EXISTS sample_refs_id ON sample_refs (sample_id);
CREATE TABLE IF NOT EXISTS field_values (
    route TEXT NOT NULL, path TEXT NOT NULL, sig TEXT NOT NULL, varies INTEGER NOT NULL,
    PRIMARY KEY (route, path));
"""


@dataclass(slots=True)
class _Sample:
    route: str
    step: int
    ts: float
    request: RequestRecord
    legacy: Exchange
    target: Exchange
    comparison: Comparison
    redactor: Redactor
    roles: tuple[tuple[str, str, str], ...] = ()  # (path, kind, "first" | "latest")

    def size(self) -> int:
        return len(self.request.body) + len(self.legacy.body) + len(self.target.body) + 1024


@dataclass(slots=True)
class _Flush:
    done: threading.Event


class _Stop:
    pass


def _connect(path: Path) -> sqlite3.Connection:
    return dbfile.connect(path, check_same_thread=False)


def _body_json(body: bytes, limit: int = SAMPLE_BODY_LIMIT) -> dict[str, object]:
    cut = body[:limit]
    out: dict[str, object] = {"size": len(body), "cut": len(body) > limit}
    try:
        out["text"] = _decode_prefix(cut) if len(body) > limit else cut.decode("utf-8")
    except UnicodeDecodeError:
        out["base64"] = base64.b64encode(cut).decode()
    return out


def _decode_prefix(cut: bytes) -> str:
    """Decode a body cut inside a multi-byte character (drop at most 3 trailing bytes)."""
    for n in range(4):
        try:
            return cut[: len(cut) - n].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8", cut, 0, len(cut), "not UTF-8")


def _body_bytes(b: dict[str, object]) -> bytes:
    if "base64" in b:
        return base64.b64decode(str(b["base64"]))
    return str(b.get("text", "")).encode()


def _exchange_json(ex: Exchange) -> dict[str, object]:
    out: dict[str, object] = {
        "status": ex.status,
        "headers": [list(h) for h in ex.headers],
        "body": _body_json(ex.body),
        "truncated": ex.truncated,
    }
    if ex.codings:
        out["decoded"] = list(ex.codings)  # the body is shown decoded
    return out


class DiffStore:
    """Shadow evidence of every route. Thread-safe; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: Path,
        max_samples_per_route: int = 200,
        retention_days: float = 7,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.max_samples_per_route = max_samples_per_route
        self.retention = retention_days * 86400.0
        self._clock = clock
        self._interval = flush_interval
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read = _connect(self.path)
        self._read.executescript(_SCHEMA)
        self._lock = threading.Lock()  # pending counters and the queue byte budget
        self._read_lock = threading.Lock()  # a read and a commit never interleave
        self._pending_cmp: Counter[tuple[str, int, str]] = Counter()  # (route, step, col)
        self._pending_fields: Counter[tuple[str, int, str, str]] = Counter()
        self._inflight_cmp: Counter[tuple[str, int, str]] = Counter()
        self._inflight_fields: Counter[tuple[str, int, str, str]] = Counter()
        self._pending_sigs: dict[tuple[str, str], tuple[str, bool]] = {}
        self._queue: queue.Queue[_Sample | _Flush | _Stop] = queue.Queue()
        self._queued_items = 0
        self._queued_bytes = 0
        self.dropped_samples = 0
        self.write_errors = 0
        self._closed = False
        # Which fields still want a "first" sample, and when each last got a "latest" one.
        self._first_taken: dict[tuple[str, str, str], int] = {}
        self._fields_sampled: Counter[str] = Counter()
        self._latest_at: dict[tuple[str, str, str], float] = {}
        for route, path, kind, n in self._read.execute(
                "SELECT route, path, kind, COUNT(*) FROM sample_refs WHERE role='first' "
                "GROUP BY route, path, kind"):
            self._first_taken[(route, path, kind)] = n
            self._fields_sampled[route] += 1
        self._thread = threading.Thread(target=self._run, name="strangler-diffstore", daemon=True)
        self._thread.start()

    # -- the hot path ---------------------------------------------------------------------------

    def record(
        self,
        route: str,
        step: int,
        request: RequestRecord,
        legacy: Exchange,
        target: Exchange,
        comparison: Comparison,
        redactor: Redactor,
    ) -> None:
        """Count one comparison (errors are not comparisons) and queue its sample if it differs.
        Never blocks on I/O."""
        if self._closed or comparison.error is not None:
            return
        mismatch = not comparison.matched
        sample = None
        now = self._clock()
        if mismatch:
            roles = self._roles(route, comparison, now)
            if roles:
                sample = _Sample(
                    route, step, now, request, legacy, target, comparison, redactor, roles
                )
        with self._lock:
            for s in (step, TOTAL):
                self._pending_cmp[(route, s, "compared")] += 1
                if mismatch:
                    self._pending_cmp[(route, s, "mismatched")] += 1
                for d in comparison.differences:
                    self._pending_fields[(route, s, d.path, d.kind)] += 1
            for d in comparison.differences:
                if d.kind == "value":
                    self._note_value(route, d.path, d.legacy)
            if sample is not None:
                size = sample.size()
                if self._queued_items >= _QUEUE_ITEMS or self._queued_bytes + size > _QUEUE_BYTES:
                    self.dropped_samples += 1
                    return
                self._queued_items += 1
                self._queued_bytes += size
        if sample is not None:
            self._queue.put_nowait(sample)

    def _roles(self, route: str, comparison: Comparison, now: float
               ) -> tuple[tuple[str, str, str], ...]:
        """The fields this mismatch is kept for, and as what (first or latest)."""
        roles = []
        first_taken, latest_at = self._first_taken, self._latest_at
        for path, kind in {(d.path, d.kind) for d in comparison.differences}:
            key = (route, path, kind)
            n = first_taken.get(key)
            if n is None:
                if self._fields_sampled[route] >= MAX_FIELDS_SAMPLED:
                    continue
                self._fields_sampled[route] += 1
                n = 0
            if n < FIRST_SAMPLES:
                first_taken[key] = n + 1
                roles.append((path, kind, "first"))
            elif now - latest_at.get(key, 0.0) >= LATEST_EVERY:
                latest_at[key] = now
                roles.append((path, kind, "latest"))
        return tuple(roles)

    def record_match(self, route: str, step: int, n: int = 1) -> None:
        """Count `n` comparisons that matched: `record` for clean comparisons, without them."""
        if self._closed:
            return
        with self._lock:
            pending = self._pending_cmp
            pending[(route, step, "compared")] += n
            pending[(route, TOTAL, "compared")] += n

    def _note_value(self, route: str, path: str, legacy: object) -> None:
        """Remember whether legacy's (already redacted) value at `path` changes between
        comparisons: a nondeterministic field does, a wrong constant in target does not.
        Caller holds `_lock`."""
        sig = hashlib.sha256(repr(legacy).encode()).hexdigest()[:16]
        key = (route, path)
        old = self._pending_sigs.get(key)
        if old is None:
            self._pending_sigs[key] = (sig, False)
        elif not old[1] and old[0] != sig:
            self._pending_sigs[key] = (old[0], True)

    # -- reads ----------------------------------------------------------------------------------

    def _key_step(self, step: int | None) -> int:
        return TOTAL if step is None else step

    def counts(self, route: str, step: int | None = None) -> tuple[int, int]:
        """(compared, mismatched) for the route: at `step`, or in total."""
        s = self._key_step(step)
        with self._read_lock:
            with self._lock:
                pend = [
                    self._pending_cmp[(route, s, c)] + self._inflight_cmp[(route, s, c)]
                    for c in ("compared", "mismatched")
                ]
            row = self._read.execute(
                "SELECT compared, mismatched FROM comparisons WHERE route=? AND step=?", (route, s)
            ).fetchone()
        compared, mismatched = row if row else (0, 0)
        return compared + pend[0], mismatched + pend[1]

    def summary(
        self,
        route: str,
        limit: int = 20,
        step: int | None = None,
        samples: int = 10,
        likely_noise: Callable[[str], bool] | None = None,
        heuristic: bool = True,
    ) -> dict[str, object]:
        """The diffs object of the admin API and `strangler diffs`.

        `likely_noise` is set for a field when `likely_noise(path)` says so, or (with
        `heuristic`, i.e. when the route has no second legacy copy to measure noise with) when
        its *values* differ in nearly every comparison while legacy's own value there changes
        from request to request: timestamps, nonces, ids. A constant wrong value, or a structural
        difference (type, missing, extra, length) that is always there is a contract mismatch,
        not nondeterminism, and is never flagged by the heuristic."""
        s = self._key_step(step)
        with self._read_lock:
            with self._lock:
                pend_cmp = {
                    c: self._pending_cmp[(route, s, c)] + self._inflight_cmp[(route, s, c)]
                    for c in ("compared", "mismatched")
                }
                fields: Counter[tuple[str, str]] = Counter()
                for src in (self._pending_fields, self._inflight_fields):
                    for (r, st, p, k), n in src.items():
                        if r == route and st == s:
                            fields[(p, k)] += n
            row = self._read.execute(
                "SELECT compared, mismatched FROM comparisons WHERE route=? AND step=?", (route, s)
            ).fetchone()
            for p, k, n in self._read.execute(
                "SELECT path, kind, count FROM fields WHERE route=? AND step=?", (route, s)
            ):
                fields[(p, k)] += n
            varies = {p for p, v in self._read.execute(
                "SELECT path, varies FROM field_values WHERE route=?", (route,)) if v}
            with self._lock:
                varies |= {p for (r, p), (_, v) in self._pending_sigs.items()
                           if r == route and v}
            refs: dict[tuple[str, str], dict[str, list[int]]] = {}
            for p, k, role, sid in self._read.execute(
                    "SELECT path, kind, role, sample_id FROM sample_refs WHERE route=? "
                    "ORDER BY sample_id", (route,)):
                refs.setdefault((p, k), {"first": [], "latest": []})[role].append(sid)
            q = "SELECT id, step, ts, data FROM samples WHERE route=?"
            args: tuple[object, ...] = (route,)
            if step is not None:
                q += " AND step=?"
                args += (step,)
            rows = self._read.execute(q + " ORDER BY id DESC LIMIT ?", (*args, samples)).fetchall()
        compared = (row[0] if row else 0) + pend_cmp["compared"]
        mismatched = (row[1] if row else 0) + pend_cmp["mismatched"]
        top = sorted(fields.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1]))[:limit]
        out_fields = []
        for (p, k), n in top:
            rate = n / compared if compared else 0.0
            noisy = (heuristic and k == "value" and p in varies
                     and compared >= LIKELY_NOISE_MIN and rate >= LIKELY_NOISE_RATE)
            if likely_noise is not None and likely_noise(p):
                noisy = True
            out_fields.append(
                {"path": p, "kind": k, "count": n, "rate": rate, "likely_noise": noisy,
                 "sample_ids": refs.get((p, k), {"first": [], "latest": []})}
            )
        out_samples = []
        for sid, sstep, ts, data in rows:
            d = json.loads(data)
            out_samples.append({"id": sid, "step": sstep, "time": ts, **_present(d)})
        return {
            "route": route,
            "compared": compared,
            "mismatched": mismatched,
            "fields": out_fields,
            "samples": out_samples,
        }

    def samples_for_export(self, route: str) -> list[dict[str, object]]:
        """Recorded safe-method requests with the legacy answers, newest first, one per distinct
        request. Bodies are bytes (redacted, at most 16 KiB; `truncated` says when cut)."""
        with self._read_lock:
            rows = self._read.execute(
                "SELECT data FROM samples WHERE route=? ORDER BY id DESC", (route,)
            ).fetchall()
        out: list[dict[str, object]] = []
        seen: set[tuple[str, str, bytes]] = set()
        for (data,) in rows:
            d = json.loads(data)
            req, leg = d["request"], d["legacy"]
            if req["method"] not in SAFE_METHODS:
                continue
            body = _body_bytes(req["body"])
            key = (req["method"], req["path"], body)
            if key in seen:
                continue
            seen.add(key)
            out.append(
                {
                    "method": req["method"],
                    "path": req["path"],
                    "headers": [tuple(h) for h in req["headers"]],
                    "body": body,
                    "legacy": {
                        "status": leg["status"],
                        "headers": [tuple(h) for h in leg["headers"]],
                        "body": _body_bytes(leg["body"]),
                        "truncated": bool(leg["truncated"] or leg["body"]["cut"]),
                    },
                }
            )
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is on disk. False on timeout or when closed."""
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(_Flush(done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, stop the writer, close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join(timeout)
        with self._read_lock:
            self._read.close()

    def __enter__(self) -> DiffStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        conn = _connect(self.path)
        last_retention = 0.0
        try:
            while True:
                deadline = time.monotonic() + self._interval
                samples: list[_Sample] = []
                waiters: list[threading.Event] = []
                stop = False
                # FIFO: a flush marker comes after every sample recorded before it
                while len(samples) < _BATCH_MAX:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if isinstance(item, _Sample):
                        samples.append(item)
                        with self._lock:
                            self._queued_items -= 1
                            self._queued_bytes -= item.size()
                        continue
                    if isinstance(item, _Flush):
                        waiters.append(item.done)
                    else:
                        stop = True
                    break
                try:
                    self._write(conn, samples)
                    now = self._clock()
                    if now - last_retention >= _RETENTION_EVERY:
                        self._prune(conn, now)
                        last_retention = now
                except sqlite3.Error:
                    self.write_errors += 1
                for w in waiters:
                    w.set()
                if stop:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, samples: list[_Sample]) -> None:
        rows = []
        kept: list[_Sample] = []
        for s in samples:
            try:
                rows.append((s.route, s.step, s.ts, s.request.method, _sample_json(s)))
                kept.append(s)
            except Exception:  # a sample that cannot be redacted is never written
                self.dropped_samples += 1
        with self._lock:
            self._inflight_cmp, self._pending_cmp = self._pending_cmp, self._inflight_cmp
            self._inflight_fields, self._pending_fields = (
                self._pending_fields,
                self._inflight_fields,
            )
            cmp_items = list(self._inflight_cmp.items())
            field_items = list(self._inflight_fields.items())
            sig_items, self._pending_sigs = list(self._pending_sigs.items()), {}
        if not rows and not cmp_items and not field_items and not sig_items:
            return
        now = self._clock()
        cmp_rows: dict[tuple[str, int], list[int]] = {}
        for (route, step, col), n in cmp_items:
            cmp_rows.setdefault((route, step), [0, 0])[col == "mismatched"] += n
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO comparisons (route, step, compared, mismatched, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (route, step) DO UPDATE SET "
                "compared = compared + excluded.compared, "
                "mismatched = mismatched + excluded.mismatched, updated = excluded.updated",
                [(r, s, c, m, now) for (r, s), (c, m) in cmp_rows.items()],
            )
            conn.executemany(
                "INSERT INTO fields (route, step, path, kind, count, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (route, step, path, kind) DO UPDATE SET "
                "count = count + excluded.count, updated = excluded.updated",
                [(r, s, p, k, n, now) for (r, s, p, k), n in field_items],
            )
            conn.executemany(
                "INSERT INTO field_values (route, path, sig, varies) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (route, path) DO UPDATE SET varies = MAX(field_values.varies, "
                "excluded.varies, field_values.sig != excluded.sig)",
                [(r, p, sig, int(v)) for (r, p), (sig, v) in sig_items],
            )
            self._insert_samples(conn, rows, kept)
            with self._read_lock:
                conn.execute("COMMIT")
                with self._lock:
                    self._inflight_cmp.clear()
                    self._inflight_fields.clear()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            with self._lock:  # keep the counts: they are retried with the next batch
                self._pending_cmp.update(self._inflight_cmp)
                self._pending_fields.update(self._inflight_fields)
                self._inflight_cmp.clear()
                self._inflight_fields.clear()
            raise

    def _insert_samples(self, conn: sqlite3.Connection, rows: list[tuple],
                        kept: list[_Sample]) -> None:
        """Insert samples with their per-field roles; keep the newest LATEST_SAMPLES "latest"
        per field, and at most max_samples_per_route samples no field refers to."""
        touched: set[tuple[str, str, str]] = set()
        for row, sample in zip(rows, kept, strict=True):
            cur = conn.execute(
                "INSERT INTO samples (route, step, ts, method, data) VALUES (?, ?, ?, ?, ?)", row)
            sid = cur.lastrowid
            conn.executemany(
                "INSERT OR IGNORE INTO sample_refs (route, path, kind, role, sample_id) "
                "VALUES (?, ?, ?, ?, ?)",
                [(sample.route, p, k, role, sid) for p, k, role in sample.roles])
            touched.update((sample.route, p, k) for p, k, role in sample.roles
                           if role == "latest")
        dropped: set[int] = set()
        for route, path, kind in touched:
            old = [sid for (sid,) in conn.execute(
                "SELECT sample_id FROM sample_refs WHERE route=? AND path=? AND kind=? AND "
                "role='latest' ORDER BY sample_id DESC LIMIT -1 OFFSET ?",
                (route, path, kind, LATEST_SAMPLES))]
            if old:
                conn.executemany(
                    "DELETE FROM sample_refs WHERE route=? AND path=? AND kind=? AND "
                    "role='latest' AND sample_id=?", [(route, path, kind, sid) for sid in old])
                dropped.update(old)
        if dropped:
            conn.executemany(
                "DELETE FROM samples WHERE id=? AND NOT EXISTS "
                "(SELECT 1 FROM sample_refs WHERE sample_id=?)", [(i, i) for i in dropped])
        for route in {r[0] for r in rows}:
            conn.execute(
                "DELETE FROM samples WHERE route=? AND id <= (SELECT id FROM samples "
                "WHERE route=? ORDER BY id DESC LIMIT 1 OFFSET ?) AND NOT EXISTS "
                "(SELECT 1 FROM sample_refs WHERE sample_id=samples.id)",
                (route, route, self.max_samples_per_route),
            )

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.retention
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM samples WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM sample_refs WHERE NOT EXISTS "
                     "(SELECT 1 FROM samples WHERE id=sample_refs.sample_id)")
        for table in ("comparisons", "fields"):
            conn.execute(
                f"DELETE FROM {table} WHERE step <> ? AND updated < ? AND step < "
                f"(SELECT MAX(step) FROM comparisons c WHERE c.route = {table}.route)",
                (TOTAL, cutoff),
            )
        cuts = conn.execute(
            "SELECT route, (SELECT step FROM comparisons c WHERE c.route = r.route AND "
            "c.step >= 0 ORDER BY c.step DESC LIMIT 1 OFFSET ?) "
            "FROM (SELECT DISTINCT route FROM comparisons) r",
            (STEPS_KEPT - 1,)).fetchall()
        for route, oldest_kept in cuts:
            if oldest_kept is not None:
                for table in ("fields", "comparisons"):
                    conn.execute(f"DELETE FROM {table} WHERE route = ? AND step >= 0 AND step < ?",
                                 (route, oldest_kept))
        with self._read_lock:
            conn.execute("COMMIT")


def _sample_json(s: _Sample) -> str:
    red = s.redactor
    req = red.redact_request(s.request)
    leg = red.redact_exchange(s.legacy)
    tgt = red.redact_exchange(s.target)
    diffs = [red.redact_difference(d).to_dict() for d in s.comparison.differences]
    data = {
        "request": {
            "method": req.method,
            "path": req.path,
            "headers": [list(h) for h in req.headers],
            "body": _body_json(req.body),
        },
        "legacy": _exchange_json(leg),
        "target": _exchange_json(tgt),
        "differences": diffs,
        "noise": list(s.comparison.noise),
        "body_compared": s.comparison.body_compared,
    }
    return json.dumps(data, ensure_ascii=False, default=str)


def _present(d: dict[str, object]) -> dict[str, object]:
    """A stored sample as shown by the diffs view: bodies as text."""

    def body(b: dict[str, object]) -> str:
        if "base64" in b:
            return f"<{b['size']} bytes, not UTF-8>"
        text = str(b.get("text", ""))
        return text + (f"... ({b['size']} bytes)" if b.get("cut") else "")

    req = dict(d["request"])  # type: ignore[arg-type]
    req["body"] = body(req["body"])
    out: dict[str, object] = {"request": req}
    for side in ("legacy", "target"):
        ex = dict(d[side])  # type: ignore[arg-type]
        ex["body"] = body(ex["body"])
        out[side] = ex
    out["differences"] = d["differences"]
    out["noise"] = d.get("noise", [])
    out["body_compared"] = d.get("body_compared", True)
    return out
