"""Redaction: secrets are replaced before anything is stored, logged or returned.

A `Redactor` is compiled once from a route's `compare.redact` list: `$...` entries are JSON body
paths (recursive descent and wildcards allowed), `header:NAME` entries are header names. These
headers are always redacted, whatever the list says: authorization, cookie, set-cookie,
proxy-authorization, x-api-key.

Bodies that are not JSON (or cannot be parsed, e.g. cut at shadow.max_body) cannot be redacted
by path. For them the redactor scrubs, best effort, `"name": value` and `name=value` for every
pattern whose last step is a key name (this also covers query strings); when a pattern ends in a
wildcard or index, such a body is withheld entirely rather than risk storing the secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from shadow.jsonpath import PathSet, PathSyntaxError, Segment, State, is_json_path, parse_path
from shadow.model import Difference, Exchange, RequestRecord

__all__ = ["ALWAYS_REDACTED_HEADERS", "REDACTED", "WITHHELD", "Redactor"]

REDACTED = "[REDACTED]"
WITHHELD = b"[body withheld: not JSON, redaction by path impossible]"
ALWAYS_REDACTED_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"}
)
_HEADER_PREFIX = "header:"


def _parse_json(body: bytes) -> tuple[bool, object]:
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


class Redactor:
    """Compiled redaction rules of one route."""

    __slots__ = ("_body", "_headers", "_scrubbers", "_withhold_unparsed", "patterns")

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
        withhold = False
        for p in body:
            m = re.search(r"(?:\.|\['|\[\")([^.\[\]'\"]+)(?:'\]|\"\])?\Z", p)
            if m and m.group(1) != "*":
                names.append(m.group(1))
            else:
                withhold = True
        self._withhold_unparsed = withhold
        self._scrubbers = [
            (
                re.compile(r'("' + re.escape(n) + r'"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}\]\s]*)'),
                r'\1"' + REDACTED + '"',
            )
            for n in dict.fromkeys(names)
        ] + [
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
        """Is this concrete path (`$...` or `header:NAME`) at or below a redacted one?"""
        if path.startswith(_HEADER_PREFIX):
            return self.header_redacted(path[len(_HEADER_PREFIX) :])
        if not is_json_path(path) or not self._body:
            return False
        try:
            return self._body.covers(parse_path(path))
        except PathSyntaxError:
            return False

    # -- text and bytes ---------------------------------------------------------------------

    def redact_text(self, text: str) -> str:
        """Best-effort scrub of text that is not parseable JSON (query strings, previews)."""
        for rx, repl in self._scrubbers:
            text = rx.sub(repl, text)
        return text

    def redact_body(self, body: bytes) -> bytes:
        if not body or not self._body:
            return body
        ok, obj = _parse_json(body)
        if ok:
            red = self.redact_json(obj)
            if red is obj:
                return body
            return json.dumps(red, ensure_ascii=False, separators=(",", ":")).encode()
        if self._withhold_unparsed:
            return WITHHELD
        return self.redact_text(body.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )

    def redact_headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((k, REDACTED if k.lower() in self._headers else v) for k, v in headers)

    # -- records ----------------------------------------------------------------------------

    def redact_exchange(self, ex: Exchange) -> Exchange:
        return Exchange(
            ex.status, self.redact_headers(ex.headers), self.redact_body(ex.body), ex.truncated
        )

    def redact_request(self, req: RequestRecord) -> RequestRecord:
        return RequestRecord(
            req.method,
            self.redact_text(req.path),
            self.redact_headers(req.headers),
            self.redact_body(req.body),
        )

    def redact_difference(self, d: Difference) -> Difference:
        if self.path_redacted(d.path):
            return Difference(d.path, d.kind, REDACTED, REDACTED)
        if d.kind == "body":
            return Difference(
                d.path, d.kind, self._redact_preview(d.legacy), self._redact_preview(d.target)
            )
        if is_json_path(d.path) and self._body:
            try:
                segs = parse_path(d.path)
            except PathSyntaxError:
                return d
            return Difference(
                d.path, d.kind, self.redact_json(d.legacy, segs), self.redact_json(d.target, segs)
            )
        return d

    def _redact_preview(self, v: object) -> object:
        if not isinstance(v, str):
            return v
        if self._withhold_unparsed:
            return WITHHELD.decode()
        return self.redact_text(v)
