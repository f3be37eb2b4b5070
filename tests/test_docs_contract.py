"""docs/contract.md against the code: a drift check, not a copy of the doc's lists.

Every list below is read from the code itself: the routes.yaml keys by probing the loader (each
mapping is fed an unknown key and its error names the keys allowed there, recursively, so a new
block is found without anyone registering it), the CLI from the argparse parser, the admin
endpoints from the aiohttp router, the metrics from a real collector's exposition, the exit codes
from proxy/cli/exitcodes.py. A test fails naming what the doc is missing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import exitcodes
from proxy.cli.main import build_parser
from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import (
    AdminSpec,
    GateSourceSpec,
    HostPort,
    LimitsSpec,
    PromotionSpec,
    ShadowSpec,
    UnleashSpec,
    UpstreamSpec,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "contract.md"
HELM_SCHEMA = ROOT / "helm" / "strangler" / "values.schema.json"
TEXT = DOC.read_text(encoding="utf-8")

Path_ = tuple[str | int, ...]  # a key path: strings for keys, 0 for a list item, "*" for any key


# --- the doc ---------------------------------------------------------------------------------


def section(title: str) -> str:
    """The text of the `## N. <title>...` section, up to the next `## `."""
    m = re.search(rf"^## \d+\. {re.escape(title)}.*?$(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert m, f"docs/contract.md has no section '## N. {title}'"
    return m.group(1)


def subsection(text: str, heading_start: str) -> str | None:
    """The `### <heading_start>...` subsection of `text` (heading included), or None."""
    m = re.search(rf"^### {re.escape(heading_start)}.*?(?=^### |^## |^<!-- EXTEND|\Z)",
                  text, re.M | re.S)
    return m.group(0) if m else None


def yaml_blocks() -> list[Any]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", section("routes.yaml"), re.M | re.S)
    assert blocks, "the routes.yaml section has no ```yaml blocks"
    return [yaml.safe_load(b) for b in blocks]


def doc_paths(node: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key))
            yield from doc_paths(value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from doc_paths(item, (*path, 0))


def render(path: Path_) -> str:
    """routes[0].shadow.sample, the loader's way of naming a field."""
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out


# --- what the loader accepts -------------------------------------------------------------------

PROBE, PROBE2 = "zz_probe", "zz_probe2"
SKELETON: dict[str, Any] = {
    "version": 1,
    "upstreams": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
    "default_upstream": "a",
    "routes": [{"name": "r", "legacy": "a", "target": "b"}],
}
_UNKNOWN = re.compile(r"^unknown key '(?P<key>[^']*)'; expected one of: (?P<keys>.*?)"
                      r"(?: \(did you mean '[^']*'\?\))?$")


def _allowed(doc: dict, probe_path: Path_) -> list[str] | None:
    """The keys the loader lists when the key at `probe_path` is unknown, or None."""
    try:
        load_config("probe.yaml", yaml.safe_dump(doc))
        return None
    except ConfigError as exc:
        problems = exc.problems
    want = render(probe_path)
    for p in problems:
        m = _UNKNOWN.match(p.message)
        if p.path == want and m and m["key"] == probe_path[-1]:
            return [k.strip() for k in m["keys"].split(",")]
    return None


def _with(doc: dict, path: Path_, value: Any) -> dict:
    """A copy of `doc` with `value` at `path`; missing mappings on the way are created."""
    out = copy.deepcopy(doc)
    node: Any = out
    for seg in path[:-1]:
        if isinstance(seg, str) and not isinstance(node.get(seg), dict | list):
            node[seg] = {}
        node = node[seg]
    node[path[-1]] = value
    return out


def _at(doc: dict, path: Path_) -> Any:
    node: Any = doc
    for seg in path:
        try:
            node = node[seg]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def accepted_paths(doc: dict = SKELETON, path: Path_ = ()) -> list[Path_]:
    """Every key path the loader accepts below `path`: mappings with fixed keys, lists of
    them, and user-keyed mappings (upstreams) whose values are mappings."""
    here = _at(doc, path) if path else doc
    own = dict(here) if isinstance(here, dict) else {}
    keys = _allowed(_with(doc, path, {**own, PROBE: 1}) if path else {**own, PROBE: 1},
                    (*path, PROBE))
    if keys is not None:  # a mapping with fixed keys
        out: list[Path_] = []
        for k in keys:
            out += [(*path, k), *accepted_paths(doc, (*path, k))]
        return out
    assert path, "the top level of routes.yaml did not report an unknown key"
    first = dict(here[0]) if isinstance(here, list) and here and isinstance(here[0], dict) \
        else {}
    keys = _allowed(_with(doc, path, [{**first, PROBE: 1}]), (*path, 0, PROBE))
    if keys is not None:  # a list of mappings
        base = _with(doc, path, [first])
        out = []
        for k in keys:
            out += [(*path, 0, k), *accepted_paths(base, (*path, 0, k))]
        return out
    keys = _allowed(_with(doc, path, {**own, PROBE: {PROBE2: 1}}), (*path, PROBE, PROBE2))
    if keys is not None:  # user-chosen keys, each a mapping: named "*"
        base = _with(doc, path, {**own, PROBE: {}})
        out = []
        for k in keys:
            below = accepted_paths(base, (*path, PROBE, k))
            out += [(*path, "*", *p[len(path) + 1:]) for p in [(*path, PROBE, k), *below]]
        return out
    return []  # a value: scalar, list of scalars, or a mapping of scalars (headers, array_keys)


@functools.cache
def accepted() -> tuple[Path_, ...]:
    return tuple(accepted_paths())


def _pattern(path: Path_) -> re.Pattern[str]:
    """A regex for the doc paths that document `path` (the key itself or anything below)."""
    parts = []
    for seg in path:
        if isinstance(seg, int):
            parts.append(r"\[0\]")
        elif seg == "*":
            parts.append(r"\.[^.\[]+")
        else:
            parts.append(("." if parts else "") + re.escape(seg))
    return re.compile("^" + "".join(parts) + r"(?:[.\[]|$)")


def test_the_probe_finds_the_loader_keys_it_must() -> None:
    """The probe itself can fail: known keys at each kind of place must be among its results."""
    found = {render(p) for p in accepted()}
    for known in ("version", "limits.max_body", "upstreams.*.timeout", "routes[0].weight",
                  "routes[0].shadow.compare.noise_upstream", "routes[0].promotion.checks[0].max",
                  "routes[0].promotion.guardrail.window", "flags.unleash.refresh_interval",
                  "routes[0].promotion.min_latency_samples"):
        assert known in found, f"probe did not find {known}; found {sorted(found)}"


def test_every_routes_yaml_key_the_loader_accepts_is_documented() -> None:
    documented = {render(p) for block in yaml_blocks() for p in doc_paths(block)}
    missing = [render(p) for p in accepted()
               if not any(_pattern(p).match(d) for d in documented)]
    assert not missing, (
        "docs/contract.md does not document these routes.yaml keys the loader accepts: "
        f"{', '.join(missing)}. Add them to the reference ```yaml block of section 3 at their "
        "default (or to a block of their own when they have none) and explain them.")


def test_the_reference_file_loads_and_shows_the_loaders_defaults(tmp_path: Path) -> None:
    reference = yaml_blocks()[0]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(reference))
    config = load_config(path)  # the doc's reference file is a valid routes.yaml
    assert config.listen == HostPort("0.0.0.0", 8080)
    assert config.admin == AdminSpec()
    assert config.state_dir == tmp_path / ".strangler"
    assert config.limits == LimitsSpec(), _not_defaults("limits", config.limits, LimitsSpec())
    assert config.gate == GateSourceSpec() and config.flags.backend == "file"
    first = next(iter(config.upstreams.values()))
    defaults = UpstreamSpec(name="", url="", host="", port=0)
    assert (first.connect_timeout, first.timeout, first.max_connections) == (
        defaults.connect_timeout, defaults.timeout, defaults.max_connections)
    (route,) = config.routes
    assert route.weight == 0.0 and route.fallback_to_legacy and not route.websocket
    assert route.shadow == ShadowSpec(), _not_defaults("shadow", route.shadow, ShadowSpec())
    assert route.promotion == PromotionSpec(), _not_defaults("promotion", route.promotion,
                                                             PromotionSpec())


def _not_defaults(block: str, shown: Any, default: Any) -> str:
    wrong = [f"{block}.{f.name}: the doc shows {getattr(shown, f.name)!r}, the default is "
             f"{getattr(default, f.name)!r}" for f in dataclasses.fields(default)
             if getattr(shown, f.name) != getattr(default, f.name)]
    return "the reference block of docs/contract.md section 3 is not at the defaults: " + \
        "; ".join(wrong)


def test_the_unleash_block_shows_the_loaders_defaults(tmp_path: Path) -> None:
    (unleash,) = [b for b in yaml_blocks() if (b.get("flags") or {}).get("backend") == "unleash"]
    doc = {**yaml_blocks()[0], "flags": unleash["flags"]}
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).flags.unleash == UnleashSpec()


def test_every_routes_yaml_key_is_in_the_helm_values_schema() -> None:
    full = json.loads(HELM_SCHEMA.read_text())
    schema = full["properties"]["config"]

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = _at(full, tuple(node["$ref"].removeprefix("#/").split("/")))
        return node

    def has(node: dict, path: Path_) -> bool:
        for seg in path:
            node = resolve(node)
            node = node.get("items", node) if isinstance(seg, int) else node
            if isinstance(seg, int):
                continue
            variants = [resolve(v) for v in node.get("anyOf") or node.get("oneOf") or [node]]
            nxt = None
            for v in variants:
                props = v.get("properties") or {}
                if seg == "*":
                    nxt = v.get("additionalProperties") if isinstance(
                        v.get("additionalProperties"), dict) else None
                elif seg in props:
                    nxt = props[seg]
                if nxt is not None:
                    break
            if nxt is None:
                return False
            node = nxt
        return True

    missing = [render(p) for p in accepted() if not has(schema, p)]
    assert not missing, f"{HELM_SCHEMA.relative_to(ROOT)} has no schema for: {missing}"


# --- the command line --------------------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _admin_group(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for g in p._action_groups if g.title == "admin API" for a in g._group_actions]


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_subcommand_explains_itself_in_its_help() -> None:
    """`strangler -h` gives each command a line, `strangler NAME -h` a description; both come
    from the command module's docstring, and a percent sign prints as one (100%, not 100%%)."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = {a.dest: a.help for a in sub._choices_actions}  # what `strangler -h` lists
    problems = []
    for name, p in sub.choices.items():
        if not lines.get(name):
            problems.append(f"{name}: no help line in `strangler -h`")
        if not p.description or len(p.description) < 40:
            problems.append(f"{name}: no description in `strangler {name} -h`")
        if "%%" in p.format_help():
            problems.append(f"{name}: '%%' in `strangler {name} -h`")
    assert "%%" not in parser.format_help()
    assert not problems, problems


def test_every_subcommand_and_option_is_documented() -> None:
    cli = section("Command line")
    admin = subsection(cli, "Admin options")
    assert admin, "docs/contract.md: no '### Admin options' subsection"
    problems = []
    for name, p in _subcommands().items():
        text = subsection(cli, f"`strangler {name}")
        if text is None:
            problems.append(f"no '### `strangler {name} ...`' subsection")
            continue
        heading = text.splitlines()[0]
        group = _admin_group(p)
        if group and "[admin options]" not in heading:
            problems.append(f"{name}: takes the admin options; say [admin options] in its heading")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:
                if action.metavar and not _mentions(heading, str(action.metavar)):
                    problems.append(f"{name}: positional {action.metavar} not in its heading")
                continue
            where = admin if action in group else text
            for option in action.option_strings:
                if option.startswith("--") and not _mentions(where, option):
                    problems.append(f"{name}: option {option} not documented")
    assert not problems, "docs/contract.md section 2: " + "; ".join(problems)


def test_no_documented_subcommand_is_gone() -> None:
    documented = set(re.findall(r"^### `strangler ([a-z-]+)", section("Command line"), re.M))
    assert documented, "no command subsections found"
    assert documented <= set(_subcommands()), documented - set(_subcommands())


def test_every_exit_code_is_in_the_table() -> None:
    codes = {v for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)}
    assert codes >= {0, 1, 2, 3, 4}
    table = subsection(section("Command line"), "Exit codes") or ""
    missing = [c for c in sorted(codes) if not re.search(rf"^\| {c} \|", table, re.M)]
    assert not missing, f"exit codes missing from the table: {missing}"


# --- admin API and metrics, read from a real server object -------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Any:
    from proxy.serve.app import ServeOptions, Server

    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(SKELETON))
    config = load_config(path)
    return Server(ServeOptions(config_path=str(path), access_log=False, watch=False), config,
                  path.read_text())


def test_every_admin_endpoint_is_documented(server: Any) -> None:
    from proxy.api.admin import build_admin_app
    from proxy.api.auth import Tokens

    app = build_admin_app(server, Tokens(None, None))
    endpoints = sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                        if r.method != "HEAD"})
    assert ("GET", "/admin/routes") in endpoints
    text = section("Admin API")
    missing = [f"{m} {p}" for m, p in endpoints
               if not re.search(rf"`{m} {re.escape(p)}(?![\w/{{}}-])", text)]
    assert not missing, f"admin endpoints not in docs/contract.md section 4: {missing}"


def test_every_metric_and_label_value_is_documented(server: Any) -> None:
    from types import SimpleNamespace

    from proxy.api.metrics import ProcessesCollector, StranglerCollector, make_registry, render
    from proxy.api.migration_view import MigrationCollector
    from proxy.control.migration import progress

    rt = server.runtime
    migration = MigrationCollector(
        {"progress": progress({("GET", "/a", "r", "target"): [1, 0, {}]})},
        lambda: SimpleNamespace(dropped={"requests": 0, "comparisons": 0}))
    exposition = render(make_registry(
        StranglerCollector(rt.agg, rt.weights_for_metrics, lambda: rt.counters),
        ProcessesCollector(server.processes), migration))[0].decode()
    families = re.findall(r"^# TYPE (\S+) \S+$", exposition, re.M)
    assert "strangler_requests_total" in families
    text = section("Metrics")
    problems = [f"metric {f}" for f in families if f"`{f}`" not in text]
    values: set[tuple[str, str]] = set()
    for labels in re.findall(r"^\w+\{(.*)\} ", exposition, re.M):
        for name, value in re.findall(r'(\w+)="([^"]*)"', labels):
            if name not in ("route", "upstream", "code", "le", "version", "implementation",
                            "major", "minor", "patchlevel"):  # python_info's: the runtime's
                values.add((name, value))
    assert ("reason", "queue_full") in values
    problems += [f"{n}={v}" for n, v in sorted(values) if f"`{v}`" not in text]
    assert not problems, f"not in docs/contract.md section 6: {problems}"


# --- the doc is reachable -----------------------------------------------------------------------


def test_readme_links_the_contract_and_no_clone_less_path() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/contract.md)" in readme
    assert "../shared" not in readme
