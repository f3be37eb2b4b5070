"""`strangler` command line: builds the parser from the modules in `proxy.cli.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from proxy import __version__
from proxy.cli.exitcodes import USAGE

# Subcommand modules, in the order `strangler -h` lists them.
COMMANDS = (
    "serve",
    "validate",
    "schema",
    "status",
    "set_weight",
    "rollback",
    "resume",
    "gate",
    "promote",
    "diffs",
    "reconcile",
    "history",
    "demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2, as argparse does, with a hint
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="strangler",
        description="Strangler-fig migration proxy: weighted sticky routing, shadow diffs, "
        "promotion gate.",
    )
    parser.add_argument("--version", action="version", version=f"strangler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"proxy.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"proxy.cli.commands.{name}":
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
