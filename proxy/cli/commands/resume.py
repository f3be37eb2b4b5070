"""`strangler resume ROUTE --reason TEXT`: lift a rollback freeze (the weight stays 0)."""

from __future__ import annotations

import argparse

from proxy.cli import output
from proxy.cli.client import AdminClient, run_with_client
from proxy.cli.commands._common import command, print_answer
from proxy.cli.exitcodes import OK


def register(sub: argparse._SubParsersAction) -> None:
    with command(
        sub, "resume", run, reason=True,
        help="lift a rollback freeze (the weight stays 0 until set or promoted)",
        description="Lift ROUTE's rollback freeze. Its weight stays 0 until `strangler "
        "set-weight` or `strangler promote` changes it.",
    ) as p:
        p.add_argument("route", metavar="ROUTE")


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("POST", f"/admin/routes/{args.route}/resume",
                           {"reason": args.reason})
        print_answer(data, args.json, lambda d: output.mutation(d, "resumed (freeze lifted)"))
        return OK

    return run_with_client(args, body)
