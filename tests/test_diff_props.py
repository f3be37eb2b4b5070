"""Properties of the comparator that hold for any input (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.spec import CompareSpec
from shadow.diff import Comparator
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
