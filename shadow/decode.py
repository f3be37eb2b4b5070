"""Content-Encoding decoding for everything the comparer looks at: gzip, deflate, br and zstd.

One module, used before anything else touches a body: the comparison, redaction and the diff
store all see the decoded bytes, so a redact rule applies to what a reader would see, and
nothing is ever stored still compressed (a compressed secret passes a `grep` of state_dir and
a naive audit, yet is one `zcat` away).

Decoding runs in the comparer process only (off the request path) and is capped: the output of
one body stops at `limit` bytes. A body that would decode to more (a decompression bomb, or
simply a very large answer) is reported `too_large` and never expanded further; the comparer
counts the pair as skipped (`decoded_too_large`). A body whose coding is unknown or whose bytes
are corrupt is `undecodable`: compared as opaque bytes, never stored.

Libraries: gzip and deflate with the standard library's zlib; br with Google's `brotli`
bindings (>= 1.2, whose `output_buffer_limit` lets a decoder stop early; the reference
implementation, also what aiohttp, urllib3 and httpx use); zstd with `zstandard` (the
python-zstandard bindings that urllib3 and httpx use; its `stream_reader` reads at most what
is asked for, across frames).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, replace
from typing import TypeVar

from shadow.model import Exchange, RequestRecord

__all__ = ["CODINGS", "DEFAULT_LIMIT", "Decoded", "decode", "decoded", "header_codings"]

T = TypeVar("T", Exchange, RequestRecord)

DEFAULT_LIMIT = 16 * 1024 * 1024
CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "identity"})
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a body is once its content codings are undone.

    `problem`: None (decoded, or nothing to undo), "too_large" (the output would exceed the
    limit; `body` is empty) or "undecodable" (unknown coding or corrupt bytes; `body` empty).
    `partial`: the input was cut (shadow.max_body) and `body` is the prefix it decodes to.
    """

    body: bytes
    codings: tuple[str, ...] = ()  # undone, in the order they were applied
    problem: str | None = None
    partial: bool = False


class _TooLarge(Exception):
    pass


def header_codings(value: str | None) -> tuple[str, ...]:
    """'gzip, br' -> ('gzip', 'br'): the codings in the order they were applied."""
    if not value:
        return ()
    return tuple(c for c in (p.strip().lower() for p in value.split(",")) if c and
                 c != "identity")


def decode(body: bytes, content_encoding: str | None, limit: int = DEFAULT_LIMIT,
           cut: bool = False) -> Decoded:
    """Undo every coding of `content_encoding` (last applied first), at most `limit` bytes out.

    `cut`: the body is a prefix of the real one (a truncated stream then decodes to a prefix
    instead of being an error)."""
    codings = header_codings(content_encoding)
    if not codings or not body:
        return Decoded(body)
    if any(c not in CODINGS for c in codings) or len(codings) > 3:
        return Decoded(b"", codings, "undecodable")
    out = body
    partial = False
    try:
        for coding in reversed(codings):
            out, short = _undo(coding, out, limit)
            partial = partial or short
    except _TooLarge:
        return Decoded(b"", codings, "too_large")
    except Exception:  # zlib.error, brotli.error, zstandard.ZstdError, ...: corrupt input
        return Decoded(b"", codings, "undecodable")
    if partial and not cut:
        return Decoded(b"", codings, "undecodable")  # ends mid-stream: corrupt, not cut
    return Decoded(out, codings, None, partial)


def _undo(coding: str, data: bytes, limit: int) -> tuple[bytes, bool]:
    """(decoded bytes, whether the input ended before the stream did)."""
    if coding in ("gzip", "x-gzip"):
        return _zlib(data, 16 + zlib.MAX_WBITS, limit)
    if coding == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some servers send raw deflate: accept both.
        try:
            return _zlib(data, zlib.MAX_WBITS, limit)
        except zlib.error:
            return _zlib(data, -zlib.MAX_WBITS, limit)
    if coding == "br":
        return _brotli(data, limit)
    return _zstd(data, limit)


def _zlib(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    size = 0
    rest = data
    while rest:  # gzip may have several members, one after the other
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(rest, limit - size + 1)
        size += len(chunk)
        parts.append(chunk)
        if size > limit or d.unconsumed_tail:
            raise _TooLarge
        chunk = d.flush(limit - size + 1)
        size += len(chunk)
        parts.append(chunk)
        if size > limit:
            raise _TooLarge
        if not d.eof:
            return b"".join(parts), True
        rest = d.unused_data if wbits > zlib.MAX_WBITS else b""
    return b"".join(parts), False


def _brotli(data: bytes, limit: int) -> tuple[bytes, bool]:
    import brotli

    d = brotli.Decompressor()
    parts = [d.process(data, output_buffer_limit=_CHUNK)]
    size = len(parts[0])
    while not d.can_accept_more_data():
        if size > limit:
            raise _TooLarge
        chunk = d.process(b"", output_buffer_limit=_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        parts.append(chunk)
    if size > limit:
        raise _TooLarge
    return b"".join(parts), not d.is_finished()


def _zstd(data: bytes, limit: int) -> tuple[bytes, bool]:
    import zstandard

    # max_window_size bounds the decoder's own memory (a frame may ask for up to 2 GiB).
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        out = reader.read(limit + 1)
    if len(out) > limit:
        raise _TooLarge
    # The reader stops quietly at the end of a cut stream; decompressobj says whether each
    # frame ended (its output is at most what was just read: the limit holds).
    rest = data
    while rest:
        obj = dctx.decompressobj()
        obj.decompress(rest)
        if not obj.eof:
            return out, True
        rest = obj.unused_data
    return out, False


def decoded(ex: T, limit: int = DEFAULT_LIMIT) -> T:
    """`ex` (an Exchange or RequestRecord) with its body decoded; itself when already done."""
    if ex.decoded:
        return ex
    truncated = bool(getattr(ex, "truncated", False))
    d = decode(ex.body, ex.header("content-encoding"), limit, cut=truncated)
    if d.problem is not None:
        return replace(ex, decoded=True, codings=d.codings, problem=d.problem)
    return replace(ex, body=d.body, decoded=True, codings=d.codings)
