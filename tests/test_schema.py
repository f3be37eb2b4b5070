"""routes.yaml's JSON Schema: written from the typed model, committed, and used by editors/Helm.

The committed copies (docs/routes.schema.json, the chart's `config` schema) must be what the
model writes today (`make schema` rewrites them); the schema must accept the files the loader
accepts and refuse what it refuses for type reasons.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from proxy.config.loader import ConfigError, load_config
from proxy.config.schema import (
    DOCS_SCHEMA,
    HELM_SCHEMA,
    chart_values_schema,
    dumps,
    helm_schema,
    routes_schema,
)

ROOT = Path(__file__).resolve().parent.parent

# The committed schemas are written by the pydantic uv.lock pins (`make schema`). Releases before
# 2.11 write the same schema with `"default": null` added in two `items` schemas: supported at
# run time (`make test-lowest` runs the rest of the suite on them), but not the writer of record.
_PYDANTIC = tuple(int(x) for x in pydantic.VERSION.split(".")[:2])
written_by_current_pydantic = pytest.mark.skipif(
    _PYDANTIC < (2, 11), reason=f"pydantic {pydantic.VERSION} writes the schema with extra "
    "`default: null` annotations; the committed schema is written by pydantic >= 2.11")


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _same_in_2020_12(node: Any) -> Any:
    """A 2020-12 schema with `{"allOf": [{"$ref": X}], ...}` written `{"$ref": X, ...}`.

    In draft 2020-12 `$ref` applies beside sibling keywords, so the two forms validate and
    annotate alike; pydantic releases write one or the other. Nothing else is rewritten."""
    if isinstance(node, list):
        return [_same_in_2020_12(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _same_in_2020_12(v) for k, v in node.items()}
    only = out.get("allOf")
    if isinstance(only, list) and len(only) == 1 and isinstance(only[0], dict) \
            and set(only[0]) == {"$ref"} and "$ref" not in out:
        del out["allOf"]
        out["$ref"] = only[0]["$ref"]
    return out


@written_by_current_pydantic
def test_docs_schema_is_what_the_model_writes() -> None:
    """Compared as JSON (not text) and modulo the equivalent `$ref` forms above, so that a
    pydantic release that only writes the schema differently does not fail the suite; `make
    schema` writes it with the pydantic uv.lock pins."""
    committed = json.loads((ROOT / DOCS_SCHEMA).read_text())
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert _same_in_2020_12(committed) == _same_in_2020_12(json.loads(dumps(routes_schema()))), (
        f"{DOCS_SCHEMA} is stale: run `make schema` and commit it")


@written_by_current_pydantic
def test_helm_schema_is_what_the_model_writes() -> None:
    committed = json.loads((ROOT / HELM_SCHEMA).read_text())
    assert committed == chart_values_schema(committed), (
        f"{HELM_SCHEMA}'s config schema is stale: run `make schema` and commit it")
    assert committed["properties"]["config"]["properties"] == helm_schema()["properties"]


@written_by_current_pydantic
def test_strangler_schema_prints_the_committed_schema() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy.cli.main", "schema"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out == (ROOT / DOCS_SCHEMA).read_text()
    helm = subprocess.run([sys.executable, "-m", "proxy.cli.main", "schema", "--helm"],
                          cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert json.loads(helm) == helm_schema()
    assert "definitions" in json.loads(helm) and "$defs" not in helm


def test_routes_yaml_names_the_schema_for_editors() -> None:
    first = (ROOT / "routes.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./docs/routes.schema.json"
    assert (ROOT / "docs" / "routes.schema.json").is_file()


def test_the_shipped_routes_yaml_is_valid_for_the_schema_and_the_loader() -> None:
    doc = yaml.safe_load((ROOT / "routes.yaml").read_text())
    load_config(ROOT / "routes.yaml")
    errors = list(_validator(routes_schema()).iter_errors(doc))
    assert not errors, [e.message for e in errors]


def test_the_demo_config_is_valid_for_the_schema(tmp_path: Path) -> None:
    from proxy.cli.demo import demo_config

    ports = dict.fromkeys(("port", "admin", "mono", "mono2", "new"), 18000)
    text = demo_config(tmp_path, ports)
    doc = yaml.safe_load(text)
    errors = list(_validator(routes_schema()).iter_errors(doc))
    assert not errors, [e.message for e in errors]


BASE = {"version": 1, "upstreams": {"monolith": {"url": "http://127.0.0.1:8001"},
                                    "svc": {"url": "http://127.0.0.1:8002"}},
        "default_upstream": "monolith"}
ROUTE = {"name": "balance", "match": {"path_prefix": "/api/balance"}, "legacy": "monolith",
         "target": "svc"}


@pytest.mark.parametrize("change", [
    {"version": 2},
    {"listen": "nowhere"},
    {"colour": "blue"},
    {"routes": [{**ROUTE, "weight": 101}]},
    {"routes": [{**ROUTE, "weight": "5"}]},
    {"routes": [{**ROUTE, "sticky": {"header": "X-User", "cookie": "u"}}]},
    {"routes": [{**ROUTE, "match": {"path": "/a", "path_prefix": "/a"}}]},
    {"routes": [{**ROUTE, "shadow": {"sample": 2}}]},
    {"routes": [{**ROUTE, "shadow": {"max_body": "lots"}}]},
    {"routes": [{**ROUTE, "promotion": {"steps": []}}]},
    {"routes": [{**ROUTE, "promotion": {"guardrail": {"window": "soon"}}}]},
    {"routes": [{**ROUTE, "promotion": {"checks": [{"name": "p99"}]}}]},
    {"routes": [{**ROUTE, "legacy": None}]},
    {"notify": [{"url": "http://hooks/a", "url_env": "HOOK"}]},
    {"notify": [{"url_env": "HOOK", "events": ["rollbak"]}]},
    {"overrides": {"trusted": {"secret_header": "X-QA"}}},
    {"limits": {"max_headers": 0}},
    {"shadow_budget": {"comparer_nice": 20}},
], ids=lambda c: json.dumps(c)[:60])
def test_schema_and_loader_both_refuse(tmp_path: Path, change: dict) -> None:
    doc = {**BASE, **change}
    assert list(_validator(routes_schema()).iter_errors(doc)), "the schema accepted it"
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("change", [
    {},
    {"routes": [{**ROUTE, "weight": 12.5, "shadow": False, "promotion": None,
                 "sticky": {"cookie": "uid"}, "override": True}],
     "overrides": {"trusted": {"cidrs": ["10.0.0.0/8"]}}},
    {"routes": [{**ROUTE, "shadow": {"max_rate": "unlimited", "max_body": "64KiB",
                                     "compare": {"ignore": ["$.ts", "header:date"]}}}]},
    {"limits": {"header_timeout": "250ms", "max_body": 1048576},
     "shadow_budget": {"max_rate": 50}},
    {"notify": [{"url_env": "HOOK", "format": "slack", "timeout": 2}]},
])
def test_schema_and_loader_both_accept(tmp_path: Path, change: dict) -> None:
    doc = {**BASE, **change}
    errors = list(_validator(routes_schema()).iter_errors(doc))
    assert not errors, [e.message for e in errors]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(doc))
    load_config(path)


def test_every_default_in_the_schema_is_the_loaders_default(tmp_path: Path) -> None:
    """The schema's defaults are read from the specs; an empty block loads to the same."""
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({**BASE, "routes": [ROUTE]}))
    config = load_config(path)
    defs = routes_schema()["$defs"]
    shadow = config.routes[0].shadow
    for key in ("sample", "reverse", "allow_unsafe", "max_body", "pipeline", "max_rate"):
        assert defs["Shadow"]["properties"][key]["default"] == getattr(shadow, key), key
    promotion = config.routes[0].promotion
    assert defs["Promotion"]["properties"]["steps"]["default"] == list(promotion.steps)
    assert defs["Limits"]["properties"]["max_body"]["default"] == config.limits.max_body
    assert routes_schema()["properties"]["listen"]["default"] == str(config.listen)
