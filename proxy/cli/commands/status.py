"""table of routes: weight, state, traffic, errors, p99, shadow, gate

Show every route of the running proxy: effective weight, state (active, rolled_back), requests and
error rate per backend, p99, shadow mismatch rate and the last gate decision; then the migration's
progress over the last 24 hours (share of requests and endpoints served by new services).
"""

from __future__ import annotations

import argparse

from proxy.cli import output
from proxy.cli.client import AdminClient, ClientFailure, print_json, run_with_client
from proxy.cli.exitcodes import OK
from proxy.cli.migration_output import progress_line


def run(args: argparse.Namespace) -> int:
    def body(client: AdminClient) -> int:
        data = client.call("GET", "/admin/routes")
        try:  # the traffic inventory (an older proxy, or one with it stopped, has none)
            progress = client.call("GET", "/admin/progress", params={"days": "1"})["last_24h"]
        except (ClientFailure, KeyError):
            progress = None
        if args.json:
            print_json({**data, "migration_24h": progress})
            return OK
        print(output.status_table(data.get("routes") or []))
        if progress is not None:
            print("Migration, last 24 h: " + progress_line(progress))
        if data.get("durable") is False:
            print("WARNING: the last change was NOT saved to state_dir (not durable)")
        return OK

    return run_with_client(args, body)
