"""Whatever the file holds, load_config gives a Config or a ConfigError with located problems.

A reload must never crash the proxy, and `strangler validate` must never print a traceback, so
no input may raise anything but ConfigError, and every problem must point at a real line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import Config

EXAMPLE_TEXT = (Path(__file__).resolve().parent.parent / "routes.yaml").read_text()
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)

FUZZ = settings(
    max_examples=int(os.environ.get("STRANGLER_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KEYS = st.sampled_from([
    "version", "routes", "name", "match", "path", "path_prefix", "path_regex", "methods",
    "weight", "shadow", "compare", "ignore", "steps", "upstreams", "url", "legacy", "target",
    "headers", "sticky", "header", "cookie", "checks", "max", "x", "",
])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1s", "250ms", "1MiB", "http://127.0.0.1:1", "https://h", "/api", "/a/../b",
                     "$.x", "header:date", "GET", "POST", "monolith", "balance-svc", "[", "*",
                     "0.0.0.0:8080", "[::1]:1", "prometheus", "unleash", "1.005", "$..[*]"]),
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=20,
)


def check(text: str) -> Config | None:
    """The property: a Config, or a ConfigError whose every problem has a file and a line."""
    try:
        return load_config("fuzz/routes.yaml", text)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must say what is wrong"
        for p in exc.problems:
            assert p.line >= 1, p
            assert p.file == "fuzz/routes.yaml"
            assert isinstance(p.path, str) and p.message
            assert str(p).startswith(f"fuzz/routes.yaml:{p.line}: ")
        return None


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@FUZZ
@given(DOCS)
def test_arbitrary_documents(doc: Any) -> None:
    check(yaml.safe_dump(doc))


@FUZZ
@given(st.dictionaries(st.sampled_from([*EXAMPLE, "routez"]), DOCS, max_size=6))
def test_arbitrary_values_under_the_real_top_level_keys(doc: dict[str, Any]) -> None:
    check(yaml.safe_dump({"version": 1, **doc}))


@FUZZ
@given(st.data())
def test_mutations_of_the_example(data: st.DataObject) -> None:
    doc = copy.deepcopy(EXAMPLE)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent, last = _parent(doc, path), path[-1]
        op = data.draw(st.sampled_from(["delete", "replace", "add", "stringify"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = data.draw(DOCS)
        elif op == "add" and isinstance(parent[last], dict):
            parent[last][data.draw(KEYS)] = data.draw(DOCS)
        elif op == "add" and isinstance(parent[last], list):
            parent[last].append(data.draw(DOCS))
        else:
            parent[last] = str(parent[last])
    check(yaml.safe_dump(doc, sort_keys=False))


@FUZZ
@given(st.data())
def test_text_edits_of_the_example(data: st.DataObject) -> None:
    text = EXAMPLE_TEXT
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        cut = data.draw(st.integers(min_value=0, max_value=12))
        insert = data.draw(st.one_of(
            st.text(max_size=6),
            st.sampled_from([":", "- ", "\n", "\t", "  ", "{", "]", "&a ", "*a", "!!binary ",
                             "!!python/object:os.system ", "? ", "<<: ", "---\n", "%", "\x00"]),
        ))
        text = text[:at] + insert + text[at + cut:]
    check(text)


def test_the_example_itself_passes_the_property() -> None:
    assert check(EXAMPLE_TEXT) is not None
    assert check(yaml.safe_dump(EXAMPLE)) is not None


def test_anchors_aliases_and_odd_tags_are_located_problems_not_crashes() -> None:
    for text in [
        "a: &x [*x]\n",
        "version: 1\nroutes: &r\n  - *r\n",
        "version: !!python/object:os.system x\n",
        "version: !custom 1\n",
        "version: !!binary 'not base64!'\n",
        "version: 2001-13-45\n",
        "version: 1\nupstreams: !!set {a, b}\n",
        "version: 1\nupstreams: !!omap [a: 1]\n",
        "\ufeffversion: 1\n",
        "[" * 2000,
        "version: 1\nstate_dir: ~nobody-here-at-all/x\n",
        f"version: 1\nroutes: [{{name: a, weight: {10**400}, shadow: {{max_body: {10**400}}}}}]\n",
        f"version: 1\nlimits: {{header_timeout: {10**400}, max_headers: {10**400}}}\n",
    ]:
        check(text)
