"""evaluate the promotion gate, change nothing

Evaluate ROUTE's promotion gate on the current step's evidence and print the decision with its
reasons (what promote would do). Changes nothing and counts as no decision. Exit 0 promote or
complete, 1 fail, 4 hold (not enough evidence yet), 5 inconclusive (held past max_hold).
"""

from __future__ import annotations

import argparse

from proxy.cli import output
from proxy.cli.client import AdminClient, print_json, route_path, run_with_client
from proxy.cli.exitcodes import AWAITING_APPROVAL, FAILED, HOLD, INCONCLUSIVE, OK

# Besides the decision's codes: 2 usage, 3 admin API unreachable (see proxy.cli.exitcodes).
DECISION_EXIT = {"promote": OK, "complete": OK, "fail": FAILED, "hold": HOLD,
                 "inconclusive": INCONCLUSIVE}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")


def decision_exit(data: dict) -> int:
    """`gate`'s exit code: the decision's alone. A read asks nobody for an approval, so a
    promotion that waits for one (its `approval` shown) is still a promote: 0."""
    return DECISION_EXIT.get(str(data.get("decision")), FAILED)


def exit_code(data: dict) -> int:
    """`promote`'s exit code: the decision's, or 6 when it asked for an approval."""
    if data.get("approval") and not data.get("acted"):
        return AWAITING_APPROVAL  # the gate said promote; a second person must approve it
    return decision_exit(data)


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("GET", route_path(args.route, "gate"))
        if args.json:
            print_json(data)
        else:
            print(output.decision(data))
        return decision_exit(data)

    return run_with_client(args, body)
