"""Instructions per request of the data plane's Python: `python -m bench.icount`.

bench.hotpath's in-memory loop (the real DataPlane, table, Recorder and AccessLog; one GET in,
one small nginx-like response out), run under `valgrind --tool=callgrind`, which counts the
instructions the CPU executes. Unlike µs, that count hardly moves when other work shares the
machine, so it is how each hot-path change is measured here (perf's hardware counters are not
available in these VMs). The measured requests are framed by two `os.getppid()` calls, at which
callgrind dumps its counters (`--dump-before=os_getppid`): the count between them, divided by the
number of requests, includes every 200th request's flush (recorder delta, access log) but no
start-up or warm-up.

`--bare` runs the same loop on bench/bare_forwarder.py's protocols instead: the floor (parse,
forward, write, nothing else) measured the same way.

`--tracing RATIO` turns on `tracing:` at that sample_ratio: the count then includes the sampled
requests' spans and their OTLP encoding (what the exporter does with them off the request path,
on the same core), so that what tracing costs is a difference of two steady counts.

`--shadow` mirrors every request (bench.run's strangler_shadow; bench.hotpath's `_shadowed`):
the count then includes the mirror's request written on its pipelined connection, the target's
answer read and found identical, and its counts, all in memory, inside a uvloop event loop that
is not let run (so its own iterations are not counted; the pool's end-of-iteration dispatch is
called after each request).

    python -m bench.icount [-n 3000] [--no-access-log] [--no-inventory] [--bare] [--python PY]
                           [--tree DIR] [--browser-headers] [--tracing RATIO] [--shadow]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WARMUP = 2_000


def bare_loop(browser: bool = False) -> Any:
    """bench/bare_forwarder.py's Client and Upstream on in-memory transports."""
    from bench import bare_forwarder as bare
    from bench.hotpath import BROWSER_HEADERS, RESPONSE, MemoryTransport

    client = bare.Client()
    client.connection_made(MemoryTransport())  # type: ignore[arg-type]
    up = bare.Upstream()
    up.connection_made(MemoryTransport())  # type: ignore[arg-type]
    bare.IDLE.append(up)
    request = b"GET /svc9/items/1 HTTP/1.1\r\n%s\r\n" % (
        BROWSER_HEADERS if browser else b"Host: 127.0.0.1:8080\r\n")

    def loop(n: int) -> None:
        for i in range(n):
            client.data_received(request)
            up.data_received(RESPONSE)
            if i % 200 == 0:
                client.transport.out.clear()  # type: ignore[attr-defined]
                up.transport.out.clear()  # type: ignore[attr-defined]

    return loop


def traced(loop: Any, plane: Any, ratio: float) -> Any:
    """`loop` with a tracer at `ratio` on `plane`, its spans OTLP-encoded as they would be
    exported."""
    from proxy.config.spec import TracingSpec
    from proxy.dataplane import basics
    from proxy.dataplane.otlp import encode
    from proxy.dataplane.tracing import Tracer

    spans: list = []
    rng = random.Random(1)
    # the same requests sampled in every count, by the data plane's own draw (a tree from
    # before basics.draw: by a seeded random.random)
    draws: dict[str, Any] = {"rand": rng.random}
    if hasattr(basics, "reseed_draws"):
        basics.reseed_draws(1)
        draws = {}
    tracer = Tracer(TracingSpec(otlp_endpoint="http://127.0.0.1:9", sample_ratio=ratio),
                    spans.append, ids=rng.getrandbits, **draws)
    if hasattr(plane, "use_tracer"):
        plane.use_tracer(tracer)
    else:  # a tree from before use_tracer (--tree)
        plane.tracer = tracer

    def run(n: int) -> None:
        loop(n)
        encode(spans, "strangler")
        spans.clear()

    return run


def inner(n: int, access_log: bool, bare: bool, inventory: bool = True,
          browser: bool = False, tracing: float | None = None, shadow: bool = False) -> None:
    """Runs under valgrind: warm up, then n requests between two dump points."""
    if shadow:
        import uvloop

        async def in_loop() -> None:
            inner(n, access_log, bare, inventory, browser, tracing)

        uvloop.run(in_loop())
        return
    if bare:
        loop = bare_loop(browser)
    else:
        from bench.hotpath import build

        loop, plane = build(10, access_log, inventory, browser=browser,
                            shadow=_in_a_loop())
        if tracing is not None:
            loop = traced(loop, plane, tracing)
    loop(WARMUP)
    gc.collect()
    os.getppid()  # callgrind dump: start-up and warm-up
    loop(n)
    os.getppid()  # callgrind dump: the n requests


def _in_a_loop() -> bool:
    """`inner` runs inside the event loop it started for --shadow."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def count(python: str, tree: Path, n: int, access_log: bool, bare: bool,
          inventory: bool = True, browser: bool = False, tracing: float | None = None,
          shadow: bool = False) -> float:
    """Instructions per request: one valgrind run of `inner`."""
    with tempfile.TemporaryDirectory(prefix="icount") as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=os_getppid",
               f"--callgrind-out-file={out}", python, str(Path(__file__).resolve()), "--inner",
               "-n", str(n)]
        if not access_log:
            cmd.append("--no-access-log")
        if bare:
            cmd.append("--bare")
        if not inventory:
            cmd.append("--no-inventory")
        if browser:
            cmd.append("--browser-headers")
        if tracing is not None:
            cmd += ["--tracing", str(tracing)]
        if shadow:
            cmd.append("--shadow")
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"valgrind failed ({done.returncode}):\n{done.stderr[-3000:]}")
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if len(dumps) < 2:
            raise SystemExit(f"expected callgrind dumps at os.getppid, got {dumps}")
        text = dumps[1].read_text()
        m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
        if m is None:
            raise SystemExit(f"no totals in {dumps[1]}")
        return int(m.group(1)) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3_000, help="measured requests (after 2,000 warm-up)")
    p.add_argument("--no-access-log", action="store_true")
    p.add_argument("--no-inventory", action="store_true", help="inventory.enabled: false")
    p.add_argument("--bare", action="store_true", help="bench/bare_forwarder.py's protocols")
    p.add_argument("--browser-headers", action="store_true",
                   help="a browser's twelve request headers (bench.hotpath), not Host alone")
    p.add_argument("--tracing", type=float, metavar="RATIO",
                   help="tracing on at this sample_ratio, spans OTLP-encoded")
    p.add_argument("--shadow", action="store_true",
                   help="every request mirrored, the target answering the same (in memory)")
    p.add_argument("--python", default=sys.executable, help="interpreter to count")
    p.add_argument("--tree", type=Path, default=REPO, help="source tree to count (PYTHONPATH)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        inner(args.n, not args.no_access_log, args.bare, not args.no_inventory,
              args.browser_headers, args.tracing, args.shadow)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if args.shadow and args.bare:
        p.error("--shadow is strangler's mirror: not with --bare")
    per = count(args.python, args.tree.resolve(), args.n, not args.no_access_log, args.bare,
                not args.no_inventory, args.browser_headers, args.tracing, args.shadow)
    what = "bare forwarder" if args.bare else (
        "strangler, access log " + ("off" if args.no_access_log else "on")
        + (", inventory off" if args.no_inventory else "")) + (
        ", a browser's twelve request headers" if args.browser_headers else "") + (
        f", tracing at {args.tracing:g}" if args.tracing is not None else "") + (
        ", every request mirrored" if args.shadow else "")
    print(f"{what}: {per:,.0f} instructions per request ({args.n:,} requests, {args.python})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
