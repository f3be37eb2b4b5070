"""`strangler demo`: a migration told end to end on this machine, in under a minute.

One process runs: a demo monolith and its twin (for noise cancellation), a demo new service
that serves two migrated endpoints (`balance` clean; `kyc` with a planted field difference:
`$.risk.score` is a string instead of a number), the proxy itself on the embedded config, a
traffic generator and the promotion gate. The gate promotes `balance` step by step to 100% on
its own evidence and fails `kyc` on its shadow diffs, which rolls it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

DEMO_HEAD = """\
version: 1
listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin}
state_dir: {state}
upstreams:
  monolith: {{url: "http://127.0.0.1:{mono}"}}
  monolith-2: {{url: "http://127.0.0.1:{mono2}"}}
  new-svc: {{url: "http://127.0.0.1:{new}"}}
default_upstream: monolith
routes:
"""

# Every demo route: GET /api/v1/<name> moving from the monolith to the new service, shadowed in
# full (the twin cancels noise) behind a gate loose enough for seconds of traffic, not days.
DEMO_ROUTE = """\
  - name: {name}
    match: {{path_prefix: /api/v1/{name}, methods: [GET]}}
    legacy: monolith
    target: new-svc
    weight: 0
    sticky: {{header: X-User-Id}}
    shadow:
      sample: 1.0
      compare:
        ignore: ["$.server_time"]
        redact: {redact}
        noise_upstream: monolith-2
    promotion:
      steps: [1, 5, 25, 50, 100]
      min_requests: 100
      min_comparisons: 150
      max_mismatch_rate: 0.03
      max_error_rate_increase: 0.03
      max_p99_ratio: null               # seconds of traffic cannot bound an unpaired p99...
      max_paired_latency_increase: 20ms # ...but every request is shadowed: judge the pairs
      min_latency_samples: 300
"""

# name -> the JSON paths its comparison redacts
DEMO_ROUTES = {"balance": ["$.iban"], "kyc": []}


def demo_config(state: Path, ports: dict[str, int]) -> str:
    """The demo's routes.yaml: each route written out from DEMO_ROUTE, no YAML anchors."""
    routes = "".join(DEMO_ROUTE.format(name=name, redact=json.dumps(redact))
                     for name, redact in DEMO_ROUTES.items())
    return DEMO_HEAD.format(state=state, **ports) + routes


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


def _account(user: str) -> dict[str, Any]:
    n = int(user) if user.isdigit() else 7
    return {"user": user, "balance": {"amount": f"{(n * 37) % 10000}.{n % 100:02d}",
                                      "currency": "EUR"},
            "iban": f"DE89 3704 0044 0532 0{n:05d}", "server_time": time.time(),
            "trace": os.urandom(4).hex()}  # nondeterministic: cancelled by the noise twin


def _kyc(user: str, planted: bool) -> dict[str, Any]:
    n = int(user) if user.isdigit() else 7
    score = (n * 13) % 100
    return {"user": user, "status": "verified",
            "risk": {"score": str(score) if planted else score, "band": "low"},
            "server_time": time.time(), "trace": os.urandom(4).hex()}


def _service(new: bool) -> web.Application:
    async def balance(request: web.Request) -> web.Response:
        return web.json_response(_account(request.match_info["user"]))

    async def kyc(request: web.Request) -> web.Response:
        return web.json_response(_kyc(request.match_info["user"], planted=new))

    async def other(request: web.Request) -> web.Response:
        return web.json_response({"served_by": "monolith", "path": request.path})

    app = web.Application()
    app.router.add_get("/api/v1/balance/{user}", balance)
    app.router.add_get("/api/v1/kyc/{user}", kyc)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


def _traffic_process(url: str, duration: float, stop: Any, sent: Any, failed: Any) -> None:
    """A load generator in its own process, so it does not compete with the proxy's loop."""
    from proxy.serve.app import run_loop

    run_loop(_traffic(url, duration, stop, sent, failed))


async def _traffic(url: str, duration: float, stop: Any, sent: Any, failed: Any,
                   concurrency: int = 32) -> None:
    deadline = time.monotonic() + duration
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def loop() -> None:
            rnd = random.Random()
            ok = bad = 0
            while not stop.is_set() and time.monotonic() < deadline:
                user = str(rnd.randrange(1, 5000))
                path = "/api/v1/balance/" if rnd.random() < 0.8 else "/api/v1/kyc/"
                try:
                    async with s.get(url + path + user, headers={"X-User-Id": user}) as r:
                        await r.read()
                        if r.status >= 500:
                            bad += 1
                except aiohttp.ClientError:
                    bad += 1
                ok += 1
                if ok % 50 == 0:
                    with sent.get_lock():
                        sent.value += 50
            with sent.get_lock():
                sent.value += ok % 50
            with failed.get_lock():
                failed.value += bad

        await asyncio.gather(*(loop() for _ in range(concurrency)))


async def run_demo(duration: float, out: IO[str] = sys.stdout, keep: bool = False) -> int:
    from proxy.config import logsetup
    from proxy.config.loader import load_config
    from proxy.serve.app import ServeOptions, Server

    logsetup.configure("json", "error")
    tmp = Path(tempfile.mkdtemp(prefix="strangler-demo-"))
    ports = {
        "port": _free_port(8080), "admin": _free_port(9901), "mono": _free_port(8001),
        "mono2": _free_port(8003), "new": _free_port(8002),
    }
    text = demo_config(tmp / "state", ports)
    cfg_path = tmp / "routes.yaml"
    cfg_path.write_text(text)
    runners = []
    for name, new in (("mono", False), ("mono2", False), ("new", True)):
        runner = web.AppRunner(_service(new), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ports[name]).start()
        runners.append(runner)
    server = Server(ServeOptions(str(cfg_path), access_log=False, watch=False),
                    load_config(str(cfg_path)), text)
    await server.start()
    rt = server.runtime
    dashboard = f"http://127.0.0.1:{ports['admin']}/"
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(f"strangler demo: monolith :{ports['mono']} (+ twin :{ports['mono2']}), "
      f"new service :{ports['new']}, proxy :{ports['port']}, admin {dashboard}")
    p("  balance: new service is correct        kyc: new service returns $.risk.score as a "
      "string (planted)")
    p(f"  state, audit log and diffs in {tmp / 'state'}")
    p("")
    p(f"{'time':>5}  {'route':8} {'weight':>7} {'state':11} {'tgt req':>7} {'compared':>8} "
      f"{'mismatch':>8}  decision")
    t0 = time.monotonic()
    deadline = t0 + duration
    ctx = multiprocessing.get_context("spawn")
    stop, sent, failed = ctx.Event(), ctx.Value("q", 0), ctx.Value("q", 0)
    gen = ctx.Process(target=_traffic_process, daemon=True,
                      args=(f"http://127.0.0.1:{ports['port']}", duration, stop, sent, failed))
    gen.start()
    done: dict[str, str] = {}
    try:
        while time.monotonic() < deadline and len(done) < 2:
            await asyncio.sleep(1.0)
            server.flush()
            for route in ("balance", "kyc"):
                if route in done:
                    continue
                decision = (await rt.gate(route, act=True, actor="demo")).decision
                ev = decision.evidence
                # the first reason says since when the evidence counts: show the next one
                reasons = [r for r in decision.reasons if not r.startswith("Evidence since")]
                tgt_req = ev["target"]["requests"]
                compared, mismatched = ev["shadow"]["compared"], ev["shadow"]["mismatched"]
                rate = f"{mismatched / compared:.1%}" if compared else "-"
                state = "rolled_back" if rt.rolled_back(route) else "active"
                d = decision.decision
                if d == "promote":
                    what = f"promote {decision.from_weight:g}% -> {decision.to_weight:g}%"
                elif d == "fail":
                    what = "FAIL -> rolled back: " + reasons[0]
                elif d == "complete":
                    what = "complete: 100% on the new service"
                else:
                    what = "hold: " + (reasons[0] if reasons else "")
                p(f"{time.monotonic() - t0:5.1f}  {route:8} {decision.from_weight:6g}% "
                  f"{state:11} {tgt_req:7d} {compared:8d} {rate:>8}  "
                  f"{what[:110]}")
                if d == "complete" or rt.rolled_back(route):
                    done[route] = d
    finally:
        stop.set()
        await asyncio.to_thread(gen.join, 10)
        if gen.is_alive():
            gen.kill()
    server.flush()
    p("")
    p(f"summary after {time.monotonic() - t0:.0f}s: {sent.value} requests sent, "
      f"{failed.value} failed")
    for route in ("balance", "kyc"):
        state = "rolled back (frozen until `strangler resume`)" if rt.rolled_back(route) \
            else "active"
        p(f"  {route:8} weight {rt.effective(route):g}%  {state}")
    store = server.diff_store
    if store is not None:
        if server.shadow is not None:
            await server.shadow.flush()
        fields = store.summary("kyc", limit=3)["fields"]
        for f in fields:
            p(f"  kyc diff: {f['path']} ({f['kind']}) in {f['count']} comparisons")
    p(f"  audit log: {tmp / 'state' / 'audit.log'}")
    p(f"dashboard: {dashboard}")
    ok = rt.effective("balance") == 100 and rt.rolled_back("kyc")
    if keep:
        p("serving until Ctrl-C (the dashboard stays up)")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    await server.stop()
    for runner in runners:
        await runner.cleanup()
    return 0 if ok else 1
