"""The byte-identical check of a mirrored answer (proxy.dataplane.mirror): the primary's compared
headers are read from its forwarded header lines (a C scan when compiled, `header_pairs` when
not). What users rely on: a pair counts as a match without the comparer only when the compared
headers are the same, whatever the case of their names, the blanks around their values, or how
the head was cut into pieces; any other pair goes to the full comparison."""

from __future__ import annotations

import random

import pytest

from proxy.dataplane.headers import header_pairs
from proxy.dataplane.mirror import _picked

NAMES = (b"content-encoding", b"content-type")


def _reference(lines: list[bytes], names: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    return [(n, v.strip()) for n, v in header_pairs(lines) if n in names]


def test_picks_the_compared_headers_in_order_whatever_their_case_and_blanks() -> None:
    head = (b"Server: nginx\r\nCONTENT-TYPE:  application/json \t\r\nX-A: 1\r\n"
            b"content-encoding:gzip\r\nContent-Type: text/plain\r\nContent-Typo: no\r\n"
            b"Content-Type-X: no\r\n")
    assert _picked([head], NAMES) == [(b"content-type", b"application/json"),
                                      (b"content-encoding", b"gzip"),
                                      (b"content-type", b"text/plain")]
    assert _picked([], NAMES) == []
    assert _picked([b"Content-Type:\r\n"], NAMES) == [(b"content-type", b"")]
    assert _picked([b"X-Content-Type: a\r\n"], NAMES) == []


@pytest.mark.parametrize("seed", range(40))
def test_the_scan_agrees_with_header_pairs_on_heads_cut_into_pieces(seed: int) -> None:
    rng = random.Random(seed)
    words = [b"content-type", b"Content-Type", b"CONTENT-ENCODING", b"content-encodinG",
             b"content-typ", b"content-types", b"x-content-type", b"server", b"etag", b"date",
             b"content-length"]
    lines = []
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(words)
        value = rng.choice([b"", b"a", b"application/json; charset=utf-8", b"gzip", b"1:2"])
        lines.append(name + b":" + rng.choice([b"", b" ", b"  ", b"\t", b" \t "]) + value +
                     rng.choice([b"", b" ", b"\t", b" \x0b"]) + b"\r\n")
    head = b"".join(lines)
    cuts = sorted(rng.sample(range(len(head) + 1), min(len(head) + 1, rng.randint(0, 5))))
    pieces = [head[a:b] for a, b in zip([0, *cuts], [*cuts, len(head)], strict=True)]
    pieces = [p for p in pieces if p] or [head]
    assert _picked(pieces, NAMES) == _reference(pieces, NAMES)
    assert _picked(lines, (b"etag",)) == _reference(lines, (b"etag",))
