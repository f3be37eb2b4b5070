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

import re
import time
from math import log2

from proxy.config.spec import InventorySpec
from proxy.config.templates import OTHER_TEMPLATE, DeclaredTemplate

# Latency buckets: 50 µs * 2**(i/4), i = 0..LAT_TOP (about 100 s): within 9% of a value when
# read at the bucket's geometric middle.
LAT_BASE = 50e-6
LAT_PER_OCTAVE = 4
LAT_TOP = 88
_LOG_BASE = log2(LAT_BASE)
CACHE_SIZE = 4096  # paths -> template; cleared when full
MAX_RAW_PATH = 256  # longer paths are resolved at once instead of kept in the batch
MAX_TEMPLATE = 512  # a longer template counts as `other`
AGE_INTERVAL = 3600.0
OTHER = ("*", OTHER_TEMPLATE)

_ID = re.compile(
    r"(?<=/)(?:[0-9]+"
    r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|(?=[^/]*[0-9])[A-Za-z0-9_\-.~=+%]{16,})(?=/|$)")


def infer_template(path: str) -> str:
    """`/users/42/orders/9f1c...` -> `/users/{id}/orders/{id}`."""
    return _ID.sub("{id}", path)


def latency_index(seconds: float) -> int:
    """Bucket i holds (LAT_BASE * 2**((i-1)/4), LAT_BASE * 2**(i/4)]; 0 holds what is faster."""
    if seconds <= LAT_BASE:
        return 0
    i = int((log2(seconds) - _LOG_BASE) * LAT_PER_OCTAVE) + 1
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
    """Declared templates by path segment: a literal segment beats one with a parameter in it,
    which beats a whole-segment parameter (as OpenAPI orders them); deeper paths backtrack."""

    __slots__ = ("children", "params", "patterns", "template")

    def __init__(self) -> None:
        self.children: dict[str, TemplateMatcher] = {}
        self.patterns: list[tuple[re.Pattern[str], TemplateMatcher]] = []
        self.params: TemplateMatcher | None = None
        self.template: str | None = None

    @classmethod
    def build(cls, declared: tuple[DeclaredTemplate, ...]) -> TemplateMatcher:
        root = cls()
        for d in declared:
            node = root
            for seg in d.path.split("/")[1:]:
                node = node._child(seg)
            if node.template is None:
                node.template = d.path
        return root

    def _child(self, seg: str) -> TemplateMatcher:
        if "{" not in seg:
            return self.children.setdefault(seg, TemplateMatcher())
        if seg.startswith("{") and seg.endswith("}") and seg.count("{") == 1:
            if self.params is None:
                self.params = TemplateMatcher()
            return self.params
        rx = re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part)
                                for part in re.split(r"(\{[^}]*\})", seg) if part))
        for pattern, node in self.patterns:
            if pattern.pattern == rx.pattern:
                return node
        node = TemplateMatcher()
        self.patterns.append((rx, node))
        return node

    def match(self, segments: list[str], i: int = 0) -> str | None:
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


class EndpointCounter:
    """One data plane's inventory counters (see the module's docstring)."""

    __slots__ = ("admitted", "aged_at", "cache", "declared", "hits", "matcher", "max_templates",
                 "methods", "taken_rows")

    def __init__(self, spec: InventorySpec | None = None, clock=time.monotonic) -> None:
        # (method, path (or a long path's template), route, backend, status * 128 + latency
        # bucket) -> [count]
        self.hits: dict[tuple, list[int]] = {}
        self.cache: dict[bytes, str] = {}
        self.methods: dict[bytes, str] = {}
        # (method, template) -> requests since the last ageing; declared ones are never aged
        self.admitted: dict[tuple[str, str], int] = {}
        self.aged_at = clock()
        self.taken_rows = 0
        self.configure(spec or InventorySpec())

    def configure(self, spec: InventorySpec) -> None:
        """A new config's templates and bound (at install; the batch so far is kept)."""
        self.matcher = TemplateMatcher.build(spec.declared)
        self.declared = frozenset(d.path for d in spec.declared)
        self.max_templates = spec.max_templates
        self.cache.clear()
        self.admitted = {k: n for k, n in self.admitted.items() if k[1] not in self.declared}

    # -- the request path ----------------------------------------------------------------------
    def count(self, method: bytes, path: bytes, route: str, backend: str, status: int,
              seconds: float) -> None:
        """One request: a count under (method, raw path, route, backend, status and latency
        bucket); one dict lookup when the key was seen in this batch."""
        i = int((log2(seconds) - _LOG_BASE) * LAT_PER_OCTAVE) + 1 if seconds > LAT_BASE else 0
        key = (method, path, route, backend, status * 128 + (i if i < LAT_TOP else LAT_TOP))
        c = self.hits.get(key)
        if c is not None:
            c[0] += 1
        elif len(path) <= MAX_RAW_PATH:
            self.hits[key] = [1]
        else:  # a long path is not kept for 200 ms: its template is
            key = (method, self.template(path), route, backend, key[4])
            c = self.hits.get(key)
            if c is None:
                self.hits[key] = [1]
            else:
                c[0] += 1

    # -- every ~200 ms -------------------------------------------------------------------------
    def template(self, path: bytes) -> str:
        t = self.cache.get(path)
        if t is None:
            text = path.decode("utf-8", "backslashreplace")
            t = None if self.matcher.empty else self.matcher.match(text.split("/")[1:])
            if t is None:
                t = infer_template(text)
            cache = self.cache
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[path] = t
        return t

    def _endpoint(self, method: bytes, template: str, n: int) -> tuple[str, str]:
        m = self.methods.get(method)
        if m is None:
            m = method.decode("latin-1")
            if len(self.methods) < 64:
                self.methods[method] = m
        ep = (m, template)
        admitted = self.admitted
        count = admitted.get(ep)
        if count is not None:
            admitted[ep] = count + n
            return ep
        if template in self.declared:
            admitted[ep] = n
            return ep
        if len(admitted) >= self.max_templates or len(template) > MAX_TEMPLATE:
            return OTHER
        admitted[ep] = n
        return ep

    def take(self, now: float | None = None) -> list[list]:
        """The batch as rows `[method, template, route, backend, requests, errors,
        [[latency bucket, count], ...]]`, one per endpoint, route and backend."""
        hits, self.hits = self.hits, {}
        out: dict[tuple[str, str, str, str], list] = {}
        for (method, path, route, backend, code), (n,) in hits.items():
            status, i = divmod(code, 128)
            template = path if type(path) is str else self.template(path)
            m, t = self._endpoint(method, template, n)
            key = (m, t, route, backend)
            row = out.get(key)
            if row is None:
                row = out[key] = [0, 0, {}]
            row[0] += n
            if status >= 500:
                row[1] += n
            lat = row[2]
            lat[i] = lat.get(i, 0) + n
        self._age(now)
        self.taken_rows += len(out)
        return [[*k, r[0], r[1], sorted(r[2].items())] for k, r in out.items()]

    def _age(self, now: float | None) -> None:
        now = time.monotonic() if now is None else now
        if now - self.aged_at < AGE_INTERVAL:
            return
        self.aged_at = now
        declared = self.declared
        self.admitted = {k: 0 for k, n in self.admitted.items() if n >= 2 or k[1] in declared}
