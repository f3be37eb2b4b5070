"""`basics.digits_value`, the upstream Content-Length reader of the compiled data plane: the
number `int` reads from ASCII digits (what `bytes.isdigit` accepts), or -1 for anything else
and for more than 18 digits (the caller then takes the slower `isdigit`/`int` path)."""

from __future__ import annotations

import random

import pytest

from proxy.dataplane.basics import digits_value

EDGES = [b"0", b"5", b"0005", b"65536", b"123456789012345678", b"1234567890123456789",
         b"99999999999999999999", b"", b"+5", b"-5", b" 5", b"5 ", b"1_0", b"1e3", b"0x10",
         b"\xd9\xa1", b"\x00", b"5\x00", b"/", b":"]


@pytest.mark.parametrize("value", EDGES)
def test_digits_value_agrees_with_isdigit_and_int(value: bytes) -> None:
    expect = int(value) if value.isdigit() and len(value) <= 18 else -1
    assert digits_value(value) == expect


def test_digits_value_on_random_bytes() -> None:
    rng = random.Random(3)
    for _ in range(20_000):
        value = bytes(rng.choice(b"0123456789/:+- ") for _ in range(rng.randint(0, 20)))
        expect = int(value) if value.isdigit() and len(value) <= 18 else -1
        assert digits_value(value) == expect, value
