"""Fixed-rate HTTP/1.1 latency client: RATE requests per second, evenly spaced, spread over N
keep-alive connections; reports latency percentiles (microseconds) as JSON on stdout.

Why not h2load --rps: it fires every client's request at the same instant (16 at once every
16 ms at 1,000 req/s over 16 connections), so it measures how a burst queues, not the latency
of evenly arriving requests. wrk2 and vegeta are not packaged for this Debian.

Latency is measured from the moment the request is written to the moment its response is
complete (time.perf_counter_ns). Sends are scheduled on the event loop's timer (uvloop: 1 ms
resolution, so a send may lag its slot by up to ~1 ms); sends more than 1 ms late are counted
and reported as `late`, and a request that finds every connection busy waits and is counted
as `queued` (its wait is included in its latency).

    python -m bench.fixedrate --url http://127.0.0.1:8080/x --rate 1000 --connections 16 -d 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import deque
from urllib.parse import urlsplit

import httptools


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.sent_ns = 0
        self.record = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.client.errors += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.client.errors += 1
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        done = time.perf_counter_ns()
        self.busy = False
        status = self.parser.get_status_code()
        if self.record:
            if 200 <= status < 400:
                self.client.latencies.append((done - self.sent_ns) // 1000)
            else:
                self.client.errors += 1
        self.client.freed(self)

    def send(self, request: bytes, record: bool, since_ns: int | None = None) -> None:
        assert self.transport is not None
        self.busy = True
        self.record = record
        self.sent_ns = since_ns if since_ns is not None else time.perf_counter_ns()
        self.transport.write(request)


class Client:
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.conns: list[Conn] = []
        self.latencies: list[int] = []
        self.errors = 0
        self.late = 0
        self.queued = 0
        self.sent = 0
        self.waiting: deque[tuple[bool, int]] = deque()  # (record, enqueued at ns)

    def freed(self, conn: Conn) -> None:
        if self.waiting and conn.transport is not None:
            record, since = self.waiting.popleft()
            conn.send(self.request, record, since)

    def dispatch(self, k: int, record: bool) -> None:
        n = len(self.conns)
        for i in range(n):
            conn = self.conns[(k + i) % n]
            if not conn.busy and conn.transport is not None:
                conn.send(self.request, record)
                return
        if not any(c.transport is not None for c in self.conns):
            raise ConnectionError("every connection is closed")
        self.queued += 1
        self.waiting.append((record, time.perf_counter_ns()))


async def run(url: str, rate: float, connections: int, duration: float, warmup: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bench-fixedrate\r\n\r\n"
    client = Client(request.encode())
    loop = asyncio.get_running_loop()
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Conn(client), host, port)
        client.conns.append(conn)
    interval = 1.0 / rate
    start = loop.time() + 0.01
    record_from = start + warmup
    end = record_from + duration
    k = 0
    while True:
        due = start + k * interval
        if due >= end:
            break
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.001:
            client.late += 1
        client.dispatch(k, due >= record_from)
        client.sent += due >= record_from
        k += 1
    for _ in range(1000):  # up to 5 s for the last responses
        if not (client.waiting or any(c.busy for c in client.conns)):
            break
        await asyncio.sleep(0.005)
    for conn in client.conns:
        if conn.transport is not None:
            conn.transport.close()
    lat = sorted(client.latencies)
    return {
        "rate": rate,
        "connections": connections,
        "duration_s": duration,
        "requests": client.sent,
        "ok": len(lat),
        "errors": client.errors,
        "late": client.late,
        "queued": client.queued,
        "achieved_rps": round(len(lat) / duration, 1),
        "p50_us": percentile(lat, 0.50),
        "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99),
        "max_us": lat[-1] if lat else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(run(args.url, args.rate, args.connections, args.duration, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
