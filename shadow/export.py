"""Mismatches become regression tests: recorded requests replayed with the legacy answers as
assertions, for the new service's team to run in their own CI.

Three formats: `hurl` (a Hurl file; run `hurl --test --variable BASE_URL=http://host:port FILE`),
`pytest` (a self-contained module using httpx; run `BASE_URL=http://host:port pytest FILE`) and
`jsonl` (one request per line, `{"method", "path", "headers", "status"}` with legacy's status: the
request set `strangler reconcile --requests FILE` replays; it reads hurl back too).
Only safe-method requests are exported (one per distinct request, newest first). Each asserts
what the route's current compare rules compare: the legacy status (unless `ignore` lists
`status`) and, for a JSON legacy body, every scalar field and array length, except fields at or
below an `ignore` path and redacted fields (left out). Elements of an array named in
`array_keys` are found by their key (`$.lines[id=7].amount`), never by position; numbers are
asserted within `numeric_tolerance` (1 and 1.0 are equal), strings after NFC. A request whose
recorded legacy body was cut (at 16 KiB, or at shadow.max_body) or withheld (redaction) is
exported with its status only and listed, with a count, in the file's header. Headers that
cannot be replayed (hop-by-hop, Host, lengths, encodings, X-Forwarded-*, X-Strangler-Shadow)
and redacted ones (credentials) are not sent: a service that needs authentication needs it
added by hand.
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

from proxy.config.spec import CompareSpec
from shadow.diff import index_by, parse_ignore
from shadow.jsonpath import Keyed, PathSet, Segment, State, format_path
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
        "content-encoding",  # recorded request bodies are stored decoded
        "x-strangler-shadow",
        "x-request-id",
        "forwarded",
    }
)


@dataclass(frozen=True, slots=True)
class Assertion:
    path: tuple[Segment | Keyed, ...]
    op: str  # "equals" (a scalar), "count" (array length), "object" (an object is there)
    value: object = None

    @property
    def text(self) -> str:
        return format_path(self.path)


@dataclass(frozen=True, slots=True)
class _Rules:
    """What an export asserts, from the route's compare rules."""

    ignore: PathSet
    keys: PathSet
    key_fields: tuple[str, ...]
    redact: PathSet
    status: bool  # assert the status (ignore does not list "status")
    tolerance: float

    @classmethod
    def of(cls, spec: CompareSpec, ignore: PathSet | None = None) -> _Rules:
        body, _, status = parse_ignore(spec.ignore)
        return cls(ignore if ignore is not None else PathSet(body),
                   PathSet([p for p, _ in spec.array_keys]),
                   tuple(k for _, k in spec.array_keys),
                   PathSet([p for p in spec.redact if p.startswith("$")]),
                   not status, float(spec.numeric_tolerance))


def assertions(doc: object, ignore: PathSet | None = None,
               spec: CompareSpec | None = None) -> list[Assertion]:
    """What a replay must find in the legacy JSON `doc` (`ignore` overrides the spec's)."""
    rules = _Rules.of(spec or CompareSpec(), ignore)
    st = rules.ignore.start()
    if rules.ignore.accepts(st) or doc == REDACTED:
        return []
    return list(_walk(doc, (), st, rules.keys.start(), rules.redact.start(), rules))


def _walk(doc: object, at: tuple[Segment | Keyed, ...], ign: State, keys: State, red: State,
          rules: _Rules) -> Iterator[Assertion]:
    children: list[tuple[Segment, Segment | Keyed, object]]
    if isinstance(doc, dict):
        yield Assertion(at, "object")
        children = [(k, k, v) for k, v in doc.items()]
    elif isinstance(doc, list):
        yield Assertion(at, "count", len(doc))
        children = [(i, i, v) for i, v in enumerate(doc)]
        matched = rules.keys.accepted(keys)
        if matched:
            field = rules.key_fields[min(matched)]
            if index_by(doc, field) is not None:  # the comparator matches them by key too
                children = [(i, Keyed(field, v[field], i), v)  # type: ignore[index]
                            for i, v in enumerate(doc)]
    else:
        yield Assertion(at, "equals", doc)
        return
    for seg, shown, v in children:
        cst = rules.ignore.step(ign, seg)
        rst = rules.redact.step(red, seg)
        if rules.ignore.accepts(cst) or rules.redact.accepts(rst) or v == REDACTED:
            continue
        yield from _walk(v, (*at, shown), cst, rules.keys.step(keys, seg), rst, rules)


@dataclass(frozen=True, slots=True)
class _Case:
    """A recorded request to replay, with legacy's status and the assertions on its body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int | None  # None: not asserted (ignore lists "status")
    asserts: tuple[Assertion, ...]
    status_only: str | None = None  # why the body is not asserted: "cut" or "withheld"


def _cases(samples: list[dict[str, object]], spec: CompareSpec) -> list[_Case]:
    rules = _Rules.of(spec)
    out: list[_Case] = []
    for s in samples:
        leg = s["legacy"]
        assert isinstance(leg, dict)
        asserts: list[Assertion] = []
        why = None
        lbody = leg["body"]
        if leg.get("withheld"):
            why = "withheld"
        elif lbody and leg["truncated"]:
            why = "cut"
        elif lbody and s["method"] != "HEAD":
            try:
                asserts = assertions(json.loads(lbody), spec=spec)
            except (ValueError, RecursionError):
                asserts = []
        headers = tuple(
            (k, v)
            for k, v in s["headers"]  # type: ignore[attr-defined]
            if k.lower() not in _NOT_REPLAYED
            and not k.lower().startswith("x-forwarded-")
            and REDACTED not in v
        )
        out.append(_Case(str(s["method"]), str(s["path"]), headers,
                         bytes(s["body"]),  # type: ignore[arg-type]
                         int(leg["status"]) if rules.status else None, tuple(asserts), why))
    return out


def _notes(cases: list[_Case]) -> list[str]:
    """The file header's list of requests asserted by status only, and why."""
    notes = []
    for why, text in (("cut", "the recorded legacy answer was cut (16 KiB or shadow.max_body)"),
                      ("withheld", "the recorded legacy answer was withheld (redaction)")):
        hit = [c for c in cases if c.status_only == why]
        if hit:
            notes.append(f"{len(hit)} request(s) asserted by status only: {text}:")
            notes += [f"  {c.method} {c.path}" for c in hit[:20]]
            if len(hit) > 20:
                notes.append(f"  ... and {len(hit) - 20} more")
    return notes


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


def _hurl_query(path: tuple[Segment | Keyed, ...]) -> tuple[str, bool]:
    """A JSONPath for Hurl, and whether it goes through a key filter (then the query returns a
    collection: `nth 0` takes the element)."""
    out = ["$"]
    filtered = False
    for s in path:
        if isinstance(s, Keyed):
            v = s.value
            lit = json.dumps(v) if not isinstance(v, str) else "'" + v.replace("'", "\\'") + "'"
            out.append(f"[?(@.{s.field}=={lit})]")
            filtered = True
        else:
            out.append(format_path((s,))[1:])
    return "".join(out), filtered


def render_hurl(route: str, cases: list[_Case], tolerance: float = 0.0) -> str:
    lines = [
        f"# Regression tests of route {route}: {len(cases)} requests recorded by strangler shadow,",
        "# asserting what legacy answered (ignored fields not asserted, redacted fields left out,",
        "# array_keys elements found by key).",
        *(f"# {n}" for n in _notes(cases)),
        f"# Exported {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}.",
        "# Run: hurl --test --variable BASE_URL=http://127.0.0.1:8080 THIS_FILE",
        "",
    ]
    for c in cases:
        lines.append(f"{c.method} {{{{BASE_URL}}}}{c.path}")
        lines.extend(f"{k}: {_hurl_header_value(v)}" for k, v in c.headers)
        if c.body:
            lines.append(f"base64,{base64.b64encode(c.body).decode()};")
        lines.append(f"HTTP {c.status if c.status is not None else '*'}")
        if c.asserts:
            lines.append("[Asserts]")
            for a in c.asserts:
                query, filtered = _hurl_query(a.path)
                q = _hurl_string(query) + (" nth 0" if filtered else "")
                v = a.value
                if a.op == "count":
                    lines.append(f"jsonpath {q} count == {v}")
                elif a.op == "object":
                    lines.append(f"jsonpath {q} isCollection")
                elif v is None:
                    lines.append(f"jsonpath {q} == null")
                elif tolerance and isinstance(v, int | float) and not isinstance(v, bool):
                    lines.append(f"jsonpath {q} >= {_hurl_value(float(v) - tolerance)}")
                    lines.append(f"jsonpath {q} <= {_hurl_value(float(v) + tolerance)}")
                else:
                    lines.append(f"jsonpath {q} == {_hurl_value(v)}")
        lines.append("")
    return "\n".join(lines)


# -- pytest ---------------------------------------------------------------------------------------

_PYTEST_TEMPLATE = '''"""Regression tests of route {route}: {n} requests recorded in shadow.

Each test replays one request against BASE_URL and asserts what legacy answered: the status and,
for JSON, every field (ignored fields are not asserted, redacted fields are left out, elements of
keyed arrays are found by key, numbers within {tolerance}, strings after NFC).
{notes}Exported {when}. Needs pytest and httpx.

    BASE_URL=http://127.0.0.1:8080 python -m pytest THIS_FILE
"""

import base64
import json
import os
import unicodedata

import httpx
import pytest

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8080").rstrip("/")
TIMEOUT = float(os.environ.get("TIMEOUT", "30"))
TOLERANCE = {tolerance}
CASES = json.loads({cases})
_MISSING = object()


def _element(doc, seg):
    """The element of list `doc` whose `seg["key"]` is `seg["value"]` (exactly one)."""
    if not isinstance(doc, list):
        return _MISSING
    found = [el for el in doc if isinstance(el, dict) and seg["key"] in el
             and _same(el[seg["key"]], seg["value"])]
    return found[0] if len(found) == 1 else _MISSING


def _at(doc, path):
    for seg in path:
        if isinstance(seg, dict):
            doc = _element(doc, seg)
            if doc is _MISSING:
                return _MISSING
            continue
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


def _same(got, want):
    if _kind(got) != _kind(want):
        return False
    if _kind(want) == "number":
        return got == want or abs(got - want) <= TOLERANCE
    if isinstance(want, str):
        return unicodedata.normalize("NFC", got) == unicodedata.normalize("NFC", want)
    return got == want


def _check(doc, a):
    got = _at(doc, a["at"])
    if a["op"] == "count":
        ok = isinstance(got, list) and len(got) == a["value"]
        want = "an array of %d items" % a["value"]
    elif a["op"] == "object":
        ok = isinstance(got, dict)
        want = "an object"
    else:
        ok = got is not _MISSING and _same(got, a["value"])
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
    if case["status"] is not None:
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


def _seg_json(s: Segment | Keyed) -> object:
    return {"key": s.field, "value": s.value} if isinstance(s, Keyed) else s


def render_pytest(route: str, cases: list[_Case], tolerance: float = 0.0) -> str:
    data = [
        {
            "id": f"{i:03d} {c.method} {c.path}"[:120],
            "method": c.method,
            "path": c.path,
            "headers": [list(h) for h in c.headers],
            "body": base64.b64encode(c.body).decode(),
            "status": c.status,
            "asserts": [
                {"path": a.text, "at": [_seg_json(s) for s in a.path], "op": a.op,
                 "value": a.value}
                for a in c.asserts
            ],
        }
        for i, c in enumerate(cases)
    ]
    notes = "".join(f"{n}\n" for n in _notes(cases))
    # json.dumps of a str is a valid Python string literal
    literal = json.dumps(json.dumps(data, ensure_ascii=True, indent=1))
    return _PYTEST_TEMPLATE.format(
        route=re.sub(r"[^\w.-]", "_", route),
        n=len(cases),
        notes=notes.replace('"""', "'''"),
        tolerance=repr(float(tolerance)),
        when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cases=literal,
    )


# -- jsonl (the request set of `strangler reconcile`) -----------------------------------------


def render_jsonl(route: str, cases: list[_Case], tolerance: float = 0.0) -> str:
    """One `{"method", "path", "headers", "status"}` object per line, as the contract has it;
    bodies are left out (reconcile replays GET and HEAD only). `route` is not written: the set
    is replayed for the route `strangler reconcile ROUTE` names."""
    return "".join(
        json.dumps({"method": c.method, "path": c.path, "headers": [list(h) for h in c.headers],
                    "status": c.status}, ensure_ascii=False) + "\n"
        for c in cases
    )


def export(
    store: DiffStore, route: str, fmt: str, path: Path | str, *, ignore: Sequence[str] = (),
    compare: CompareSpec | None = None,
) -> int:
    """Write the route's recorded safe requests as regression tests; returns how many.

    `compare` is the route's `compare` block (ignore, redact, array_keys, numeric_tolerance);
    `ignore` alone may be given instead.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    spec = compare if compare is not None else CompareSpec(ignore=tuple(ignore))
    cases = _cases(store.samples_for_export(route), spec)
    render = {"hurl": render_hurl, "pytest": render_pytest, "jsonl": render_jsonl}[fmt]
    text = render(route, cases, float(spec.numeric_tolerance))
    Path(path).write_text(text, encoding="utf-8")
    return len(cases)
