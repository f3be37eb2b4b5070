"""a route's shadow differences: counts per field path, recent samples

Show ROUTE's shadow differences in its current evidence window (the gate's step, under the
current compare rules): counts per field path, array elements collapsed to [*] (with likely
noise and likely renames marked), then recent samples, redacted, with their step and age.
--all shows every window the store has, rows that the current ignore rules cover marked as
ignored. With --export, write the recorded requests and legacy answers as regression tests
(hurl or pytest), or as the request set of `strangler reconcile` (jsonl).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.cli import output
from proxy.cli.client import AdminClient, print_json, route_path, run_with_client
from proxy.cli.exitcodes import OK, USAGE

FORMATS = ("hurl", "pytest", "jsonl")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="field paths and samples to show (default: %(default)s)")
    p.add_argument("--all", action="store_true",
                   help="every evidence window the store has, not only the current one")
    p.add_argument("--sample-lines", type=int, default=8, metavar="N",
                   help="lines shown per sample (default: %(default)s)")
    p.add_argument("--export", nargs=2, metavar=("FORMAT", "FILE"),
                   help=f"write regression tests: FORMAT is one of {', '.join(FORMATS)}")


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("strangler diffs: --limit must be at least 1", file=sys.stderr)
        return USAGE
    if args.sample_lines < 1:
        print("strangler diffs: --sample-lines must be at least 1", file=sys.stderr)
        return USAGE
    if args.export and args.export[0] not in FORMATS:
        print(f"strangler diffs: unknown export format {args.export[0]!r}; use one of "
              f"{', '.join(FORMATS)}", file=sys.stderr)
        return USAGE

    def body(client: AdminClient) -> int:
        if args.export:
            fmt, dest = args.export
            resp = client.text(route_path(args.route, "diffs/export"), {"format": fmt})
            try:
                Path(dest).write_text(resp.text, encoding="utf-8")
            except OSError as exc:
                print(f"strangler diffs: cannot write {dest}: {exc.strerror}", file=sys.stderr)
                return USAGE
            cases = resp.headers.get("X-Strangler-Cases", "?")
            if args.json:
                print_json({"route": args.route, "format": fmt, "file": dest,
                            "cases": int(cases) if cases.isdigit() else None})
            else:
                print(f"{args.route}: wrote {cases} case(s) as {fmt} to {dest}")
            return OK
        params = {"limit": args.limit, **({"all": "1"} if args.all else {})}
        data = client.call("GET", route_path(args.route, "diffs"), params=params)
        if args.json:
            print_json(data)
        else:
            print(output.diffs(data, sample_lines=args.sample_lines))
        return OK

    return run_with_client(args, body)
