"""The byte-identical check of a mirrored answer (proxy.dataplane.mirror): the primary's compared
headers are read from its forwarded header lines (a C scan when compiled, `header_pairs` when
not). What users rely on: a pair counts as a match without the comparer only when the compared
headers are the same, whatever the case of their names, the blanks around their values, or how
the head was cut into pieces; any other pair goes to the full comparison."""

from __future__ import annotations

import random

import pytest

from proxy.dataplane.headers import header_pairs
from proxy.dataplane.mirror import _picked, _same_picked

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


@pytest.mark.parametrize("seed", range(60))
def test_a_mirrored_answer_matches_only_with_the_same_compared_headers(seed: int) -> None:
    """The mirrored answer's side of the check (its (lower-cased name, value) pairs against the
    primary's picked headers; compiled, compared in place): the same as building its picked
    list and comparing the two lists, for the same headers, one more or one fewer, another
    order, another value, other blanks around a value, a duplicate, a longer or shorter name."""
    rng = random.Random(seed)
    words = [b"content-type", b"content-encoding", b"content-typ", b"content-types", b"etag",
             b"server", b"date"]
    values = [b"", b"a", b"application/json", b"application/jsoN", b"gzip", b"gzip "]
    blanks = [b"", b" ", b"\t", b" \t ", b"\x0b"]
    primary = [(rng.choice(words), rng.choice(values)) for _ in range(rng.randint(0, 5))]
    lines = [n.title() + b":" + rng.choice([b"", b" "]) + v + rng.choice(blanks) + b"\r\n"
             for n, v in primary]
    picked = _picked(lines, NAMES)
    for _ in range(20):
        mirrored = [(n, rng.choice(blanks[:4]) + v + rng.choice(blanks)) for n, v in primary]
        change = rng.randrange(6)
        if change == 0 and mirrored:
            mirrored.pop(rng.randrange(len(mirrored)))
        elif change == 1:
            mirrored.insert(rng.randint(0, len(mirrored)), (rng.choice(words), rng.choice(values)))
        elif change == 2 and len(mirrored) > 1:
            i, j = rng.sample(range(len(mirrored)), 2)
            mirrored[i], mirrored[j] = mirrored[j], mirrored[i]
        elif change == 3 and mirrored:
            i = rng.randrange(len(mirrored))
            mirrored[i] = (mirrored[i][0], rng.choice(values))
        expected = picked == [(n, v.strip()) for n, v in mirrored if n in NAMES]
        assert _same_picked(mirrored, NAMES, frozenset(NAMES), picked) is expected

