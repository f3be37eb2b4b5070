"""Value types shared by the mirror, the comparator, the noise model and the diff store.

All are frozen: a comparison result is a fact about one request, never edited after the fact
(the noise model returns a new `Comparison`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "Comparison", "Difference", "Exchange", "RequestRecord", "header_value"]

# The closed set of difference kinds (Diffy's Difference types, flattened to field paths).
KINDS = frozenset(
    {
        "status",  # HTTP status differs (path "status")
        "value",  # same JSON type, different value
        "type",  # different JSON types ("1" vs 1, null vs {})
        "missing",  # in legacy, absent in target
        "extra",  # absent in legacy, in target
        "length",  # arrays of different sizes (values are the sizes)
        "header",  # a compared header differs (path "header:NAME")
        "body",  # non-JSON bodies differ as bytes (path "$")
        "other",  # differences past the limit of field rows (path "other")
    }
)


def header_value(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """All values of a (lower-case) header joined by ', ', or None when absent."""
    vals = [v for k, v in headers if k == name]
    return ", ".join(vals) if vals else None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One upstream response as seen by the mirror. `truncated`: body cut at shadow.max_body.

    As the data plane hands it over, `body` is the bytes on the wire. `shadow.decode.decoded`
    undoes its Content-Encoding once (`decoded` True): `body` is then the decoded bytes and
    `codings` what was undone, or, when that failed (`problem`: "too_large" or
    "undecodable"), still the wire bytes, which are never stored or shown.
    """

    status: int
    headers: tuple[tuple[str, str], ...]  # lower-case names, in order received
    body: bytes
    truncated: bool = False
    decoded: bool = False
    codings: tuple[str, ...] = ()
    problem: str | None = None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The request as forwarded (path includes the query string). `decoded`, `codings` and
    `problem` as in `Exchange` (a mirrored request body may be gzip-encoded too)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    decoded: bool = False
    codings: tuple[str, ...] = ()
    problem: str | None = None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference at a field path in one comparison; values are plain JSON values (already
    redacted).

    `path` is canonical: array indices collapse to `[*]` (`$.items[*].amount`), so the elements
    of a list that differ the same way are one difference with `elements` occurrences. `at` is
    the first of them (`$.items[3].amount`, or `$.items[id=25].amount` in an array matched by
    `array_keys`; "" when it is `path` itself); `legacy`/`target` are its values; `examples`
    are a few more; `of` is the length of the outermost array on the path (0: none);
    `varies`: legacy's values were not the same at every occurrence.
    """

    path: str  # "$.items[*].amount", "$", "header:content-type", "status", "other"
    kind: str  # one of KINDS
    legacy: object
    target: object
    at: str = ""
    elements: int = 1
    of: int = 0
    examples: tuple[str, ...] = ()
    varies: bool = False

    @property
    def where(self) -> str:
        """The concrete path of the values shown."""
        return self.at or self.path

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.path, "kind": self.kind, "legacy": self.legacy,
                                  "target": self.target}
        if self.at:
            out.update(at=self.at, elements=self.elements, of=self.of,
                       examples=list(self.examples or (self.at,)))
        return out


@dataclass(frozen=True, slots=True)
class Comparison:
    """The differences between legacy and target for one request.

    `noise`: paths of differences judged noise (moved out by `NoiseModel.observe`).
    `body_compared`: False when a body was over shadow.max_body (only status and headers compared).
    `error`: set when the comparison itself could not be made; it then counts as neither match
    nor mismatch.
    `overflow`: differences past the comparator's limit of distinct paths per comparison (not
    itemised; counted under the `other` field). `renames`: (missing path, extra path) pairs
    whose values were equal in the same object: a field likely renamed.
    """

    differences: tuple[Difference, ...]
    noise: tuple[str, ...] = ()
    body_compared: bool = True
    error: str | None = None
    overflow: int = 0
    renames: tuple[tuple[str, str], ...] = ()

    @property
    def matched(self) -> bool:
        return not self.differences and not self.overflow and self.error is None

    @property
    def result(self) -> str:
        """The `result` label of strangler_shadow_comparisons_total."""
        if self.error is not None:
            return "error"
        return "match" if self.matched else "mismatch"
