"""Redaction of bodies, headers, query strings and differences."""

from __future__ import annotations

import gzip
import json

import pytest

from shadow.jsonpath import PathSyntaxError
from shadow.model import Difference, Exchange, RequestRecord
from shadow.redact import REDACTED, WITHHELD, Redactor

SECRET = "4111-1111-1111-1111"


def test_json_paths_and_recursive_descent() -> None:
    r = Redactor(["$.card_number", "$..iban", "$.users[*].token"])
    doc = {
        "card_number": SECRET,
        "iban": "DE1",
        "a": {"b": [{"iban": "DE2"}, {"iban": {"nested": "DE3"}}]},
        "users": [{"token": "t1", "name": "x"}],
        "keep": 1,
    }
    out = r.redact_json(doc)
    assert out == {
        "card_number": REDACTED,
        "iban": REDACTED,
        "a": {"b": [{"iban": REDACTED}, {"iban": REDACTED}]},
        "users": [{"token": REDACTED, "name": "x"}],
        "keep": 1,
    }
    assert doc["card_number"] == SECRET  # the input is not modified
    assert r.redact_json({"keep": [1]}) == {"keep": [1]}


def test_redact_json_at_a_sub_path() -> None:
    r = Redactor(["$.acct.iban"])
    assert r.redact_json({"iban": "x", "n": 1}, at=("acct",)) == {"iban": REDACTED, "n": 1}
    assert r.redact_json("x", at=("acct", "iban")) == REDACTED
    assert r.redact_json("x", at=("acct", "iban", "deeper")) == REDACTED


def test_always_redacted_headers_and_header_entries() -> None:
    r = Redactor(["header:X-Secret"])
    h = (
        ("authorization", "Bearer abc"),
        ("cookie", "s=1"),
        ("set-cookie", "s=2"),
        ("proxy-authorization", "Basic x"),
        ("x-api-key", "k"),
        ("x-secret", "v"),
        ("accept", "*/*"),
    )
    out = dict(r.redact_headers(h))
    assert out.pop("accept") == "*/*"
    assert set(out.values()) == {REDACTED}
    assert Redactor().header_redacted("Authorization")


def test_exchange_body_redacted_and_untouched_when_nothing_to_redact() -> None:
    r = Redactor(["$.card_number"])
    raw = json.dumps({"card_number": SECRET, "amount": 1.5}).encode()
    ex = r.redact_exchange(Exchange(200, (("content-type", "application/json"),), raw))
    assert SECRET.encode() not in ex.body
    assert json.loads(ex.body) == {"card_number": REDACTED, "amount": 1.5}
    same = b'{"amount":  1.50}'
    assert r.redact_body(same) is same


def test_unparseable_bodies_are_withheld_with_their_size() -> None:
    """Issue 22.2: a body the rules cannot be applied to by path is never stored hoping a
    pattern finds the secret: JSON cut at shadow.max_body, a form, HTML."""
    r = Redactor(["$..card_number"])
    cut = ('{"x": 1, "card_number": "' + SECRET[:9]).encode()  # cut at shadow.max_body
    for body in (cut, f"a=1&card_number={SECRET}&b=2".encode(), b"<html>" + SECRET.encode()):
        out = r.redact_body(body)
        assert out.startswith(WITHHELD) and b"%d bytes" % len(body) in out
        assert SECRET[:9].encode() not in out
    assert Redactor().redact_body(b"<html>ok") == b"<html>ok"  # no body rules: kept


def test_encoded_bodies_are_decoded_before_redaction() -> None:
    r = Redactor(["$.card_number"])
    raw = json.dumps({"card_number": SECRET, "amount": 1}).encode()
    ex = r.redact_exchange(Exchange(200, (("content-encoding", "gzip"),), gzip.compress(raw)))
    assert json.loads(ex.body) == {"card_number": REDACTED, "amount": 1}
    assert ex.codings == ("gzip",)
    bad = Exchange(200, (("content-encoding", "br"),), b"not brotli " + SECRET.encode())
    out = Redactor().redact_exchange(bad)  # even without rules: never stored undecoded
    assert out.body == b"[body withheld: %d bytes, br, not decodable]" % len(bad.body)
    req = r.redact_request(RequestRecord("POST", "/p", (("content-encoding", "gzip"),),
                                         gzip.compress(raw)))
    assert json.loads(req.body)["card_number"] == REDACTED


def test_request_query_string_scrubbed() -> None:
    r = Redactor(["$.iban"])
    req = r.redact_request(
        RequestRecord("GET", "/pay?iban=DE89&x=1", (("authorization", "t"),), b"")
    )
    assert req.path == "/pay?iban=[REDACTED]&x=1"
    assert req.headers == (("authorization", REDACTED),)


def test_differences_at_or_below_redacted_paths() -> None:
    r = Redactor(["$..iban", "header:x-token"])
    assert r.redact_difference(Difference("$.a.iban", "value", "DE1", "DE2")) == Difference(
        "$.a.iban", "value", REDACTED, REDACTED
    )
    d = r.redact_difference(Difference("$.a", "missing", {"iban": "DE1", "n": 1}, None))
    assert d.legacy == {"iban": REDACTED, "n": 1}
    d = r.redact_difference(Difference("header:x-token", "header", "a", "b"))
    assert (d.legacy, d.target) == (REDACTED, REDACTED)
    d = r.redact_difference(Difference("$", "body", 'x "iban": "DE1"', "y"))
    assert "DE1" not in str(d.legacy)
    assert r.path_redacted("$.x[2].iban.y") and not r.path_redacted("$.ibanx")


def test_bad_entries_refused() -> None:
    with pytest.raises(PathSyntaxError):
        Redactor(["card_number"])
