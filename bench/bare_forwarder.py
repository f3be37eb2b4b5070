"""The floor for a Python proxy: forward GETs with httptools on uvloop and nothing else.

No routing, no header hygiene, no request ids, no logs, no error handling; keep-alive to one
upstream (a connection the upstream closes leaves the pool, as in any proxy). Not a proxy
anyone should run: it is the reference that told how much of strangler's latency at 1,000 req/s
is the event loop and how much is strangler's own request handling (bench/README.md, round 3).

    python -m bench.bare_forwarder --port 8082 --upstream-port 8001
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop

IDLE: list[Upstream] = []


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.buf: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        data, self.buf = b"".join(self.buf), []
        if client is not None:
            client.transport.write(data)
        IDLE.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # The upstream closed an idle keep-alive connection (nginx's keepalive_timeout, while
        # bench.run measures the other servers): it must not be handed the next request, or
        # that request's client connection fails (wrk counted one error per connection then).
        if self in IDLE:
            IDLE.remove(self)


class Client(asyncio.Protocol):
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[bytes] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(name + b": " + value)

    def on_message_complete(self) -> None:
        head = b"GET %s HTTP/1.1\r\n%s\r\n\r\n" % (self.url, b"\r\n".join(self.headers))
        self.headers = []
        if IDLE:
            up = IDLE.pop()
            up.client = self
            up.transport.write(head)
        else:
            asyncio.get_running_loop().create_task(self._connect(head))

    async def _connect(self, head: bytes) -> None:
        _, up = await asyncio.get_running_loop().create_connection(Upstream, *self.upstream)
        up.client = self
        up.transport.write(head)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    Client.upstream = ("127.0.0.1", args.upstream_port)
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
