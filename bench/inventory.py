"""The traffic inventory's bounds, measured: `python -m bench.inventory`.

1. Memory under a cardinality attack: the real DataPlane (as in bench.hotpath, in-memory
   transports) takes --requests requests, every one a new random unmatched path, with the flush
   loop's work every 200 requests (the data plane's rows into the control process's Rollups) and
   a write to a real SQLite rollup store every 10,000 (10 s at 1,000 req/s). Prints the process's
   RSS before, after a warm-up and at the end, with the counter's, the cache's and the open
   buckets' sizes: they must stay flat however many paths arrive.
2. Disk after a simulated --days days: --endpoints endpoints on 2 backends with traffic every
   hour, the clock moved by hand; prints the rollup file's size and rows per grain (hourly rows
   are kept 15 days, daily ones inventory.retention_days).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from bench.hotpath import RESPONSE, build
from bench.procs import status_kib
from proxy.config.spec import InventorySpec
from proxy.control.rollup_sqlite import SqliteRollupStore
from proxy.control.rollups import DAY, HOUR, Rollups
from proxy.dataplane.inventory import latency_index

LETTERS = b"abcdefghijklmnopqrstuvwxyz"


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def attack(n: int) -> None:
    loop, plane = build(10, access_log=False)
    conn = next(iter(plane.connections), None)
    state = Path(tempfile.mkdtemp(prefix="inventory-bench"))
    rollups = Rollups(SqliteRollupStore(state / "inventory.sqlite3"), InventorySpec())
    loop(2_000)  # pools, caches
    rng = random.Random(1)
    pid = os.getpid()
    before = status_kib(pid, "VmRSS")
    up = None
    t0 = time.process_time()
    for i in range(n):
        path = b"/%s/%s" % (rng.choice((b"wp-admin", b"shop", b"x")), bytes(rng.choices(LETTERS,
                                                                                    k=12)))
        conn.data_received(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n" % path)
        up = conn.cur.up
        up.data_received(RESPONSE)
        if i % 200 == 199:
            conn.transport.out.clear()
            for pool in plane.pools.values():
                for u in pool.live:
                    u.transport.out.clear()
            plane.recorder.take()
            rollups.add(plane.endpoints.take())
        if i % 10_000 == 9_999:
            rollups.flush_now()
        if i == 20_000:
            warm = status_kib(pid, "VmRSS")
    cpu = time.process_time() - t0
    rollups.flush_now()
    after = status_kib(pid, "VmRSS")
    e = plane.endpoints
    print(f"cardinality attack: {n:,} requests, each a new random unmatched path")
    print(f"  RSS before {_mib(before)}, after 20,000 {_mib(warm)}, after {n:,} {_mib(after)}")
    print(f"  data plane: {len(e.admitted)} named templates (max_templates "
          f"{e.max_templates}), path cache {len(e.cache)}, batch {len(e.hits)}")
    print(f"  control: open buckets {sum(len(s) for s in rollups._open.values())} endpoints, "
          f"{rollups.folded:,} rows into `other`; store {rollups.store.size() / 1024:.0f} KiB")
    print(f"  CPU {cpu / n * 1e6:.1f} µs per request (data plane, flush work and rollups)")
    rollups.store.close()


def months(days: int, endpoints: int, retention: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="inventory-bench"))
    start = 1_800_000_000.0 // DAY * DAY
    now = [start]
    path = state / "inventory.sqlite3"
    rollups = Rollups(SqliteRollupStore(path), InventorySpec(retention_days=retention,
                                                             max_templates=max(endpoints, 10)),
                      clock=lambda: now[0])
    t0 = time.monotonic()
    for hour in range(days * 24):
        now[0] = start + hour * HOUR + 5
        rollups.add([["GET", f"/api/resource{e}/{{id}}", f"route{e % 20}", backend, 120, 1,
                      [[latency_index(0.001 * (1 + k + e % 9)), 12] for k in range(10)]]
                     for e in range(endpoints) for backend in ("legacy", "target")])
        rollups.flush_now()
    took = time.monotonic() - t0
    store = rollups.store
    hours = len(store.read(HOUR, 0))
    days_rows = len(store.read(DAY, 0))
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"rollups after {days} simulated days: {endpoints} endpoints x 2 backends, 10 latency "
          f"buckets each, retention_days {retention}")
    print(f"  file {path.stat().st_size / 1024 / 1024:.1f} MiB; {hours:,} hourly rows (15 days), "
          f"{days_rows:,} daily rows; simulated in {took:.0f} s")
    store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inventory",
                                description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--endpoints", type=int, default=200)
    p.add_argument("--retention", type=int, default=90, help="inventory.retention_days")
    p.add_argument("--skip-attack", action="store_true")
    p.add_argument("--skip-months", action="store_true")
    args = p.parse_args(argv)
    if not args.skip_attack:
        attack(args.requests)
    if not args.skip_months:
        months(args.days, args.endpoints, args.retention)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
