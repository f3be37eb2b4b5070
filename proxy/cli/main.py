"""`strangler` command line: builds the parser from the modules in `proxy.cli.commands`."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from types import ModuleType

from proxy import __version__, dataplane
from proxy.cli.client import add_client_options
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
    "approve",
    "reset_evidence",
    "diffs",
    "reconcile",
    "inventory",
    "retire_check",
    "retire",
    "history",
    "store",
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
    parser.add_argument("--version", action="version",
                        version=f"strangler {__version__}, data plane {dataplane.describe()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"proxy.cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"proxy.cli.commands.{name}":
                raise
            continue  # not built yet
        add_command(sub, module)
    return parser


def add_command(sub: argparse._SubParsersAction, module: ModuleType) -> None:
    """The subcommand a module in `proxy.cli.commands` declares.

    Its name is the module's (`_` written `-`); the docstring's first line is its one-line help
    in `strangler -h`, the rest its description in `strangler NAME -h`. Its own arguments come
    from `arguments(p)` when it has one; then `--reason` when NEEDS_REASON, then the admin API
    options unless USES_ADMIN_API is False (the order `-h` lists them in). `run(args)` is what
    it runs and returns the exit code.
    """
    name = module.__name__.rpartition(".")[2].replace("_", "-")
    summary, _, description = inspect.cleandoc(module.__doc__ or "").partition("\n")
    # argparse %-formats a subcommand's help (not a description without %(prog)).
    p = sub.add_parser(name, help=summary.replace("%", "%%"), description=description.strip())
    arguments = getattr(module, "arguments", None)
    if arguments is not None:
        arguments(p)
    if getattr(module, "NEEDS_REASON", False):
        p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    if getattr(module, "USES_ADMIN_API", True):
        add_client_options(p)
    p.set_defaults(func=module.run)


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
