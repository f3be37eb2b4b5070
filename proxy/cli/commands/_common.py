"""What the subcommand modules share: the config option and its loading, and the printer of a
control command's answer. Not a subcommand itself (main.COMMANDS lists those)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from proxy.cli import output
from proxy.cli.client import AdminClient, ClientFailure, print_json
from proxy.cli.exitcodes import USAGE
from proxy.config.loader import ConfigError, load_config

if TYPE_CHECKING:
    from proxy.config.spec import Config

CONFIG_ENV = "STRANGLER_CONFIG"
CONFIG_HELP = "the config file (default: $STRANGLER_CONFIG or routes.yaml)"


def add_config_option(p: argparse.ArgumentParser, *, metavar: str | None = "FILE",
                      help: str = CONFIG_HELP) -> None:
    """`-c/--config`, defaulting to $STRANGLER_CONFIG, else routes.yaml."""
    p.add_argument("-c", "--config", default=os.environ.get(CONFIG_ENV, "routes.yaml"),
                   metavar=metavar, help=help)


def report_problems(problems: Iterable[object]) -> int:
    """Print each problem on its own stderr line; the usage exit code."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return USAGE


def load_or_report(path: str) -> Config | int:
    """The config at `path`, or (after printing every problem in it) the exit code."""
    try:
        return load_config(path)
    except ConfigError as exc:
        return report_problems(exc.problems)


def print_answer(data: dict, as_json: bool, render: Callable[[dict], str],
                 items: Iterable[dict] | None = None) -> None:
    """A control command's answer: with --json as it is, else `render` of each of `items` (the
    answer itself by default; none, no line); then the answer's warning, if any, on stderr."""
    if as_json:
        print_json(data)
    else:
        for item in (data,) if items is None else items:
            print(render(item))
    warn = output.warning(data)
    if warn:
        print(warn, file=sys.stderr)


# -- several replicas (inventory, retire-check) -----------------------------------------------
def add_replica_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replica", action="append", default=[], metavar="URL",
                   help="another replica's admin API, merged in (repeat for each; --admin is "
                   "the first)")


T = TypeVar("T")


def replica_clients(args: argparse.Namespace, first: AdminClient) -> list[AdminClient]:
    """`first` (the --admin one) and a client for each --replica, with the same token."""
    return [first, *(AdminClient.from_args(argparse.Namespace(**{**vars(args), "admin": url}))
                     for url in args.replica)]


def ask_replicas(args: argparse.Namespace, first: AdminClient,
                 ask: Callable[[AdminClient], T]) -> list[T]:
    """`ask` of `first` and of each --replica in turn; a failure names the replica's URL."""
    out = []
    for c in replica_clients(args, first):
        try:
            out.append(ask(c))
        except ClientFailure as exc:
            exc.message = f"{c.url}: {exc.message}"
            raise
        finally:
            if c is not first:
                c.close()
    return out
