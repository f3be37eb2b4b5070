"""run a self-contained migration demo (monolith, new service, proxy, gate)

Start a demo monolith, a demo new service (one route clean, one with a planted field difference),
the proxy, a traffic generator and the promotion gate; show the clean route promoted step by step
to 100% and the other rolled back.
"""

from __future__ import annotations

import argparse

USES_ADMIN_API = False  # no --admin/--token/--json/--actor options


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="stop after S seconds at most (default %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="keep the proxy and dashboard running after the story ends")


def run(args: argparse.Namespace) -> int:
    from proxy.cli.demo import run_demo
    from proxy.serve.app import run_loop

    try:
        return run_loop(run_demo(args.duration, keep=args.keep))
    except KeyboardInterrupt:
        return 130
