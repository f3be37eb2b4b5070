"""`basics.header_code`, how the data plane tells the response headers it acts on (framing,
hop-by-hop, x-request-id) from those it forwards as they came: compiled, a case-blind C
comparison with the coded names of the same length; pure, a dict lookup of the lower-cased name.
Both must give the code of `HEADER_CODES` for the lower-cased name, and 0 for any other."""

from __future__ import annotations

import random

import pytest

from proxy.config.header_names import HOP_BY_HOP
from proxy.dataplane.basics import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_HOP_BY_HOP,
    H_REQUEST_ID,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    HEADER_CODES,
    header_code,
)


def expected(name: bytes) -> int:
    """The lower-cased name's code; any other `proxy*` name is hop-by-hop (the contract's
    `Proxy-*`, and httpoxy's `Proxy`)."""
    lname = name.lower()
    return HEADER_CODES.get(lname, 0) or (H_HOP_BY_HOP if lname.startswith(b"proxy") else 0)


def test_every_hop_by_hop_name_is_coded_and_never_forwarded_as_it_came() -> None:
    assert set(HEADER_CODES) == HOP_BY_HOP | {b"x-request-id"}
    assert HEADER_CODES[b"content-length"] == H_CONTENT_LENGTH
    assert HEADER_CODES[b"transfer-encoding"] == H_TRANSFER_ENCODING
    assert HEADER_CODES[b"connection"] == H_CONNECTION
    assert HEADER_CODES[b"upgrade"] == H_UPGRADE
    assert HEADER_CODES[b"x-request-id"] == H_REQUEST_ID
    assert all(HEADER_CODES[n] != 0 for n in HOP_BY_HOP)


@pytest.mark.parametrize("name", sorted(HEADER_CODES))
def test_coded_names_in_any_case(name: bytes) -> None:
    rng = random.Random(name)
    variants = {name, name.upper(), name.title(), name.capitalize()}
    variants |= {bytes(c ^ 0x20 if rng.random() < 0.5 and 97 <= c <= 122 else c for c in name)
                 for _ in range(20)}
    for v in variants:
        assert header_code(v) == HEADER_CODES[name], v


# Near misses: one byte off, a byte that is a letter only after `| 0x20`, non-ASCII, prefixes
# and suffixes of coded names, empty, and a name longer than any coded one.
NEAR = [b"", b"t", b"tE\x00", b"content-lengthx", b"content-lengt", b"xcontent-length",
        b"content_length", b"content\rlength", b"content\x0dlength", b"CONTENT-LENGT\xc8",
        b"x-request-ie", b"x-request-i\xe4", b"te ", b" te", b"\x14e", b"t\xc5", b"upgrad\x05",
        b"connection" * 3, b"keep-alive\x00", b"proxx-authorization", b"prox", b"http2-settingz",
        b"content-type", b"date", b"server", b"x-requestid", b"set-cookie"]


@pytest.mark.parametrize("name", [b"Proxy", b"PROXY-FOO", b"proxy-status", b"Proxy-Authorizatio",
                                  b"proxyx"])
def test_every_proxy_name_is_hop_by_hop(name: bytes) -> None:
    assert header_code(name) == expected(name) == H_HOP_BY_HOP


@pytest.mark.parametrize("name", NEAR)
def test_near_misses_are_other_names(name: bytes) -> None:
    assert header_code(name) == expected(name) == 0


def test_random_names_agree_with_the_lower_cased_lookup() -> None:
    rng = random.Random(7)
    alphabet = b"-eEtTcCoOnNrRaAkKpP2xXiIdDsSlLgGhHuU\x00\r\xc5\xe5@`_"
    names = sorted(HEADER_CODES)
    for _ in range(30_000):
        if rng.random() < 0.5:  # a coded name with one byte changed
            base = bytearray(rng.choice(names))
            base[rng.randrange(len(base))] = rng.choice(alphabet)
            name = bytes(base)
        else:
            name = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert header_code(name) == expected(name), name


def test_connection_drops_follow_each_value_not_the_last_one() -> None:
    """`upstream.connection_drops` remembers the last value it read: a different value that
    follows (or the same bytes in another object) must get its own answer."""
    from proxy.dataplane.upstream import connection_drops

    seq = [(b"keep-alive", None), (b"keep-alive, X-A", {b"x-a"}),
           (b"X-B,close", {b"x-b", b"close"}), (b"keep-alive", None),
           (b"Content-Length, X-Request-Id, host, upgrade", None), (b"X-A", {b"x-a"}),
           (bytes(bytearray(b"X-A")), {b"x-a"}), (b"x-a, X-C ,", {b"x-a", b"x-c"}),
           (b"", None), (b"keep-alive", None)]
    for value, drops in seq:
        assert connection_drops(value) == (frozenset(drops) if drops else None), value


def test_find_byte_is_bytes_find() -> None:
    """basics.find_byte (compiled: memchr) gives what bytes.find gives, at every position and
    for bytes not there, NUL and high bytes included."""
    from proxy.dataplane.basics import find_byte

    rng = random.Random(11)
    for _ in range(3_000):
        data = bytes(rng.choices(b"ab_#?\x00\xff", k=rng.randrange(0, 40)))
        for byte in (ord("_"), ord("#"), ord("?"), 0, 0xFF, ord("z")):
            assert find_byte(data, byte) == data.find(byte), (data, byte)
