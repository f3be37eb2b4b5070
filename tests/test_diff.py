"""The comparator over tricky JSON, headers and non-JSON bodies."""

from __future__ import annotations

import gzip
import json

import pytest

from proxy.config.spec import CompareSpec
from shadow.diff import Comparator
from shadow.jsonpath import PathSet, PathSyntaxError, format_path, parse_path
from shadow.model import Comparison, Exchange

JSON = (("content-type", "application/json"),)


def ex(body: object, status: int = 200, headers=JSON, truncated: bool = False) -> Exchange:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return Exchange(status, headers, raw, truncated)


def compare(a: object, b: object, **spec) -> Comparison:
    return Comparator(CompareSpec(**spec)).compare(ex(a), ex(b))


def found(c: Comparison) -> set[tuple[str, str]]:
    """(first concrete occurrence, kind) of each difference."""
    return {(d.where, d.kind) for d in c.differences}


def test_identical_bodies_match() -> None:
    c = compare({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert c.matched and c.result == "match"


def test_changed_field_reported_on_its_path_and_nothing_else() -> None:
    legacy = {"items": [{"id": 1, "amount": 10}, {"id": 2, "amount": 20}], "n": 2}
    target = {"items": [{"id": 1, "amount": 10}, {"id": 2, "amount": 21}], "n": 2}
    c = compare(legacy, target)
    assert [d.to_dict() for d in c.differences] == [
        {"path": "$.items[*].amount", "kind": "value", "legacy": 20, "target": 21,
         "at": "$.items[1].amount", "elements": 1, "of": 2, "examples": ["$.items[1].amount"]}
    ]
    assert c.result == "mismatch"


def test_missing_and_extra_fields() -> None:
    c = compare({"a": 1, "gone": {"x": 1}}, {"a": 1, "new": [1]})
    assert {d.path: (d.kind, d.legacy, d.target) for d in c.differences} == {
        "$.gone": ("missing", {"x": 1}, None),
        "$.new": ("extra", None, [1]),
    }


def test_type_changes_are_type_differences() -> None:
    c = compare({"a": "1", "b": None, "c": [], "d": True}, {"a": 1, "b": {}, "c": {}, "d": 1})
    assert found(c) == {("$.a", "type"), ("$.b", "type"), ("$.c", "type"), ("$.d", "type")}


def test_nested_arrays_by_index_and_length() -> None:
    c = compare({"m": [[1, 2], [3, 4, 5]]}, {"m": [[1, 2], [3, 9]]})
    assert found(c) == {("$.m[1]", "length"), ("$.m[1][1]", "value")}
    length = next(d for d in c.differences if d.kind == "length")
    assert (length.legacy, length.target) == (3, 2)


def test_ints_and_floats_equal_when_numerically_equal() -> None:
    assert compare(b'{"a": 1, "b": 2.50, "c": -0}', b'{"a": 1.0, "b": 2.5, "c": 0.0}').matched


def test_big_numbers_compared_exactly() -> None:
    big = b'{"id": 123456789012345678901234567890, "x": 0.1000000000000000000001}'
    c = compare(big, b'{"id": 123456789012345678901234567891, "x": 0.1}')
    assert found(c) == {("$.id", "value"), ("$.x", "value")}
    d = next(d for d in c.differences if d.path == "$.id")
    assert d.legacy == 123456789012345678901234567890


def test_float_tolerance_is_absolute() -> None:
    assert compare({"p": 10.0}, {"p": 10.004}, numeric_tolerance=0.005).matched
    c = compare({"p": 10.0}, {"p": 10.006}, numeric_tolerance=0.005)
    assert found(c) == {("$.p", "value")}
    assert compare({"p": 1e308}, {"p": 1e308}, numeric_tolerance=0.1).matched
    assert not compare({"p": 10**400}, {"p": 1.5}, numeric_tolerance=0.1).matched


def test_booleans_are_not_numbers() -> None:
    assert found(compare({"a": True}, {"a": 1})) == {("$.a", "type")}
    assert found(compare({"a": False}, {"a": 0}, numeric_tolerance=1.0)) == {("$.a", "type")}
    nested = found(compare({"x": [{"a": 1, "b": True}]}, {"x": [{"a": 1.0, "b": 1}]}))
    assert nested == {("$.x[0].b", "type")}


def test_unicode_compared_after_nfc() -> None:
    assert compare({"name": "caf\u00e9"}, {"name": "cafe\u0301"}).matched
    assert compare({"caf\u00e9": 1}, {"cafe\u0301": 1}).matched
    c = compare({"name": "\u65e5\u672c"}, {"name": "\u65e5\u672a"})
    assert c.differences[0].legacy == "\u65e5\u672c"


def test_non_identifier_keys_use_bracket_paths() -> None:
    c = compare({"a b": {"it's": 1}}, {"a b": {"it's": 2}})
    (d,) = c.differences
    assert d.path == "$['a b']['it\\'s']"
    assert parse_path(d.path) == ("a b", "it's")


def test_array_keys_match_elements_by_key() -> None:
    legacy = {"items": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}]}
    target = {"items": [{"id": 3, "v": "c"}, {"id": 2, "v": "B"}, {"id": 4, "v": "d"}]}
    c = compare(legacy, target, array_keys=(("$.items", "id"),))
    assert found(c) == {
        ("$.items[id=2].v", "value"),
        ("$.items[id=1]", "missing"),
        ("$.items[id=4]", "extra"),
    }
    assert {d.path for d in c.differences} == {"$.items[*].v", "$.items[*]"}
    # reordering alone is no difference
    shuffled = {"items": list(reversed(legacy["items"]))}
    assert compare(legacy, shuffled, array_keys=(("$.items", "id"),)).matched
    # by index the same reorder is a difference
    assert not compare(legacy, shuffled).matched


def test_array_keys_length_and_fallback_to_index() -> None:
    c = compare(
        {"items": [{"id": 1}, {"id": 2}]},
        {"items": [{"id": 2}]},
        array_keys=(("$.items", "id"),),
    )
    assert found(c) == {("$.items", "length"), ("$.items[id=1]", "missing")}
    # an element without the key: compared by index
    c = compare(
        {"items": [{"id": 1}, 5]}, {"items": [5, {"id": 1}]}, array_keys=(("$.items", "id"),)
    )
    (d,) = c.differences  # both elements differ in type: one row, two elements
    assert (d.path, d.kind, d.elements, d.of, d.examples) == (
        "$.items[*]", "type", 2, 2, ("$.items[0]", "$.items[1]"))


def test_array_keys_with_wildcard_path() -> None:
    legacy = {"orders": [{"lines": [{"sku": "a", "q": 1}, {"sku": "b", "q": 2}]}]}
    target = {"orders": [{"lines": [{"sku": "b", "q": 3}, {"sku": "a", "q": 1}]}]}
    c = compare(legacy, target, array_keys=(("$.orders[*].lines", "sku"),))
    assert found(c) == {("$.orders[0].lines[sku='b'].q", "value")}


def test_ignore_exact_path_and_recursive_descent_and_wildcards() -> None:
    legacy = {
        "server_time": 1,
        "id": 1,
        "nested": {"id": 2, "keep": 1},
        "items": [{"ts": 1, "amount": 5}, {"ts": 2, "amount": 6}],
    }
    target = {
        "server_time": 2,
        "id": 9,
        "nested": {"id": 8, "keep": 1},
        "items": [{"ts": 7, "amount": 5}, {"ts": 8, "amount": 7}],
    }
    c = compare(legacy, target, ignore=("$.server_time", "$..id", "$.items[*].ts"))
    assert found(c) == {("$.items[1].amount", "value")}


def test_ignore_removes_missing_and_extra_too() -> None:
    c = compare(
        {"a": 1, "request_id": "x"},
        {"a": 1, "trace": {"id": 1}},
        ignore=("$.request_id", "$.trace"),
    )
    assert c.matched


def test_ignore_root_and_status() -> None:
    assert compare({"a": 1}, {"a": 2}, ignore=("$",)).matched
    cmp = Comparator(CompareSpec(ignore=("status",)))
    assert cmp.compare(ex({}, 200), ex({}, 201)).matched


def test_status_and_content_type_header() -> None:
    cmp = Comparator(CompareSpec())
    c = cmp.compare(
        ex({}, 200, (("content-type", "application/json; charset=utf-8"),)),
        ex({}, 404, (("content-type", 'Application/JSON;Charset="UTF-8"; boundary=x'),)),
    )
    assert found(c) == {("status", "status")}
    c = cmp.compare(ex(b"{}", 200, JSON), ex(b"{}", 200, (("content-type", "text/plain"),)))
    assert found(c) == {("header:content-type", "header")}


def test_configured_headers_and_header_ignores() -> None:
    cmp = Comparator(
        CompareSpec(headers=("content-type", "cache-control", "date"), ignore=("header:date",))
    )
    a = ex({}, headers=(*JSON, ("cache-control", "no-store"), ("date", "Mon")))
    b = ex({}, headers=(*JSON, ("cache-control", "max-age=60"), ("date", "Tue")))
    c = cmp.compare(a, b)
    assert [d.to_dict() for d in c.differences] == [
        {
            "path": "header:cache-control",
            "kind": "header",
            "legacy": "no-store",
            "target": "max-age=60",
        }
    ]


def test_broken_json_is_a_body_difference_not_an_exception() -> None:
    c = compare(b'{"a": 1}', b'{"a": ')
    assert found(c) == {("$", "body")}
    assert compare(b'{"a": ', b'{"a": ').matched


def test_text_bodies_normalised() -> None:
    cmp = Comparator(CompareSpec())
    text = (("content-type", "text/plain; charset=utf-8"),)
    assert cmp.compare(ex(b"a\r\nb\r\n\n  ", headers=text), ex(b"a\nb", headers=text)).matched
    c = cmp.compare(ex(b"a b", headers=text), ex(b"a  b", headers=text))
    assert [(d.path, d.kind, d.legacy, d.target) for d in c.differences] == [
        ("$", "body", "a b", "a  b")
    ]
    binary = (("content-type", "application/octet-stream"),)
    assert not cmp.compare(ex(b"a\r\n", headers=binary), ex(b"a\n", headers=binary)).matched


def test_json_detected_without_content_type() -> None:
    cmp = Comparator(CompareSpec(headers=()))
    c = cmp.compare(ex(b'{"a": 1}', headers=()), ex(b'{"a":2}', headers=()))
    assert found(c) == {("$.a", "value")}


def test_plus_json_media_types_are_json() -> None:
    hal = (("content-type", "application/hal+json"),)
    c = Comparator(CompareSpec()).compare(
        ex(b'{"a":1}', headers=hal), ex(b'{ "a" : 1 }', headers=hal)
    )
    assert c.matched


def test_gzip_bodies_are_decoded() -> None:
    h = (*JSON, ("content-encoding", "gzip"))
    c = Comparator(CompareSpec()).compare(
        ex(gzip.compress(b'{"a": 1}'), headers=h), ex(gzip.compress(b'{"a":  2}'), headers=h)
    )
    assert found(c) == {("$.a", "value")}


def test_truncated_bodies_compare_status_and_headers_only() -> None:
    cmp = Comparator(CompareSpec())
    c = cmp.compare(ex({"a": 1}, truncated=True), ex({"a": 2}))
    assert c.matched and not c.body_compared
    c = cmp.compare(ex({"a": 1}, 200, truncated=True), ex({"a": 2}, 500, truncated=True))
    assert found(c) == {("status", "status")} and not c.body_compared


def test_redacted_paths_carry_redacted_values() -> None:
    c = compare(
        {"card_number": "4111", "acct": {"iban": "DE1", "n": 1}},
        {"card_number": "4242", "acct": {"iban": "DE2", "n": 1}, "more": {"iban": "DE3"}},
        redact=("$.card_number", "$..iban"),
    )
    got = {d.path: (d.legacy, d.target) for d in c.differences}
    assert got == {
        "$.card_number": ("[REDACTED]", "[REDACTED]"),
        "$.acct.iban": ("[REDACTED]", "[REDACTED]"),
        "$.more": (None, {"iban": "[REDACTED]"}),
    }
    assert "DE" not in repr(c) and "4111" not in repr(c)


def test_deep_nesting_never_raises() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    c = compare(deep, deep[:-1])
    assert found(c) == {("$", "body")}
    nested = json.loads("[" * 900 + "1" + "]" * 900)
    other = json.loads("[" * 900 + "2" + "]" * 900)
    c = compare(nested, other)
    assert c.error is None and not c.matched


def test_large_subtrees_are_summarised_in_differences() -> None:
    c = compare({"a": 1}, {"a": 1, "blob": list(range(5000))})
    (d,) = c.differences
    assert d.kind == "extra" and isinstance(d.target, str) and "5000 items" in d.target


def test_bad_paths_are_refused_at_construction() -> None:
    for bad in ("items", "$.a[", "$.", "$..", "$['x", "$.a[-1]"):
        with pytest.raises(PathSyntaxError):
            Comparator(CompareSpec(ignore=(bad,)))


def test_jsonpath_round_trip_and_matching() -> None:
    for p in ("$", "$.a", "$.a[3].b", "$['a.b'][0]['']", "$['\\\\x']"):
        assert format_path(parse_path(p)) == p
    ps = PathSet(["$..id", "$.items[*].ts", "$.a.*"])
    assert ps.covers(("id",)) and ps.covers(("x", 3, "id")) and ps.covers(("x", "id", "y"))
    assert ps.covers(("items", 7, "ts")) and not ps.covers(("items", "ts"))
    assert ps.covers(("a", "b")) and not ps.covers(("a",))


# -- canonical paths (issue 24.1) ------------------------------------------------------------

def _accounts(drift: bool) -> list[dict]:
    out = []
    for i in range(1, 121):
        a: dict = {"id": i, "owner": f"Owner {i}", "amount": i * 10,
                   "lines": [{"id": j, "amount": j} for j in (1, 2, 3)],
                   "updated_at": f"2026-01-01T00:{i % 60:02d}:00Z"}
        if drift:
            if i % 10 == 5:
                a["owner_name"] = a.pop("owner")
            a["lines"].reverse()
            a["updated_at"] = "2026-02-02T00:00:00Z"
        out.append(a)
    return out


def test_list_elements_collapse_into_one_row_per_field_with_their_share() -> None:
    c = compare(_accounts(False), _accounts(True))
    rows = {(d.path, d.kind): d for d in c.differences}
    assert set(rows) == {("$[*].owner", "missing"), ("$[*].owner_name", "extra"),
                         ("$[*].lines[*].id", "value"), ("$[*].lines[*].amount", "value"),
                         ("$[*].updated_at", "value")}
    owner = rows[("$[*].owner", "missing")]
    assert (owner.elements, owner.of, owner.at) == (12, 120, "$[4].owner")
    assert owner.examples == ("$[4].owner", "$[14].owner", "$[24].owner", "$[34].owner",
                              "$[44].owner")
    lines = rows[("$[*].lines[*].id", "value")]
    assert (lines.elements, lines.of) == (120, 120)  # in every account (twice in each)
    assert rows[("$[*].updated_at", "value")].varies  # legacy's values differ by element
    assert c.renames == (("$[*].owner", "$[*].owner_name"),)


def test_keyed_arrays_show_the_key_and_reorders_are_no_difference() -> None:
    c = compare(_accounts(False), _accounts(True),
                array_keys=(("$", "id"), ("$[*].lines", "id")),
                ignore=("$..updated_at",))
    rows = {(d.path, d.kind): d for d in c.differences}
    assert set(rows) == {("$[*].owner", "missing"), ("$[*].owner_name", "extra")}
    assert rows[("$[*].owner", "missing")].at == "$[id=5].owner"


def test_at_most_max_fields_rows_per_comparison_the_rest_counted() -> None:
    legacy = {f"k{i}": i for i in range(500)}
    c = compare(legacy, {}, max_fields=100)
    assert len(c.differences) == 100 and c.overflow == 400 and c.result == "mismatch"


def test_rename_needs_equal_values_in_the_same_object() -> None:
    c = compare({"a": {"x": "v"}, "b": {"y": 1}}, {"a": {"z": "w"}, "b": {"q": 1}})
    assert c.renames == (("$.b.y", "$.b.q"),)
    assert compare({"flag": True}, {"enabled": True}).renames == ()  # too common a value
