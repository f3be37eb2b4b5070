"""Comparison of a legacy and a target response: a flat list of differences keyed by field path.

Rules (a closed set of kinds, see `shadow.model.KINDS`):
- status: compared unless `ignore` lists "status".
- headers: those in `compare.headers`; content-type is compared on media type and charset only,
  case-insensitively; other headers by value (all occurrences joined by ", ").
- JSON bodies (content-type `*/json` or `*/*+json`, or a body that parses when there is no
  content-type on that side): compared structurally. Objects by key (`missing`, `extra`), arrays
  by index (a `length` difference when sizes differ, then element by element over the common
  prefix) or, for an array named in `array_keys`, by the value of its key field (`length` plus
  `missing`/`extra` for unmatched elements; a path uses the element's index in the legacy array,
  or in the target array for an `extra` one). Numbers: 1 == 1.0, integers of any size exact,
  decimals exact (parsed as Decimal), `numeric_tolerance` absolute; booleans are not numbers.
  Strings after NFC.
- Other bodies: bytes, after content-type-aware normalisation (text/*: CRLF -> LF, trailing
  whitespace at the end stripped); a `body` difference at `$` carries short previews.
- A body cut at shadow.max_body (`Exchange.truncated`) is not compared (`body_compared=False`).
- `ignore` removes differences at or below its paths (`$..id`, `$.items[*].ts`, `header:date`,
  `header:x-*`, `status`). Values at or below a `redact` path are "[REDACTED]".

`Comparator.compare` never raises: a body that does not parse is a difference, and an internal
failure is reported as `Comparison(error=...)`.
"""

from __future__ import annotations

import decimal
import fnmatch
import hashlib
import json
import math
import unicodedata
from collections.abc import Sequence
from decimal import Decimal

from proxy.config.spec import CompareSpec
from shadow.decode import decoded
from shadow.jsonpath import (
    PathSet,
    PathSyntaxError,
    Segment,
    State,
    format_path,
    is_json_path,
    parse_canonical,
)
from shadow.model import Comparison, Difference, Exchange
from shadow.redact import Redactor

__all__ = ["Comparator", "is_json_media", "media_type", "parse_ignore", "rules_id"]

_NOT_JSON = object()
_PREVIEW_CHARS = 200
_MAX_VALUE_CHARS = 2048  # a larger subtree (missing/extra/type) is summarised in the difference
_HEADER_PREFIX = "header:"


def rules_id(spec: CompareSpec) -> str:
    """A short id of what decides the differences (headers, ignore, redact, tolerance,
    array_keys, noise twin): evidence taken under other rules is kept apart from the current."""
    key = json.dumps([list(spec.headers), list(spec.ignore), list(spec.redact),
                      spec.numeric_tolerance, [list(x) for x in spec.array_keys],
                      spec.noise_upstream])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """'Application/JSON; charset="UTF-8"' -> ('application/json', 'utf-8')."""
    if not content_type:
        return "", None
    parts = content_type.split(";")
    media = parts[0].strip().lower()
    charset = None
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip('"').lower() or None
    return media, charset


def is_json_media(media: str) -> bool:
    return media.endswith("/json") or media.endswith("+json")


def parse_ignore(patterns: Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Split `ignore` entries into body paths, header name globs and 'status'."""
    body: list[str] = []
    headers: list[str] = []
    status = False
    for p in patterns:
        if p.lower().startswith(_HEADER_PREFIX):
            headers.append(p[len(_HEADER_PREFIX) :].strip().lower())
        elif p == "status":
            status = True
        elif is_json_path(p):
            body.append(p)
        else:
            raise PathSyntaxError(
                f"{p!r}: ignore entries are '$...' paths, 'header:NAME' or 'status'"
            )
    return body, headers, status


_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    Decimal: "number",
    bool: "boolean",
    type(None): "null",
}


def _jtype(v: object) -> str:
    t = _TYPES.get(type(v))
    if t is not None:
        return t
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float | Decimal):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_nan(v: object) -> bool:
    return (isinstance(v, float) and math.isnan(v)) or (isinstance(v, Decimal) and v.is_nan())


def _nfc(s: str) -> str:
    return s if unicodedata.is_normalized("NFC", s) else unicodedata.normalize("NFC", s)


def _plain(v: object) -> object:
    """Decimal -> float (or its text when out of float range), recursively."""
    if isinstance(v, Decimal):
        f = float(v)
        return f if math.isfinite(f) or not v.is_finite() else str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _summarise(v: object) -> object:
    if not isinstance(v, dict | list):
        return v
    text = json.dumps(v, ensure_ascii=False, default=str)
    if len(text) <= _MAX_VALUE_CHARS:
        return v
    what = f"object of {len(v)} keys" if isinstance(v, dict) else f"array of {len(v)} items"
    return f"<{what}, {len(text)} characters>"


def _key_of(v: object) -> object:
    """Hashable identity of an array_keys key value (None when it cannot be one)."""
    if isinstance(v, str):
        return ("s", _nfc(v))
    if isinstance(v, bool) or v is None:
        return ("b", v)
    if isinstance(v, int | float | Decimal):
        return None if _is_nan(v) else ("n", v)
    try:
        return ("j", json.dumps(_plain(v), sort_keys=True, default=str))
    except (TypeError, ValueError, RecursionError):
        return None


def _normalise_bytes(body: bytes, media: str) -> bytes:
    if media.startswith("text/"):
        return body.replace(b"\r\n", b"\n").rstrip()
    return body


def _opaque(ex: Exchange) -> str:
    if ex.problem is None:
        return _preview(ex.body)
    return f"<{len(ex.body)} bytes, {', '.join(ex.codings) or 'encoded'}, not decodable>"


def _preview(body: bytes) -> str:
    text = body[: _PREVIEW_CHARS * 4].decode("utf-8", "replace")
    if len(text) > _PREVIEW_CHARS or len(body) > _PREVIEW_CHARS * 4:
        return text[:_PREVIEW_CHARS] + f"... ({len(body)} bytes)"
    return text


class Comparator:
    """A route's comparison rules, compiled once at config load."""

    __slots__ = (
        "_array_fields",
        "_array_keys",
        "_header_ignores",
        "_headers",
        "_ignore",
        "_ignore_status",
        "_overflow",
        "_tol",
        "redactor",
        "rules",
        "spec",
    )

    def __init__(self, spec: CompareSpec | None = None, redactor: Redactor | None = None) -> None:
        self.spec = spec or CompareSpec()
        body, headers, status = parse_ignore(self.spec.ignore)
        self._ignore = PathSet(body)
        self._header_ignores = tuple(headers)
        self._ignore_status = status
        self._headers = tuple(h.lower() for h in self.spec.headers)
        self._array_keys = PathSet([p for p, _ in self.spec.array_keys])
        self._array_fields = tuple(k for _, k in self.spec.array_keys)
        self._tol = Decimal(repr(float(self.spec.numeric_tolerance)))
        self.redactor = redactor or Redactor(self.spec.redact)
        self.rules = rules_id(self.spec)
        self._overflow = 0

    @property
    def ignore_paths(self) -> PathSet:
        return self._ignore

    def header_ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in self._header_ignores)

    def ignores(self, path: str) -> bool:
        """Do these rules leave out every difference a row with this canonical path counts
        (`status`, `header:NAME`, `$.items[*].ts`)? A rule naming one index (`$.items[0]`)
        does not cover `[*]`."""
        if path == "status":
            return self._ignore_status
        if path.startswith(_HEADER_PREFIX):
            return self.header_ignored(path[len(_HEADER_PREFIX):])
        if not is_json_path(path) or not self._ignore:
            return False
        try:
            return self._ignore.covers(parse_canonical(path))
        except PathSyntaxError:
            return False

    def compare(self, legacy: Exchange, target: Exchange) -> Comparison:
        try:
            return self._compare(legacy, target)
        except Exception as e:  # a comparison must never take the data plane down
            return Comparison((), error=f"comparison failed: {type(e).__name__}")

    def _compare(self, legacy: Exchange, target: Exchange) -> Comparison:
        limit = self.spec.max_decoded
        legacy, target = decoded(legacy, limit), decoded(target, limit)
        if legacy.problem == "too_large" or target.problem == "too_large":
            return Comparison((), error=f"a body decodes to more than {limit} bytes "
                                        "(compare.max_decoded)")
        out: list[Difference] = []
        if not self._ignore_status and legacy.status != target.status:
            out.append(Difference("status", "status", legacy.status, target.status))
        for name in self._headers:
            if self.header_ignored(name):
                continue
            lv, tv = legacy.header(name), target.header(name)
            if name == "content-type":
                same = media_type(lv) == media_type(tv)
            else:
                same = (lv.strip() if lv is not None else None) == (
                    tv.strip() if tv is not None else None
                )
            if not same:
                out.append(Difference(_HEADER_PREFIX + name, "header", lv, tv))
        body_compared = not (legacy.truncated or target.truncated)
        if body_compared:
            self._compare_bodies(legacy, target, out)
        red = self.redactor
        diffs = tuple(red.redact_difference(d) for d in out)
        overflow, self._overflow = self._overflow, 0
        return Comparison(diffs, body_compared=body_compared, overflow=overflow)

    # -- bodies -----------------------------------------------------------------------------

    def _compare_bodies(self, legacy: Exchange, target: Exchange, out: list[Difference]) -> None:
        root = self._ignore.start()
        if self._ignore.accepts(root):
            return
        lmedia, _ = media_type(legacy.header("content-type"))
        tmedia, _ = media_type(target.header("content-type"))
        lbody, tbody = legacy.body, target.body
        if lbody == tbody:
            return
        if legacy.problem or target.problem:  # not decodable: opaque bytes, never previewed
            out.append(Difference("$", "body", _opaque(legacy), _opaque(target)))
            return
        lj, tj = self._json(lbody, lmedia), self._json(tbody, tmedia)
        if lj is not _NOT_JSON and tj is not _NOT_JSON:
            found = _Found(self.spec.max_fields)
            try:
                self._walk(lj, tj, (), root, self._array_keys.start(), found)
            except RecursionError:
                pass  # nested too deep to walk: compared as bytes below
            else:
                out.extend(found)
                self._overflow = found.overflow
                return
        if _normalise_bytes(lbody, lmedia) != _normalise_bytes(tbody, tmedia):
            out.append(Difference("$", "body", _preview(lbody), _preview(tbody)))

    @staticmethod
    def _json(body: bytes, media: str) -> object:
        if media and not is_json_media(media):
            return _NOT_JSON
        try:
            return json.loads(body, parse_float=Decimal)
        except (ValueError, RecursionError):
            return _NOT_JSON

    def _diff(self, segs: tuple[Segment, ...], kind: str, a: object, b: object) -> Difference:
        return Difference(format_path(segs), kind, _summarise(_plain(a)), _summarise(_plain(b)))

    def _walk(
        self,
        a: object,
        b: object,
        segs: tuple[Segment, ...],
        ign: State,
        keys: State,
        out: list[Difference],
    ) -> None:
        ta, tb = _jtype(a), _jtype(b)
        if ta != tb:
            out.append(self._diff(segs, "type", a, b))
            return
        if (ta == "object" or ta == "array") and a == b and repr(a) == repr(b):
            return  # identical subtree, checked in C; repr keeps true != 1 (== does not)
        if ta == "object":
            assert isinstance(a, dict) and isinstance(b, dict)
            self._walk_object(a, b, segs, ign, keys, out)
        elif ta == "array":
            assert isinstance(a, list) and isinstance(b, list)
            self._walk_array(a, b, segs, ign, keys, out)
        elif ta == "number":
            if not self._num_equal(a, b):
                out.append(self._diff(segs, "value", a, b))
        elif ta == "string":
            assert isinstance(a, str) and isinstance(b, str)
            if a != b and _nfc(a) != _nfc(b):
                out.append(self._diff(segs, "value", a, b))
        elif a != b:
            out.append(self._diff(segs, "value", a, b))

    def _child(self, ign: State, keys: State, seg: Segment) -> tuple[bool, State, State]:
        if ign:
            ign = self._ignore.step(ign, seg)
            if ign and self._ignore.accepts(ign):
                return True, ign, keys
        return False, ign, self._array_keys.step(keys, seg) if keys else keys

    def _walk_object(
        self,
        a: dict[str, object],
        b: dict[str, object],
        segs: tuple[Segment, ...],
        ign: State,
        keys: State,
        out: list[Difference],
    ) -> None:
        seen: set[str] = set()
        nfc_b: dict[str, str] | None = None
        for k, va in a.items():
            kb: str | None = k
            if k not in b:
                if nfc_b is None:
                    nfc_b = {_nfc(x): x for x in b}
                kb = nfc_b.get(_nfc(k))
            skip, ist, kst = self._child(ign, keys, k)
            if kb is not None:
                seen.add(kb)
            if skip:
                continue
            if kb is None:
                out.append(self._diff((*segs, k), "missing", va, None))
            else:
                self._walk(va, b[kb], (*segs, k), ist, kst, out)
        if len(seen) == len(b):
            return
        for k, vb in b.items():
            if k in seen:
                continue
            skip, _, _ = self._child(ign, keys, k)
            if not skip:
                out.append(self._diff((*segs, k), "extra", None, vb))

    def _walk_array(
        self,
        a: list[object],
        b: list[object],
        segs: tuple[Segment, ...],
        ign: State,
        keys: State,
        out: list[Difference],
    ) -> None:
        if len(a) != len(b):
            out.append(Difference(format_path(segs), "length", len(a), len(b)))
        matched = self._array_keys.accepted(keys)
        if matched:
            field = self._array_fields[min(matched)]
            ia, ib = _index_by(a, field), _index_by(b, field)
            if ia is not None and ib is not None:
                for key, i in ia.items():
                    j = ib.get(key)
                    skip, ist, kst = self._child(ign, keys, i)
                    if skip:
                        continue
                    if j is None:
                        out.append(self._diff((*segs, i), "missing", a[i], None))
                    else:
                        self._walk(a[i], b[j], (*segs, i), ist, kst, out)
                for key, j in ib.items():
                    if key not in ia:
                        skip, _, _ = self._child(ign, keys, j)
                        if not skip:
                            out.append(self._diff((*segs, j), "extra", None, b[j]))
                return
        for i in range(min(len(a), len(b))):
            skip, ist, kst = self._child(ign, keys, i)
            if not skip:
                self._walk(a[i], b[i], (*segs, i), ist, kst, out)

    def _num_equal(self, a: object, b: object) -> bool:
        if a == b or (_is_nan(a) and _is_nan(b)):
            return True
        if not self._tol:
            return False
        try:
            with decimal.localcontext() as ctx:
                ctx.prec = 60
                return abs(Decimal(a) - Decimal(b)) <= self._tol  # type: ignore[arg-type]
        except (ArithmeticError, TypeError, ValueError):
            return False


class _Found(list):
    """The differences of one comparison: at most `cap` itemised, the rest only counted."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.overflow = 0

    def append(self, d: Difference) -> None:
        if len(self) < self.cap:
            super().append(d)
        else:
            self.overflow += 1


def _index_by(arr: list[object], field: str) -> dict[object, int] | None:
    """key value -> index, or None when an element has no usable, unique key."""
    idx: dict[object, int] = {}
    for i, el in enumerate(arr):
        if not isinstance(el, dict) or field not in el:
            return None
        k = _key_of(el[field])
        if k is None or k in idx:
            return None
        idx[k] = i
    return idx
