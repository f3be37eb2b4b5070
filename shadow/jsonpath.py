"""The small JSONPath dialect of routes.yaml (`ignore`, `redact`, `array_keys`) and of diff paths.

Patterns:  `$` the root, `.name` or `['any name']` a key, `[3]` an index, `.*` / `[*]` any key or
index, `..name` / `..*` / `..[3]` recursive descent (at any depth below, one level or more).
Concrete paths use the same syntax without wildcards, e.g. `$.items[3].amount` or
`$['content-type']`; `format_path(parse_path(p)) == p` for them. An element of an array matched
by `array_keys` is shown by its key: `$.items[id=25].amount`, `$.items[sku='A-1']` (a `Keyed`
segment). Canonical paths (what a `Difference` is counted under) write every index as `[*]`:
`generalize` makes one from a concrete path, `parse_canonical` reads one back (`[*]` as -1, an
index no `[N]` pattern names).

Patterns are compiled once (`PathSet`) and matched while walking a document: the walker carries
a `State` (the set of partial matches) from a node to its children with `PathSet.step`, so a
match costs O(patterns) per node, never a re-parse or a regex per node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Keyed",
    "PathSet",
    "PathSyntaxError",
    "Segment",
    "State",
    "format_path",
    "generalize",
    "is_json_path",
    "key_text",
    "parse_canonical",
    "parse_path",
    "parse_pattern",
]

Segment = str | int  # a key of an object or an index of an array
State = frozenset[tuple[int, int]]  # (pattern number, position in it)

_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME = re.compile(r"[^.\[\]'\"\s]+")
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Keyed:
    """An element of an array matched by `array_keys`, shown by its key (`[id=25]`)."""

    field: str
    value: object
    index: int  # its index in the array it was found in

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, str):
            shown = "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        elif v is None or isinstance(v, bool):
            shown = {None: "null", True: "true", False: "false"}[v]
        else:
            shown = str(v)
        return f"[{self.field}={shown}]"


class PathSyntaxError(ValueError):
    """A path in routes.yaml that is not in the supported JSONPath dialect."""


@dataclass(frozen=True, slots=True)
class _Elem:
    kind: str  # "key" | "index" | "any"
    arg: Segment | None = None
    deep: bool = False  # reached by `..` (any number >= 1 of levels)

    def matches(self, seg: Segment) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "index":
            return isinstance(seg, int) and seg == self.arg
        return isinstance(seg, str) and seg == self.arg


def is_json_path(text: str) -> bool:
    return text.startswith("$")


def _parse_quoted(text: str, i: int) -> tuple[str, int]:
    """Parse `'...'` or `"..."` starting at text[i]; backslash escapes the next character."""
    quote = text[i]
    i += 1
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == quote:
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise PathSyntaxError(f"unterminated quoted name in {text!r}")


def parse_pattern(text: str) -> tuple[_Elem, ...]:
    """Compile one pattern; raises PathSyntaxError with what is wrong."""
    if not text.startswith("$"):
        raise PathSyntaxError(f"{text!r}: a body path starts with '$' (e.g. '$.items[*].id')")
    elems: list[_Elem] = []
    i = 1
    n = len(text)
    while i < n:
        deep = False
        if text.startswith("..", i):
            deep = True
            i += 2
            if i >= n:
                raise PathSyntaxError(f"{text!r}: '..' must be followed by a name, '*' or '[...]'")
            if text[i] != "[":
                elem, i = _parse_dotted(text, i, deep)
                elems.append(elem)
                continue
        elif text[i] == ".":
            i += 1
            if i >= n:
                raise PathSyntaxError(f"{text!r}: trailing '.'")
            elem, i = _parse_dotted(text, i, deep)
            elems.append(elem)
            continue
        if text[i] != "[":
            raise PathSyntaxError(f"{text!r}: unexpected {text[i]!r} at offset {i}")
        elem, i = _parse_bracket(text, i, deep)
        elems.append(elem)
    return tuple(elems)


def _parse_dotted(text: str, i: int, deep: bool) -> tuple[_Elem, int]:
    if text[i] == "*":
        return _Elem("any", None, deep), i + 1
    m = _NAME.match(text, i)
    if not m:
        raise PathSyntaxError(f"{text!r}: expected a name at offset {i}")
    return _Elem("key", m.group(0), deep), m.end()


def _parse_bracket(text: str, i: int, deep: bool) -> tuple[_Elem, int]:
    if text.startswith("[*]", i):
        return _Elem("any", None, deep), i + 3
    m = _INDEX.match(text, i)
    if m:
        return _Elem("index", int(m.group(1)), deep), m.end()
    if i + 1 < len(text) and text[i + 1] in "'\"":
        name, j = _parse_quoted(text, i + 1)
        if j >= len(text) or text[j] != "]":
            raise PathSyntaxError(f"{text!r}: expected ']' at offset {j}")
        return _Elem("key", name, deep), j + 1
    raise PathSyntaxError(f"{text!r}: expected [N], [*] or ['name'] at offset {i}")


def parse_path(text: str) -> tuple[Segment, ...]:
    """Concrete path -> segments (raises PathSyntaxError on wildcards or bad syntax)."""
    segs: list[Segment] = []
    for e in parse_pattern(text):
        if e.deep or e.kind == "any":
            raise PathSyntaxError(f"{text!r}: a concrete path has no wildcard or '..'")
        assert e.arg is not None
        segs.append(e.arg)
    return tuple(segs)


def key_text(key: str) -> str:
    """`.name`, or `['odd key']` for a key that is not an identifier."""
    if _SIMPLE_KEY.match(key):
        return "." + key
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"['{escaped}']"


def format_path(segs: Iterable[Segment | Keyed]) -> str:
    out = ["$"]
    for s in segs:
        if isinstance(s, int):
            out.append(f"[{s}]")
        elif isinstance(s, Keyed):
            out.append(str(s))
        else:
            out.append(key_text(s))
    return "".join(out)


def generalize(path: str) -> str:
    """`$.items[3].ts` or `$.items[id=7].ts` -> `$.items[*].ts`: one row for every element of
    an array. Quoted keys (`['a[1]']`) are left alone."""
    if "[" not in path:
        return path
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c != "[":
            out.append(c)
            i += 1
            continue
        if i + 1 < n and path[i + 1] in "'\"":  # ['quoted key']
            j = i + 2
            while j < n and path[j] != path[i + 1]:
                j += 2 if path[j] == "\\" else 1
            out.append(path[i:j + 2])
            i = j + 2
            continue
        j, quote = i + 1, None
        while j < n and (quote or path[j] != "]"):  # [3], [*], [id=7], [sku='a]b']
            if quote and path[j] == "\\":
                j += 1
            elif path[j] in "'\"" and (quote is None or quote == path[j]):
                quote = None if quote else path[j]
            j += 1
        out.append("[*]")
        i = j + 1
    return "".join(out)


def parse_canonical(text: str) -> tuple[Segment, ...]:
    """A canonical path (`$.items[*].amount`) -> segments, `[*]` as the index -1."""
    segs: list[Segment] = []
    for e in parse_pattern(text):
        if e.deep:
            raise PathSyntaxError(f"{text!r}: a canonical path has no '..'")
        segs.append(-1 if e.kind == "any" else e.arg)  # type: ignore[arg-type]
    return tuple(segs)


class PathSet:
    """A compiled set of patterns, matched incrementally while walking a document."""

    __slots__ = ("_cache", "_index_free", "_pats", "patterns")

    _CACHE_MAX = 8192

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._pats = tuple(parse_pattern(p) for p in self.patterns)
        # without [N] in any pattern every index steps alike: one cache entry for all of them
        self._index_free = all(e.kind != "index" for pat in self._pats for e in pat)
        self._cache: dict[tuple[State, Segment], State] = {}

    def __bool__(self) -> bool:
        return bool(self._pats)

    def start(self) -> State:
        return frozenset((i, 0) for i in range(len(self._pats)))

    def step(self, state: State, seg: Segment) -> State:
        """The state at a child (`seg`) of the node at `state`; memoised (documents repeat)."""
        if not state:
            return state
        if isinstance(seg, int) and self._index_free:
            seg = -1
        key = (state, seg)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        nxt = self._step(state, seg)
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[key] = nxt
        return nxt

    def _step(self, state: State, seg: Segment) -> State:
        nxt: set[tuple[int, int]] = set()
        for i, pos in state:
            pat = self._pats[i]
            if pos >= len(pat):
                continue  # matched at an ancestor: nothing below is a new match
            e = pat[pos]
            if e.matches(seg):
                nxt.add((i, pos + 1))
            if e.deep:
                nxt.add((i, pos))
        return frozenset(nxt)

    def accepted(self, state: State) -> list[int]:
        """Numbers of the patterns that match the current node exactly."""
        return [i for i, pos in state if pos == len(self._pats[i])]

    def accepts(self, state: State) -> bool:
        return any(pos == len(self._pats[i]) for i, pos in state)

    def state_at(self, segs: Iterable[Segment]) -> tuple[State, bool]:
        """Walk `segs` from the root: (state at the end, whether a pattern matched on the way)."""
        state = self.start()
        hit = self.accepts(state)
        for s in segs:
            if hit or not state:
                break
            state = self.step(state, s)
            hit = self.accepts(state)
        return state, hit

    def covers(self, segs: Iterable[Segment]) -> bool:
        """True when the path is at or below a path matched by one of the patterns."""
        return self.state_at(segs)[1]
