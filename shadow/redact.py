"""Redaction: secrets are replaced before anything is stored, logged or returned.

A `Redactor` is compiled once from a route's `compare.redact` list: `$...` entries are JSON body
paths (recursive descent and wildcards allowed), `header:NAME` entries are header names. These
headers are always redacted, whatever the list says: authorization, cookie, set-cookie,
proxy-authorization, x-api-key.

Bodies are redacted as a reader would see them: decoded first (`shadow.decode`: gzip, deflate,
br, zstd), whoever calls. A body that cannot be decoded (corrupt, unknown coding, or over the
decode limit) is withheld: a marker with its size replaces it, on every route. On a route with
body redact rules, a body that is not parseable JSON (HTML, a form, JSON cut at
shadow.max_body) cannot be redacted by path and is withheld too, as are the previews of such
bodies in a `body` difference: never stored in the hope that a pattern finds the secret.
Query strings are scrubbed (`name=value` for every pattern whose last step is a key name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace

from shadow.decode import decoded
from shadow.jsonpath import (
    PathSet,
    PathSyntaxError,
    Segment,
    State,
    is_json_path,
    parse_canonical,
)
from shadow.model import Difference, Exchange, RequestRecord

__all__ = ["ALWAYS_REDACTED_HEADERS", "REDACTED", "WITHHELD", "Redactor", "withheld"]

REDACTED = "[REDACTED]"
WITHHELD = b"[body withheld"  # every marker that replaces a body starts so
_NOT_JSON = "not JSON, so the route's redact rules cannot apply"
_PROBLEMS = {"too_large": "over the decode limit", "undecodable": "not decodable"}
ALWAYS_REDACTED_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"}
)
_HEADER_PREFIX = "header:"


def withheld(why: str, size: int) -> bytes:
    """The marker stored in place of a body: what it was and why it is not there."""
    return b"%s: %d bytes, %s]" % (WITHHELD, size, why.encode())


def _problem_marker(ex: Exchange | RequestRecord) -> bytes:
    codings = ", ".join(ex.codings) or "encoded"
    return withheld(f"{codings}, {_PROBLEMS.get(ex.problem or '', ex.problem)}", len(ex.body))


def _parse_json(body: bytes) -> tuple[bool, object]:
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


class Redactor:
    """Compiled redaction rules of one route."""

    __slots__ = ("_body", "_headers", "_scrubbers", "patterns")

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        body: list[str] = []
        headers = set(ALWAYS_REDACTED_HEADERS)
        for p in self.patterns:
            if p.lower().startswith(_HEADER_PREFIX):
                headers.add(p[len(_HEADER_PREFIX) :].strip().lower())
            elif is_json_path(p):
                body.append(p)
            else:
                raise PathSyntaxError(f"{p!r}: redact entries are '$...' paths or 'header:NAME'")
        self._body = PathSet(body)
        self._headers = frozenset(headers)
        names: list[str] = []
        for p in body:
            m = re.search(r"(?:\.|\['|\[\")([^.\[\]'\"]+)(?:'\]|\"\])?\Z", p)
            if m and m.group(1) != "*":
                names.append(m.group(1))
        self._scrubbers = [
            (re.compile(r"((?:^|[?&;\s])" + re.escape(n) + r"=)[^&;\s]*"), r"\1" + REDACTED)
            for n in dict.fromkeys(names)
        ]

    @property
    def body_paths(self) -> PathSet:
        return self._body

    def header_redacted(self, name: str) -> bool:
        return name.lower() in self._headers

    # -- JSON values ------------------------------------------------------------------------

    def redact_json(self, obj: object, at: Sequence[Segment] = ()) -> object:
        """A copy of `obj` (found at path `at`) with every redacted value replaced."""
        if not self._body:
            return obj
        state, hit = self._body.state_at(at)
        if hit:
            return REDACTED
        return self._walk(obj, state)

    def _walk(self, obj: object, state: State) -> object:
        if not state:
            return obj
        changed = False
        if isinstance(obj, dict):
            out: dict[str, object] = {}
            for k, v in obj.items():
                st = self._body.step(state, k)
                out[k] = REDACTED if self._body.accepts(st) else self._walk(v, st)
                changed = changed or out[k] is not v
            return out if changed else obj
        if isinstance(obj, list):
            res: list[object] = []
            for i, v in enumerate(obj):
                st = self._body.step(state, i)
                res.append(REDACTED if self._body.accepts(st) else self._walk(v, st))
                changed = changed or res[-1] is not v
            return res if changed else obj
        return obj

    def path_redacted(self, path: str) -> bool:
        """Is this concrete or canonical path (`$.a[3].b`, `$.a[*].b`, `header:NAME`) at or
        below a redacted one (for `[*]`: whatever the index)?"""
        if path.startswith(_HEADER_PREFIX):
            return self.header_redacted(path[len(_HEADER_PREFIX) :])
        if not is_json_path(path) or not self._body:
            return False
        try:
            return self._body.covers(parse_canonical(path))
        except PathSyntaxError:
            return False

    # -- text and bytes ---------------------------------------------------------------------

    def redact_text(self, text: str) -> str:
        """Scrub `name=value` of a query string for every key named by a body pattern."""
        for rx, repl in self._scrubbers:
            text = rx.sub(repl, text)
        return text

    def redact_body(self, body: bytes) -> bytes:
        """A decoded body, redacted: JSON by path; anything else withheld when the route has
        body rules."""
        if not body or not self._body:
            return body
        ok, obj = _parse_json(body)
        if not ok:
            return withheld(_NOT_JSON, len(body))
        red = self.redact_json(obj)
        if red is obj:
            return body
        return json.dumps(red, ensure_ascii=False, separators=(",", ":")).encode()

    def redact_headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((k, REDACTED if k.lower() in self._headers else v) for k, v in headers)

    # -- records ----------------------------------------------------------------------------

    def _decoded_body(self, ex: Exchange | RequestRecord) -> bytes:
        if ex.problem is not None:
            return _problem_marker(ex)
        return self.redact_body(ex.body)

    def redact_exchange(self, ex: Exchange) -> Exchange:
        """Decoded (when not yet) and redacted: what may be stored."""
        ex = decoded(ex)
        return Exchange(ex.status, self.redact_headers(ex.headers), self._decoded_body(ex),
                        ex.truncated, True, ex.codings, ex.problem)

    def redact_request(self, req: RequestRecord) -> RequestRecord:
        req = decoded(req)
        return RequestRecord(req.method, self.redact_text(req.path),
                             self.redact_headers(req.headers), self._decoded_body(req), True,
                             req.codings, req.problem)

    def redact_difference(self, d: Difference) -> Difference:
        if self.path_redacted(d.path):
            return replace(d, legacy=REDACTED, target=REDACTED)
        if d.kind == "body":
            return replace(d, legacy=self._redact_preview(d.legacy),
                           target=self._redact_preview(d.target))
        if is_json_path(d.path) and self._body:
            try:
                segs = parse_canonical(d.path)
            except PathSyntaxError:
                return d
            return replace(d, legacy=self.redact_json(d.legacy, segs),
                           target=self.redact_json(d.target, segs))
        return d

    def _redact_preview(self, v: object) -> object:
        if not isinstance(v, str) or not self._body:
            return v
        return f"{WITHHELD.decode()}: preview, {_NOT_JSON}]"
