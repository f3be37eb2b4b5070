"""start ROUTE's evidence afresh (a new step at the same weight)

For "I fixed the new service, judge it afresh": a new step begins at the current weight, so the
gate, status and diffs count only what happens from now on. Audited. Refused (exit 1) on a
rolled-back route: `strangler resume` starts new evidence itself.
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
        data = client.call("POST", route_path(args.route, "reset-evidence"),
                           {"reason": args.reason})
        print_answer(data, args.json, lambda d: output.mutation(d, _verb(d)))
        return OK

    return run_with_client(args, body)


def _verb(d: dict) -> str:
    """The new step: the route's, or every member's for a group (each route has its own)."""
    members = d.get("members")
    if members:
        steps = ", ".join(f"{m.get('name')} step {(m.get('step') or {}).get('id')}"
                          for m in members)
        return f"evidence reset: new steps begin now ({steps})"
    return f"evidence reset: step {(d.get('step') or {}).get('id')} begins now"
