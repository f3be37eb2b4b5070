# cython: annotation_typing=False
"""Compiled, indexed route table: built once per config generation, swapped whole on reload.

Lookup never scans every route: exact paths are a dict, path prefixes live in a trie keyed by
whole segments, and only routes with a regex or no path condition are checked on every request.
First match wins, so the candidate with the lowest file order is chosen. When no route has a
header condition, results are cached per (method, path) for the life of the table generation
(per path when no route has a method condition either).
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config.spec import Config, RouteSpec
from proxy.dataplane.split import StickyHasher, weight_to_bp


class RouteState:
    """Mutable runtime state of one route, shared by every table generation that has it.

    The data plane reads `weight_bp` per request; the control plane writes it. `step` changes at
    every weight change so statistics can be attributed to the step they were recorded under.
    (A plain class rather than a dataclass: compiled, it is a C struct (table.pxd).)
    """

    __slots__ = ("rolled_back", "step", "weight_bp")

    def __init__(self, weight_bp: int = 0, step: int = 0, rolled_back: bool = False) -> None:
        self.weight_bp = weight_bp
        self.step = step
        self.rolled_back = rolled_back  # pushed by the control plane; only `legacy` pins count

    def __repr__(self) -> str:
        return (f"RouteState(weight_bp={self.weight_bp!r}, step={self.step!r}, "
                f"rolled_back={self.rolled_back!r})")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return ((self.weight_bp, self.step, self.rolled_back)
                == (other.weight_bp, other.step, other.rolled_back))  # type: ignore[attr-defined]


class CompiledRoute:
    """One route of a table generation, with what the data plane reads per request copied out
    of its spec. (A plain class rather than a dataclass: compiled, it is a C struct.)"""

    __slots__ = ("extra", "fallback", "fallback_on", "hasher", "headers", "inv_legacy",
                 "inv_target", "legacy", "methods", "name", "name_bytes", "order", "override",
                 "rec_legacy", "rec_target", "regex", "spec", "state", "sticky_cookie",
                 "sticky_header", "target", "websocket")

    def __init__(self, order: int, name: str, spec: RouteSpec, state: RouteState,
                 methods: frozenset[bytes] | None, headers: tuple[tuple[bytes, bytes], ...],
                 regex: re.Pattern[bytes] | None, sticky_header: bytes | None,
                 sticky_cookie: bytes | None, hasher: StickyHasher, name_bytes: bytes = b"",
                 legacy: str = "", target: str = "", websocket: bool = False,
                 fallback: bool = False, fallback_on: frozenset = frozenset(),
                 override: bytes | None = None, extra: dict | None = None) -> None:
        self.order = order
        self.name = name
        self.spec = spec
        self.state = state
        self.methods = methods
        self.headers = headers
        self.regex = regex
        self.sticky_header = sticky_header
        self.sticky_cookie = sticky_cookie
        self.hasher = hasher
        self.name_bytes = name_bytes
        # spec fields the data plane reads per request, copied out of the spec
        self.legacy = legacy
        self.target = target
        self.websocket = websocket
        self.fallback = fallback
        self.fallback_on = fallback_on  # failures that fall back (proxy.dataplane.resend)
        self.override = override  # the pin header (lower-case) when `override` is on
        # per-route compiled helpers (comparator, ...)
        self.extra: dict = {} if extra is None else extra
        # the recorder's slot of each backend at the step last counted, and the inventory's
        # (Exchange.finish)
        self.rec_legacy = None
        self.rec_target = None
        self.inv_legacy = None
        self.inv_target = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS)
        return f"CompiledRoute({fields})"

    def accepts(self, method: bytes, headers: dict[bytes, bytes]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        for name, value in self.headers:
            if headers.get(name) != value:
                return False
        return True


_FIELDS = ("order", "name", "spec", "state", "methods", "headers", "regex", "sticky_header",
           "sticky_cookie", "hasher", "name_bytes", "legacy", "target", "websocket", "fallback",
           "fallback_on", "override", "extra")  # CompiledRoute's, in the order of its __init__

CACHE_SIZE = 4096
CACHE_MAX_PATH = 256  # longer paths are looked up every time: the cache stays under ~1.5 MiB


class _Node:
    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[bytes, _Node] = {}
        self.routes: list[CompiledRoute] = []


class RouteTable:
    def __init__(self, config: Config, states: dict[str, RouteState], generation: int) -> None:
        self.config = config
        self.generation = generation
        self.routes: list[CompiledRoute] = []
        self.by_name: dict[str, CompiledRoute] = {}
        self._exact: dict[bytes, list[CompiledRoute]] = {}
        self._trie = _Node()
        self._general: list[CompiledRoute] = []
        for order, spec in enumerate(config.routes):
            state = states.setdefault(spec.name, RouteState(weight_bp=weight_to_bp(spec.weight)))
            route = _compile(order, spec, state)
            self.routes.append(route)
            self.by_name[spec.name] = route
            m = spec.match
            if m.path is not None:
                self._exact.setdefault(m.path.encode(), []).append(route)
            elif m.path_prefix is not None:
                node = self._trie
                for seg in _segments(m.path_prefix.encode()):
                    node = node.children.setdefault(seg, _Node())
                node.routes.append(route)
            else:
                self._general.append(route)
        # Without header conditions the answer depends on (method, path) only: remember it,
        # by the path alone when no route names methods (one hash, no key tuple per request).
        cacheable = not any(r.headers for r in self.routes)
        self._by_method = any(r.methods is not None for r in self.routes)
        self._cache: dict[Any, CompiledRoute | None] | None = {} if cacheable else None

    def match(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes]
    ) -> CompiledRoute | None:
        cache = self._cache
        if cache is None or len(path) > CACHE_MAX_PATH:
            return self._match(method, path, headers)
        key = (method, path) if self._by_method else path
        try:
            return cache[key]
        except KeyError:
            pass
        route = self._match(method, path, headers)
        if len(cache) >= CACHE_SIZE:
            cache.clear()  # many distinct paths (ids in paths): start over rather than track age
        cache[key] = route
        return route

    def _match(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes]
    ) -> CompiledRoute | None:
        best: CompiledRoute | None = None
        for route in self._exact.get(path, ()):
            if route.accepts(method, headers):
                best = route
                break
        node = self._trie
        for route in node.routes:
            if (best is None or route.order < best.order) and route.accepts(method, headers):
                best = route
                break
        for seg in _segments(path):
            node = node.children.get(seg)  # type: ignore[assignment]
            if node is None:
                break
            for route in node.routes:
                if (best is None or route.order < best.order) and route.accepts(method, headers):
                    best = route
                    break
        for route in self._general:
            if best is not None and route.order > best.order:
                break
            if route.accepts(method, headers) and (
                route.regex is None or route.regex.fullmatch(path) is not None
            ):
                best = route
                break
        return best


def _segments(path: bytes) -> list[bytes]:
    return [s for s in path.split(b"/") if s]


def _compile(order: int, spec: RouteSpec, state: RouteState) -> CompiledRoute:
    m = spec.match
    sticky = spec.sticky
    return CompiledRoute(
        order=order,
        name=spec.name,
        spec=spec,
        state=state,
        methods=frozenset(x.encode() for x in matched) if (matched := m.matched_methods())
        else None,
        headers=tuple((k.lower().encode(), v.encode()) for k, v in m.headers),
        regex=re.compile(m.path_regex.encode()) if m.path_regex else None,
        sticky_header=sticky.header.lower().encode() if sticky and sticky.header else None,
        sticky_cookie=sticky.cookie.encode() if sticky and sticky.cookie else None,
        hasher=StickyHasher(spec.group or spec.name),  # a group's members: one assignment
        name_bytes=spec.name.encode(),
        legacy=spec.legacy,
        target=spec.target,
        websocket=spec.websocket,
        fallback=spec.fallback_to_legacy,
        fallback_on=fallback_set(spec),
        override=spec.override.header.encode() if spec.override is not None else None,
    )


FALLBACK_ALL: frozenset[str | int] = frozenset(
    ("connect", "timeout", "reset", "tls", *range(500, 600)))


def fallback_set(spec: RouteSpec) -> frozenset[str | int]:
    """The failures on target that send a request to legacy (proxy.dataplane.resend): the
    kinds connect, timeout, reset, tls and 5xx statuses; `fallback_to_legacy: true` is all."""
    if not spec.fallback_to_legacy:
        return frozenset()
    return FALLBACK_ALL if spec.fallback_on is None else frozenset(spec.fallback_on)


def cookie_value(cookie_header: bytes, name: bytes) -> bytes | None:
    """Value of one cookie from a Cookie header, without parsing the others."""
    for part in cookie_header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name:
            return v.strip().strip(b'"') or None
    return None
