"""print the JSON Schema of routes.yaml

Print the JSON Schema (2020-12) of routes.yaml, from the same model `strangler validate` checks
with. Editors use it while you type (the repository's copy is docs/routes.schema.json). A schema
cannot check everything: upstream references, routes an earlier route always wins over and
canonical paths are only checked by `strangler validate`.
"""

from __future__ import annotations

import argparse
import sys

from proxy.cli.exitcodes import OK

USES_ADMIN_API = False  # no --admin/--token/--json/--actor options


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--helm", action="store_true",
                   help="the draft-07 form the Helm chart checks its `config` value with")


def run(args: argparse.Namespace) -> int:
    from proxy.config.schema import dumps, helm_schema, routes_schema

    sys.stdout.write(dumps(helm_schema() if args.helm else routes_schema()))
    return OK
