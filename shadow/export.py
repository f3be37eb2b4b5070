"""Mismatches become regression tests: recorded requests replayed with the legacy answers as
assertions, for the new service's team to run in their own CI.

Three formats: `hurl` (a Hurl file; run `hurl --test --variable BASE_URL=http://host:port FILE`),
`pytest` (a self-contained module using httpx; run `BASE_URL=http://host:port pytest FILE`) and
`jsonl` (one request per line, `{"method", "path", "headers", "status"}` with legacy's status: the
request set `strangler reconcile --requests FILE` replays; it reads hurl back too).
Only safe-method requests are exported (one per distinct request, newest first). Each asserts the
legacy status and, for a JSON legacy body, every scalar field and array length, except fields at
or below an `ignore` path and redacted fields (left out). Headers that cannot be replayed
(hop-by-hop, Host, lengths, X-Forwarded-*, X-Strangler-Shadow) and redacted ones (credentials) are
not sent: a service that needs authentication needs it added by hand.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from shadow.diff import parse_ignore
from shadow.jsonpath import PathSet, Segment, State, format_path
from shadow.redact import REDACTED

if TYPE_CHECKING:
    from shadow.store import DiffStore

__all__ = ["FORMATS", "Assertion", "assertions", "export", "render_hurl", "render_jsonl",
           "render_pytest"]

FORMATS = ("hurl", "pytest", "jsonl")
_NOT_REPLAYED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "accept-encoding",
        "x-strangler-shadow",
        "x-request-id",
        "forwarded",
    }
)


@dataclass(frozen=True, slots=True)
class Assertion:
    path: tuple[Segment, ...]
    op: str  # "equals" (a scalar), "count" (array length), "object" (an object is there)
    value: object = None

    @property
    def text(self) -> str:
        return format_path(self.path)


def assertions(doc: object, ignore: PathSet | None = None) -> list[Assertion]:
    """What a replay must find in the legacy JSON `doc`."""
    ign = ignore or PathSet(())
    st = ign.start()
    if ign.accepts(st) or doc == REDACTED:
        return []
    return list(_walk(doc, (), st, ign))


def _walk(doc: object, at: tuple[Segment, ...], st: State, ign: PathSet) -> Iterator[Assertion]:
    children: list[tuple[Segment, object]]
    if isinstance(doc, dict):
        yield Assertion(at, "object")
        children = list(doc.items())
    elif isinstance(doc, list):
        yield Assertion(at, "count", len(doc))
        children = list(enumerate(doc))
    else:
        yield Assertion(at, "equals", doc)
        return
    for seg, v in children:
        cst = ign.step(st, seg)
        if ign.accepts(cst) or v == REDACTED:
            continue
        yield from _walk(v, (*at, seg), cst, ign)


@dataclass(frozen=True, slots=True)
class _Case:
    """A recorded request to replay, with legacy's status and the assertions on its body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int
    asserts: tuple[Assertion, ...]


def _cases(samples: list[dict[str, object]], ignore: Sequence[str]) -> list[_Case]:
    body_ignores, _, _ = parse_ignore(ignore)
    ign = PathSet(body_ignores)
    out: list[_Case] = []
    for s in samples:
        leg = s["legacy"]
        assert isinstance(leg, dict)
        asserts: list[Assertion] = []
        lbody = leg["body"]
        if lbody and not leg["truncated"] and s["method"] != "HEAD":
            try:
                asserts = assertions(json.loads(lbody), ign)
            except (ValueError, RecursionError):
                asserts = []
        headers = tuple(
            (k, v)
            for k, v in s["headers"]  # type: ignore[attr-defined]
            if k.lower() not in _NOT_REPLAYED
            and not k.lower().startswith("x-forwarded-")
            and REDACTED not in v
        )
        out.append(
            _Case(
                str(s["method"]),
                str(s["path"]),
                headers,
                bytes(s["body"]),  # type: ignore[arg-type]
                int(leg["status"]),
                tuple(asserts),
            )
        )
    return out


# -- Hurl -----------------------------------------------------------------------------------------


def _hurl_string(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _hurl_value(v: object) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        text = format(Decimal(repr(v)), "f")
        return text if "." in text else text + ".0"
    return _hurl_string(str(v))


def _hurl_header_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("#", "\\#").replace("{{", "\\{\\{")


def render_hurl(route: str, cases: list[_Case]) -> str:
    lines = [
        f"# Regression tests of route {route}: {len(cases)} requests recorded by strangler shadow,",
        "# asserting what legacy answered (ignored fields not asserted, redacted fields left out).",
        f"# Exported {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}.",
        "# Run: hurl --test --variable BASE_URL=http://127.0.0.1:8080 THIS_FILE",
        "",
    ]
    for c in cases:
        lines.append(f"{c.method} {{{{BASE_URL}}}}{c.path}")
        lines.extend(f"{k}: {_hurl_header_value(v)}" for k, v in c.headers)
        if c.body:
            lines.append(f"base64,{base64.b64encode(c.body).decode()};")
        lines.append(f"HTTP {c.status}")
        if c.asserts:
            lines.append("[Asserts]")
            for a in c.asserts:
                q = _hurl_string(a.text)
                if a.op == "count":
                    lines.append(f"jsonpath {q} count == {a.value}")
                elif a.op == "object":
                    lines.append(f"jsonpath {q} isCollection")
                elif a.value is None:
                    lines.append(f"jsonpath {q} == null")
                else:
                    lines.append(f"jsonpath {q} == {_hurl_value(a.value)}")
        lines.append("")
    return "\n".join(lines)


# -- pytest ---------------------------------------------------------------------------------------

_PYTEST_TEMPLATE = '''"""Regression tests of route {route}: {n} requests recorded in shadow.

Each test replays one request against BASE_URL and asserts what legacy answered: the status and,
for JSON, every field (ignored fields are not asserted, redacted fields are left out).
Exported {when}. Needs pytest and httpx.

    BASE_URL=http://127.0.0.1:8080 python -m pytest THIS_FILE
"""

import base64
import json
import os

import httpx
import pytest

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8080").rstrip("/")
TIMEOUT = float(os.environ.get("TIMEOUT", "30"))
CASES = json.loads({cases})
_MISSING = object()


def _at(doc, path):
    for seg in path:
        if isinstance(seg, int):
            if not isinstance(doc, list) or seg >= len(doc):
                return _MISSING
        elif not isinstance(doc, dict) or seg not in doc:
            return _MISSING
        doc = doc[seg]
    return doc


def _kind(v):
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def _check(doc, a):
    got = _at(doc, a["at"])
    if a["op"] == "count":
        ok = isinstance(got, list) and len(got) == a["value"]
        want = "an array of %d items" % a["value"]
    elif a["op"] == "object":
        ok = isinstance(got, dict)
        want = "an object"
    else:
        ok = got is not _MISSING and _kind(got) == _kind(a["value"]) and got == a["value"]
        want = repr(a["value"])
    if ok:
        return None
    shown = "nothing" if got is _MISSING else repr(got)
    return "%s: expected %s, got %s" % (a["path"], want, shown)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_replay(case):
    resp = httpx.request(
        case["method"],
        BASE_URL + case["path"],
        headers=[tuple(h) for h in case["headers"]],
        content=base64.b64decode(case["body"]),
        timeout=TIMEOUT,
    )
    assert resp.status_code == case["status"], "status %d, legacy answered %d" % (
        resp.status_code,
        case["status"],
    )
    if not case["asserts"]:
        return
    doc = resp.json()
    failures = [f for f in (_check(doc, a) for a in case["asserts"]) if f]
    assert not failures, "\\n".join(failures)
'''


def render_pytest(route: str, cases: list[_Case]) -> str:
    data = [
        {
            "id": f"{i:03d} {c.method} {c.path}"[:120],
            "method": c.method,
            "path": c.path,
            "headers": [list(h) for h in c.headers],
            "body": base64.b64encode(c.body).decode(),
            "status": c.status,
            "asserts": [
                {"path": a.text, "at": list(a.path), "op": a.op, "value": a.value}
                for a in c.asserts
            ],
        }
        for i, c in enumerate(cases)
    ]
    # json.dumps of a str is a valid Python string literal
    literal = json.dumps(json.dumps(data, ensure_ascii=True, indent=1))
    return _PYTEST_TEMPLATE.format(
        route=re.sub(r"[^\w.-]", "_", route),
        n=len(cases),
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cases=literal,
    )


# -- jsonl (the request set of `strangler reconcile`) -----------------------------------------


def render_jsonl(route: str, cases: list[_Case]) -> str:
    """One JSON object per line; bodies are left out (reconcile replays GET and HEAD only)."""
    return "".join(
        json.dumps({"method": c.method, "path": c.path, "headers": [list(h) for h in c.headers],
                    "status": c.status, "route": route}, ensure_ascii=False) + "\n"
        for c in cases
    )


def export(
    store: DiffStore, route: str, fmt: str, path: Path | str, *, ignore: Sequence[str] = ()
) -> int:
    """Write the route's recorded safe requests as regression tests; returns how many.

    `ignore` is the route's `compare.ignore` list (its fields are not asserted).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    cases = _cases(store.samples_for_export(route), ignore)
    render = {"hurl": render_hurl, "pytest": render_pytest, "jsonl": render_jsonl}[fmt]
    text = render(route, cases)
    Path(path).write_text(text, encoding="utf-8")
    return len(cases)
