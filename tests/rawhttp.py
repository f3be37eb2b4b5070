"""Raw-socket HTTP tools for hostile-input tests: a byte-exact client and a byte-recording upstream.

aiohttp and httpx normalise what they send and refuse what they receive, so tests about framing,
smuggling and header hygiene talk to the proxy (and play the upstream) with plain sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from tests.support import free_port, routes_yaml


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the parser saw the end of the message (not cut by a close)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


class _RespCollector:
    def __init__(self, head_only: bool = False) -> None:
        self.responses: list[RawResponse] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)
        self.in_message = False

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.responses.append(
            RawResponse(self.parser.get_status_code(), self._headers, b"".join(self._body), True)
        )

    def cut(self) -> None:
        if self.in_message:
            self.responses.append(
                RawResponse(self.parser.get_status_code(), self._headers, b"".join(self._body),
                            False)
            )
            self.in_message = False


def parse_responses(data: bytes, head_only: bool = False) -> list[RawResponse]:
    """Parse back-to-back responses; a trailing partial one is returned with complete=False."""
    out: list[RawResponse] = []
    while data:
        c = _RespCollector()
        if head_only:
            # httptools has no HEAD mode: parse the head only and stop at the blank line.
            head, sep, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            hdrs = []
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                hdrs.append((k.decode().lower(), v.strip().decode("latin-1")))
            out.append(RawResponse(status, hdrs, b"", bool(sep)))
            data = rest
            continue
        try:
            c.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            out.extend(c.responses)
            c.cut()
            out.extend(c.responses[len(out):])
            return out
        if c.in_message:
            c.cut()
        out.extend(c.responses)
        break
    return out


async def raw_request(port: int, data: bytes | list[bytes], timeout: float = 5.0,
                      pause: float = 0.0, shut_write: bool = False) -> tuple[bytes, bool]:
    """Send bytes (or pieces with `pause` between them), read until the server closes.

    Returns (everything read, closed_by_server). closed_by_server is False when `timeout` ran out
    with the connection still open.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    pieces = [data] if isinstance(data, bytes) else data
    try:
        with contextlib.suppress(OSError):
            for i, p in enumerate(pieces):
                if i and pause:
                    await asyncio.sleep(pause)
                await loop.sock_sendall(sock, p)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        buf = bytearray()
        closed = False
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
        return bytes(buf), closed
    finally:
        sock.close()


@dataclass
class SeenRaw:
    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]  # as received (names not lowered)
    body: bytes

    def header(self, name: str) -> bytes | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def names(self) -> list[bytes]:
        return [k.lower() for k, _ in self.headers]


Responder = Callable[[SeenRaw], bytes | list[bytes] | None]


def ok_json(req: SeenRaw, name: bytes = b"raw") -> bytes:
    body = b'{"served_by":"%s","path":"%s"}' % (name, req.target)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))


class _UpConn(asyncio.Protocol):
    def __init__(self, owner: RawUpstream) -> None:
        self.owner = owner
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections += 1

    def data_received(self, data: bytes) -> None:
        self.owner.raw += data
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.owner.errors.append(repr(exc))
            self.transport.close()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        seen = SeenRaw(self.parser.get_method(), self._url, self.parser.get_http_version(),
                       self._headers, b"".join(self._body))
        self.owner.seen.append(seen)
        answer = self.owner.respond(seen)
        if answer is None:
            return
        t = self.transport
        assert t is not None
        if answer == b"<CLOSE>":
            t.close()
            return
        if isinstance(answer, list):
            self.owner.spawn(self._trickle(answer))
        else:
            t.write(answer)
            if self.owner.close_after:
                t.close()

    async def _trickle(self, parts: list[bytes]) -> None:
        t = self.transport
        for p in parts:
            if t is None or t.is_closing():
                return
            if p == b"<ABORT>":
                t.abort()
                return
            t.write(p)
            await asyncio.sleep(0.05)
        if self.owner.close_after and t is not None:
            t.close()


@dataclass
class RawUpstream:
    """An upstream that records exactly what arrived and answers with chosen bytes.

    `respond(seen)` returns the raw response bytes, a list of pieces written 50 ms apart (the
    piece b"<ABORT>" resets the connection), b"<CLOSE>" to close without answering, or None
    for no answer at all.
    """

    respond: Responder = ok_json
    close_after: bool = False
    port: int = 0
    seen: list[SeenRaw] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.AbstractServer | None = None
    tasks: set = field(default_factory=set)

    def spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self.port = self.port or free_port()
        self.server = await loop.create_server(lambda: _UpConn(self), "127.0.0.1", self.port,
                                               reuse_address=True)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for t in list(self.tasks):
            t.cancel()


def one_route_config(port: int, admin: int, legacy: int, target: int, weight: float = 0,
                     extra_route: str = "", limits: str = "", top: str = "",
                     match: str = "{path_prefix: /api}") -> str:
    """A config with one route `api` (legacy -> target) and default upstream = legacy."""
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          legacy: {{url: "http://127.0.0.1:{legacy}", timeout: 2s, connect_timeout: 1s}}
          target: {{url: "http://127.0.0.1:{target}", timeout: 2s, connect_timeout: 1s}}
        default_upstream: legacy
        """, port=port, admin=admin, legacy=legacy, target=target) + top + limits + routes_yaml("""
        routes:
          - name: api
            match: {match}
            legacy: legacy
            target: target
            weight: {weight}
            shadow: false
        """, match=match, weight=weight) + extra_route
