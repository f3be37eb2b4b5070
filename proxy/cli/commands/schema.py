"""`strangler schema [--helm]`: print routes.yaml's JSON Schema, written from the typed model."""

from __future__ import annotations

import argparse
import sys

from proxy.cli.commands._common import command
from proxy.cli.exitcodes import OK


def register(sub: argparse._SubParsersAction) -> None:
    with command(
        sub, "schema", run, client=False,
        help="print the JSON Schema of routes.yaml",
        description="Print the JSON Schema (2020-12) of routes.yaml, from the same model "
        "`strangler validate` checks with. Editors use it while you type (the repository's "
        "copy is docs/routes.schema.json). A schema cannot check everything: upstream "
        "references, routes an earlier route always wins over and canonical paths are only "
        "checked by `strangler validate`.",
    ) as p:
        p.add_argument("--helm", action="store_true",
                       help="the draft-07 form the Helm chart checks its `config` value with")


def run(args: argparse.Namespace) -> int:
    from proxy.config.schema import dumps, helm_schema, routes_schema

    sys.stdout.write(dumps(helm_schema() if args.helm else routes_schema()))
    return OK
