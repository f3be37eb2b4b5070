"""Header rules shared by both directions of the data plane (RFC 9110 §7.6.1)."""

from __future__ import annotations

import ipaddress
import re

from proxy.config.header_names import (  # noqa: F401 - re-exported for the data plane
    FORWARDED_HEADERS,
    HOP_BY_HOP,
    NEVER_DROPPED_BY_CONNECTION,
)

# Connection header value -> its tokens (the data plane reads it before calling
# connection_tokens: no call for a cached value)
TOKEN_CACHE: dict[bytes, frozenset[bytes]] = {}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased tokens of a Connection header value (cached: a few values are common)."""
    tokens = TOKEN_CACHE.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(value) <= 64 and len(TOKEN_CACHE) < 256:
            TOKEN_CACHE[value] = tokens
    return tokens


# `.search(value)` is not None when a header value could split or end a header line.
HEADER_INJECTION = re.compile(rb"[\r\n\x00]").search


def has_header_injection(value: bytes) -> bool:
    return HEADER_INJECTION(value) is not None


def parser_refuses_injection() -> bool:
    """Whether httptools' llhttp refuses CR, LF and NUL inside a response header value itself
    (llhttp 9, httptools >= 0.6.3, does). Where it does, the data plane does not search every
    upstream header value again (a regex per header per response); where it does not (another
    build), `proxy.dataplane.upstream` does."""
    import httptools

    class _Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            pass

    class _NoHeaders:  # the data plane's upstream parser has no header callback
        pass

    for sink in (_Sink, _NoHeaders):
        for bad in (b"a\x00b", b"a\rb", b"a\nb"):
            try:
                httptools.HttpResponseParser(sink()).feed_data(
                    b"HTTP/1.1 200 OK\r\nX-A: " + bad + b"\r\nContent-Length: 0\r\n\r\n")
            except httptools.HttpParserError:
                continue
            return False
    return True


def header_pairs(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, value) of each header line in `lines`: pieces whose concatenation is
    whole header lines, each ending with CRLF (llhttp accepted them: no other CR or LF). The
    value loses its leading blanks and keeps its trailing ones, as llhttp gives it."""
    pairs = []
    for line in b"".join(lines).split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.lower(), value.lstrip(b" \t")))
    return pairs


# RFC 9110 §7.2 Host = uri-host [ ":" port ] (RFC 3986): an IP-literal in brackets, or an IPv4
# address or reg-name (unreserved, sub-delims, pct-encoded), then digits after a colon.
_HOST = re.compile(
    rb"(?P<host>\[(?P<ip6>[0-9A-Fa-f:.]+)\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\]"
    rb"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::(?P<port>[0-9]{0,5}))?"
).fullmatch
# Host value -> valid_host verdict (the exchange reads it before calling valid_host)
HOST_CACHE: dict[bytes, bool] = {}


def valid_host(value: bytes) -> bool:
    """Whether a Host value is uri-host[:port] with a port up to 65535 and a name without empty
    labels (`a..b`, `.a`; nginx refuses those too). Cached: a few values are common."""
    ok = HOST_CACHE.get(value)
    if ok is None:
        ok = _check_host(value)
        if len(HOST_CACHE) < 256:
            HOST_CACHE[value] = ok
    return ok


def _check_host(value: bytes) -> bool:
    m = _HOST(value)
    if m is None:
        return False
    port, host, ip6 = m.group("port"), m.group("host"), m.group("ip6")
    if port and int(port) > 65535:
        return False
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode())
        except ValueError:
            return False
        return True
    return not (host.startswith(b".") or b".." in host)
