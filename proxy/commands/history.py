"""`strangler history [ROUTE] [--verify] [--limit N]`: the audit log, newest first.

`--verify` checks the SHA-256 chain of the whole log and exits 1 naming the first line that
does not chain (an entry was edited, inserted or deleted).
"""

from __future__ import annotations

import argparse
import sys

from proxy import output
from proxy.client import AdminClient, add_client_options, print_json, run_with_client
from proxy.exitcodes import FAILED, OK, USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "history", help="the audit log: weight changes, rollbacks, resumes, reloads",
        description="Show the audit log, newest first: every weight change, promotion, "
        "rollback, resume and reload with time, actor, reason and evidence. --verify checks "
        "the hash chain and exits 1 if any line was edited or deleted.")
    p.add_argument("route", metavar="ROUTE", nargs="?", help="only this route's entries")
    p.add_argument("--verify", action="store_true",
                   help="verify the hash chain instead of listing (exit 1 when broken)")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="entries to show (default: %(default)s)")
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("strangler history: --limit must be at least 1", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        if args.verify:
            data = client.call("GET", "/admin/history/verify")
            if args.json:
                print_json(data)
            if data.get("ok"):
                if not args.json:
                    print(f"audit log OK: {data.get('message')}")
                return OK
            print(f"audit log BROKEN: {data.get('message')}", file=sys.stderr)
            return FAILED
        params: dict = {"limit": args.limit}
        if args.route:
            params["route"] = args.route
        data = client.call("GET", "/admin/history", params=params)
        if args.json:
            print_json(data)
        else:
            print(output.history(data.get("entries") or []))
        return OK

    return run_with_client(args, body)
