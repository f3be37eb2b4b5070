"""Appends per second of the fleet's audit chain (`store.backend: postgres`):
`python -m bench.fleet_audit [--replicas 3] [--entries 300] [--rounds 3]`.

Starts a throwaway PostgreSQL 15 (scripts/postgres-dev, fsync and synchronous_commit on, as in
production), then `--replicas` real `PostgresAudit` trails (each its own state_dir and outbox,
as pods have) append `--entries` each from their own thread at once: every append is fsynced to
the replica's outbox, then shipped and chained under the head's row lock. Measured from the
first append to the moment every outbox is empty (the whole chain in the database), then the
chain is verified. Prints appends/s per round and their median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.servers import start_postgres
from proxy.config.spec import StoreSpec
from proxy.control.audit_pg import PostgresAudit


def one_round(dsn: str, replicas: int, entries: int, workdir: Path) -> tuple[float, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:  # a fresh chain each round
        conn.execute("DROP TABLE IF EXISTS audit_entries, audit_head, approvals, comparisons, "
                     "fields, renames, samples, sample_refs, field_values, reconcile_runs, "
                     "reconcile_fields, reconcile_samples, strangler_schema")
    spec = StoreSpec(backend="postgres")
    trails = [PostgresAudit(spec, dsn, workdir / f"r{i}-{time.monotonic_ns()}", f"replica-{i}")
              for i in range(replicas)]
    for t in trails:  # connected and migrated before the clock starts
        t.append("serve_started", "system", "warm-up")
    while any(len(t.outbox) for t in trails):
        time.sleep(0.01)

    def appender(t: PostgresAudit) -> None:
        for n in range(entries):
            t.append("set_weight", "bench", f"entry {n}", route="r", before=n, after=n + 1)

    threads = [threading.Thread(target=appender, args=(t,)) for t in trails]
    began = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    while any(len(t.outbox) for t in trails):
        time.sleep(0.001)
    elapsed = time.perf_counter() - began
    result = trails[0].verify()
    assert result.ok, result.message
    for t in trails:
        t.close()
    return replicas * entries / elapsed, result.entries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_audit", description=__doc__)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--entries", type=int, default=300, help="appends per replica per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    dsn, stop = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="strangler-fleet-audit-") as d:
            rates = []
            for r in range(args.rounds):
                rate, n = one_round(dsn, args.replicas, args.entries, Path(d))
                rates.append(rate)
                print(f"round {r + 1}: {rate:,.0f} appends/s ({n} entries, chain intact)")
        print(f"median {statistics.median(rates):,.0f} appends/s with {args.replicas} replicas "
              f"appending at once (PostgreSQL 15 on this machine, fsync on)")
    finally:
        stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
