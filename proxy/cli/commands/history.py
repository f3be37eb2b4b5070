"""the audit log: weight changes, rollbacks, resumes, reloads

Show the audit log, newest first: every weight change, promotion, rollback, resume and reload with
time, actor, reason and evidence. --verify checks the hash chain and exits 1 if any line was edited
or deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.cli import output
from proxy.cli.client import AdminClient, print_json, run_with_client
from proxy.cli.exitcodes import FAILED, OK, USAGE


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE", nargs="?", help="only this route's entries")
    p.add_argument("--verify", action="store_true",
                   help="verify the hash chain instead of listing (exit 1 when broken)")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="entries to show (default: %(default)s)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="with --verify: check DIR/audit.log directly, no running proxy "
                   "needed")


def _report(data: dict, as_json: bool) -> int:
    if as_json:
        print_json(data)
    if data.get("ok"):
        if not as_json:
            print(f"audit log OK: {data.get('message')}")
        return OK
    print(f"audit log BROKEN: {data.get('message')}", file=sys.stderr)
    return FAILED


# --verify --state-dir DIR reads DIR/audit.log itself, without a running proxy (e.g. when
# `serve` refuses a broken log), and names the first line that does not chain.
def _verify_offline(state_dir: str, as_json: bool) -> int:
    from proxy.control.audit import AuditLog

    directory = Path(state_dir)
    if not directory.is_dir():
        print(f"strangler history: --state-dir {state_dir}: not a directory", file=sys.stderr)
        return USAGE
    result = AuditLog(directory / "audit.log").verify()
    return _report({"ok": result.ok, "entries": result.entries, "bad_line": result.bad_line,
                    "message": result.message, "suspect_lines": list(result.suspect_lines),
                    "file": str(directory / "audit.log")}, as_json)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("strangler history: --limit must be at least 1", file=sys.stderr)
        return USAGE

    if args.state_dir is not None:
        if not args.verify:
            print("strangler history: --state-dir needs --verify", file=sys.stderr)
            return USAGE
        return _verify_offline(args.state_dir, args.json)

    def body(client: AdminClient) -> int:
        if args.verify:
            return _report(client.call("GET", "/admin/history/verify"), args.json)
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
