"""CPU cost of the data plane's Python per request, without the network: `python -m bench.hotpath`.

The real DataPlane, route table (the bench's 10 routes), Recorder and AccessLog, driven through
their protocol callbacks with in-memory transports: one GET in, one nginx-like small response out.
Prints the process CPU time per request (min of --rounds), or a cProfile table with --profile.
Steadier than wrk on a shared machine, so it is how each hot-path change was measured; it does
not include syscalls, the event loop or the kernel (see the README's log for wrk figures).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import servers
from proxy.config.loader import load_config
from proxy.control.planes import build_table
from proxy.dataplane.access_log import AccessLog
from proxy.dataplane.recorder import Recorder
from proxy.dataplane.server import GC_GEN0_THRESHOLD, ClientConnection, DataPlane
from proxy.dataplane.upstream import UpstreamConnection

BODY = b'{"status":"ok","service":"legacy","items":[1,2,3,4,5,6,7,8,9,10],"message":"hello"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
    % len(BODY)
) + BODY


class MemoryTransport:
    """Just enough of asyncio.Transport for the data plane; writes are kept, then dropped."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: Any) -> None:
        self.out.extend(parts)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if key == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0


class _Url:
    small_url = big_url = "http://127.0.0.1:9/"


# A browser's request head after the request line (Firefox's, with a session cookie): what a
# request carries besides wrk's lone Host header (`--browser-headers`).
BROWSER_HEADERS = (
    b"Host: 127.0.0.1:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://shop.example.com/account\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=6f1c0e4a9b2d4f7e8a3c5b1d0e9f2a7c; theme=dark\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Priority: u=0\r\n"
)


def build(n_routes: int, access_log: bool, inventory: bool = True,
          random_paths: bool = False, browser: bool = False,
          shadow: bool = False) -> tuple[Any, Any]:
    """A data plane with one client connection and one pooled connection per upstream.
    `random_paths`: every request a new unmatched path of letters, which no id rule folds (the
    inventory's cardinality attack; 20,000 distinct paths, repeating). `browser`: the request
    carries BROWSER_HEADERS (twelve headers) rather than a Host header alone. `shadow`: the
    route mirrors every request (bench.run's strangler_shadow), see `_shadowed`; then `build`
    and the loop must run inside a running event loop."""
    state = Path(tempfile.mkdtemp(prefix="hotpath"))
    cfg = servers.strangler_config(port=1, admin_port=2, state_dir=state, up=_Url,  # type: ignore[arg-type]
                                   n_routes=n_routes,
                                   shadow_url=_Url.small_url if shadow else None)
    if not inventory:
        cfg["inventory"] = {"enabled": False}
    config = load_config(str(state / "routes.yaml"), yaml.safe_dump(cfg))
    recorder = Recorder()
    log = AccessLog(stream=io.StringIO()) if access_log else None
    plane = DataPlane(recorder, log)
    table = build_table(config, {}, 1, {})
    plane.install(table)
    mirrored = _shadowed(plane, config, recorder, table) if shadow else None
    conn = ClientConnection(plane)
    conn.connection_made(MemoryTransport())  # type: ignore[arg-type]
    ups = []
    for pool in plane.pools.values():
        up = UpstreamConnection(pool)
        up.connection_made(MemoryTransport())  # type: ignore[arg-type]
        pool.live.add(up)
        pool.total += 1
        pool.idle.append(up)
        ups.append(up)
    request = b"GET %s HTTP/1.1\r\n%s\r\n" % (
        servers.bench_paths(n_routes)[0].encode(),
        BROWSER_HEADERS if browser else b"Host: 127.0.0.1:8080\r\n")
    rng = random.Random(1)
    # The random paths are made before the clock starts: only the proxy's cost is measured.
    randoms = [b"GET /%s/%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n" % (
        rng.choice((b"shop", b"wp-admin", b"x")), bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz",
                                                                    k=12)))
        for _ in range(20_000)] if random_paths else None
    counter = iter(())
    # What `strangler serve` does once it listens (DataPlane.listen): start-up objects frozen,
    # young collections every GC_GEN0_THRESHOLD allocations.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)

    def one() -> None:
        nonlocal counter
        if randoms is None:
            conn.data_received(request)
        else:
            req = next(counter, None)
            if req is None:
                counter = iter(randoms)
                req = next(counter)
            conn.data_received(req)
        conn.cur.up.data_received(RESPONSE)  # type: ignore[union-attr]
        if mirrored is not None:
            mirrored()

    def loop(n: int) -> None:
        for i in range(n):
            one()
            if i % 200 == 0:  # what the 200 ms flush loop does
                conn.transport.out.clear()  # type: ignore[union-attr]
                for up in ups:
                    up.transport.out.clear()  # type: ignore[union-attr]
                if shadow:
                    plane.shadow.link.transport.out.clear()  # type: ignore[union-attr]
                recorder.take()
                plane.endpoints.take()
                if log is not None:
                    log.flush()
                    log.stream.seek(0)
                    log.stream.truncate()

    return loop, plane


def _shadowed(plane: DataPlane, config: Any, recorder: Recorder, table: Any) -> Any:
    """The shadow mirror on `plane`, as `strangler serve` attaches it, with in-memory ends: its
    comparer link writes to a MemoryTransport (no comparer process: identical answers are
    counted in the data plane and never sent to it), and its pipelined connection to the
    shadow target is a connected one on a MemoryTransport. Returns what follows each primary
    answer: the mirror's queued requests written (the end of the event loop's iteration, whose
    `call_soon` the pool's is replaced by), then the target's answer, the same bytes as the
    primary's (bench.run's strangler_shadow: identical answers)."""
    from proxy.dataplane.mirror import Mirror
    from proxy.dataplane.pipeline import PipelinedConnection

    mirror = Mirror(config, recorder)
    mirror.now = asyncio.get_running_loop().time
    mirror.link.transport = MemoryTransport()
    plane.shadow = mirror
    mirror.prepare(table)
    _, pipe = mirror._pools_for("shadow-target")
    soon: list = []
    pipe._call_soon = soon.append
    target = PipelinedConnection(pipe)
    target.connection_made(MemoryTransport())
    pipe.conns.append(target)

    def mirrored() -> None:
        while soon:
            soon.pop()()
        if target.waiting:
            target.data_received(RESPONSE)
            target.transport.out.clear()  # type: ignore[union-attr]

    return mirrored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=30_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--routes", type=int, default=10)
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--no-inventory", action="store_true", help="inventory.enabled: false")
    p.add_argument("--random-paths", action="store_true",
                   help="every request a new unmatched path (inventory cardinality attack)")
    p.add_argument("--browser-headers", action="store_true",
                   help="a browser's twelve request headers, not a Host header alone")
    p.add_argument("--profile", action="store_true", help="print cProfile's top 25 instead")
    args = p.parse_args(argv)
    loop, _ = build(args.routes, not args.no_access_log, not args.no_inventory,
                    args.random_paths, args.browser_headers)
    loop(2_000)  # warm up: pools, caches
    gc.collect()
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(loop, args.n)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    per = []
    for _ in range(args.rounds):
        t = time.process_time()
        loop(args.n)
        per.append((time.process_time() - t) / args.n * 1e6)
    print(f"CPU per request: min {min(per):.2f} µs; rounds {', '.join(f'{x:.2f}' for x in per)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
