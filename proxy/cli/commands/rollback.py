"""send 100% of a route's (or every route's) traffic to legacy now

Send 100% of ROUTE's traffic (with --all, every route's) to legacy: it takes effect for every
request accepted after this command returns. The route stays frozen at 0 through reloads and
restarts until `strangler resume`.
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli import output
from proxy.cli.client import AdminClient, route_path, run_with_client
from proxy.cli.commands._common import print_answer
from proxy.cli.exitcodes import OK, USAGE

NEEDS_REASON = True  # --reason TEXT, required, recorded in the audit log


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE", nargs="?")
    p.add_argument("--all", action="store_true", help="roll back every route")


def run(args: argparse.Namespace) -> int:
    if bool(args.route) == bool(args.all):
        print("strangler rollback: give a ROUTE or --all (not both)", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        if args.all:
            data = client.call("POST", "/admin/rollback", {"reason": args.reason})
            items = data.get("routes") or []
        else:
            data = client.call("POST", route_path(args.route, "rollback"),
                               {"reason": args.reason})
            items = [data]
        print_answer(data, args.json,
                     lambda d: output.mutation(d, "rolled back, 100% to legacy"), items)
        return OK

    return run_with_client(args, body)
