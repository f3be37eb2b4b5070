"""table of routes: weight, state, traffic, errors, p99, shadow, gate

Show every route of the running proxy: effective weight, state (active, rolled_back), requests and
error rate per backend, p99, shadow mismatch rate and the last gate decision.
"""

from __future__ import annotations

import argparse

from proxy.cli import output
from proxy.cli.client import AdminClient, print_json, run_with_client
from proxy.cli.exitcodes import OK


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("GET", "/admin/routes")
        if args.json:
            print_json(data)
            return OK
        print(output.status_table(data.get("routes") or []))
        if data.get("durable") is False:
            print("WARNING: the last change was NOT saved to state_dir (not durable)")
        return OK

    return run_with_client(args, body)
