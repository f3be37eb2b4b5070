"""evaluate the gate and act: step up, hold, or roll back

Evaluate ROUTE's promotion gate and act on it: step the weight up to the next step, hold, or roll
back. Exit 0 promoted (or complete), 1 fail, 4 hold, 5 inconclusive (held past max_hold;
auto-promotion pauses), 6 awaiting approval (promotion.approval: another named admin runs
`strangler approve`).
"""

from __future__ import annotations

import argparse
import sys
import time

from proxy.cli import output
from proxy.cli.client import AdminClient, route_path, run_with_client
from proxy.cli.commands._common import print_answer
from proxy.cli.commands.gate import exit_code
from proxy.cli.exitcodes import USAGE
from proxy.config.units import parse_duration


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--wait", metavar="DURATION", default="0s",
                   help="keep re-evaluating while the answer is hold, up to DURATION "
                   "(e.g. 30s, 5m, 30m)")
    p.add_argument("--interval", metavar="DURATION", default="5s",
                   help="time between evaluations with --wait (default: %(default)s)")


# fail rolls back only where the route's gate has auto_rollback on. With --wait, a hold is
# re-evaluated every --interval until another answer or the deadline.
def run(args: argparse.Namespace) -> int:
    try:
        wait = parse_duration(args.wait)
        interval = max(0.1, parse_duration(args.interval))
    except ValueError as exc:
        print(f"strangler promote: {exc}", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        deadline = time.monotonic() + wait
        while True:
            data = client.call("POST", route_path(args.route, "promote"), {})
            left = deadline - time.monotonic()
            if data.get("decision") != "hold" or left <= 0:
                break
            if not args.json:
                reasons = "; ".join(data.get("reasons") or [])
                print(f"{args.route}: hold ({reasons}); evaluating again in "
                      f"{min(interval, left):.0f}s, {left:.0f}s left", file=sys.stderr)
            time.sleep(min(interval, left))
        print_answer(data, args.json, output.decision)
        return exit_code(data)

    return run_with_client(args, body)
