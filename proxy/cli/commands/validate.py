"""`strangler validate [-c routes.yaml]`: check a config and print every problem in it."""

from __future__ import annotations

import argparse

from proxy.cli.commands._common import add_config_option, command, load_or_report
from proxy.cli.exitcodes import OK


def register(sub: argparse._SubParsersAction) -> None:
    with command(
        sub, "validate", run, client=False,
        help="check routes.yaml; print every problem as FILE:LINE: path: message",
        description="Check a routes.yaml without starting anything. Prints every problem as "
        "FILE:LINE: path.to.field: message on stderr and exits 2; exits 0 when the file is valid.",
    ) as p:
        add_config_option(p)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if isinstance(config, int):
        return config
    routes = len(config.routes)
    upstreams = ", ".join(config.upstreams)
    print(
        f"{args.config}: OK: {routes} route{'s' if routes != 1 else ''}, "
        f"{len(config.upstreams)} upstream{'s' if len(config.upstreams) != 1 else ''} "
        f"({upstreams}), default {config.default_upstream}"
    )
    return OK
