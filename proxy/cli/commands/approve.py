"""approve a pending promotion or weight change (four eyes)

Approve ROUTE's pending request (promotion.approval: a promotion, or a set-weight, to
from_weight or above) as a second named admin: the change is made now. A promotion is judged
again first and must still say promote to the same weight. Refused (exit 1) when you asked for
it yourself, when nothing is pending or it expired; exit 3 without a named credential.
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
        data = client.call("POST", route_path(args.route, "approve"),
                           {"reason": args.reason})
        print_answer(data, args.json, output.decision)
        return OK

    return run_with_client(args, body)
