"""CPU cost of the comparer process per mismatching pair, in process: `python -m bench.comparer`.

The real `shadow.comparer.Comparer` with its diff store (a temp directory), fed "pair" frames as
the data plane sends them: decode, compare, de-noise, count, sample, redact, write. Two pairs:

- `list120`: a JSON array of 120 accounts (json-server style) where the new service drifted the
  way new services do: `owner` renamed `owner_name` on 12 of them, a few amounts as strings, an
  extra `source_system`, `lines[]` reversed, `updated_at` different everywhere.
- `big64k`: the bench's 64 KiB pair (`bench.servers.big_body`): 1,500 items, every amount differs.
- `randmap20k`: two maps of 20,000 random 12-character keys each (balances keyed by account,
  say), no key in common: 40,000 differences, all but `max_fields` of them counted as `other`.

Prints the process CPU time per pair (min of --rounds), including the store's writer thread
(flushed at the end of each round).

`--store-size N`: instead, N comparisons of a 10,000-element list (every element's `ts`
differs, every 7th has an extra field, values change every time) through the comparer and its
store; prints the store's rows and file size (issue 24.1: bounded for lists of any length).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sqlite3
import string
import tempfile
import time
from pathlib import Path

from bench.servers import big_body
from proxy.config.spec import CompareSpec
from shadow.comparer import Comparer


def accounts(drift: bool, n: int = 120) -> bytes:
    out = []
    for i in range(1, n + 1):
        acc: dict[str, object] = {
            "id": i, "owner": f"Owner {i}", "amount": round(i * 10.5, 2), "currency": "EUR",
            "lines": [{"id": j, "amount": j * 1.25} for j in range(1, 4)],
            "updated_at": f"2026-01-01T00:00:{i % 60:02d}Z",
        }
        if drift:
            if i % 10 == 5:
                acc["owner_name"] = acc.pop("owner")
            if i % 17 == 0:
                acc["amount"] = str(acc["amount"])
            acc["source_system"] = "ledger-svc"
            acc["lines"] = list(reversed(acc["lines"]))  # type: ignore[call-overload]
            acc["updated_at"] = f"2026-02-02T00:00:{i % 60:02d}Z"
        out.append(acc)
    return json.dumps(out).encode()


def random_map(seed: int, n: int = 20_000) -> bytes:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    return json.dumps({"".join(rng.choices(alphabet, k=12)): rng.randrange(1000)
                       for _ in range(n)}).encode()


PAIRS = {
    "list120": (accounts(False), accounts(True)),
    "big64k": (big_body(False), big_body(True)),
    "randmap20k": (random_map(1), random_map(2)),
}
JSON = [(b"content-type", b"application/json")]


def frame(i: int, legacy: bytes, target: bytes) -> tuple:
    return ("pair", "r", 1, False, b"GET", b"/accounts?i=%d" % i, [(b"accept", b"*/*")], b"",
            (200, JSON, legacy, False), (200, JSON, target, False), None)


def run_round(pairs: int, legacy: bytes, target: bytes, directory: Path) -> float:
    comparer = Comparer(out_fd=-1)
    comparer.send_results = lambda: None  # type: ignore[method-assign]
    comparer.handle(("config", str(directory / "diffs.sqlite3"), 200, 7.0, {"r": CompareSpec()}))
    gc.collect()
    t0 = time.process_time()
    for i in range(pairs):
        comparer.handle(frame(i, legacy, target))
    assert comparer.store is not None
    comparer.store.flush()
    cpu = time.process_time() - t0
    comparer.store.close()
    return cpu / pairs * 1e6


def list10k(seed: int, drift: bool) -> bytes:
    return json.dumps([{"id": i, "name": f"n{i}", "amount": i * 3, "ts": f"{seed}-{i}",
                        **({"extra": seed} if drift and i % 7 == 0 else {})}
                       for i in range(10_000)]).encode()


def store_size(pairs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="strangler-bench-comparer-") as d:
        db = Path(d) / "diffs.sqlite3"
        comparer = Comparer(out_fd=-1)
        comparer.send_results = lambda: None  # type: ignore[method-assign]
        comparer.handle(("config", str(db), 200, 7.0, {"r": CompareSpec()}))
        t0 = time.monotonic()
        for i in range(pairs):
            comparer.handle(frame(i, list10k(i, False), list10k(i + 1, True)))
        assert comparer.store is not None
        comparer.store.close()
        elapsed = time.monotonic() - t0
        with sqlite3.connect(db) as conn:
            rows = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("comparisons", "fields", "samples", "sample_refs")}
            compared = conn.execute("SELECT compared FROM comparisons WHERE step=-1").fetchone()
        size = sum(p.stat().st_size for p in db.parent.glob("diffs.sqlite3*"))
        print(f"{pairs} comparisons of a 10,000-element list in {elapsed:.0f} s: "
              f"compared {compared[0]}; rows {rows}; store {size / 1024:.0f} KiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.comparer",
                                description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=sorted(PAIRS), default=None)
    p.add_argument("--store-size", type=int, metavar="N", default=0)
    args = p.parse_args(argv)
    if args.store_size:
        store_size(args.store_size)
        return 0
    for name, (legacy, target) in PAIRS.items():
        if args.only and name != args.only:
            continue
        per = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="strangler-bench-comparer-") as d:
                per.append(run_round(args.pairs, legacy, target, Path(d)))
        print(f"{name} ({len(legacy)} / {len(target)} bytes): CPU per pair min "
              f"{min(per):.0f} µs; rounds {', '.join(f'{x:.0f}' for x in per)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
