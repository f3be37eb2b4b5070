"""Comparison of a legacy and a target response: a flat list of differences keyed by field path.

Paths are canonical (`shadow.model.Difference`): the elements of a list that differ the same way
are one difference at `$.items[*].amount`, with how many elements of the outermost list it was
seen in, the first occurrence (`$.items[3].amount`, or `$.items[id=25].amount` in an array
matched by `array_keys`) and a few more examples. At most `compare.max_fields` distinct paths
are itemised per comparison; the rest are only counted (`Comparison.overflow`). A `missing` and
an `extra` key of the same object with equal values are noted as a likely rename.

Rules (a closed set of kinds, see `shadow.model.KINDS`):
- status: compared unless `ignore` lists "status".
- headers: those in `compare.headers`; content-type is compared on media type and charset only,
  case-insensitively; other headers by value (all occurrences joined by ", ").
- JSON bodies (content-type `*/json` or `*/*+json`, or a body that parses when there is no
  content-type on that side): compared structurally. Objects by key (`missing`, `extra`), arrays
  by index (a `length` difference when sizes differ, then element by element over the common
  prefix) or, for an array named in `array_keys`, by the value of its key field (`length` plus
  `missing`/`extra` for unmatched elements; their examples show the key). Numbers: 1 == 1.0,
  integers of any size exact, decimals exact (parsed as Decimal), `numeric_tolerance` absolute;
  booleans are not numbers. Strings after NFC.
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
from collections.abc import Callable, Sequence
from decimal import Decimal

from proxy.config.spec import CompareSpec
from shadow.decode import decoded
from shadow.jsonpath import (
    Keyed,
    PathSet,
    PathSyntaxError,
    Segment,
    State,
    format_path,
    is_json_path,
    key_text,
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
        "_keys",
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
        self._keys: dict[str, str] = {}

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
        red = self.redactor
        out = [red.redact_difference(d) for d in out]  # status and headers
        body_compared = not (legacy.truncated or target.truncated)
        found = self._compare_bodies(legacy, target, out) if body_compared else None
        if found is None:
            return Comparison(tuple(out), body_compared=body_compared)
        return Comparison(tuple(out), body_compared=body_compared, overflow=found.overflow,
                          renames=tuple(found.renames))

    # -- bodies -----------------------------------------------------------------------------

    def _compare_bodies(self, legacy: Exchange, target: Exchange, out: list[Difference]
                        ) -> _Found | None:
        root = self._ignore.start()
        if self._ignore.accepts(root):
            return None
        lmedia, _ = media_type(legacy.header("content-type"))
        tmedia, _ = media_type(target.header("content-type"))
        lbody, tbody = legacy.body, target.body
        if lbody == tbody:
            return None
        if legacy.problem or target.problem:  # not decodable: opaque bytes, never previewed
            out.append(Difference("$", "body", _opaque(legacy), _opaque(target)))
            return None
        lj, tj = self._json(lbody, lmedia), self._json(tbody, tmedia)
        if lj is not _NOT_JSON and tj is not _NOT_JSON:
            found = _Found(self.spec.max_fields, self.redactor)
            try:
                self._walk(lj, tj, (), "$", root, self._array_keys.start(), -1, 0, found)
            except RecursionError:
                pass  # nested too deep to walk: compared as bytes below
            else:
                found.finish(out)
                return found
        if _normalise_bytes(lbody, lmedia) != _normalise_bytes(tbody, tmedia):
            out.append(Difference("$", "body", _preview(lbody), _preview(tbody)))
        return None

    @staticmethod
    def _json(body: bytes, media: str) -> object:
        if media and not is_json_media(media):
            return _NOT_JSON
        try:
            return json.loads(body, parse_float=Decimal)
        except (ValueError, RecursionError):
            return _NOT_JSON

    def _key(self, k: str) -> str:
        t = self._keys.get(k)
        if t is None:
            if len(self._keys) >= 10_000:
                self._keys.clear()
            t = self._keys[k] = key_text(k)
        return t

    def _walk(
        self,
        a: object,
        b: object,
        at: tuple[Segment | Keyed, ...],
        cpath: str,
        ign: State,
        keys: State,
        outer: int,
        of: int,
        out: _Found,
    ) -> None:
        """Compare `a` and `b` found at `at` (canonical path `cpath`); `outer`/`of`: the index
        in, and the length of, the outermost array on the way (-1/0: none)."""
        ta, tb = _jtype(a), _jtype(b)
        if ta != tb:
            out.add(cpath, "type", at, a, b, outer, of)
            return
        if (ta == "object" or ta == "array") and a == b and repr(a) == repr(b):
            return  # identical subtree, checked in C; repr keeps true != 1 (== does not)
        if ta == "object":
            assert isinstance(a, dict) and isinstance(b, dict)
            self._walk_object(a, b, at, cpath, ign, keys, outer, of, out)
        elif ta == "array":
            assert isinstance(a, list) and isinstance(b, list)
            self._walk_array(a, b, at, cpath, ign, keys, outer, of, out)
        elif ta == "number":
            if not self._num_equal(a, b):
                out.add(cpath, "value", at, a, b, outer, of)
        elif ta == "string":
            assert isinstance(a, str) and isinstance(b, str)
            if a != b and _nfc(a) != _nfc(b):
                out.add(cpath, "value", at, a, b, outer, of)
        elif a != b:
            out.add(cpath, "value", at, a, b, outer, of)

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
        at: tuple[Segment | Keyed, ...],
        cpath: str,
        ign: State,
        keys: State,
        outer: int,
        of: int,
        out: _Found,
    ) -> None:
        seen: set[str] = set()
        nfc_b: dict[str, str] | None = None
        missing: list[tuple[str, object]] = []
        for k, va in a.items():
            kb: str | None = k
            if k not in b:
                if nfc_b is None:
                    nfc_b = {_nfc(x): x for x in b}
                kb = nfc_b.get(_nfc(k))
            else:
                vb = b[k]
                if va is vb or (va == vb and type(va) is type(vb)
                                and not isinstance(va, dict | list)):
                    seen.add(k)
                    continue  # an equal scalar: the common case, decided without a path
            skip, ist, kst = self._child(ign, keys, k)
            if kb is not None:
                seen.add(kb)
            if skip:
                continue
            if kb is None:
                out.add_member(cpath, k, self._key, "missing", at, va, None, outer, of)
                missing.append((k, va))
            else:
                self._walk(va, b[kb], (*at, k), cpath + self._key(k), ist, kst, outer, of, out)
        if len(seen) == len(b):
            return
        extra: list[tuple[str, object]] = []
        for k, vb in b.items():
            if k in seen:
                continue
            skip, _, _ = self._child(ign, keys, k)
            if not skip:
                out.add_member(cpath, k, self._key, "extra", at, None, vb, outer, of)
                extra.append((k, vb))
        if missing and extra and len(missing) * len(extra) <= _RENAME_PAIRS:
            out.renamed(cpath, self._key, missing, extra)

    def _walk_array(
        self,
        a: list[object],
        b: list[object],
        at: tuple[Segment | Keyed, ...],
        cpath: str,
        ign: State,
        keys: State,
        outer: int,
        of: int,
        out: _Found,
    ) -> None:
        if len(a) != len(b):
            out.add(cpath, "length", at, len(a), len(b), outer, of)
        elements = cpath + "[*]"
        top = outer < 0  # the outermost array: its elements are what shares are counted in
        if top:
            of = max(len(a), len(b))
        matched = self._array_keys.accepted(keys)
        if matched:
            field = self._array_fields[min(matched)]
            ia, ib = index_by(a, field), index_by(b, field)
            if ia is not None and ib is not None:
                for key, i in ia.items():
                    j = ib.get(key)
                    skip, ist, kst = self._child(ign, keys, i)
                    if skip:
                        continue
                    va = a[i]
                    shown = (*at, Keyed(field, _plain(va[field]), i))  # type: ignore[index]
                    if j is None:
                        out.add(elements, "missing", shown, va, None, i if top else outer, of)
                    else:
                        self._walk(va, b[j], shown, elements, ist, kst, i if top else outer,
                                   of, out)
                for key, j in ib.items():
                    if key not in ia:
                        skip, _, _ = self._child(ign, keys, j)
                        if not skip:
                            vb = b[j]
                            shown = (*at, Keyed(field, _plain(vb[field]), j))  # type: ignore[index]
                            out.add(elements, "extra", shown, None, vb, j if top else outer, of)
                return
        for i in range(min(len(a), len(b))):
            va, vb = a[i], b[i]
            if va is vb or (va == vb and type(va) is type(vb) and not isinstance(va, dict | list)):
                continue
            skip, ist, kst = self._child(ign, keys, i)
            if not skip:
                self._walk(va, vb, (*at, i), elements, ist, kst, i if top else outer, of, out)

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


_RENAME_PAIRS = 400  # missing x extra keys of one object looked at for renames
_EXAMPLES = 5


class _Group:
    """The occurrences of one (canonical path, kind) in one comparison."""

    __slots__ = ("at", "elements", "examples", "first", "last_outer", "legacy", "of",
                 "target", "varies")

    def __init__(self, at: tuple, legacy: object, target: object, outer: int, of: int) -> None:
        self.at = at
        self.first = legacy
        self.legacy = legacy
        self.target = target
        self.elements = 1
        self.last_outer = outer
        self.of = of
        self.examples: list[tuple] = [at]
        self.varies = False


class _Found:
    """The differences of one comparison, grouped by canonical path: at most `cap` groups,
    further occurrences only counted (`overflow`)."""

    __slots__ = ("cap", "groups", "members", "overflow", "red", "renames")

    def __init__(self, cap: int, redactor: Redactor) -> None:
        self.cap = cap
        self.red = redactor
        self.groups: dict[tuple[str, str], _Group] = {}
        # (object's path, key, kind) of each group `add_member` made: at most `cap`
        self.members: set[tuple[str, str, str]] = set()
        self.overflow = 0
        self.renames: set[tuple[str, str]] = set()

    def add(self, cpath: str, kind: str, at: tuple, a: object, b: object, outer: int,
            of: int) -> None:
        g = self.groups.get((cpath, kind))
        if g is None:
            if len(self.groups) >= self.cap:
                self.overflow += 1
                return
            self.groups[(cpath, kind)] = _Group(at, a, b, outer, of)
            return
        if outer != g.last_outer:  # elements of the outermost array, each counted once
            g.last_outer = outer
            g.elements += 1
        if len(g.examples) < _EXAMPLES:
            g.examples.append(at)
        if not g.varies and kind == "value" and not isinstance(a, dict | list) and a != g.first:
            g.varies = True

    def add_member(self, cpath: str, key: str, text: Callable[[str], str], kind: str,
                   at: tuple, a: object, b: object, outer: int, of: int) -> None:
        """`add` for the member `key` ("missing" or "extra") of the object at `cpath`; `text`
        makes a key's path segment. Once there are `cap` groups, a member without one is only
        counted, its path never built: a map of thousands of random keys differs in each, and
        building each path was a large part of comparing it. A member's path is its object's
        and its key's (no other path ends as a member's does), so (cpath, key, kind) names its
        group exactly."""
        member = (cpath, key, kind)
        if len(self.groups) >= self.cap:
            if member not in self.members:
                self.overflow += 1
                return
        else:
            self.members.add(member)
        self.add(cpath + text(key), kind, (*at, key), a, b, outer, of)

    def renamed(self, cpath: str, key: Callable[[str], str],
                missing: list[tuple[str, object]], extra: list[tuple[str, object]]) -> None:
        """Missing and extra keys of one object whose values are equal: likely renames."""
        for km, va in missing:
            if va is None or isinstance(va, bool) or va in ("", [], {}):
                continue  # too common a value to say anything
            for kx, vb in extra:
                if _jtype(va) == _jtype(vb) and va == vb and repr(va) == repr(vb):
                    self.renames.add((cpath + key(km), cpath + key(kx)))
                    break

    def finish(self, out: list[Difference]) -> None:
        """Append one redacted Difference per group to `out`."""
        red = self.red
        for (cpath, kind), g in self.groups.items():
            arrays = g.last_outer >= 0 or "[*]" in cpath
            legacy, target = _summarise(_plain(g.legacy)), _summarise(_plain(g.target))
            if red.body_paths:
                segs = tuple(s.index if isinstance(s, Keyed) else s for s in g.at)
                legacy, target = red.redact_json(legacy, segs), red.redact_json(target, segs)
            if not arrays:
                out.append(Difference(cpath, kind, legacy, target, varies=g.varies))
                continue
            examples = tuple(format_path(x) for x in g.examples)
            out.append(Difference(cpath, kind, legacy, target, examples[0], g.elements, g.of,
                                  examples, g.varies))


def index_by(arr: list[object], field: str) -> dict[object, int] | None:
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
