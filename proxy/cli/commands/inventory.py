"""the monolith's traffic by endpoint: what is migrated, what is next

Show every endpoint (method + path template) the proxy saw in the window, busiest first: its
requests, share of all traffic, error rate, p50/p99 on legacy, the route that covers it (if any)
with its weight and state, and the share actually served by new services; then declared
endpoints (inventory.templates, inventory.openapi) that got no request. --unrouted lists only
endpoints no route covers yet, by their traffic: the candidates for the next route. With a
shared store (store.backend: postgres) any replica answers for the whole fleet. With
--replica URL (repeatable) every replica's counts are merged (exactly: counts and latency
histograms add up; one shared store is counted once), so N replicas read as one proxy.
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli import migration_output
from proxy.cli.client import AdminClient, print_json, run_with_client
from proxy.cli.commands._common import add_replica_option, ask_replicas
from proxy.cli.exitcodes import OK, USAGE
from proxy.control import migration


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="7d", metavar="WINDOW",
                   help="how far back: 30m, 24h, 7d, 2w (default: %(default)s)")
    p.add_argument("--unrouted", action="store_true",
                   help="only endpoints no route covers yet, by traffic")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="endpoints to show (default: %(default)s)")
    add_replica_option(p)


def run(args: argparse.Namespace) -> int:
    try:
        migration.parse_since(args.since)
    except ValueError as exc:
        print(f"strangler inventory: --since: {exc}", file=sys.stderr)
        return USAGE
    if args.limit < 1:
        print("strangler inventory: --limit must be at least 1", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        def ask(c: AdminClient) -> tuple[dict, dict]:
            return (c.call("GET", "/admin/inventory",
                           params={"since": args.since, "raw": "1", "limit": "1"})["raw"],
                    c.call("GET", "/admin/inventory",
                           params={"since": "24h", "raw": "1", "limit": "1"})["raw"])

        answers = ask_replicas(args, client, ask)
        raws, last = [a[0] for a in answers], [a[1] for a in answers]
        raw = migration.merge_raw(raws)
        view = migration.inventory_view(raw, unrouted=args.unrouted, limit=args.limit)
        view["enabled"] = all(r.get("enabled", True) for r in raws)
        last_24h = migration.progress(migration.raw_rows(migration.merge_raw(last)))
        if args.json:
            view["last_24h"] = last_24h
            print_json(view)
        else:
            print(migration_output.inventory(view, last_24h))
        return OK

    return run_with_client(args, body)
