"""whether a route's legacy side can be deleted (exit 0) or what is missing (exit 1)

Exit 0 when, over the last --days days, ROUTE was at 100% with no rollback and no weight change,
legacy got no live request of it (fallbacks count; QA pins do not), and its reverse shadow and
its latest `strangler reconcile` run (where there are any) were clean; otherwise exit 1 with
each unmet condition in words. With a shared store (store.backend: postgres) any replica checks
the whole fleet. With --replica URL (repeatable) every replica must agree.
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli import migration_output
from proxy.cli.client import AdminClient, print_json, route_path, run_with_client
from proxy.cli.commands._common import add_replica_option, ask_replicas
from proxy.cli.exitcodes import FAILED, OK, USAGE
from proxy.control import migration


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--days", type=float, default=14.0, metavar="N",
                   help="the window, in days (default: %(default)g)")
    add_replica_option(p)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.days <= 3650:
        print("strangler retire-check: --days must be more than 0 and at most 3650",
              file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        results = ask_replicas(args, client, lambda c: c.call(
            "GET", route_path(args.route, "retire-check"), params={"days": f"{args.days:g}"}))
        result = migration.merge_checks(results)
        if args.json:
            print_json(result)
        else:
            print(migration_output.retire_check(result))
        return OK if result["ready"] else FAILED

    return run_with_client(args, body)
