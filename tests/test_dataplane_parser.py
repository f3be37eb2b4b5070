"""The data plane relies on httptools' llhttp for what it no longer checks per request (issue 29).

Upstream header values are not searched for CR, LF or NUL one by one any more where the parser
refuses them itself (`proxy.dataplane.headers.parser_refuses_injection`, run once at import);
this pins that the installed httptools does, so the per-header search is really off, and that
such a response still never reaches a client (tests/test_proxy_hostile.py checks the 502)."""

from __future__ import annotations

import httptools
import pytest

from proxy.dataplane import upstream
from proxy.dataplane.headers import parser_refuses_injection


def test_the_installed_parser_refuses_control_characters_in_header_values() -> None:
    assert parser_refuses_injection()
    assert upstream._INJECTION is None  # no regex per upstream header value


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb"])
def test_a_response_header_with_a_control_character_is_a_parser_error(value: bytes) -> None:
    class Sink:
        def on_header(self, name: bytes, v: bytes) -> None:
            pass

    with pytest.raises(httptools.HttpParserError):
        httptools.HttpResponseParser(Sink()).feed_data(
            b"HTTP/1.1 200 OK\r\nX-A: " + value + b"\r\nContent-Length: 0\r\n\r\n")
