"""A 1 GiB streamed request and response, without buffering at either end.

`upstream`: an HTTP/1.1 server (asyncio + httptools) that discards any request body as it
arrives (Content-Length or chunked) and answers `{"received": N}`; `GET /download?bytes=N`
answers N bytes of Content-Length body written in 256 KiB chunks with flow control.
`client`: uploads SIZE bytes (PUT, Content-Length) then downloads SIZE bytes through the proxy,
reading and discarding as it goes; prints timings as JSON. Peak RSS of the proxy is sampled by
bench/run.py while the client runs.

    python -m bench.stream upstream --port 8005
    python -m bench.stream client --url http://127.0.0.1:8080/stream --bytes 1073741824
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from urllib.parse import parse_qs, urlsplit

import httptools

CHUNK = 256 * 1024


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.received = 0
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        self.done = True


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            req = _Request()
            parser = httptools.HttpRequestParser(req)
            while not req.done:
                data = await reader.read(CHUNK)
                if not data:
                    return
                parser.feed_data(data)
            method = parser.get_method()
            parts = urlsplit(req.url.decode())
            if method == b"GET" and parts.path.endswith("/download"):
                size = int(parse_qs(parts.query).get("bytes", ["0"])[0])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % size
                )
                block = b"\0" * CHUNK
                left = size
                while left > 0:
                    writer.write(block if left >= CHUNK else block[:left])
                    left -= CHUNK
                    await writer.drain()
            else:
                body = json.dumps({"received": req.received}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
    except (ConnectionError, httptools.HttpParserError):
        pass
    finally:
        writer.close()


async def _upstream(port: int) -> None:
    server = await asyncio.start_server(_serve_conn, "127.0.0.1", port, limit=CHUNK)
    async with server:
        await server.serve_forever()


class _Response:
    def __init__(self) -> None:
        self.received = 0
        self.done = False
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        if len(self.body) < 256:
            self.body += body[:256]

    def on_message_complete(self) -> None:
        self.done = True


def _read_response(sock: socket.socket) -> tuple[int, _Response]:
    resp = _Response()
    parser = httptools.HttpResponseParser(resp)
    while not resp.done:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("connection closed before the response was complete")
        parser.feed_data(data)
    return parser.get_status_code(), resp


def client(url: str, size: int, timeout: float) -> dict:
    """Upload then download `size` bytes through `url` on one keep-alive connection."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") or ""
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    try:
        block = memoryview(b"\1" * (1 << 20))
        t0 = time.perf_counter()
        sock.sendall(
            f"PUT {path}/upload HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        left = size
        while left > 0:
            n = min(left, len(block))
            sock.sendall(block[:n])
            left -= n
        up_status, up = _read_response(sock)
        t1 = time.perf_counter()
        get = f"GET {path}/download?bytes={size} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n"
        sock.sendall(get.encode())
        down_status, down = _read_response(sock)
        t2 = time.perf_counter()
    finally:
        sock.close()
    upstream_saw = json.loads(up.body or b"{}").get("received") if up_status == 200 else None
    return {
        "bytes": size,
        "upload_status": up_status,
        "upload_received_by_upstream": upstream_saw,
        "upload_s": round(t1 - t0, 3),
        "download_status": down_status,
        "download_received": down.received,
        "download_s": round(t2 - t1, 3),
        "ok": up_status == 200
        and upstream_saw == size
        and down_status == 200
        and down.received == size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    cl = sub.add_parser("client")
    cl.add_argument("--url", required=True)
    cl.add_argument("--bytes", type=int, default=1 << 30)
    cl.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.role == "upstream":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:  # pragma: no cover
            pass
        asyncio.run(_upstream(args.port))
    else:
        try:
            result = client(args.url, args.bytes, args.timeout)
        except (OSError, httptools.HttpParserError) as exc:
            result = {"bytes": args.bytes, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
