"""Header names the proxy itself owns (RFC 9110 §7.6.1).

The data plane strips or rewrites them (`proxy.dataplane.headers`); the config refuses them
where a user names a header of their own (an override pin or secret header).
"""

from __future__ import annotations

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
