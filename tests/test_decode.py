"""Content-Encoding decoding (shadow.decode): every common coding, cut streams, corrupt bytes and
decompression bombs, which are never expanded past the limit."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from shadow.decode import decode

DOC = b'{"id": 1, "owner": "Ada", "lines": [1, 2, 3]}' * 50


def _raw_deflate(b: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()


ENCODE = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_each_coding_decodes(coding: str) -> None:
    d = decode(ENCODE[coding](DOC), coding.upper())
    assert (d.body, d.problem, d.partial) == (DOC, None, False)


def test_raw_deflate_layers_and_multi_member_gzip() -> None:
    assert decode(_raw_deflate(DOC), "deflate").body == DOC
    assert decode(brotli.compress(gzip.compress(DOC)), "gzip, br").body == DOC
    assert decode(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip").body == b"abcd"
    assert decode(DOC, None).body == DOC and decode(DOC, "identity").body == DOC


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_cut_streams_decode_to_a_prefix_and_corrupt_ones_are_undecodable(coding: str) -> None:
    enc = ENCODE[coding](DOC)
    half = enc[: len(enc) // 2]
    cut = decode(half, coding, cut=True)
    assert cut.problem is None and cut.partial and DOC.startswith(cut.body)
    assert decode(half, coding).problem == "undecodable"  # not cut by us: corrupt
    assert decode(b"garbage" + enc, coding).problem == "undecodable"
    assert decode(b"x", "compress").problem == "undecodable"


def test_gzip_with_a_bad_checksum_is_undecodable() -> None:
    gz = bytearray(gzip.compress(DOC))
    gz[-8] ^= 0xFF
    assert decode(bytes(gz), "gzip").problem == "undecodable"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_bombs_stop_at_the_limit(coding: str) -> None:
    """200 MiB of zeros compress to a few hundred KB (gzip) or bytes (br, zstd): decoding stops
    at the 16 MiB limit, in bounded memory and time."""
    bomb = ENCODE[coding](b"\0" * (200 * 1024 * 1024))
    assert len(bomb) < 300_000
    tracemalloc.start()
    try:
        d = decode(bomb, coding, limit=16 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.problem == "too_large" and d.body == b""
    assert peak < 48 * 1024 * 1024, peak
    exact = decode(ENCODE[coding](b"\0" * 1000), coding, limit=1000)
    assert exact.problem is None and len(exact.body) == 1000
    assert decode(ENCODE[coding](b"\0" * 1001), coding, limit=1000).problem == "too_large"
