"""run the proxy and its admin listener

Run the proxy (routes.yaml `listen`) and the admin API (`admin.listen`). SIGHUP or a change of the
file reloads it; SIGTERM drains in-flight requests and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli.commands._common import add_config_option
from proxy.cli.exitcodes import USAGE

USES_ADMIN_API = False  # no --admin/--token/--json/--actor options


def arguments(p: argparse.ArgumentParser) -> None:
    add_config_option(p, metavar=None,
                      help="routes.yaml (default: %(default)s; env STRANGLER_CONFIG)")
    p.add_argument("--workers", type=int, default=1,
                   help="data-plane processes sharing the port (SO_REUSEPORT); default 1")
    p.add_argument("--log-format", choices=("json", "console"), default="json")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.add_argument("--access-log-sample", type=float, default=1.0, metavar="FRACTION",
                   help="log this fraction of successful requests (errors are always "
                   "logged)")
    p.add_argument("--no-watch", action="store_true",
                   help="do not reload when the file changes on disk (SIGHUP still reloads)")
    p.add_argument("--create-flags", action="store_true",
                   help="flags.backend unleash: create toggles missing in Unleash, each at "
                   "its route's weight in routes.yaml (without it a missing toggle is an "
                   "error)")


def run(args: argparse.Namespace) -> int:
    from proxy.config.loader import ConfigError
    from proxy.serve.app import ServeOptions
    from proxy.serve.app import run as serve
    from proxy.serve.errors import ServeError

    if args.workers < 1:
        print("strangler serve: --workers must be at least 1", file=sys.stderr)
        return USAGE
    if not 0 < args.access_log_sample <= 1:
        print("strangler serve: --access-log-sample must be in (0, 1]", file=sys.stderr)
        return USAGE
    opts = ServeOptions(
        config_path=args.config,
        workers=args.workers,
        log_format=args.log_format,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        access_log_sample=args.access_log_sample,
        watch=not args.no_watch,
        create_flags=args.create_flags,
    )
    try:
        return serve(opts)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return USAGE
    except ServeError as exc:
        print(f"strangler serve: {exc}", file=sys.stderr)
        return USAGE
