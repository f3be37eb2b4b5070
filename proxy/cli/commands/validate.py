"""`strangler validate [-c routes.yaml]`: check a config and print every problem in it."""

from __future__ import annotations

import argparse
import os
import sys

from proxy.cli.exitcodes import OK, USAGE
from proxy.config.loader import ConfigError, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check routes.yaml; print every problem as FILE:LINE: path: message",
        description="Check a routes.yaml without starting anything. Prints every problem as "
        "FILE:LINE: path.to.field: message on stderr and exits 2; exits 0 when the file is valid.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("STRANGLER_CONFIG", "routes.yaml"),
        metavar="FILE",
        help="the config file (default: $STRANGLER_CONFIG or routes.yaml)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return USAGE
    routes = len(config.routes)
    upstreams = ", ".join(config.upstreams)
    print(
        f"{args.config}: OK: {routes} route{'s' if routes != 1 else ''}, "
        f"{len(config.upstreams)} upstream{'s' if len(config.upstreams) != 1 else ''} "
        f"({upstreams}), default {config.default_upstream}"
    )
    return OK
