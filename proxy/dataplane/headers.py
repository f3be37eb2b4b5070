"""Header rules shared by both directions of the data plane (RFC 9110 §7.6.1)."""

from __future__ import annotations

import re

from proxy.config.header_names import (  # noqa: F401 - re-exported for the data plane
    FORWARDED_HEADERS,
    HOP_BY_HOP,
    NEVER_DROPPED_BY_CONNECTION,
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
