"""`strangler resume ROUTE --reason TEXT`: lift a rollback freeze (the weight stays 0)."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import output
from proxy.cli.client import AdminClient, add_client_options, print_json, run_with_client
from proxy.cli.exitcodes import OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resume", help="lift a rollback freeze (the weight stays 0 until set or promoted)",
        description="Lift ROUTE's rollback freeze. Its weight stays 0 until `strangler "
        "set-weight` or `strangler promote` changes it.")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("POST", f"/admin/routes/{args.route}/resume",
                           {"reason": args.reason})
        if args.json:
            print_json(data)
        else:
            print(output.mutation(data, "resumed (freeze lifted)"))
        warn = output.warning(data)
        if warn:
            print(warn, file=sys.stderr)
        return OK

    return run_with_client(args, body)
