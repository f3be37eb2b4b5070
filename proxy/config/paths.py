"""Canonical request paths: the one form that decides routing is the form that is forwarded.

`canonical_path(raw)` takes the path part of a request target (bytes, no query) and returns its
canonical form, or raises `BadPath`. Rules:
- percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded, other escapes are
  upper-cased (RFC 3986 §6.2.2);
- encoded `/` (`%2F`), `\\` (`%5C`), NUL (`%00`) and any raw control character or backslash are
  refused: they mean different paths to different servers;
- empty segments (`//`) are collapsed, `.` segments dropped and `..` resolved; `..` above the root
  is refused;
- case is kept (paths are case-sensitive), `;` is kept as an ordinary character.
The fast path (no `%`, `.`, `//`, `\\`) returns the input unchanged without allocating.
"""

from __future__ import annotations

import re


class BadPath(ValueError):
    pass


_SUSPECT = re.compile(rb"[%\\\x00-\x20\x7f]|//|/\.")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_FORBIDDEN_ESCAPES = frozenset({0x2F, 0x5C, 0x00})


def _unescape(m: re.Match[bytes]) -> bytes:
    value = int(m.group(1), 16)
    if value in _FORBIDDEN_ESCAPES:
        raise BadPath(f"encoded character %{value:02X} is not allowed in a path")
    if value in _UNRESERVED:
        return bytes((value,))
    return b"%" + m.group(1).upper()


# None for a path starting with '/' that `canonical_path` returns unchanged: the request path
# tests this before calling it (a function call less per request).
suspect = _SUSPECT.search


def canonical_path(raw: bytes) -> bytes:
    if not raw.startswith(b"/"):
        raise BadPath("path must start with '/'")
    if _SUSPECT.search(raw) is None:
        return raw
    if b"\\" in raw:
        raise BadPath("backslash is not allowed in a path")
    if any(c < 0x21 or c == 0x7F for c in raw):
        raise BadPath("control characters or spaces are not allowed in a path")
    if b"%" in raw:
        if re.search(rb"%(?![0-9A-Fa-f]{2})", raw):
            raise BadPath("malformed percent-encoding in path")
        raw = _ESCAPE.sub(_unescape, raw)
    trailing = raw.endswith(b"/") or raw.endswith(b"/.") or raw.endswith(b"/..")
    out: list[bytes] = []
    for seg in raw.split(b"/"):
        if seg in (b"", b"."):
            continue
        if seg == b"..":
            if not out:
                raise BadPath("'..' climbs above the root")
            out.pop()
            continue
        out.append(seg)
    path = b"/" + b"/".join(out)
    if trailing and out:
        path += b"/"
    return path
