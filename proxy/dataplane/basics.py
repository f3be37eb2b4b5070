"""What the client connection and the exchange share: status reasons, refusals and their
bodies, request ids, the request headers handled apart.

A module of its own so that the two compiled modules (proxy.dataplane.server and exchange, which
cimport each other's types) import no names from each other's module bodies at start-up.
"""

from __future__ import annotations

import json
import os

from proxy.dataplane.headers import FORWARDED_HEADERS, HOP_BY_HOP

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
REQ_SPECIAL = HOP_BY_HOP | FORWARDED_HEADERS | _REQ_FRAMING | {b"x-request-id"}
XFP_HTTP = (b"x-forwarded-proto", b"http")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
        return self.high + _LOW_DIGITS[low]

    def __call__(self) -> str:
        return self.next_b().decode()


new_request_id = _RequestIds()
os.register_at_fork(after_in_child=new_request_id.reseed)
