"""Properties of the comparator that hold for any input (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.config.spec import CompareSpec
from shadow.diff import Comparator, _Found
from shadow.model import Exchange

JSON = (("content-type", "application/json"),)
SWAP = {"missing": "extra", "extra": "missing"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
header_lists = st.lists(
    st.tuples(
        st.sampled_from(["content-type", "content-encoding", "date", "x-a"]),
        st.text(max_size=30),
    ),
    max_size=4,
).map(tuple)

PLAIN = Comparator(CompareSpec())
RICH = Comparator(
    CompareSpec(
        headers=("content-type", "x-a"),
        ignore=("$..ts", "$.a[*].b", "header:date"),
        redact=("$..secret",),
        numeric_tolerance=0.5,
        array_keys=(("$.items", "id"), ("$..rows", "k")),
    )
)


def body(v: object) -> bytes:
    return json.dumps(v).encode()


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_a_value_never_differs_from_itself(v: object) -> None:
    for cmp in (PLAIN, RICH):
        assert cmp.compare(Exchange(200, JSON, body(v)), Exchange(200, JSON, body(v))).matched
    # and not when re-serialised differently either
    pretty = json.dumps(v, indent=2, ensure_ascii=False).encode()
    assert PLAIN.compare(Exchange(200, JSON, body(v)), Exchange(200, JSON, pretty)).matched


@settings(max_examples=300, deadline=None)
@given(
    st.integers(100, 599),
    header_lists,
    st.binary(max_size=64),
    st.integers(100, 599),
    header_lists,
    st.binary(max_size=64),
    st.booleans(),
)
def test_compare_never_raises_on_arbitrary_bytes_and_headers(
    s1: int, h1: tuple, b1: bytes, s2: int, h2: tuple, b2: bytes, trunc: bool
) -> None:
    for cmp in (PLAIN, RICH):
        c = cmp.compare(Exchange(s1, h1, b1, trunc), Exchange(s2, h2, b2))
        assert c.error is None
        assert c.matched == (not c.differences)


@settings(max_examples=200, deadline=None)
@given(json_values, json_values)
def test_never_raises_on_arbitrary_json_and_kinds_are_closed(a: object, b: object) -> None:
    for cmp in (PLAIN, RICH):
        c = cmp.compare(Exchange(200, JSON, body(a)), Exchange(200, JSON, body(b)))
        assert c.error is None
        assert {d.kind for d in c.differences} <= {"value", "type", "missing", "extra", "length"}


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_swapping_sides_swaps_missing_and_extra(a: object, b: object) -> None:
    ab = PLAIN.compare(Exchange(200, JSON, body(a)), Exchange(200, JSON, body(b)))
    ba = PLAIN.compare(Exchange(200, JSON, body(b)), Exchange(200, JSON, body(a)))
    forward = {(d.path, SWAP.get(d.kind, d.kind)) for d in ab.differences}
    backward = {(d.path, d.kind) for d in ba.differences}
    assert forward == backward


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(max_size=4), json_values, max_size=5),
    st.text(alphabet="abcXYZ019", min_size=1, max_size=12),
)
def test_redacted_value_never_in_differences(doc: dict, tail: str) -> None:
    secret = "S3CR3T-" + tail
    a = {**doc, "secret": secret, "n": {"secret": secret}}
    b = {**doc, "secret": secret + "x", "m": {"secret": secret}}
    c = RICH.compare(Exchange(200, JSON, body(a)), Exchange(200, JSON, body(b)))
    for d in c.differences:
        for v in (d.legacy, d.target):
            assert secret + "x" not in json.dumps(v)
        if d.path in ("$.secret", "$.n", "$.m"):
            assert secret not in json.dumps([d.legacy, d.target])


class _EveryPathBuilt(_Found):
    """The reference for `_Found.add_member`: every member's path built and passed to `add`,
    as before the members were named by (object path, key, kind) once the groups are full."""

    __slots__ = ()

    def add_member(self, cpath, key, text, kind, at, a, b, outer, of) -> None:
        self.add(cpath + text(key), kind, (*at, key), a, b, outer, of)


keyish = st.sampled_from(["a", "b", "k1", "k2", "odd key", "é", "*", "[*]", "x.y", "'"])
maps = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(keyish, children, max_size=6)),
    max_leaves=30,
)


ROWS = [{"k1": i, "k2": i} for i in range(3)]


@settings(max_examples=300, deadline=None)
@given(maps, maps, st.integers(min_value=0, max_value=6))
@example({"rows": ROWS, "z": 1}, {"rows": [{"k2": i} for i in range(3)], "y": 2}, 1)
@example({"rows": ROWS}, {"rows": [{}, {"k1": 1}, {}]}, 2)
def test_members_past_the_cap_are_counted_as_when_every_path_was_built(
        a: object, b: object, cap: int) -> None:
    """With few field rows (`max_fields`), the differences itemised, their counts and examples,
    and the overflow are the same whether a missing or extra member's path is built or not once
    the rows are full (shadow.diff._Found.add_member), over objects nested in arrays, keys that
    need quoting and keys that look like paths."""
    import shadow.diff as diff

    spec = CompareSpec(max_fields=cap, array_keys=(("$..items", "a"),))
    left, right = Exchange(200, JSON, body(a)), Exchange(200, JSON, body(b))
    fast = Comparator(spec).compare(left, right)
    diff._Found = _EveryPathBuilt  # type: ignore[misc]
    try:
        slow = Comparator(spec).compare(left, right)
    finally:
        diff._Found = _Found  # type: ignore[misc]
    assert fast.error is None and fast == slow
    assert (fast.differences, fast.overflow) == (slow.differences, slow.overflow)


def test_a_member_that_has_its_row_is_counted_there_after_the_rows_are_full() -> None:
    """One row (max_fields 1): `$.rows[*].k1` missing gets it at the first element, and the
    two later elements are counted in it, not as overflow; `z` and `y` come after the row is
    full: overflow."""
    c = Comparator(CompareSpec(max_fields=1)).compare(
        Exchange(200, JSON, body({"rows": ROWS, "z": 1})),
        Exchange(200, JSON, body({"rows": [{"k2": i} for i in range(3)], "y": 2})))
    [d] = c.differences
    assert (d.path, d.kind, d.elements, d.of) == ("$.rows[*].k1", "missing", 3, 3)
    assert c.overflow == 2
