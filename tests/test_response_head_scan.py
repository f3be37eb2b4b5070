"""Issue 29: the upstream's response head is read from the bytes it came in (`scan_head`), not
header by header through llhttp's callbacks. llhttp still parses and validates every head; the
scan only finds where its lines are. It must read every head exactly as llhttp's callbacks do
(`read_head`, the path it falls back to), or give up on it (None), never read one another way:
that would let a hostile upstream split or smuggle a header past the proxy's rules.

Runs on both paths: compiled, `scan_head` is a C loop and `_scan_head_py` the pure form of the
same rules; without the extension both are Python.
"""

from __future__ import annotations

import random

import httptools
import pytest

from proxy.dataplane.basics import HEADER_CODES, code_of_lower
from proxy.dataplane.headers import header_pairs
from proxy.dataplane.upstream import _scan_head_py, read_head, scan_head

SCANS = [pytest.param(scan_head, id="scan_head"), pytest.param(_scan_head_py, id="pure_rules")]

CODED = sorted(HEADER_CODES)
OTHER = [b"Server", b"Date", b"Content-Type", b"ETag", b"X-Trace", b"Set-Cookie", b"x", b"A-B_c",
         b"Content-Lengthy", b"Connectio", b"X-Request-Idx", b"!#$%&'*+-.^_`|~"]
VALUE_BYTES = b"abcXYZ019 \t,;=/\"'()<>@[]{}?~\x80\xa0\xff"


def _name(rng: random.Random) -> bytes:
    name = rng.choice(CODED if rng.random() < 0.3 else OTHER)
    return bytes(c ^ 32 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in name)


def _value(rng: random.Random, name: bytes) -> bytes:
    low = name.lower()
    if low == b"content-length":
        return b"%d" % rng.randrange(0, 10_000)
    if low == b"transfer-encoding":
        return b"chunked"
    n = rng.randrange(0, 12)
    value = bytes(rng.choice(VALUE_BYTES) for _ in range(n)).strip(b" \t")
    return value + rng.choice([b"", b"", b" ", b"\t ", b"  "])  # trailing blanks: kept


def _head(rng: random.Random) -> tuple[bytes, list[tuple[bytes, bytes, bytes]]]:
    """A head llhttp accepts: (bytes, [(name, separator and leading blanks, value)])."""
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.0"])
    code = rng.choice([200, 201, 204, 301, 404, 500, 503])
    reason = rng.choice([b" OK", b" Not Found", b"", b" ", b" O\tK ", b" \xe9t\xe9"])
    headers = []
    seen_length = seen_te = False
    for _ in range(rng.randrange(0, 14)):
        name = _name(rng)
        low = name.lower()
        if low in (b"content-length", b"transfer-encoding"):
            if seen_length or seen_te:
                continue  # one framing header: llhttp refuses some pairs, the proxy all of them
            seen_length, seen_te = low == b"content-length", low == b"transfer-encoding"
        sep = rng.choice([b": ", b":", b":\t", b":  \t "])
        headers.append((name, sep, _value(rng, name)))
    lines = b"".join(n + s + v + b"\r\n" for n, s, v in headers)
    return b"%s %d%s\r\n%s\r\n" % (version, code, reason, lines), headers


def _llhttp_accepts(head: bytes) -> bool:
    class Sink:
        done = False

        def on_headers_complete(self) -> None:
            self.done = True

    sink = Sink()
    try:
        httptools.HttpResponseParser(sink).feed_data(head)
    except httptools.HttpParserError:
        return False
    return sink.done


@pytest.mark.parametrize("scan", SCANS)
def test_the_scan_reads_every_head_as_llhttp_does(scan) -> None:
    """3,000 random heads llhttp accepts (coded names in any case, no blank or many after the
    colon, trailing blanks, obs-text, empty values, odd reasons), each with a body after it:
    the same reason, the same special headers, the same header lines (name and value), and the
    forwarded lines are the upstream's own bytes, in order."""
    rng = random.Random(29)
    checked = 0
    for _ in range(3_000):
        head, headers = _head(rng)
        if not _llhttp_accepts(head):
            continue
        data = head + b"body bytes\r\n\r\nHTTP/1.1 200 OK\r\n"  # what follows is not read
        lines: list[bytes] = []
        special: list[tuple[int, bytes, bytes]] = []
        reason = scan(data, lines, special)
        assert reason is not None, head
        want_reason, want_lines, want_special = read_head(data)
        assert reason == want_reason, head
        assert special == want_special, head
        assert header_pairs(lines) == header_pairs(want_lines), head
        # forwarded as they came: the names with no code (x-request-id has one: the answer
        # carries the request's own id; any proxy* name is hop-by-hop)
        forwarded = [(n, s, v) for n, s, v in headers if code_of_lower(n.lower()) == 0]
        assert b"".join(lines) == b"".join(n + s + v + b"\r\n" for n, s, v in forwarded), head
        checked += 1
    assert checked > 2_500


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("data", [
    pytest.param(b"\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n", id="leading_crlf"),
    pytest.param(b"HTTP/2.0 200 OK\r\nA: b\r\n\r\n", id="version_2"),
    pytest.param(b"HTTP/1.1 200  OK\r\nA: b\r\n\r\n", id="reason_after_two_blanks"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n", id="no_blank_line"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\nB: c\r\n\r\n", id="bare_lf"),
    pytest.param(b"HTTP/1.1 200 OK\nA: b\r\n\r\n", id="bare_lf_status"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\rB: c\r\n\r\n", id="bare_cr"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", id="folded"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", id="blank_before_colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nA\t: b\r\n\r\n", id="tab_before_colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\n: b\r\n\r\n", id="empty_name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nAb\r\n\r\n", id="no_colon"),
    pytest.param(b"HTTP/1.1 2x0 OK\r\n\r\n", id="status_not_digits"),
    pytest.param(b"HTTP/1.1 200OK\r\n\r\n", id="no_blank_after_status"),
])
def test_a_head_in_any_other_form_is_left_to_llhttps_callbacks(scan, data) -> None:
    """Whatever llhttp would make of these (it refuses most), the scan does not read them: the
    head goes to `read_head`, header by header, or is refused there."""
    assert scan(data, [], []) is None


def test_header_pairs_reads_lines_in_any_pieces() -> None:
    """The shadow comparison's (name, value) pairs are the same from runs of raw lines and from
    llhttp's four pieces per line."""
    raw = [b"Server: x\r\nX-A:  a b \r\n", b"X-Empty:\r\nx-request-id: r1\r\n"]
    pieces = [b"Server", b": ", b"x", b"\r\n", b"X-A", b": ", b"a b ", b"\r\n",
              b"X-Empty", b": ", b"", b"\r\n", b"x-request-id", b": ", b"r1", b"\r\n"]
    want = [(b"server", b"x"), (b"x-a", b"a b "), (b"x-empty", b""), (b"x-request-id", b"r1")]
    assert header_pairs(raw) == header_pairs(pieces) == want
