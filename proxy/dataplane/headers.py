"""Header rules shared by both directions of the data plane (RFC 9110 §7.6.1)."""

from __future__ import annotations

import re

# Always removed when forwarding, both ways. Framing headers (content-length,
# transfer-encoding) are removed too: every message is re-framed by the proxy.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"content-length",
        b"expect",
        b"http2-settings",
    }
)

# Headers a `Connection:` list may never remove: they carry framing or routing.
NEVER_DROPPED_BY_CONNECTION = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"x-request-id", b"x-strangler-shadow"}
)

FORWARDED_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


_TOKENS: dict[bytes, frozenset[bytes]] = {}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased tokens of a Connection header value (cached: a few values are common)."""
    tokens = _TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(value) <= 64 and len(_TOKENS) < 256:
            _TOKENS[value] = tokens
    return tokens


# `.search(value)` is not None when a header value could split or end a header line.
HEADER_INJECTION = re.compile(rb"[\r\n\x00]").search


def has_header_injection(value: bytes) -> bool:
    return HEADER_INJECTION(value) is not None
