# cython: annotation_typing=False
"""The traffic inventory's data-plane side: which endpoint (method + path template) each request
was, with its route, backend, status and latency, shipped as rows every ~200 ms.

Per request (`EndpointCounter.count`, from `Exchange.finish`): one latency bucket and one dict
increment keyed by the raw path; nothing is parsed or allocated beyond the key. Templates are
resolved when the batch is taken (`take`), once per distinct path of the batch, through a bounded
cache: a declared template (routes.yaml `inventory.templates`, the OpenAPI document) when one
matches, else one inferred by replacing id-like segments with `{id}` (all digits, a UUID, or at
least 16 characters of letters, digits and `_-.~=+%` with a digit among them).

Cardinality is bounded per data plane: declared templates always count by name; inferred ones
are admitted first come up to `max_templates`, after which new ones count as the endpoint
(`*`, `other`). Each hour an inferred template with fewer than 2 requests in that hour gives its
place back, so one-off paths (a scan, random ids the rules missed) do not hold it for good.
Memory: the batch (bounded by time), the cache (CACHE_SIZE paths) and the admitted set.
"""

from __future__ import annotations

import math
import re
import time

from proxy.config.spec import InventorySpec
from proxy.config.templates import OTHER_TEMPLATE, DeclaredTemplate

try:  # compiled (setup.py): a path's latency counts are a C array (inventory.pxd)
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False

# Latency buckets: 50 µs * 2**(i/4), i = 0..LAT_TOP (about 100 s): within 9% of a value when
# read at the bucket's geometric middle.
LAT_BASE = 50e-6
LAT_PER_OCTAVE = 4
LAT_TOP = 88
_LOG_BASE = math.log2(LAT_BASE)
CACHE_SIZE = 4096  # paths -> template; cleared when full
MAX_RAW_PATH = 256  # longer paths are resolved at once instead of kept in the batch
MAX_TEMPLATE = 512  # a longer template counts as `other`
AGE_INTERVAL = 3600.0
OTHER = ("*", OTHER_TEMPLATE)
_OTHER_EP = (b"*", b"other")
_DIGITS = b"0123456789"

_ID = re.compile(
    rb"(?<=/)(?:[0-9]+"
    rb"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    rb"|(?=[^/]*[0-9])[A-Za-z0-9_\-.~=+%]{16,})(?=/|$)")
_OTHER_T = b"other"  # a template beyond the bounds (not a path: no '/')
assert LAT_TOP == 88, "inventory.pxd sizes PathCell.lat to LAT_TOP + 1"


def infer_template(path: str) -> str:
    """`/users/42/orders/9f1c...` -> `/users/{id}/orders/{id}`."""
    return _infer(path.encode()).decode()


def _infer(path: bytes) -> bytes:
    # every id rule needs a digit: a path without one is its own template (a quick test that
    # spares the regex most of a scan of random words)
    if len(path.translate(None, _DIGITS)) == len(path):
        return path
    return _ID.sub(b"{id}", path)


def latency_index(seconds: float) -> int:
    """Bucket i holds (LAT_BASE * 2**((i-1)/4), LAT_BASE * 2**(i/4)]; 0 holds what is faster."""
    if seconds <= LAT_BASE:
        return 0
    i = int((math.log2(seconds) - _LOG_BASE) * LAT_PER_OCTAVE) + 1
    return i if i < LAT_TOP else LAT_TOP


def bucket_value(i: int) -> float:
    """A latency in bucket `i`, estimated at the bucket's geometric middle (seconds)."""
    return LAT_BASE * 2 ** ((i - 0.5) / LAT_PER_OCTAVE) if i else LAT_BASE


def quantile(hist: dict[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            return bucket_value(i)
    return bucket_value(max(hist))


class TemplateMatcher:
    """Declared templates by path segment (bytes): a literal segment beats one with a parameter
    in it, which beats a whole-segment parameter (as OpenAPI orders them); deeper paths
    backtrack. `match` gives the declared template (bytes) or None."""

    __slots__ = ("children", "params", "patterns", "template")

    def __init__(self) -> None:
        self.children: dict[bytes, TemplateMatcher] = {}
        self.patterns: list[tuple[re.Pattern[bytes], TemplateMatcher]] = []
        self.params: TemplateMatcher | None = None
        self.template: bytes | None = None

    @classmethod
    def build(cls, declared: tuple[DeclaredTemplate, ...]) -> TemplateMatcher:
        root = cls()
        for d in declared:
            path = d.path.encode()
            node = root
            for seg in path.split(b"/")[1:]:
                node = node._child(seg)
            if node.template is None:
                node.template = path
        return root

    def _child(self, seg: bytes) -> TemplateMatcher:
        if b"{" not in seg:
            return self.children.setdefault(seg, TemplateMatcher())
        if seg.startswith(b"{") and seg.endswith(b"}") and seg.count(b"{") == 1:
            if self.params is None:
                self.params = TemplateMatcher()
            return self.params
        rx = re.compile(b"".join(b"[^/]+" if part.startswith(b"{") else re.escape(part)
                                 for part in re.split(rb"(\{[^}]*\})", seg) if part))
        for pattern, node in self.patterns:
            if pattern.pattern == rx.pattern:
                return node
        node = TemplateMatcher()
        self.patterns.append((rx, node))
        return node

    def match(self, segments: list[bytes], i: int = 0) -> bytes | None:
        if i == len(segments):
            return self.template
        seg = segments[i]
        child = self.children.get(seg)
        if child is not None:
            found = child.match(segments, i + 1)
            if found is not None:
                return found
        for rx, node in self.patterns:
            if rx.fullmatch(seg):
                found = node.match(segments, i + 1)
                if found is not None:
                    return found
        if self.params is not None and seg:
            return self.params.match(segments, i + 1)
        return None

    @property
    def empty(self) -> bool:
        return not (self.children or self.patterns or self.params or self.template)


class PathCell:
    """One path's counts in an `InventorySlot` since the last take: the requests of its first
    method and status per latency bucket (the usual case: a few increments, nothing allocated),
    any other (method, status * 128 + bucket) in `other`."""

    __slots__ = ("hi", "lat", "lo", "method", "other", "status")

    def __init__(self, method: bytes, status: int) -> None:
        self.method = method
        self.status = status
        self.lo = LAT_TOP + 1  # the buckets counted are within lo..hi
        self.hi = -1
        self.other: dict[tuple[bytes, int], int] | None = None
        if not _COMPILED:  # compiled, a C array zeroed with the object
            setattr(self, "lat", [0] * (LAT_TOP + 1))  # noqa: B010

    def add(self, method: bytes, status: int, i: int) -> None:
        if status == self.status and (method is self.method or method == self.method):
            self.lat[i] += 1
            if i < self.lo:
                self.lo = i
            if i > self.hi:
                self.hi = i
            return
        other = self.other
        if other is None:
            other = self.other = {}
        key = (method, status * 128 + i)
        other[key] = other.get(key, 0) + 1

    def drain(self, path: bytes, route: str, backend: str, hits: dict) -> None:
        """Adds the counts to `hits` in EndpointCounter.take's flat form."""
        method, base = self.method, self.status * 128
        for i in range(self.lo, self.hi + 1):
            n = self.lat[i]
            if n:
                key = (method, path, route, backend, base + i)
                c = hits.get(key)
                if c is None:
                    hits[key] = [n]
                else:
                    c[0] += n
        if self.other is not None:
            for (m, code), n in self.other.items():
                key = (m, path, route, backend, code)
                c = hits.get(key)
                if c is None:
                    hits[key] = [n]
                else:
                    c[0] += n


class InventorySlot:
    """The inventory's counts of one (route, backend) since the last take, by path (a long
    path by its template). `Exchange.finish` keeps its route's slot on the route
    (`CompiledRoute.inv_legacy`/`inv_target`): a request is one dict lookup by its path (whose
    hash the route lookup already computed) and a C call, no key tuple built (issue 29)."""

    __slots__ = ("backend", "counter", "paths", "route", "touched")

    def __init__(self, counter: EndpointCounter, route: str, backend: str) -> None:
        self.counter = counter
        self.route = route
        self.backend = backend
        self.paths: dict[bytes, PathCell] = {}
        self.touched = False

    def count(self, method: bytes, path: bytes, status: int, seconds: float) -> None:
        # floor, not int(): the same for this positive value, and a C call when compiled
        i = math.floor((math.log2(seconds) - _LOG_BASE) * LAT_PER_OCTAVE) + 1 \
            if seconds > LAT_BASE else 0
        if i > LAT_TOP:
            i = LAT_TOP
        cell = self.paths.get(path)
        if cell is None:
            if len(path) > MAX_RAW_PATH:  # a long path is not kept for 200 ms: its template is
                path = self.counter.template(path)
                cell = self.paths.get(path)
            if cell is None:
                cell = self.paths[path] = PathCell(method, status)
            if not self.touched:
                self.touched = True
                self.counter.active.append(self)
        cell.add(method, status, i)

    def drain(self, hits: dict) -> None:
        self.touched = False
        paths, self.paths = self.paths, {}
        route, backend = self.route, self.backend
        for path, cell in paths.items():
            cell.drain(path, route, backend, hits)


class EndpointCounter:
    """One data plane's inventory counters (see the module's docstring). Paths, templates and
    methods stay bytes until a row leaves (`take`): only named endpoints are ever decoded."""

    __slots__ = ("active", "admitted", "aged_at", "cache", "declared", "hits", "inferred",
                 "match", "max_templates", "names", "slots", "taken_rows")

    def __init__(self, spec: InventorySpec | None = None, clock=time.monotonic) -> None:
        # (method, path (or a long path's template), route, backend, status * 128 + latency
        # bucket) -> [count]
        self.hits: dict[tuple, list[int]] = {}
        # the request path's counts: a slot per (route, backend), the ones counted in since the
        # last take in `active`; `take` adds them to `hits`
        self.slots: dict[tuple[str, str], InventorySlot] = {}
        self.active: list[InventorySlot] = []
        self.cache: dict[bytes, bytes] = {}  # path -> template
        # (method, template) -> requests since the last ageing; declared ones are never aged
        self.admitted: dict[tuple[bytes, bytes], int] = {}
        self.inferred = 0  # how many of `admitted` are not declared: max_templates bounds these
        self.names: dict[tuple[bytes, bytes], tuple[str, str]] = {}  # decoded, admitted only
        self.aged_at = clock()
        self.taken_rows = 0
        self.configure(spec or InventorySpec())

    def configure(self, spec: InventorySpec) -> None:
        """A new config's templates and bound (at install; the batch so far is kept)."""
        matcher = TemplateMatcher.build(spec.declared)
        self.match = None if matcher.empty else matcher.match
        self.declared = frozenset(d.path.encode() for d in spec.declared)
        self.max_templates = spec.max_templates
        self.cache.clear()
        self.admitted = {k: n for k, n in self.admitted.items() if k[1] not in self.declared}
        self.inferred = len(self.admitted)
        self.names.clear()

    # -- the request path ----------------------------------------------------------------------
    def count(self, method: bytes, path: bytes, route: str, backend: str, status: int,
              seconds: float) -> None:
        """One request, counted in its (route, backend)'s slot."""
        self.slot(route, backend).count(method, path, status, seconds)

    def slot(self, route: str, backend: str) -> InventorySlot:
        key = (route, backend)
        s = self.slots.get(key)
        if s is None:
            s = self.slots[key] = InventorySlot(self, route, backend)
        return s

    # -- every ~200 ms -------------------------------------------------------------------------
    def template(self, path: bytes, cached: bool = True) -> bytes:
        """`path`'s template (`cached`: look in the cache first; `take` already did)."""
        t = self.cache.get(path) if cached else None
        if t is None:
            t = self.match(path.split(b"/")[1:]) if self.match is not None else None
            if t is None:
                t = _infer(path)
                if len(t) > MAX_TEMPLATE:
                    t = _OTHER_T
            if len(path) <= MAX_RAW_PATH:
                cache = self.cache
                if len(cache) >= CACHE_SIZE:
                    cache.clear()
                cache[path] = t
        return t

    def take(self, now: float | None = None) -> list[list]:
        """The batch as rows `[method, template, route, backend, requests, errors,
        [[latency bucket, count], ...]]`, one per endpoint, route and backend."""
        hits, self.hits = self.hits, {}
        active, self.active = self.active, []
        for slot in active:
            slot.drain(hits)
        # only the slots counted in this batch stay findable (a route may still hold an older
        # one: counted again, it puts itself on `active`; two slots of one key add up in hits)
        self.slots = {(s.route, s.backend): s for s in active}
        out: dict[tuple, list] = {}
        cache, admitted, declared = self.cache, self.admitted, self.declared
        # declared endpoints are always named and take none of max_templates' places
        inferred = self.inferred
        full = inferred >= self.max_templates
        template = self.template
        for (method, path, route, backend, code), (n,) in hits.items():
            t = cache.get(path)
            if t is None:
                t = template(path, False)
            ep = (method, t)
            seen = admitted.get(ep)
            if seen is not None:
                admitted[ep] = seen + n
            elif t in declared:
                admitted[ep] = n
            elif not (full or t is _OTHER_T):
                admitted[ep] = n
                inferred += 1
                full = inferred >= self.max_templates
            else:
                ep = _OTHER_EP
            key = (ep, route, backend)
            row = out.get(key)
            if row is None:
                row = out[key] = [0, 0, {}]
            row[0] += n
            if code >= 64000:  # status 500 and above
                row[1] += n
            lat = row[2]
            i = code & 127
            lat[i] = lat.get(i, 0) + n
        self.inferred = inferred
        self._age(now)
        self.taken_rows += len(out)
        return [[*self._name(ep), route, backend, r[0], r[1], sorted(r[2].items())]
                for (ep, route, backend), r in out.items()]

    def _name(self, ep: tuple[bytes, bytes]) -> tuple[str, str]:
        if ep is _OTHER_EP:
            return OTHER
        name = self.names.get(ep)
        if name is None:
            name = self.names[ep] = (ep[0].decode("latin-1"),
                                     ep[1].decode("utf-8", "backslashreplace"))
        return name

    def _age(self, now: float | None) -> None:
        now = time.monotonic() if now is None else now
        if now - self.aged_at < AGE_INTERVAL:
            return
        self.aged_at = now
        declared = self.declared
        self.admitted = {k: 0 for k, n in self.admitted.items() if n >= 2 or k[1] in declared}
        self.inferred = sum(1 for k in self.admitted if k[1] not in declared)
        self.names = {k: v for k, v in self.names.items() if k in self.admitted}
