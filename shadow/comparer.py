"""The comparer: a separate process that decodes, diffs, de-noises, redacts and stores shadow pairs.

Why a process (not a thread or the event loop): comparing two JSON answers that differ costs
100 µs to milliseconds of pure Python. On the data plane's loop that delays every client; in a
thread it still holds the GIL the loop needs. A child process with its own GIL, started at a
lower CPU priority (`nice`), only takes CPU the proxy leaves, and when it falls behind the pipe
feeding it fills and the data plane sheds pairs (counted `comparer_busy`) instead of queueing them.

Wire protocol (both ways: a 4-byte big-endian length, then a pickled tuple; the pipe is private
between one data plane and the child it spawned):

  data plane -> comparer
    ("config", store, max_samples_per_route, retention_days, {route: CompareSpec})
                                    # store: the SQLite path or `shadow.sqldb.locator`
    ("pair", route, step, served_by_target, method, target, req_headers, req_body,
             primary, other, noise)  # primary/other/noise: (status, headers, body, truncated)
    ("counts", [(route, step, result, n), ...])  # counted on the data plane: "match" for
                                                # byte-identical pairs, "error" for mirrors
                                                # whose other side did not answer
    ("flush", token)
  comparer -> data plane
    ("results", [(route, step, result, n), ...])  # result: match|mismatch|error
    ("skipped", [(route, reason, n), ...])  # pairs not compared (a reason in SKIP_REASONS)
    ("store", [(event, n), ...])  # the diff store: samples_dropped, write_failed (increments)
    ("flushed", token)  # every frame before the flush is compared and on disk

Headers arrive as the data plane has them (bytes); decoding happens here.

Stopping: EOF on stdin (the data plane closed the pipe) or SIGTERM (systemd stopping the whole
group, or the data plane giving up waiting): the comparer compares what it has already read
(and, on SIGTERM, what is already in the pipe, for at most `DRAIN_SECONDS`), writes its counters
and samples, and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import time
from collections import Counter
from typing import Any

import structlog

from shadow.decode import decoded
from shadow.diff import Comparator
from shadow.model import Comparison, Exchange, RequestRecord
from shadow.noise import NoiseModel
from shadow.store import DiffStore

__all__ = ["DECODED_TOO_LARGE", "SKIP_REASONS", "FrameReader", "encode", "main"]

log = structlog.get_logger("strangler.comparer")

RESULTS_INTERVAL = 0.05  # how often counted results go back to the data plane
DRAIN_SECONDS = 2.0  # on SIGTERM: longest spent on frames already in the pipe
_LEN = struct.Struct("!I")

# Why the comparer skips a pair (`strangler_shadow_skipped_total{reason}`, sent back in
# "skipped" frames): every reason it can send, so /metrics pre-creates their series.
DECODED_TOO_LARGE = "decoded_too_large"  # a body past max_decoded once decoded: not expanded
SKIP_REASONS: tuple[str, ...] = (DECODED_TOO_LARGE,)


def encode(obj: object) -> tuple[bytes, bytes]:
    """A frame as (length prefix, payload): written with writelines, no join copy."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(payload)), payload


class FrameReader:
    """Reassembles frames from a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


def _exchange(raw: tuple) -> Exchange:
    status, headers, body, truncated = raw
    return Exchange(
        status,
        tuple((n.decode("latin-1").lower(), v.decode("latin-1").strip()) for n, v in headers),
        body,
        truncated,
    )


class Comparer:
    """Compares pairs and records them; owns the noise models and the diff store writer."""

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self.store: DiffStore | None = None
        self.comparators: dict[str, tuple[Any, Comparator]] = {}
        self.noise: dict[str, NoiseModel] = {}
        self.results: Counter[tuple[str, int, str]] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()
        self.last_sent = time.monotonic()
        self.store_sent: dict[str, int] = {}

    def handle(self, frame: tuple) -> None:
        kind = frame[0]
        if kind == "pair":
            self.pair(*frame[1:])
        elif kind == "counts":
            for route, step, result, n in frame[1]:
                entry = self.comparators.get(route)
                if self.store is not None:
                    self.store.record_counts(route, step, result, n,
                                             rules=entry[1].rules if entry else "")
                if result == "match":
                    self._noise(route).observe_match(n)
        elif kind == "config":
            self.configure(*frame[1:])
        elif kind == "flush":
            self.send_results()
            if self.store is not None:
                self.store.flush()
            self.send(("flushed", frame[1]))

    def configure(self, store: str | dict, max_samples: int, retention_days: float,
                  routes: dict[str, Any]) -> None:
        if self.store is None:  # `store`: the SQLite path, or the shared store's locator
            self.store = DiffStore(store, max_samples, retention_days)
        fresh = {}
        for name, spec in routes.items():
            old = self.comparators.get(name)
            fresh[name] = old if old is not None and old[0] == spec else (spec, Comparator(spec))
        self.comparators = fresh

    def _noise(self, route: str) -> NoiseModel:
        model = self.noise.get(route)
        if model is None:
            model = self.noise[route] = NoiseModel()
        return model

    def pair(self, route: str, step: int, served_by_target: bool, method: bytes, target: bytes,
             req_headers: list, req_body: bytes, primary: tuple, other: tuple,
             noise: tuple | None) -> None:
        entry = self.comparators.get(route)
        if entry is None:  # the route went away in a reload: nothing to compare it with
            return
        comparator = entry[1]
        limit = comparator.spec.max_decoded
        try:
            # Decoded once, here: the comparison, redaction and the store see the same bytes.
            primary_ex = decoded(_exchange(primary), limit)
            other_ex = decoded(_exchange(other), limit)
            noise_ex = decoded(_exchange(noise), limit) if noise else None
            if any(ex is not None and ex.problem == "too_large"
                   for ex in (primary_ex, other_ex, noise_ex)):
                self.skipped[(route, DECODED_TOO_LARGE)] += 1  # a bomb is not expanded
                return
            legacy, tgt = (other_ex, primary_ex) if served_by_target else (primary_ex, other_ex)
            cmp = comparator.compare(legacy, tgt)
            noise_cmp = comparator.compare(legacy, noise_ex) if noise_ex else None
            result: Comparison = self._noise(route).observe(cmp, noise_cmp)
        except Exception:
            log.exception("shadow comparison failed", route=route)
            self.results[(route, step, "error")] += 1
            if self.store is not None:
                self.store.record_counts(route, step, "error", rules=comparator.rules)
            return
        self.results[(route, step, result.result)] += 1
        if self.store is not None:
            request = decoded(RequestRecord(
                method.decode("latin-1"),
                target.decode("latin-1"),
                tuple((n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in req_headers),
                req_body,
            ), limit)
            self.store.record(route, step, request, legacy, tgt, result, comparator.redactor,
                              rules=comparator.rules, max_fields=comparator.spec.max_fields)

    def send(self, obj: object) -> None:
        head, payload = encode(obj)
        data = memoryview(head + payload)
        while data:
            n = os.write(self.out_fd, data)
            data = data[n:]

    def send_results(self) -> None:
        self.last_sent = time.monotonic()
        self._send_store_events()
        if self.skipped:
            skipped = [(r, why, n) for (r, why), n in self.skipped.items()]
            self.skipped.clear()
            self.send(("skipped", skipped))
        if not self.results:
            return
        items = [(r, s, x, n) for (r, s, x), n in self.results.items()]
        self.results.clear()
        self.send(("results", items))

    def _send_store_events(self) -> None:
        """What the store lost or failed to write since the last report (counted, never
        raised: a store that is down costs samples, its counters wait)."""
        store = self.store
        if store is None:
            return
        now = {"samples_dropped": store.dropped_samples, "write_failed": store.write_errors}
        events = [(k, v - self.store_sent.get(k, 0)) for k, v in now.items()
                  if v > self.store_sent.get(k, 0)]
        if events:
            self.store_sent = now
            self.send(("store", events))

    def close(self) -> None:
        """Report the last results (the data plane may be gone) and write the store."""
        try:
            self.send_results()
        finally:
            if self.store is not None:
                self.store.close()


def serve(in_fd: int, out_fd: int) -> None:
    comparer = Comparer(out_fd)
    reader = FrameReader()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_term = signal.signal(signal.SIGTERM, lambda *_: None)  # noticed through wake_r
    try:
        while True:
            wait = None
            if comparer.results or comparer.skipped:
                wait = max(0.0, comparer.last_sent + RESULTS_INTERVAL - time.monotonic())
            ready, _, _ = select.select([in_fd, wake_r], [], [], wait)
            if wake_r in ready:
                if signal.SIGTERM in os.read(wake_r, 64):
                    _drain(in_fd, reader, comparer)
                    return
            if in_fd in ready:
                data = os.read(in_fd, 1 << 20)
                if not data:
                    return  # the data plane closed the pipe: finish and exit
                for frame in reader.feed(data):
                    comparer.handle(frame)
            if ((comparer.results or comparer.skipped)
                    and time.monotonic() - comparer.last_sent >= RESULTS_INTERVAL):
                comparer.send_results()
    finally:
        with contextlib.suppress(OSError):
            comparer.close()
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGTERM, old_term)
        os.close(wake_r)
        os.close(wake_w)


def _drain(in_fd: int, reader: FrameReader, comparer: Comparer) -> None:
    """SIGTERM: handle the frames already in the pipe, for at most DRAIN_SECONDS."""
    log.info("comparer stopping (SIGTERM): writing what it has")
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([in_fd], [], [], 0)
        if not ready:
            return
        data = os.read(in_fd, 1 << 20)
        if not data:
            return
        for frame in reader.feed(data):
            comparer.handle(frame)
            if time.monotonic() >= deadline:
                return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fmt = args[0] if args else "json"
    level = args[1] if len(args) > 1 else "info"
    nice = int(args[2]) if len(args) > 2 else 10
    from proxy.config import logsetup

    logsetup.configure(fmt, level, role="comparer")  # named after its data plane
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    # The data plane talks on our stdin/stdout; nothing else may write to stdout.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        serve(0, out_fd)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
