"""The comparer: a separate process that decodes, diffs, de-noises, redacts and stores shadow pairs.

Why a process (not a thread or the event loop): comparing two JSON answers that differ costs
100 µs to milliseconds of pure Python. On the data plane's loop that delays every client; in a
thread it still holds the GIL the loop needs. A child process with its own GIL, started at a
lower CPU priority (`nice`), only takes CPU the proxy leaves, and when it falls behind the pipe
feeding it fills and the data plane sheds pairs (counted `comparer_busy`) instead of queueing them.

Wire protocol (both ways: a 4-byte big-endian length, then a pickled tuple; the pipe is private
between one data plane and the child it spawned):

  data plane -> comparer
    ("config", store_path, max_samples_per_route, retention_days, {route: CompareSpec})
    ("pair", route, step, served_by_target, method, target, req_headers, req_body,
             primary, other, noise)  # primary/other/noise: (status, headers, body, truncated)
    ("matches", [(route, step, n), ...])  # byte-identical pairs counted on the data plane
    ("flush", token)
  comparer -> data plane
    ("results", [(route, step, result, n), ...])  # result: match|mismatch|error
    ("flushed", token)  # every frame before the flush is compared and on disk

Headers arrive as the data plane has them (bytes); decoding happens here.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from shadow.diff import Comparator
from shadow.model import Comparison, Exchange, RequestRecord
from shadow.noise import NoiseModel
from shadow.store import DiffStore

__all__ = ["FrameReader", "encode", "main"]

log = structlog.get_logger("strangler.comparer")

RESULTS_INTERVAL = 0.05  # how often counted results go back to the data plane
_LEN = struct.Struct("!I")


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
        self.last_sent = time.monotonic()

    def handle(self, frame: tuple) -> None:
        kind = frame[0]
        if kind == "pair":
            self.pair(*frame[1:])
        elif kind == "matches":
            for route, step, n in frame[1]:
                if self.store is not None:
                    self.store.record_match(route, step, n)
                self._noise(route).observe_match(n)
        elif kind == "config":
            self.configure(*frame[1:])
        elif kind == "flush":
            self.send_results()
            if self.store is not None:
                self.store.flush()
            self.send(("flushed", frame[1]))

    def configure(self, store_path: str, max_samples: int, retention_days: float,
                  routes: dict[str, Any]) -> None:
        if self.store is None:
            self.store = DiffStore(Path(store_path), max_samples, retention_days)
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
        try:
            primary_ex, other_ex = _exchange(primary), _exchange(other)
            legacy, tgt = (other_ex, primary_ex) if served_by_target else (primary_ex, other_ex)
            cmp = comparator.compare(legacy, tgt)
            noise_cmp = comparator.compare(legacy, _exchange(noise)) if noise else None
            result: Comparison = self._noise(route).observe(cmp, noise_cmp)
        except Exception:
            log.exception("shadow comparison failed", route=route)
            self.results[(route, step, "error")] += 1
            return
        self.results[(route, step, result.result)] += 1
        if self.store is not None:
            request = RequestRecord(
                method.decode("latin-1"),
                target.decode("latin-1"),
                tuple((n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in req_headers),
                req_body,
            )
            self.store.record(route, step, request, legacy, tgt, result, comparator.redactor)

    def send(self, obj: object) -> None:
        head, payload = encode(obj)
        data = memoryview(head + payload)
        while data:
            n = os.write(self.out_fd, data)
            data = data[n:]

    def send_results(self) -> None:
        self.last_sent = time.monotonic()
        if not self.results:
            return
        items = [(r, s, x, n) for (r, s, x), n in self.results.items()]
        self.results.clear()
        self.send(("results", items))

    def close(self) -> None:
        self.send_results()
        if self.store is not None:
            self.store.close()


def serve(in_fd: int, out_fd: int) -> None:
    comparer = Comparer(out_fd)
    reader = FrameReader()
    try:
        while True:
            wait = None
            if comparer.results:
                wait = max(0.0, comparer.last_sent + RESULTS_INTERVAL - time.monotonic())
            ready, _, _ = select.select([in_fd], [], [], wait)
            if ready:
                data = os.read(in_fd, 1 << 20)
                if not data:
                    return  # the data plane closed the pipe: finish and exit
                for frame in reader.feed(data):
                    comparer.handle(frame)
            if comparer.results and time.monotonic() - comparer.last_sent >= RESULTS_INTERVAL:
                comparer.send_results()
    finally:
        comparer.close()


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
