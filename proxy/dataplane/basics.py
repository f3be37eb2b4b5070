"""What the client connection and the exchange share: status reasons, refusals and their
bodies, request ids, the request headers handled apart.

A module of its own so that the two compiled modules (proxy.dataplane.server and exchange, which
cimport each other's types) import no names from each other's module bodies at start-up.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

from proxy.dataplane.headers import FORWARDED_HEADERS, HOP_BY_HOP

try:  # compiled (setup.py): `header_code` compares bytes in C
    import cython

    _COMPILED = cython.compiled
except ImportError:  # the .py file without Cython installed
    _COMPILED = False
if _COMPILED:
    from cython.cimports.cpython.bytes import PyBytes_AS_STRING, PyBytes_FromStringAndSize
    from cython.cimports.libc.string import memchr, memcpy
    from cython.cimports.posix.time import CLOCK_MONOTONIC, clock_gettime, timespec

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
DEFAULT_ROUTE = "_default"
_REQ_FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding", b"host"})
# Request headers handled one by one in `Exchange._headers`: framing, and those never forwarded as
# received (some are re-added by the proxy); every other header is forwarded as it came.
# strangler's marks of a mirror and of a reconciliation replay: kept from `trusted_proxies`
# only (a strangler in front), dropped from any other client (SECURITY.md)
MARKS = frozenset({b"x-strangler-shadow", b"x-strangler-reconcile"})
# Cookie: forwarded as it came, but repeated Cookie headers are read as one (the sticky key)
REQ_SPECIAL = HOP_BY_HOP | FORWARDED_HEADERS | _REQ_FRAMING | MARKS | {b"x-request-id", b"cookie"}
XFP_HTTP = (b"x-forwarded-proto", b"http")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# A client's X-Request-Id that is kept (else one is generated): safe in a header, a log line
# and a JSON string as it is
VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9_.:-]{1,128}").fullmatch


class Reject(Exception):
    """Refuse the request being parsed with `status` and close the connection."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(status: int, code: str, message: str, request_id: str | None) -> bytes:
    return json.dumps(
        {"error": code, "detail": message, "status": status, "request_id": request_id},
        separators=(",", ":"),
    ).encode()


def digits_value(value: bytes) -> int:
    """The number a Content-Length value of ASCII digits says; -1 when it is not one (empty,
    another character, or more than 18 digits: then `int` says, the caller's slower path)."""
    n = len(value)
    if n == 0 or n > 18:
        return -1
    total = 0
    for c in value:
        if c < 48 or c > 57:
            return -1
        total = total * 10 + (c - 48)
    return total


# Response header names the data plane acts on, as small numbers (`header_code`); 0 is any other
# name, forwarded as it came.
H_CONTENT_LENGTH = 1
H_TRANSFER_ENCODING = 2
H_CONNECTION = 3
H_UPGRADE = 4
H_HOP_BY_HOP = 5  # every other hop-by-hop name: never forwarded
H_REQUEST_ID = 6
assert H_HOP_BY_HOP == 5  # code_at returns it as a C literal
HEADER_CODES: dict[bytes, int] = {name: H_HOP_BY_HOP for name in HOP_BY_HOP} | {
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE,
    b"x-request-id": H_REQUEST_ID,
}
_MAX_CODED = max(len(name) for name in HEADER_CODES)
# By length: the coded names of that length end to end, and their codes (the C loop's tables).
_NAMES_BY_LEN = tuple(b"".join(n for n in HEADER_CODES if len(n) == k)
                      for k in range(_MAX_CODED + 1))
_CODES_BY_LEN = tuple(bytes(c for n, c in HEADER_CODES.items() if len(n) == k)
                      for k in range(_MAX_CODED + 1))


def code_of_lower(lname: bytes) -> int:
    """`HEADER_CODES.get(lname, 0)`, and H_HOP_BY_HOP for any other `proxy*` name (Proxy-*, and
    httpoxy's `Proxy`): the pure form of `header_code` for a lower-cased name."""
    code = HEADER_CODES.get(lname, 0)
    if code == 0 and lname.startswith(b"proxy"):
        return H_HOP_BY_HOP
    return code


def header_code(name: bytes) -> int:
    """`code_of_lower(name.lower())`. Compiled, without the lower-cased copy and its hash:
    `name` is compared, ignoring ASCII case, with the few coded names of its length (a response
    head's names are new bytes objects each time, so a set or dict lookup hashes each one)."""
    if not _COMPILED:
        return code_of_lower(name.lower())
    return code_at(PyBytes_AS_STRING(name), len(name))


def code_at(p, n):  # compiled only (basics.pxd): p is a `const char *` to n bytes of a name
    """`header_code` of the n bytes at p: no bytes object needed (the raw response head's scan)."""
    if n >= 5 and (p[0] | 32) == 112 and (p[1] | 32) == 114 and (p[2] | 32) == 111 and (
            p[3] | 32) == 120 and (p[4] | 32) == 121:
        return 5  # H_HOP_BY_HOP: Proxy-*, httpoxy's Proxy (only P/p give these bytes when |32)
    if n > _MAX_CODED:
        return 0
    names = _NAMES_BY_LEN[n]
    q = PyBytes_AS_STRING(names)
    end = q + len(names)
    k = 0
    while q < end:
        i = 0
        while i < n:
            c = p[i]
            if 65 <= c <= 90:
                c += 32
            if c != q[i]:
                break
            i += 1
        if i == n:
            codes = _CODES_BY_LEN[n]
            return PyBytes_AS_STRING(codes)[k]
        q += n
        k += 1
    return 0


_LOW_DIGITS = tuple(b"%02x" % i for i in range(256))
_ID_MASK = 0xFFFFFFFFFFFF  # 48-bit counter (compiled: a C constant, basics.pxd)


class _RequestIds:
    """24 hex digits: a random per-process prefix and a counter (one urandom per process, not per
    request). The prefix is drawn again in a forked child so workers never share ids.

    `next_b()` is the request path's form (bytes): the first 22 digits are formatted once per
    256 ids, the last two come from a table (one concatenation per request, no formatting)."""

    __slots__ = ("high", "n", "prefix")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(6).hex().encode()
        self.n = int.from_bytes(os.urandom(4), "big")
        self.high = b"%s%010x" % (self.prefix, self.n >> 8)

    def next_b(self) -> bytes:
        self.n = n = (self.n + 1) & _ID_MASK
        low = n & 0xFF
        if low == 0:
            self.high = b"%s%010x" % (self.prefix, n >> 8)
        if _COMPILED:  # memcpy into the new object (bytes + bytes takes a buffer of each)
            out = PyBytes_FromStringAndSize(cython.NULL, 24)
            p = PyBytes_AS_STRING(out)
            memcpy(p, PyBytes_AS_STRING(self.high), 22)
            memcpy(p + 22, PyBytes_AS_STRING(_LOW_DIGITS[low]), 2)
            return out
        return self.high + _LOW_DIGITS[low]

    def __call__(self) -> str:
        return self.next_b().decode()


def find_byte(data: bytes, byte) -> int:  # byte: a C int (basics.pxd)
    """The index of the first `byte` (a byte value) in `data`, or -1. Compiled, a memchr:
    `byte in data` with an integer goes through the sequence protocol (~115 instructions)."""
    if _COMPILED:
        start = PyBytes_AS_STRING(data)
        at = memchr(start, byte, len(data))
        return -1 if at == cython.NULL else cython.cast(cython.p_char, at) - start
    return data.find(byte)


new_request_id = _RequestIds()
os.register_at_fork(after_in_child=new_request_id.reseed)

# `draw`'s state and constants (compiled: C unsigned 64-bit integers, basics.pxd, whose
# arithmetic wraps as splitmix64 needs; the .py files use random.random instead)
_draw_state = 0
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_TWO_POW_M53 = 1.0 / (1 << 53)


def reseed_draws(seed: int | None = None) -> None:
    """A new random start for `draw` (at import, and in a forked child: no two processes share
    a sequence); `seed`: a given one, for a benchmark that must draw the same each run (it
    seeds `random` too: the .py files' draw)."""
    global _draw_state
    _draw_state = int.from_bytes(os.urandom(8), "little") if seed is None else seed
    if seed is not None:
        random.seed(seed)


def draw() -> float:
    """A uniform draw in [0, 1) for a weighted split or a trace's sampling: what random.random
    gives, without a Python call when compiled (splitmix64 over a per-process random seed: 53
    random bits, as random.random has; not for secrets, as random.random is not)."""
    global _draw_state
    if _COMPILED:
        _draw_state += _GOLDEN
        z = _draw_state
        z = (z ^ (z >> 30)) * _MIX1
        z = (z ^ (z >> 27)) * _MIX2
        z ^= z >> 31
        return (z >> 11) * _TWO_POW_M53
    return random.random()


reseed_draws()
os.register_at_fork(after_in_child=reseed_draws)


def monotonic() -> float:
    """`time.monotonic()`. Compiled, C's clock_gettime on the same clock (CLOCK_MONOTONIC): no
    module lookup, no Python call (a shadow mirror reads it three times)."""
    if _COMPILED:
        ts = cython.declare(timespec)
        clock_gettime(CLOCK_MONOTONIC, cython.address(ts))
        return ts.tv_sec + ts.tv_nsec * 1e-9
    return time.monotonic()

