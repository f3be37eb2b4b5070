"""The diff store: shadow comparison counters and redacted mismatch samples in SQLite (WAL).

`record()` runs in the comparer process (`shadow.comparer`), once per comparison: it bumps
in-memory counters under a lock (exact) and, for a mismatch, decides whether the pair is kept as
a sample. Per field path (and kind) the store keeps the first `FIRST_SAMPLES` mismatches of an
evidence window and the latest `LATEST_SAMPLES`, taking a new "latest" at most every
`LATEST_EVERY` seconds: a mismatch that happens on every request costs counters, not a
redaction and a row each. A kept sample goes on a bounded queue (dropped, and counted in
`dropped_samples`, when full). A background thread redacts the samples, cuts their bodies to
16 KiB and writes everything at least every 0.2 s, in transactions of at most `BATCH_ROWS`
counter rows. Nothing unredacted is ever written: the redactor runs before a sample reaches
SQLite, on bodies already decoded (`shadow.decode`).

Evidence windows: counters, renames and samples are kept per (route, step, rules): `step` is the
route's step id as the data plane tagged the request, `rules` identifies the route's compare
rules (`shadow.diff.rules_id`), so evidence taken under other rules never blends with the
current. Totals are stored under step -1 and rules ''. `counts()` and `summary()` answer for one
window or for the totals. Counters are additive upserts, so several worker processes may share
one file. Reads combine what is on disk with what is still queued, so they are exact.

Fleet windows (shared store): step ids are per replica, so with several replicas a "step" is
one replica's. To answer "this route's evidence since my step began" for every replica, each
replica marks the steps it begins (`mark_step`: `step_marks` holds, per route, the newest step id
any replica began, an id being at least the epoch second its step began), and every comparer
keeps a comparison under the later of its request's step and that mark. A window's step is then
a time: nothing in it was recorded before that second (give or take the mark's trip, about
MARK_EVERY). `summary(..., fleet=True)` reads every window of the route under the given rules
keyed at or after the given step: every replica's comparisons since that step began, as the
gate's Prometheus mode counts them (`increase(...[now - step_started])`, whatever replica).

Bounds (issue 22.5: answers that are maps of 20,000 random keys): per window at most
`max_fields` distinct (path, kind) rows; differences on further paths, and those the comparator
did not itemise, are counted on one `other` row. Paths are canonical (`$.items[*].amount`), so a
list of any length costs one row per field of its elements. The in-memory state is bounded by
the windows being written; each transaction writes at most `BATCH_ROWS` rows.

Retention: samples older than `retention_days` are deleted, and so are counters (totals too)
not updated for that long, except a route's newest step; a route keeps the counters of its
newest `STEPS_KEPT` steps (every weight change is a step; a wide answer costs a row per field
path and step) and sample references of its newest `WINDOWS_SAMPLED` windows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from proxy.config.spec import SAFE_METHODS
from shadow.dbfile import check_reserve
from shadow.jsonpath import PathSyntaxError, parse_canonical
from shadow.model import Comparison, Exchange, RequestRecord
from shadow.redact import Redactor
from shadow.sqldb import NO_LIMIT, PostgresDb, SqliteDb, connector

log = structlog.get_logger("strangler.shadow.store")

__all__ = ["ALL", "DEFAULT_MAX_FIELDS", "OTHER", "SAMPLE_BODY_LIMIT", "TOTAL", "Counts",
           "DiffStore"]

TOTAL = -1  # the step under which totals are stored (with rules '')
ALL = (TOTAL, "")  # the window of the totals
OTHER = "other"  # path and kind of the row counting differences past max_fields
SAMPLE_BODY_LIMIT = 16 * 1024
FLUSH_INTERVAL = 0.2
LIKELY_NOISE_RATE = 0.9
LIKELY_NOISE_MIN = 20
RENAME_SHARE = 0.8  # a rename pair seen in this share of its fields' comparisons is "likely"
_QUEUE_ITEMS = 256
_QUEUE_BYTES = 32 * 1024 * 1024
_RETENTION_EVERY = 60.0
_BATCH_MAX = 500  # samples per writer cycle
BATCH_ROWS = 2000  # counter rows per transaction
_BATCHES_PER_CYCLE = 50
FIRST_SAMPLES = 3  # per window and (field path, kind): the first mismatches seen
LATEST_SAMPLES = 5  # ... and the latest ones
LATEST_EVERY = 1.0  # seconds between two "latest" samples of one field
MAX_FIELDS_SAMPLED = 100  # field paths per window that get samples of their own
DIFFS_PER_SAMPLE = 100  # differences kept with a sample
STEPS_KEPT = 20  # per route: counters of older steps are deleted at the next prune
WINDOWS_SAMPLED = 3  # per route: windows whose samples stay referenced by their fields
DEFAULT_MAX_FIELDS = 2000
MARK_EVERY = 1.0  # seconds between two reads of the fleet's step marks (shared store)
_WINDOWS_TRACKED = 64  # admitted-field sets kept in memory (reloaded from disk when needed)

Window = tuple[str, int, str]  # (route, step, rules)
_COLS = ("compared", "mismatched", "errors")


class Counts(NamedTuple):
    compared: int  # legacy and target answered and were compared
    mismatched: int  # of which differed
    errors: int  # a side did not answer, or the comparison failed


@dataclass(slots=True)
class _Sample:
    window: Window
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
class _Sampling:
    """Which fields of a window still want a "first" sample, and when each got a "latest"."""

    first_taken: dict[tuple[str, str], int] = field(default_factory=dict)
    latest_at: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(slots=True)
class _Flush:
    done: threading.Event


class _Stop:
    pass


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


def _take(src: dict, n: int, dst: dict) -> int:
    """Move up to `n` entries of `src` into `dst` (which is empty); how many moved."""
    k = min(n, len(src))
    for _ in range(k):
        key, value = src.popitem()
        dst[key] = value
    return k


def _merge_fields(dst: dict, src: dict) -> None:
    for key, (c, e, o) in src.items():
        row = dst.get(key)
        if row is None:
            dst[key] = [c, e, o]
        else:
            row[0] += c
            row[1] += e
            row[2] += o


def _per_element(path: str, kind: str, elements: int, of: int) -> dict[str, object]:
    """A field row's `elements` / `of` / `share`: for a path in a list (`[*]`), in how many
    elements of its outermost list it differed, out of how many. Null for a path without a list
    (a difference there is one whole comparison: `count` says it all), except the `other` row's
    `elements`, the number of differences past `max_fields`. `of` is null too where the list's
    length was never counted (rows migrated from a version-0 file: `shadow.store_schema`)."""
    if _in_list(path):
        return {"elements": elements, "of": of or None, "share": elements / of if of else None}
    if path == OTHER and kind == OTHER:
        return {"elements": elements, "of": None, "share": None}
    return {"elements": None, "of": None, "share": None}


def _in_list(path: str) -> bool:
    """A canonical JSON path with a `[*]` segment (not a key that merely contains `[*]`)."""
    if not path.startswith("$") or "[*]" not in path:
        return False
    try:
        return -1 in parse_canonical(path)
    except PathSyntaxError:
        return False


class _BelowReserve(Exception):
    """The state_dir filesystem is under the disk reserve: this writer cycle writes nothing."""


class DiffStore:
    """Shadow evidence of every route. Thread-safe; see the module docstring for the guarantees."""

    def __init__(
        self,
        where: Path | str | dict,
        max_samples_per_route: int = 200,
        retention_days: float = 7,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        """`where`: the SQLite file, or the shared store's locator (`shadow.sqldb.locator`)."""
        self.path = None if isinstance(where, dict) else Path(where)  # the SQLite file
        self.shared = isinstance(where, dict)  # the fleet's store: windows follow step marks
        self._connect = connector(where)
        self.max_samples_per_route = max_samples_per_route
        self.retention = retention_days * 86400.0
        self._clock = clock
        self._interval = flush_interval
        self._read: SqliteDb | PostgresDb = self._connect()
        self._db_error = self._read.Error
        self._lock = threading.Lock()  # pending counters, admitted fields, the queue budget
        self._read_lock = threading.Lock()  # a read and a commit never interleave
        self._sample_lock = threading.Lock()
        self._pending_cmp: Counter[tuple[Window, str]] = Counter()
        self._pending_fields: dict[tuple[Window, str, str], list[int]] = {}
        self._pending_renames: Counter[tuple[Window, str, str]] = Counter()
        self._pending_sigs: dict[tuple[str, str], tuple[str, bool]] = {}
        self._inflight_cmp: Counter[tuple[Window, str]] = Counter()
        self._inflight_fields: dict[tuple[Window, str, str], list[int]] = {}
        self._inflight_renames: Counter[tuple[Window, str, str]] = Counter()
        self._admitted: OrderedDict[Window, set[tuple[str, str]]] = OrderedDict()
        self._sampling: dict[str, OrderedDict[Window, _Sampling]] = {}
        self._queue: queue.Queue[_Sample | _Flush | _Stop] = queue.Queue()
        self._queued_items = 0
        self._queued_bytes = 0
        self.dropped_samples = 0
        self.write_errors = 0  # writer cycles that failed (their counters wait for the next)
        self.reserve_error: str | None = None  # the disk reserve holds writes back (SQLite)
        self._marks: dict[str, int] = {}  # route -> the fleet's newest step id (shared store)
        self._pending_marks: dict[str, tuple[int, str]] = {}  # route -> (step id, replica)
        self._closed = False
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
        *,
        rules: str = "",
        max_fields: int = DEFAULT_MAX_FIELDS,
    ) -> None:
        """Count one comparison (an error is counted as such) and queue its sample if it
        differs. Never blocks on I/O (but for loading a window's field rows once)."""
        if self._closed:
            return
        if comparison.error is not None:
            self.record_counts(route, step, "error", rules=rules)
            return
        step = self._fleet_step(route, step)
        mismatch = not comparison.matched
        windows = ((route, step, rules), (route, *ALL))
        admitted = [self._admitted_for(w, max_fields) for w in windows]
        sample = None
        now = self._clock()
        if mismatch:
            roles = self._roles(windows[0], comparison, now)
            if roles:
                sample = _Sample(windows[0], now, request, legacy, target, comparison, redactor,
                                 roles)
        with self._lock:
            for w, adm in zip(windows, admitted, strict=True):
                self._pending_cmp[(w, "compared")] += 1
                if mismatch:
                    self._pending_cmp[(w, "mismatched")] += 1
                    self._count_fields(w, adm, comparison, max_fields, w is windows[0])
            if sample is not None:
                size = sample.size()
                if self._queued_items >= _QUEUE_ITEMS or self._queued_bytes + size > _QUEUE_BYTES:
                    self.dropped_samples += 1
                    return
                self._queued_items += 1
                self._queued_bytes += size
        if sample is not None:
            self._queue.put_nowait(sample)

    def _count_fields(self, w: Window, adm: set[tuple[str, str]], comparison: Comparison,
                      cap: int, note_values: bool) -> None:
        """Caller holds `_lock`."""
        pending = self._pending_fields
        other = comparison.overflow
        for d in comparison.differences:
            key = (d.path, d.kind)
            if key not in adm:
                if len(adm) >= cap:
                    other += d.elements
                    continue
                adm.add(key)
            row = pending.get((w, *key))
            if row is None:
                pending[(w, *key)] = [1, d.elements, d.of]
            else:
                row[0] += 1
                row[1] += d.elements
                row[2] += d.of
            if note_values and d.kind == "value":
                self._note_value(w[0], d.path, d.legacy, d.varies)
        if other:
            row = pending.get((w, OTHER, OTHER))
            if row is None:
                pending[(w, OTHER, OTHER)] = [1, other, 0]
            else:
                row[0] += 1
                row[1] += other
        for missing, extra in comparison.renames:
            if (missing, "missing") in adm and (extra, "extra") in adm:
                self._pending_renames[(w, missing, extra)] += 1

    def _admitted_for(self, w: Window, cap: int) -> set[tuple[str, str]]:
        """The (path, kind) rows the window has (on disk or pending), loaded once."""
        with self._lock:
            adm = self._admitted.get(w)
            if adm is not None:
                self._admitted.move_to_end(w)
                return adm
        try:
            with self._read_lock:
                rows = self._read.execute(
                    "SELECT path, kind FROM fields WHERE route=? AND step=? AND rules=? AND "
                    "path <> ? LIMIT ?", (*w, OTHER, cap)).fetchall()
        except self._db_error:
            rows = []  # the store is unavailable: what is on disk is learnt after the outage
        with self._lock:
            adm = self._admitted.get(w)
            if adm is None:
                adm = {(p, k) for p, k in rows}
                for src in (self._pending_fields, self._inflight_fields):
                    adm.update((p, k) for (win, p, k) in src if win == w and p != OTHER)
                self._admitted[w] = adm
                while len(self._admitted) > _WINDOWS_TRACKED:
                    self._admitted.popitem(last=False)
            return adm

    def _sampling_for(self, w: Window) -> _Sampling:
        """Caller holds `_sample_lock`."""
        per_route = self._sampling.setdefault(w[0], OrderedDict())
        st = per_route.get(w)
        if st is not None:
            per_route.move_to_end(w)
            return st
        st = _Sampling()
        try:
            with self._read_lock:
                for path, kind, n in self._read.execute(
                        "SELECT path, kind, COUNT(*) FROM sample_refs WHERE route=? AND step=? "
                        "AND rules=? AND role='first' GROUP BY path, kind", w).fetchall():
                    st.first_taken[(path, kind)] = n
        except self._db_error:
            pass  # unavailable: this window may get a few more "first" samples
        per_route[w] = st
        while len(per_route) > WINDOWS_SAMPLED:
            per_route.popitem(last=False)
        return st

    def _roles(self, w: Window, comparison: Comparison, now: float
               ) -> tuple[tuple[str, str, str], ...]:
        """The fields this mismatch is kept for, and as what (first or latest)."""
        roles = []
        with self._sample_lock:
            st = self._sampling_for(w)
            first_taken, latest_at = st.first_taken, st.latest_at
            keys = {(d.path, d.kind) for d in comparison.differences}
            if comparison.overflow:
                keys.add((OTHER, OTHER))
            for key in keys:
                n = first_taken.get(key)
                if n is None:
                    if len(first_taken) >= MAX_FIELDS_SAMPLED:
                        continue
                    n = 0
                if n < FIRST_SAMPLES:
                    first_taken[key] = n + 1
                    roles.append((*key, "first"))
                elif now - latest_at.get(key, 0.0) >= LATEST_EVERY:
                    latest_at[key] = now
                    roles.append((*key, "latest"))
        return tuple(roles)

    def record_counts(self, route: str, step: int, result: str, n: int = 1, *,
                      rules: str = "") -> None:
        """Count `n` results that carry no differences: "match" (pairs the data plane found
        byte-identical) or "error" (a side did not answer, or the comparison failed)."""
        if self._closed or n <= 0:
            return
        step = self._fleet_step(route, step)
        with self._lock:
            pending = self._pending_cmp
            for w in ((route, step, rules), (route, *ALL)):
                if result == "error":
                    pending[(w, "errors")] += n
                else:
                    pending[(w, "compared")] += n

    def _fleet_step(self, route: str, step: int) -> int:
        """The window a comparison is kept under: its step, or the fleet's newest step mark
        when that is later (shared store; module docstring)."""
        mark = self._marks.get(route)
        return mark if mark is not None and mark > step else step

    def mark_step(self, route: str, step: int, replica: str = "") -> None:
        """A replica began step `step` of `route`: with the shared store, every comparer keeps
        what it records from then on under at least this step (written within a cycle; the
        comparers read the marks every MARK_EVERY seconds). Nothing with a local store."""
        if not self.shared:
            return
        with self._lock:
            old = self._pending_marks.get(route)
            if old is None or old[0] < step:
                self._pending_marks[route] = (step, replica)

    def record_match(self, route: str, step: int, n: int = 1, *, rules: str = "") -> None:
        self.record_counts(route, step, "match", n, rules=rules)

    def _note_value(self, route: str, path: str, legacy: object, varies: bool) -> None:
        """Remember whether legacy's (already redacted) value at `path` changes between
        comparisons, or between the elements of one list: a nondeterministic field does, a
        wrong constant in target does not. Caller holds `_lock`."""
        sig = hashlib.sha256(repr(legacy).encode()).hexdigest()[:16]
        key = (route, path)
        old = self._pending_sigs.get(key)
        if old is None:
            self._pending_sigs[key] = (sig, varies)
        elif not old[1] and (varies or old[0] != sig):
            self._pending_sigs[key] = (old[0], True)

    # -- reads ----------------------------------------------------------------------------------

    @staticmethod
    def _where(route: str, step: int | None, rules: str | None,
               fleet: bool = False) -> tuple[str, tuple]:
        if step is None:
            return "route=? AND step=? AND rules=?", (route, *ALL)
        op = ">=" if fleet else "="
        if rules is None:
            return f"route=? AND step{op}?", (route, step)
        return f"route=? AND step{op}? AND rules=?", (route, step, rules)

    @staticmethod
    def _matches(w: Window, route: str, step: int | None, rules: str | None,
                 fleet: bool = False) -> bool:
        if step is None:
            return w == (route, *ALL)
        return (w[0] == route and (w[1] >= step if fleet else w[1] == step)
                and (rules is None or w[2] == rules))

    def counts(self, route: str, step: int | None = None, rules: str | None = None, *,
               fleet: bool = False) -> Counts:
        """The route's counts: at `step` (under `rules`, or all of the step's), or in total.
        `fleet`: in every window keyed at or after `step` (module docstring)."""
        where, args = self._where(route, step, rules, fleet)
        with self._read_lock:
            with self._lock:
                pend = Counter()
                for src in (self._pending_cmp, self._inflight_cmp):
                    for (w, col), n in src.items():
                        if self._matches(w, route, step, rules, fleet):
                            pend[col] += n
            row = self._read.execute(
                f"SELECT CAST(SUM(compared) AS BIGINT), CAST(SUM(mismatched) AS BIGINT), "
                f"CAST(SUM(errors) AS BIGINT) FROM comparisons WHERE {where}", args).fetchone()
        disk = [x or 0 for x in row] if row else [0, 0, 0]
        return Counts(*(disk[i] + pend[c] for i, c in enumerate(_COLS)))

    def summary(
        self,
        route: str,
        limit: int = 20,
        step: int | None = None,
        samples: int = 10,
        likely_noise: Callable[[str], bool] | None = None,
        heuristic: bool = True,
        *,
        rules: str | None = None,
        ignored: Callable[[str], bool] | None = None,
        fleet: bool = False,
    ) -> dict[str, object]:
        """The diffs object of the admin API and `strangler diffs`, for one window (`step` and
        `rules`), for the fleet's windows since `step` (`fleet`, module docstring) or for the
        totals (`step` None).

        `likely_noise` is set for a field when `likely_noise(path)` says so, or (with
        `heuristic`, i.e. when the route has no second legacy copy to measure noise with) when
        its *values* differ in nearly every comparison while legacy's own value there changes
        from request to request or from element to element: timestamps, nonces, ids. A constant
        wrong value, or a structural difference (type, missing, extra, length) that is always
        there is a contract mismatch, not nondeterminism, and is never flagged by the heuristic.
        `ignored(path)`: the route's current ignore rules cover the path; such a row is marked
        `ignored` and listed after the live ones."""
        where, args = self._where(route, step, rules, fleet)
        # The counts first, then the fields: each read sees what was written before it (another
        # replica's comparer writes to a shared store meanwhile), so the fields read second
        # include those of every comparison counted; counted the other way round, a view could
        # show mismatches whose fields it had not seen.
        counts = self.counts(route, step, rules, fleet=fleet)
        fields: dict[tuple[str, str], list[int]] = {}
        renames: Counter[tuple[str, str]] = Counter()
        with self._read_lock:
            with self._lock:
                for src in (self._pending_fields, self._inflight_fields):
                    for (w, p, k), (c, e, o) in src.items():
                        if self._matches(w, route, step, rules, fleet):
                            _merge_fields(fields, {(p, k): (c, e, o)})
                for src2 in (self._pending_renames, self._inflight_renames):
                    for (w, m, x), n in src2.items():
                        if self._matches(w, route, step, rules, fleet):
                            renames[(m, x)] += n
                varies = {p for (r, p), (_, v) in self._pending_sigs.items() if r == route and v}
            for p, k, c, e, o in self._read.execute(
                    f"SELECT path, kind, CAST(SUM(count) AS BIGINT), CAST(SUM(elements) AS "
                    f"BIGINT), CAST(SUM(of_elements) AS BIGINT) FROM fields WHERE {where} "
                    f"GROUP BY path, kind", args).fetchall():
                _merge_fields(fields, {(p, k): (c, e, o)})
            for m, x, n in self._read.execute(
                    f"SELECT missing, extra, CAST(SUM(count) AS BIGINT) FROM renames WHERE "
                    f"{where} GROUP BY missing, extra", args).fetchall():
                renames[(m, x)] += n
            varies |= {p for p, v in self._read.execute(
                "SELECT path, varies FROM field_values WHERE route=?", (route,)).fetchall() if v}
            refs = self._refs(where, args)
            rows = self._read.execute(
                f"SELECT id, step, rules, ts, data FROM samples WHERE "
                f"{where if step is not None else 'route=?'} ORDER BY id DESC LIMIT ?",
                (*(args if step is not None else (route,)), samples)).fetchall()
            window = self._read.execute(
                f"SELECT MIN(started), MAX(updated) FROM comparisons WHERE {where}",
                args).fetchone()
        compared = counts.compared  # rates are over the pairs that were really compared
        hints = _rename_hints(renames, fields)
        out_fields = []
        for (p, k), (n, elements, of) in fields.items():
            rate = min(1.0, n / compared) if compared else 0.0  # fields may be a write ahead
            noisy = (heuristic and k == "value" and p in varies
                     and compared >= LIKELY_NOISE_MIN and rate >= LIKELY_NOISE_RATE)
            if likely_noise is not None and likely_noise(p):
                noisy = True
            row: dict[str, object] = {
                "path": p, "kind": k, "count": n, "rate": rate, "likely_noise": noisy,
                **_per_element(p, k, elements, of),
                "ignored": bool(ignored is not None and p != OTHER and ignored(p)),
                "sample_ids": refs.get((p, k), {"first": [], "latest": []}),
            }
            if (p, k) in hints:
                row.update(hints[(p, k)])
            out_fields.append(row)
        out_fields.sort(key=lambda f: (f["ignored"], f["path"] == OTHER, -f["count"],  # type: ignore[operator]
                                       f["path"], f["kind"]))
        out_samples = []
        for sid, sstep, srules, ts, data in rows:
            d = json.loads(data)
            out_samples.append({"id": sid, "step": sstep, "rules": srules, "time": ts,
                                **_present(d)})
        return {
            "route": route,
            "window": {"step": step, "rules": rules, "all": step is None, "fleet": fleet,
                       "first": window[0] if window else None,
                       "last": window[1] if window else None},
            # as the gate counts: an error (a side did not answer) is neither compared nor
            # mismatched, and is reported apart
            "compared": compared,
            "mismatched": counts.mismatched,
            "errors": counts.errors,
            "fields": out_fields[:limit],
            "fields_total": len(out_fields),
            "samples": out_samples,
        }

    def _refs(self, where: str, args: tuple) -> dict[tuple[str, str], dict[str, list[int]]]:
        """Sample ids per field of the window (of every window, for the totals). Caller holds
        `_read_lock`."""
        if args[1] == TOTAL:
            where, args = "route=?", args[:1]
        refs: dict[tuple[str, str], dict[str, list[int]]] = {}
        for p, k, role, sid in self._read.execute(
                f"SELECT path, kind, role, sample_id FROM sample_refs WHERE {where} "
                f"ORDER BY sample_id", args).fetchall():
            ids = refs.setdefault((p, k), {"first": [], "latest": []})[role]
            if sid not in ids:
                ids.append(sid)
        return refs

    def samples_for_export(self, route: str) -> list[dict[str, object]]:
        """Recorded safe-method requests with the legacy answers, newest first, one per distinct
        request. Bodies are bytes (decoded, redacted, at most 16 KiB; `truncated` says when
        cut, `withheld` when the body is a marker in place of one)."""
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
            lbody = _body_bytes(leg["body"])
            out.append(
                {
                    "method": req["method"],
                    "path": req["path"],
                    "headers": [tuple(h) for h in req["headers"]],
                    "body": body,
                    "legacy": {
                        "status": leg["status"],
                        "headers": [tuple(h) for h in leg["headers"]],
                        "body": lbody,
                        "truncated": bool(leg["truncated"] or leg["body"]["cut"]),
                        "withheld": lbody.startswith(b"[body withheld"),
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

    def status(self) -> dict[str, object]:
        """For /readyz: is the store reachable, and what was lost or waits."""
        with self._lock:
            waiting = len(self._pending_cmp) + len(self._pending_fields) + \
                len(self._pending_renames)
        return {**self._read.status(), "dropped_samples": self.dropped_samples,
                "write_errors": self.write_errors, "rows_waiting": waiting}

    def __enter__(self) -> DiffStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._connect()
        except Exception:
            self.write_errors += 1
            raise
        last_retention = 0.0
        last_marks = 0.0
        if self.shared:  # the fleet's marks before the first comparison is filed, not after it
            try:
                self._sync_marks(conn)
                last_marks = time.monotonic()
            except self._db_error:
                conn.rollback()
                self.write_errors += 1
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
                    if self.path is not None:
                        self._check_reserve()
                    self._write(conn, samples)
                    now = self._clock()
                    if self.shared and (self._pending_marks or
                                        time.monotonic() - last_marks >= MARK_EVERY):
                        self._sync_marks(conn)
                        last_marks = time.monotonic()
                    if now - last_retention >= _RETENTION_EVERY:
                        self._prune(conn, now)
                        last_retention = now
                except self._db_error:
                    conn.rollback()
                    self.write_errors += 1
                except _BelowReserve:  # nothing written: counters wait, samples are not kept
                    self.dropped_samples += len(samples)
                    self.write_errors += 1
                for w in waiters:
                    w.set()
                if stop:
                    return
        finally:
            conn.close()

    def _check_reserve(self) -> None:
        """The diff store's file sits in state_dir: below the disk reserve it writes nothing
        (the last space is for state.json and the audit log a rollback needs)."""
        assert self.path is not None
        try:
            check_reserve(self.path.parent, "the diff store",
                          "comparison counts wait in memory, samples are dropped")
        except OSError as exc:
            if self.reserve_error is None:
                log.warning("diff store: below the disk reserve, writing nothing", error=str(exc))
            self.reserve_error = str(exc)
            raise _BelowReserve(str(exc)) from None
        if self.reserve_error is not None:
            log.info("diff store: space is back above the disk reserve; writing again")
            self.reserve_error = None

    def _sync_marks(self, conn: SqliteDb | PostgresDb) -> None:
        """Write the step marks of this process's replica; read the fleet's."""
        with self._lock:
            marks = dict(self._pending_marks)
        if marks:
            conn.executemany(
                "INSERT INTO step_marks (route, step, replica, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (route) DO UPDATE SET step = excluded.step, "
                "replica = excluded.replica, updated = excluded.updated "
                "WHERE step_marks.step < excluded.step",
                sorted((r, st, rep, time.time()) for r, (st, rep) in marks.items()))
            with self._lock:
                for r, v in marks.items():
                    if self._pending_marks.get(r) == v:
                        del self._pending_marks[r]
        self._marks = {r: int(st) for r, st in
                       conn.execute("SELECT route, step FROM step_marks").fetchall()}

    def _write(self, conn: SqliteDb | PostgresDb, samples: list[_Sample]) -> None:
        """Write the samples and then the pending counters, `BATCH_ROWS` rows a transaction."""
        rows = []
        kept: list[_Sample] = []
        for s in samples:
            try:
                rows.append((s.window[0], s.window[1], s.window[2], s.ts, s.request.method,
                             _sample_json(s)))
                kept.append(s)
            except Exception:  # a sample that cannot be redacted is never written
                self.dropped_samples += 1
        for i in range(_BATCHES_PER_CYCLE):
            with self._lock:
                budget = BATCH_ROWS
                budget -= _take(self._pending_cmp, budget, self._inflight_cmp)
                budget -= _take(self._pending_fields, budget, self._inflight_fields)
                budget -= _take(self._pending_renames, budget, self._inflight_renames)
                sigs: dict[tuple[str, str], tuple[str, bool]] = {}
                _take(self._pending_sigs, max(budget, 0), sigs)
                cmp_items = list(self._inflight_cmp.items())
                field_items = list(self._inflight_fields.items())
                rename_items = list(self._inflight_renames.items())
            if not (cmp_items or field_items or rename_items or sigs) and (i or not rows):
                return
            try:
                self._commit(conn, cmp_items, field_items, rename_items, sigs,
                             rows if i == 0 else [], kept if i == 0 else [])
            except self._db_error:
                if i == 0:
                    self.dropped_samples += len(kept)  # counters wait; samples are not kept
                raise

    def _commit(self, conn: SqliteDb | PostgresDb, cmp_items: list, field_items: list,
                rename_items: list, sigs: dict, rows: list, kept: list[_Sample]) -> None:
        now = self._clock()
        cmp_rows: dict[Window, list[int]] = {}
        for (w, col), n in cmp_items:
            cmp_rows.setdefault(w, [0, 0, 0])[_COLS.index(col)] += n
        # Rows in key order: several writers (replicas' comparers) sharing one PostgreSQL
        # store then lock the same rows in the same order and never deadlock.
        try:
            conn.begin()
            conn.executemany(
                "INSERT INTO comparisons (route, step, rules, compared, mismatched, errors, "
                "updated, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (route, step, rules) DO UPDATE SET "
                "compared = comparisons.compared + excluded.compared, "
                "mismatched = comparisons.mismatched + excluded.mismatched, "
                "errors = comparisons.errors + excluded.errors, updated = excluded.updated",
                sorted((*w, c, m, e, now, now) for w, (c, m, e) in cmp_rows.items()),
            )
            conn.executemany(
                "INSERT INTO fields (route, step, rules, path, kind, count, elements, "
                "of_elements, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (route, step, rules, path, kind) DO UPDATE SET "
                "count = fields.count + excluded.count, "
                "elements = fields.elements + excluded.elements, "
                "of_elements = fields.of_elements + excluded.of_elements, "
                "updated = excluded.updated",
                sorted((*w, p, k, c, e, o, now) for (w, p, k), (c, e, o) in field_items),
            )
            conn.executemany(
                "INSERT INTO renames (route, step, rules, missing, extra, count, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route, step, rules, missing, extra) "
                "DO UPDATE SET count = renames.count + excluded.count, "
                "updated = excluded.updated",
                sorted((*w, m, x, n, now) for (w, m, x), n in rename_items),
            )
            conn.executemany(
                "INSERT INTO field_values (route, path, sig, varies) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (route, path) DO UPDATE SET varies = {conn.GREATEST}("
                "field_values.varies, excluded.varies, "
                "CAST(field_values.sig <> excluded.sig AS INTEGER))",
                sorted((r, p, sig, int(v)) for (r, p), (sig, v) in sigs.items()),
            )
            self._insert_samples(conn, rows, kept)
            with self._read_lock:
                conn.commit()
                with self._lock:
                    self._inflight_cmp.clear()
                    self._inflight_fields.clear()
                    self._inflight_renames.clear()
        except self._db_error:
            conn.rollback()
            with self._lock:  # keep the counts: they are retried with the next batch
                self._pending_cmp.update(self._inflight_cmp)
                _merge_fields(self._pending_fields, self._inflight_fields)
                self._pending_renames.update(self._inflight_renames)
                self._inflight_cmp.clear()
                self._inflight_fields.clear()
                self._inflight_renames.clear()
            raise

    def _insert_samples(self, conn: SqliteDb | PostgresDb, rows: list[tuple],
                        kept: list[_Sample]) -> None:
        """Insert samples with their per-field roles; keep the newest LATEST_SAMPLES "latest"
        per field, and at most max_samples_per_route samples no field refers to."""
        touched: set[tuple[Window, str, str]] = set()
        for row, sample in zip(rows, kept, strict=True):
            sid = conn.insert_id("INSERT INTO samples (route, step, rules, ts, method, data) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", row)
            conn.executemany(
                "INSERT INTO sample_refs (route, step, rules, path, kind, role, "
                "sample_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(*sample.window, p, k, role, sid) for p, k, role in sample.roles])
            touched.update((sample.window, p, k) for p, k, role in sample.roles
                           if role == "latest")
        dropped: set[int] = set()
        for w, path, kind in touched:
            old = [sid for (sid,) in conn.execute(
                "SELECT sample_id FROM sample_refs WHERE route=? AND step=? AND rules=? AND "
                "path=? AND kind=? AND role='latest' ORDER BY sample_id DESC LIMIT ? OFFSET ?",
                (*w, path, kind, NO_LIMIT, LATEST_SAMPLES)).fetchall()]
            if old:
                conn.executemany(
                    "DELETE FROM sample_refs WHERE route=? AND step=? AND rules=? AND path=? AND "
                    "kind=? AND role='latest' AND sample_id=?",
                    [(*w, path, kind, sid) for sid in old])
                dropped.update(old)
        if dropped:
            conn.executemany(
                "DELETE FROM samples WHERE id=? AND NOT EXISTS "
                "(SELECT 1 FROM sample_refs WHERE sample_id=?)", [(i, i) for i in dropped])
        for route in {r[0] for r in rows}:
            self._cap_samples(conn, route)

    def _cap_samples(self, conn: SqliteDb | PostgresDb, route: str) -> None:
        conn.execute(
            "DELETE FROM samples WHERE route=? AND id <= (SELECT id FROM samples "
            "WHERE route=? ORDER BY id DESC LIMIT 1 OFFSET ?) AND NOT EXISTS "
            "(SELECT 1 FROM sample_refs WHERE sample_id=samples.id)",
            (route, route, self.max_samples_per_route),
        )

    def _prune(self, conn: SqliteDb | PostgresDb, now: float) -> None:
        cutoff = now - self.retention
        conn.begin()
        if not conn.maintenance_lock():  # another replica prunes the shared store now
            conn.commit()
            return
        conn.execute("DELETE FROM samples WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM sample_refs WHERE NOT EXISTS "
                     "(SELECT 1 FROM samples WHERE id=sample_refs.sample_id)")
        routes = [r for (r,) in conn.execute("SELECT DISTINCT route FROM samples").fetchall()]
        for route in routes:
            windows = conn.execute(
                "SELECT step, rules FROM sample_refs WHERE route=? GROUP BY step, rules "
                "ORDER BY MAX(sample_id) DESC LIMIT ? OFFSET ?",
                (route, NO_LIMIT, WINDOWS_SAMPLED)).fetchall()
            conn.executemany("DELETE FROM sample_refs WHERE route=? AND step=? AND rules=?",
                             [(route, s, r) for s, r in windows])
            self._cap_samples(conn, route)
        # Counters not updated for the retention period go, totals included, except each
        # route's newest step (the gate's current evidence, however quiet).
        newest = ("(SELECT MAX(step) FROM comparisons c WHERE c.route = {t}.route "
                  "AND c.step >= 0)")
        for table in ("comparisons", "fields", "renames"):
            conn.execute(f"DELETE FROM {table} WHERE updated < ? AND "
                         f"NOT COALESCE(step = {newest.format(t=table)}, FALSE)", (cutoff,))
        cuts = conn.execute(
            "SELECT route, (SELECT step FROM comparisons c WHERE c.route = r.route AND "
            "c.step >= 0 GROUP BY c.step ORDER BY c.step DESC LIMIT 1 OFFSET ?) "
            "FROM (SELECT DISTINCT route FROM comparisons) r",
            (STEPS_KEPT - 1,)).fetchall()
        for route, oldest_kept in cuts:
            if oldest_kept is not None:
                for table in ("fields", "renames", "comparisons"):
                    conn.execute(f"DELETE FROM {table} WHERE route = ? AND step >= 0 AND "
                                 f"step < ?", (route, oldest_kept))
        for table in ("fields", "renames"):
            conn.execute(f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM comparisons c "
                         f"WHERE c.route = {table}.route AND c.step = {table}.step AND "
                         f"c.rules = {table}.rules)")
        conn.execute("DELETE FROM field_values WHERE NOT EXISTS (SELECT 1 FROM fields f WHERE "
                     "f.route = field_values.route AND f.path = field_values.path)")
        with self._read_lock:
            conn.commit()
            with self._lock:
                self._admitted.clear()  # rows may be gone: reload the sets from disk


def _rename_hints(renames: Counter[tuple[str, str]], fields: dict[tuple[str, str], list[int]]
                  ) -> dict[tuple[str, str], dict[str, object]]:
    """A missing and an extra field whose values were equal, in the same objects, in nearly
    all the comparisons where either differed: a likely rename."""
    out: dict[tuple[str, str], dict[str, object]] = {}
    for (missing, extra), n in renames.most_common():
        m = fields.get((missing, "missing"))
        x = fields.get((extra, "extra"))
        if m is None or x is None or n < RENAME_SHARE * max(m[0], x[0]):
            continue
        if (missing, "missing") in out or (extra, "extra") in out:
            continue
        out[(missing, "missing")] = {"renamed_to": extra, "rename_count": n}
        out[(extra, "extra")] = {"renamed_from": missing, "rename_count": n}
    return out


def _sample_json(s: _Sample) -> str:
    red = s.redactor
    req = red.redact_request(s.request)
    leg = red.redact_exchange(s.legacy)
    tgt = red.redact_exchange(s.target)
    diffs = s.comparison.differences
    data: dict[str, Any] = {
        "request": {
            "method": req.method,
            "path": req.path,
            "headers": [list(h) for h in req.headers],
            "body": _body_json(req.body),
        },
        "legacy": _exchange_json(leg),
        "target": _exchange_json(tgt),
        "differences": [red.redact_difference(d).to_dict() for d in diffs[:DIFFS_PER_SAMPLE]],
        "more_differences": max(0, len(diffs) - DIFFS_PER_SAMPLE) + s.comparison.overflow,
        "noise": list(s.comparison.noise[:DIFFS_PER_SAMPLE]),
        "body_compared": s.comparison.body_compared,
    }
    if req.codings:
        data["request"]["decoded"] = list(req.codings)
    return json.dumps(data, ensure_ascii=False, default=str)


def _present(d: dict[str, Any]) -> dict[str, object]:
    """A stored sample as shown by the diffs view: bodies as text."""

    def body(b: dict[str, object]) -> str:
        if "base64" in b:
            return f"<{b['size']} bytes, not UTF-8>"
        text = str(b.get("text", ""))
        return text + (f"... ({b['size']} bytes)" if b.get("cut") else "")

    req = dict(d["request"])
    req["body"] = body(req["body"])
    out: dict[str, object] = {"request": req}
    for side in ("legacy", "target"):
        ex = dict(d[side])
        ex["body"] = body(ex["body"])
        out[side] = ex
    out["differences"] = d["differences"]
    out["more_differences"] = d.get("more_differences", 0)
    out["noise"] = d.get("noise", [])
    out["body_compared"] = d.get("body_compared", True)
    return out
