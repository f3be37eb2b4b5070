"""change a route's weight now (0-100, up to two decimals)

Send PERCENT of the route's matching traffic to target from now on. Refused (exit 1) while the
route is rolled back: `strangler resume` it first. Raising it to the route's
promotion.approval.from_weight or above waits for `strangler approve` by another named admin
(exit 6).
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli import output
from proxy.cli.client import AdminClient, route_path, run_with_client
from proxy.cli.commands._common import print_answer
from proxy.cli.exitcodes import AWAITING_APPROVAL, OK, USAGE

NEEDS_REASON = True  # --reason TEXT, required, recorded in the audit log


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("percent", metavar="PERCENT", type=float,
                   help="0-100, up to two decimals")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.percent <= 100 or round(args.percent, 2) != args.percent:
        print("strangler set-weight: PERCENT must be between 0 and 100 with at most two "
              "decimals", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        data = client.call("PUT", route_path(args.route, "weight"),
                           {"weight": args.percent, "reason": args.reason})
        if data.get("approval"):
            print_answer(data, args.json, output.awaiting_approval)
            return AWAITING_APPROVAL
        print_answer(data, args.json, lambda d: output.mutation(
            d, f"weight {output.weight(d.get('from'))} -> {output.weight(d.get('to'))}"))
        return OK

    return run_with_client(args, body)
