"""record that a route's legacy side can be deleted (audit entry `retired`)

Run ROUTE's retirement check (see retire-check) and, when it passes, record the decision in the
audit log as `retired` with the check as evidence; when it does not, exit 1 with each unmet
condition and record nothing. --force records it anyway, marked forced, with what was unmet.
With --replica URL (repeatable) every replica must pass, and the entry is recorded on each (once
for replicas that share a store: they share its audit chain).
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli import migration_output
from proxy.cli.client import AdminClient, ClientFailure, print_json, route_path, run_with_client
from proxy.cli.commands._common import add_replica_option, replica_clients
from proxy.cli.exitcodes import FAILED, OK, USAGE
from proxy.control import migration

NEEDS_REASON = True


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--days", type=float, default=14.0, metavar="N",
                   help="the check's window, in days (default: %(default)g)")
    p.add_argument("--force", action="store_true",
                   help="record the decision even though the check does not pass (marked "
                   "forced, with what was unmet)")
    add_replica_option(p)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.days <= 3650:
        print("strangler retire: --days must be more than 0 and at most 3650", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        clients = replica_clients(args, client)
        try:
            checks = [_call(c, "GET", route_path(args.route, "retire-check"), None,
                            {"days": f"{args.days:g}"}) for c in clients]
            check = migration.merge_checks(checks)
            if not check["ready"] and not args.force:
                if args.json:
                    print_json({"route": args.route, "retired": False, "check": check})
                else:
                    print(migration_output.retire_check(check))
                    print(f"{args.route}: not recorded (fix what is unmet, or --force)")
                return FAILED
            # once per audit trail: replicas sharing a store share its one chain
            writers = [clients[i] for i in migration.distinct_stores(checks)]
            answers = [_call(c, "POST", route_path(args.route, "retire"),
                             {"reason": args.reason, "force": args.force, "days": args.days},
                             None) for c in writers]
        finally:
            for c in clients[1:]:
                c.close()
        if args.json:
            print_json(answers[0] if len(answers) == 1 else {"route": args.route,
                                                              "replicas": answers})
            return OK
        print(migration_output.retire_check(check))
        for c, a in zip(writers, answers, strict=True):
            audit = a.get("audit") or {}
            print(f"{args.route}: retired{' (FORCED)' if a.get('forced') else ''}: recorded in "
                  f"the audit log of {c.url} (#{audit.get('seq')}) as {audit.get('actor')}")
        return OK

    return run_with_client(args, body)


def _call(c: AdminClient, method: str, path: str, body: dict | None,
          params: dict | None) -> dict:
    try:
        return c.call(method, path, body, params)
    except ClientFailure as exc:
        exc.message = f"{c.url}: {exc.message}"
        raise
