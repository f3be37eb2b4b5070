"""`strangler set-weight ROUTE PERCENT --reason TEXT`: change a route's weight now."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import output
from proxy.cli.client import AdminClient, add_client_options, print_json, run_with_client
from proxy.cli.exitcodes import OK, USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "set-weight", help="change a route's weight now (0-100, up to two decimals)",
        description="Send PERCENT of the route's matching traffic to target from now on. "
        "Refused (exit 1) while the route is rolled back: `strangler resume` it first.")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("percent", metavar="PERCENT", type=float,
                   help="0-100, up to two decimals")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.percent <= 100 or round(args.percent, 2) != args.percent:
        print("strangler set-weight: PERCENT must be between 0 and 100 with at most two "
              "decimals", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        data = client.call("PUT", f"/admin/routes/{args.route}/weight",
                           {"weight": args.percent, "reason": args.reason})
        if args.json:
            print_json(data)
        else:
            print(output.mutation(data, f"weight {output.weight(data.get('from'))} -> "
                                        f"{output.weight(data.get('to'))}"))
        warn = output.warning(data)
        if warn:
            print(warn, file=sys.stderr)
        return OK

    return run_with_client(args, body)
