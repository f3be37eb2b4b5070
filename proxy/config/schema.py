"""JSON Schema of routes.yaml, written from the typed model (`proxy.config.model`).

`routes_schema()` is what `strangler schema` prints and docs/routes.schema.json holds (editors
validate routes.yaml with it: the file's first line names it for yaml-language-server);
`helm_schema()` is the same schema in draft-07, the dialect Helm checks values.yaml with.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from proxy.config import values as v
from proxy.config.model import Check, RoutesFile, Token
from proxy.config.spec import HostPort

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SHARED = {"duration": v.DURATION_SCHEMA, "size": v.SIZE_SCHEMA}


class _Generate(GenerateJsonSchema):
    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, HostPort):
            return str(dft)
        if isinstance(dft, BaseModel):  # a block left out is the block with its defaults
            return {}
        if isinstance(dft, tuple):
            return [self.encode_default(x) for x in dft]
        return super().encode_default(dft)


def _refs(node: Any, prefix: str) -> Any:
    """Shared value types are marked `{"x-strangler-ref": name}` in the model; make them refs."""
    if isinstance(node, list):
        return [_refs(x, prefix) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _refs(x, prefix) for k, x in node.items() if k != "title"}
    if "x-strangler-ref" in node:
        out.pop("x-strangler-ref")
        ref = {"$ref": f"{prefix}{node['x-strangler-ref']}"}
        if out:
            return {"allOf": [ref], **out}
        return ref
    return out


def routes_schema() -> dict[str, Any]:
    """The schema in JSON Schema 2020-12 (`$defs`)."""
    schema = RoutesFile.model_json_schema(schema_generator=_Generate)
    defs = schema.pop("$defs", {})
    defs["Check"] = Check.model_json_schema(schema_generator=_Generate)
    defs["Token"] = Token.model_json_schema(schema_generator=_Generate)
    defs.update(copy.deepcopy(_SHARED))
    body = _refs(schema, "#/$defs/")
    out: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": "https://strangler.dev/schemas/routes.schema.json",
        "title": "strangler routes.yaml",
        "description": "routes.yaml, version 1 (written by `strangler schema`; "
                       "`strangler validate` checks what a schema cannot: references, "
                       "coverage, canonical paths)",
    }
    body.pop("description", None)
    out.update(body)
    out["$defs"] = {name: _refs(d, "#/$defs/") for name, d in sorted(defs.items())}
    return out


def helm_schema() -> dict[str, Any]:
    """The same schema for the Helm chart's `config` value: draft-07 (`definitions`), with
    what differs in a chart: an upstream may be null (a values override removes it) and
    state_dir is a path in the pod, so absolute."""
    schema = routes_schema()
    text = json.dumps(schema).replace("#/$defs/", "#/definitions/")
    out = json.loads(text)
    out["definitions"] = out.pop("$defs")
    for key in ("$schema", "$id", "title"):
        out.pop(key, None)
    props = out["properties"]
    upstream = props["upstreams"]["additionalProperties"]
    props["upstreams"]["additionalProperties"] = {"oneOf": [upstream, {"type": "null"}]}
    props["state_dir"] = {**props["state_dir"], "pattern": "^/",
                          "description": "absolute path in the pod"}
    props["state_dir"].pop("default", None)
    return _draft7(out)


def _draft7(node: Any) -> Any:
    """2020-12's dependentRequired is draft-07's dependencies."""
    if isinstance(node, list):
        return [_draft7(x) for x in node]
    if not isinstance(node, dict):
        return node
    return {("dependencies" if k == "dependentRequired" else k): _draft7(x)
            for k, x in node.items()}


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def chart_values_schema(current: dict[str, Any]) -> dict[str, Any]:
    """The chart's values.schema.json with its `config` part (and the definitions that part
    uses) replaced by `helm_schema()`; the chart's own values are left as they are."""
    config = helm_schema()
    definitions = config.pop("definitions")
    out = copy.deepcopy(current)
    described = out["properties"].get("config", {}).get("description")
    out["properties"]["config"] = {**({"description": described} if described else {}),
                                   **config}
    out["definitions"] = {**{k: d for k, d in out.get("definitions", {}).items()
                             if k not in definitions}, **definitions}
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m proxy.config.schema --write`: rewrite the two committed copies."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m proxy.config.schema")
    parser.add_argument("--write", action="store_true",
                        help="rewrite docs/routes.schema.json and the Helm chart's schema")
    args = parser.parse_args(argv)
    if not args.write:
        print(dumps(routes_schema()), end="")
        return 0
    root = Path(__file__).resolve().parents[2]
    (root / DOCS_SCHEMA).write_text(dumps(routes_schema()))
    chart = root / HELM_SCHEMA
    chart.write_text(dumps(chart_values_schema(json.loads(chart.read_text()))))
    return 0


DOCS_SCHEMA = "docs/routes.schema.json"
HELM_SCHEMA = "helm/strangler/values.schema.json"

if __name__ == "__main__":
    raise SystemExit(main())
