"""lift a rollback freeze (the weight stays 0 until set or promoted)

Lift ROUTE's rollback freeze. Its weight stays 0 until `strangler set-weight` or `strangler
promote` changes it.
"""

from __future__ import annotations

import argparse

from proxy.cli import output
from proxy.cli.client import AdminClient, route_path, run_with_client
from proxy.cli.commands._common import print_answer
from proxy.cli.exitcodes import OK

NEEDS_REASON = True  # --reason TEXT, required, recorded in the audit log


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("POST", route_path(args.route, "resume"),
                           {"reason": args.reason})
        print_answer(data, args.json, lambda d: output.mutation(d, "resumed (freeze lifted)"))
        return OK

    return run_with_client(args, body)
