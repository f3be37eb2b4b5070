"""The fleet's audit trail in PostgreSQL (`store.backend: postgres`): one hash chain that every
replica appends to.

An entry is the file log's (`proxy.control.audit`: seq, time, actor, action, route, from, to,
reason, evidence, prev) plus `replica` (who acted) and `uid` (its identity from the moment it is
written). `prev` is the SHA-256 of the previous entry's line, whichever replica wrote it; `seq`
counts the fleet's entries. The line's exact text is stored, so `verify` recomputes every hash.

Appends are serialised across the fleet by a row lock on `audit_head` (the newest seq and hash,
read `FOR UPDATE` in the appending transaction): two replicas can never chain to the same entry,
so the chain has no fork and no gap. The head also anchors the chain: deleting or editing the
last entries is caught, as the file log's anchor does.

Never in the way of a change: `append` writes the entry to this replica's outbox
(`proxy.control.outbox`, fsynced) and returns; a background thread ships the outbox to the
database in order, in batches (one transaction, one lock hold per batch). Callers that want the
entry's place in the chain `await settle(entry)`, which waits a bounded time and never when the
store is known to be down: the entry then stays `pending` (no seq, no hash yet) and joins the
chain, in this replica's order, when the database is back. `verify` reports how many entries
wait on this replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog

from proxy.config.spec import StoreSpec
from proxy.control.audit import GENESIS, VerifyResult, encode
from proxy.control.outbox import Outbox
from shadow.pg import Link, StoreUnavailable

log = structlog.get_logger("strangler.audit")

BATCH = 200  # entries per transaction
SETTLE_TIMEOUT = 1.0  # how long a change's answer waits for its entry's place in the chain
SLOW = 1.0  # an operation running this long: the store counts as slow, nobody waits for it
CLOSE_TIMEOUT = 3.0  # at shutdown: how long the outbox may still be shipped
_CHAINED_KEPT = 4096


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def chain_rows(batch: list[dict], seq: int, prev: str, present: dict[str, str]
               ) -> tuple[list[tuple], list[dict], int, str]:
    """Place `batch` after (seq, prev): the rows to insert, the chained entries (those whose uid
    is already in the trail as they are there), and the new head."""
    rows: list[tuple] = []
    out: list[dict] = []
    for content in batch:
        uid = content["uid"]
        if uid in present:
            out.append(json.loads(present[uid]))
            continue
        seq += 1
        entry = {**content, "seq": seq, "prev": prev}
        line = encode(entry).decode()
        prev = _line_hash(line)
        rows.append((seq, uid, entry.get("route"), str(entry.get("replica", "")), line, prev))
        out.append(entry)
    return rows, out, seq, prev


def append_rows(conn: Any, batch: list[dict]) -> list[dict]:
    """One transaction: lock the head, chain `batch` after it, move the head. Entries whose uid
    is already in the trail are not added again."""
    conn.execute("BEGIN")
    try:
        seq, prev = conn.execute(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE").fetchone()
        present = dict(conn.execute(
            "SELECT uid, line FROM audit_entries WHERE uid = ANY(%s)",
            ([c["uid"] for c in batch],)).fetchall())
        rows, out, seq, prev = chain_rows(batch, seq, prev, present)
        if rows:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO audit_entries (seq, uid, route, replica, line, hash) "
                                "VALUES (%s, %s, %s, %s, %s, %s)", rows)
            conn.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (seq, prev))
        conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.execute("ROLLBACK")
        raise
    return out


class PostgresAudit:
    """The `AuditTrail` of a replica that shares PostgreSQL with the others."""

    def __init__(self, spec: StoreSpec, dsn: str, state_dir: Path, replica: str) -> None:
        self.replica = replica
        self.outbox = Outbox(state_dir / "audit.outbox")
        self.link = Link(spec, dsn, f"strangler-audit {replica}")
        self.reader = Link(spec, dsn, f"strangler-audit-read {replica}")
        self._cond = threading.Condition()
        self._chained: OrderedDict[str, dict] = OrderedDict()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._busy_since: float | None = None
        self._stopping = False
        self.shipped = 0
        self._thread = threading.Thread(target=self._run, name="strangler-audit-shipper",
                                        daemon=True)
        self._thread.start()

    # -- AuditTrail ------------------------------------------------------------------------
    def append(self, action: str, actor: str, reason: str, route: str | None = None,
               before: Any = None, after: Any = None, evidence: Any = None,
               **extra: Any) -> dict:
        """Write the entry to the outbox (fsynced) and hand it to the shipper. The returned
        entry is `pending` (no seq or prev yet); `settle` gives its place in the chain."""
        now = time.time()
        content = {
            "uid": uuid.uuid4().hex,
            "replica": self.replica,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "actor": actor,
            "action": action,
            "route": route,
            "from": before,
            "to": after,
            "reason": reason,
            "evidence": evidence,
            **extra,
        }
        # JSON round trip: what is shipped later is exactly what was acknowledged now
        content = json.loads(json.dumps(content, default=str))
        self.outbox.add(content)
        with self._cond:
            self._cond.notify()
        return {**content, "seq": None, "prev": None, "pending": True}

    async def settle(self, entry: dict | None, timeout: float = SETTLE_TIMEOUT) -> dict | None:
        """The entry with its place in the fleet's chain, once shipped; the pending entry when
        that takes longer than `timeout` or the store is down (then without waiting)."""
        if entry is None or not entry.get("pending"):
            return entry
        uid = entry["uid"]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._cond:
            done = self._chained.get(uid)
            if done is not None:
                return done
            if not self._waiting_helps():
                return entry
            self._waiters.setdefault(uid, []).append((loop, fut))
        try:
            done = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            done = None
        finally:
            with self._cond:
                waiters = self._waiters.get(uid)
                if waiters is not None:
                    waiters[:] = [w for w in waiters if w[1] is not fut]
                    if not waiters:
                        del self._waiters[uid]
        return done if done is not None else entry

    def _waiting_helps(self) -> bool:
        """Caller holds `_cond`."""
        if not self.link.up:
            return False
        busy = self._busy_since
        return busy is None or time.monotonic() - busy < SLOW

    def entries(self, route: str | None = None, limit: int | None = None) -> list[dict]:
        """Newest first: this replica's entries still waiting in its outbox (marked pending),
        then the fleet's trail. StoreUnavailable when the database cannot be read."""
        pending = [{**e, "seq": None, "prev": None, "pending": True}
                   for e in reversed(self.outbox.pending())
                   if route is None or e.get("route") == route]
        if limit is not None and len(pending) >= limit:
            return pending[:limit]
        want = None if limit is None else limit - len(pending)
        sql = "SELECT line FROM audit_entries {where} ORDER BY seq DESC {limit}"
        args: list[Any] = []
        where = ""
        if route is not None:
            where = "WHERE route = %s"
            args.append(route)
        lim = ""
        if want is not None:
            lim = "LIMIT %s"
            args.append(want)
        with self.reader.lock:
            conn = self.reader.conn()
            try:
                rows = conn.execute(sql.format(where=where, limit=lim), args).fetchall()
            except Exception as exc:
                raise self.reader.failed(exc) from None
        shipped = {e["uid"] for e in pending}
        return pending + [e for e in (json.loads(line) for (line,) in rows)
                          if e.get("uid") not in shipped]

    def wrote_here(self) -> bool:
        return self.outbox.ever_written()

    def verify(self) -> VerifyResult:
        """Check the fleet's chain from its first entry to the head (StoreUnavailable when the
        database cannot be read)."""
        with self.reader.lock:
            conn = self.reader.conn()
            try:
                result = verify_chain(conn)
            except StoreUnavailable:
                raise
            except Exception as exc:
                raise self.reader.failed(exc) from None
        waiting = len(self.outbox)
        if waiting:
            result = VerifyResult(result.ok, result.entries, result.bad_line,
                                  f"{result.message}; {waiting} entr"
                                  f"{'y' if waiting == 1 else 'ies'} of this replica wait in "
                                  "its outbox (the store was unavailable)", result.suspect_lines)
        return result

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For /readyz and /metrics."""
        out: dict[str, Any] = {"up": self.link.up, "buffered": len(self.outbox),
                               "shipped": self.shipped}
        if self.link.error is not None:
            out["error"] = self.link.error
            out["down_since"] = self.link.down_since
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy >= SLOW:
            out["slow_seconds"] = round(time.monotonic() - busy, 1)
        return out

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Ship what is left for at most `timeout` seconds; the rest stays in the outbox for
        the next start."""
        deadline = time.monotonic() + timeout
        while len(self.outbox) and self.link.up and time.monotonic() < deadline:
            with self._cond:
                self._cond.notify()
            time.sleep(0.02)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        if len(self.outbox):
            log.warning("audit entries left in the outbox (shipped at the next start)",
                        entries=len(self.outbox), file=str(self.outbox.path))
        self.link.close()
        self.reader.close()

    # -- the shipper ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not len(self.outbox):
                    self._cond.wait(1.0)
                if self._stopping:
                    return
            batch = self.outbox.pending(BATCH)
            try:
                with self.link.lock:
                    self._busy_since = time.monotonic()
                    try:
                        conn = self.link.conn()
                        chained = append_rows(conn, batch)
                    except StoreUnavailable:
                        raise
                    except Exception as exc:
                        raise self.link.failed(exc) from None
                    finally:
                        self._busy_since = None
            except StoreUnavailable:
                self._release_waiters()
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(self.link.retry)
                continue
            self.outbox.forget({c["uid"] for c in batch})
            self.shipped += len(chained)
            self._resolve(chained)

    def _resolve(self, chained: list[dict]) -> None:
        with self._cond:
            for entry in chained:
                uid = entry.get("uid")
                self._chained[uid] = entry
                for loop, fut in self._waiters.pop(uid, ()):
                    loop.call_soon_threadsafe(_set, fut, entry)
            while len(self._chained) > _CHAINED_KEPT:
                self._chained.popitem(last=False)

    def _release_waiters(self) -> None:
        """The store is down: nobody waits for an entry's place in the chain."""
        with self._cond:
            waiters, self._waiters = self._waiters, {}
        for lst in waiters.values():
            for loop, fut in lst:
                loop.call_soon_threadsafe(_set, fut, None)


def _set(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def verify_chain(conn: Any) -> VerifyResult:
    """Walk the trail in seq order: every entry holds the hash of the one before it, seq has no
    gap, each stored hash is its line's, imported segments chain as they did in their file,
    and the head names the last entry."""
    prev, count = GENESIS, 0
    segments: dict[str, str] = {}  # imported source -> hash of its last line seen
    with conn.transaction(), conn.cursor(name="strangler_verify") as cur:
        cur.itersize = 2000
        cur.execute("SELECT seq, uid, line, hash FROM audit_entries ORDER BY seq")
        for seq, uid, line, stored in cur:
            expected = count + 1
            if seq != expected:
                gone = f"entry {expected}" if seq == expected + 1 else \
                    f"entries {expected}-{seq - 1}"
                return VerifyResult(False, count, expected, f"{gone} deleted (the trail jumps "
                                    f"from {count} to {seq})", (expected,))
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except ValueError:
                return VerifyResult(False, count, seq, f"entry {seq} is not valid JSON: it was "
                                    "edited", (seq,))
            digest = _line_hash(line)
            if entry.get("prev") != prev:
                return VerifyResult(False, count, seq, f"entry {seq} does not chain to entry "
                                    f"{seq - 1}: entry {seq - 1} was edited, or entry {seq} "
                                    "was altered", tuple(n for n in (seq - 1, seq) if n >= 1))
            if entry.get("seq") != seq or entry.get("uid") != uid or digest != stored:
                return VerifyResult(False, count, seq, f"entry {seq} was edited (its line does "
                                    "not match its row)", (seq,))
            problem = _imported_problem(entry, segments)
            if problem:
                return VerifyResult(False, count, seq, f"entry {seq}: {problem}", (seq,))
            prev = digest
            count += 1
    head_seq, head_hash = conn.execute(
        "SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if head_seq > count:
        return VerifyResult(False, count, count + 1, f"the trail ends at entry {count} but "
                            f"{head_seq} entries were written: the last entries were deleted",
                            (count + 1,))
    if head_seq < count or head_hash != prev:
        return VerifyResult(False, count, count, f"entry {count} (the last entry) was edited "
                            "or added outside strangler (the head does not name it)", (count,))
    return VerifyResult(True, count, message=f"{count} entries, chain intact")


def _imported_problem(entry: dict, segments: dict[str, str]) -> str | None:
    """An entry imported from a file trail (`strangler store migrate`) carries the file's line:
    those lines must still chain from the file's genesis, in order, per source."""
    imported = entry.get("imported")
    if not isinstance(imported, dict):
        return None
    source, line = str(imported.get("source")), str(imported.get("line", ""))
    try:
        original = json.loads(line)
    except ValueError:
        return "its imported line is not valid JSON"
    if imported.get("hash") not in (None, _line_hash(line)):
        return "its imported line does not match the hash it was imported with"
    if original.get("prev") != segments.get(source, GENESIS):
        return f"its imported line (seq {original.get('seq')} of {source}) does not chain to " \
               "the line imported before it"
    segments[source] = _line_hash(line)
    return None
