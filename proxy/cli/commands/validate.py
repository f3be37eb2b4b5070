"""check routes.yaml; print every problem as FILE:LINE: path: message

Check a routes.yaml without starting anything. Prints every problem as FILE:LINE: path.to.field:
message on stderr and exits 2; exits 0 when the file is valid (warnings, such as an upstream no
route uses, are printed on stderr as FILE:LINE: path: warning: message and do not fail it).
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli.commands._common import add_config_option, load_or_report
from proxy.cli.exitcodes import OK
from proxy.config.crosscheck import unused_warnings

USES_ADMIN_API = False  # no --admin/--token/--json/--actor options


def arguments(p: argparse.ArgumentParser) -> None:
    add_config_option(p)


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if isinstance(config, int):
        return config
    for warning in unused_warnings(config):
        print(warning, file=sys.stderr)
    routes = len(config.routes)
    upstreams = ", ".join(config.upstreams)
    print(
        f"{args.config}: OK: {routes} route{'s' if routes != 1 else ''}, "
        f"{len(config.upstreams)} upstream{'s' if len(config.upstreams) != 1 else ''} "
        f"({upstreams}), default {config.default_upstream}"
    )
    from proxy.api.admin import tls_unverified

    for where in tls_unverified(config):  # valid, but said loudly
        print(f"{args.config}: WARNING: {where}: tls.verify is false: certificates are not "
              "checked; anyone on the path can read and change this traffic", file=sys.stderr)
    return OK
