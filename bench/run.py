"""`python -m bench.run`: strangler side by side with nginx and a naive aiohttp proxy.

Starts everything on 127.0.0.1 (free ports, state in a temp dir, processes pinned with
taskset), measures each scenario --repeat times, interleaved so that every figure has an
nginx figure from moments before, then writes bench/results/latest.{json,md} and prints the
Markdown. Every process started is stopped by PID at the end, also on Ctrl-C or an error.
Scenarios (for --only): direct, nginx, bare, aiohttp, strangler, strangler_pure,
strangler_noinv, strangler_w2, strangler_shadow, strangler_default_diff,
strangler_default_noinv, strangler_shadow_diff, strangler_shadow_diff_pg, strangler_10k,
strangler_random, strangler_random_noinv, stream, nginx_tls_upstream, strangler_tls_upstream,
nginx_tls_listener, strangler_tls_listener, strangler_trace_001, strangler_trace_1.

The TLS rows put TLS on one side of each proxy: `_tls_upstream` proxies to the same nginx
upstream over https (nginx: `proxy_pass https://` with keepalive, `proxy_ssl_session_reuse on`
and the certificate verified, as strangler verifies it), `_tls_listener` serves the clients
over TLS (wrk speaks https). The tracing rows are plain strangler with `tracing:` at
sample_ratio 0.01 and 1.0, exporting to bench/otlp_sink.py; compare them with `strangler`.

The two `_diff` scenarios are the cases users hit first: a new service whose answers differ
from the monolith's. `strangler_default_diff` is the routes.yaml a user writes first (weight 50,
no shadow block: shadow on with its default budget); `strangler_shadow_diff` mirrors every
request (sample 1.0, no rate limit) to that service, so every comparison is a mismatch.
`strangler_shadow_diff_pg` is the same with `store: {backend: postgres}`: the comparer writes
the shared PostgreSQL store (a throwaway PostgreSQL 15 from scripts/postgres-dev, fsync on)
instead of SQLite, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import load, servers
from bench.procs import MachineCpu, Proc, Procs, free_port, reset_peak_rss, status_kib, tree
from bench.report import Results
from bench.servers import REPO, SMALL_BODY, StartError, Upstream

SCENARIOS = (
    "direct",
    "nginx",
    "bare",
    "aiohttp",
    "strangler",
    "strangler_pure",
    "strangler_noinv",
    "strangler_w2",
    "strangler_shadow",
    "strangler_default_diff",
    "strangler_default_noinv",
    "strangler_shadow_diff",
    "strangler_shadow_diff_pg",
    "strangler_10k",
    "strangler_random",
    "strangler_random_noinv",
    "stream",
    "nginx_tls_upstream",
    "strangler_tls_upstream",
    "nginx_tls_listener",
    "strangler_tls_listener",
    "strangler_trace_001",
    "strangler_trace_1",
)
TLS_SCENARIOS = ("nginx_tls_upstream", "strangler_tls_upstream", "nginx_tls_listener",
                 "strangler_tls_listener")
TRACE_SCENARIOS = {"strangler_trace_001": 0.01, "strangler_trace_1": 1.0}
BODY_LEN = {"small": len(SMALL_BODY), "64KiB": servers.BIG_SIZE}
SHADOW_SCENARIOS = ("strangler_shadow", "strangler_default_diff", "strangler_default_noinv",
                    "strangler_shadow_diff", "strangler_shadow_diff_pg")
DIFF_SCENARIOS = ("strangler_default_diff", "strangler_default_noinv", "strangler_shadow_diff",
                  "strangler_shadow_diff_pg")
# The traffic inventory (issue 27): `_noinv` rows are their row with `inventory.enabled: false`;
# `strangler_random` sends every request to a new unmatched path (a cardinality attack).
NO_INVENTORY = ("strangler_noinv", "strangler_default_noinv", "strangler_random_noinv")
RANDOM_PATHS = ("strangler_random", "strangler_random_noinv")
QUIET_SHARE = 0.33  # machine busy (cores) below which a measurement may start
MAX_ERROR_SHARE = 0.01  # a run with more failed requests than this is not a throughput figure


@dataclass
class Cpus:
    proxy: str | None
    gen: str | None
    upstream: str | None

    @classmethod
    def detect(cls) -> Cpus:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None, None)
        return cls(str(cores[0]), str(cores[1]), str(cores[2] if len(cores) > 2 else cores[1]))

    def describe(self) -> str:
        if self.proxy is None:
            return "none (fewer than 2 CPUs)"
        return (
            f"proxy under test on CPU {self.proxy}; wrk, the latency client and the stream client "
            f"on CPU {self.gen}; upstream nginx on CPU {self.upstream}; strangler with 2 workers "
            "unpinned (both CPUs)"
        )


@dataclass
class Target:
    """A server under load: the URL and process(es) per body size."""

    name: str
    urls: dict[str, str]
    procs: dict[str, list[Proc]] = field(default_factory=dict)
    upstreams: list[Proc] = field(default_factory=list)
    latency: bool = False
    admin_port: int = 0  # strangler: where /metrics is
    script: str | None = None  # a wrk Lua script (random paths)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run of 2 s each, 256 MiB stream (figures are rough)",
    )
    p.add_argument("--repeat", type=int, help="runs of each measurement (default 3)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--latency-duration",
        type=float,
        help="seconds per fixed-rate latency run (default: --duration)",
    )
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load first (default 1)")
    p.add_argument(
        "--cpu-pairs",
        type=int,
        help="after the runs: this many back-to-back pairs of short runs of the bare forwarder "
        "and strangler (order alternating) for the CPU-per-request ratio (default 8; 0: none)",
    )
    p.add_argument(
        "--pair-duration",
        type=float,
        help="seconds of each run of a --cpu-pairs pair (default 2)",
    )
    p.add_argument("--only", help=f"comma-separated scenarios out of: {','.join(SCENARIOS)}")
    p.add_argument("--stream-bytes", type=int, help="size of the streamed body (default 1 GiB)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where latest.json and latest.md go (default bench/results)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each measurement, wait up to S seconds for other work on the machine to "
        "drop below a third of a core (default 15; 0: do not wait)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 3)
    args.duration = args.duration or (2.0 if quick else 10.0)
    args.latency_duration = args.latency_duration or args.duration
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.stream_bytes = args.stream_bytes or (256 << 20 if quick else 1 << 30)
    if args.cpu_pairs is None:
        args.cpu_pairs = 2 if quick else 8
    args.pair_duration = args.pair_duration or (1.0 if quick else 2.0)
    wanted = [s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = [s for s in SCENARIOS if s in wanted]
    if args.repeat < 1 or args.duration <= 0:
        p.error("--repeat and --duration must be positive")
    if args.cpu_pairs < 0 or args.pair_duration <= 0:
        p.error("--cpu-pairs must be >= 0 and --pair-duration positive")
    return args


def ensure_tools() -> None:
    """nginx and wrk come from Debian; scripts/install-test-deps installs what is missing."""
    if shutil.which("nginx") and shutil.which("wrk"):
        return
    print("nginx or wrk missing: running scripts/install-test-deps", file=sys.stderr)
    subprocess.run([str(REPO / "scripts" / "install-test-deps")], cwd=REPO, check=True)
    if not (shutil.which("nginx") and shutil.which("wrk")):
        raise SystemExit("nginx and wrk are still missing after scripts/install-test-deps")


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return f"{cmd[0]} ?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""


def machine(args: argparse.Namespace, argv: list[str], cpus: Cpus) -> dict:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _version(["wrk", "-v"]).split(" Copyright")[0],
        "git_commit": commit,
        "command": " ".join(["python -m bench.run", *argv]),
        "repeat": args.repeat,
        "duration": args.duration,
        "latency_duration": args.latency_duration,
        "latency_rate": 1000.0,
        "latency_connections": 16,
        "warmup": args.warmup,
        "stream_bytes": args.stream_bytes,
        "pinning": cpus.describe(),
        "cores_per_proxy": {"strangler_w2": 2},
        "scenarios": args.scenarios,
        "quiet_wait": args.quiet_wait,
        "cpu_pairs": args.cpu_pairs,
        "pair_duration": args.pair_duration,
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, results: Results, cpus: Cpus):
        self.args = args
        self.procs = procs
        self.results = results
        self.cpus = cpus
        self.workdir = procs.workdir
        self.targets: list[Target] = []
        self.stream_proxy: Proc | None = None
        self.strangler_broken: str | None = None
        self.cleanups: list[Callable[[], None]] = []  # things not started through Procs

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # --- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        want = self.args.scenarios
        tls = servers.make_tls(self.workdir) if any(n in want for n in TLS_SCENARIOS) else None
        up = servers.start_upstream(self.procs, self.workdir, "upstream", self.cpus.upstream,
                                    tls=tls)
        small_path, big_path = servers.bench_paths(10)
        urls = {"small": up.small_url + small_path, "64KiB": up.big_url + big_path}
        if "direct" in want:
            self.add(Target("direct", urls, upstreams=[up.proc], latency=True))
        if "nginx" in want:
            ng = servers.start_nginx_proxy(self.procs, self.workdir, up, self.cpus.proxy)
            assert ng.proc is not None and ng.big_url is not None
            self.add(
                Target(
                    "nginx",
                    {"small": ng.small_url + small_path, "64KiB": ng.big_url + big_path},
                    {"small": [ng.proc], "64KiB": [ng.proc]},
                    [up.proc],
                    latency=True,
                )
            )
        if "aiohttp" in want:
            aio, aio_big = servers.start_aiohttp(self.procs, up, self.cpus.proxy)
            assert aio.proc is not None and aio.big_url is not None
            self.add(
                Target(
                    "aiohttp",
                    {"small": aio.small_url + small_path, "64KiB": aio.big_url + big_path},
                    {"small": [aio.proc], "64KiB": [aio_big]},
                    [up.proc],
                    latency=True,
                )
            )
        if "bare" in want:
            bare, bare_big = servers.start_bare(self.procs, up, self.cpus.proxy)
            assert bare.proc is not None and bare.big_url is not None
            self.add(Target("bare", {"small": bare.small_url + small_path,
                                     "64KiB": bare.big_url + big_path},
                            {"small": [bare.proc], "64KiB": [bare_big]}, [up.proc],
                            latency=True))
        for name in ("strangler", "strangler_pure", "strangler_noinv", "strangler_w2",
                     "strangler_shadow", "strangler_10k", *RANDOM_PATHS):
            if name in want:
                self.start_strangler(name, up)
        if any(name in want for name in DIFF_SCENARIOS):
            new = servers.start_upstream(self.procs, self.workdir, "new-service",
                                         self.cpus.upstream, different=True)
            for name in DIFF_SCENARIOS:
                if name in want:
                    self.start_differing(name, up, new)
        if tls is not None:
            self.start_tls(up, tls)
        for name, ratio in TRACE_SCENARIOS.items():
            if name in want:
                self.start_traced(name, up, ratio)
        if "stream" in want:
            self.start_stream()

    def start_tls(self, up: Upstream, tls: servers.BenchTls) -> None:
        want = self.args.scenarios
        small_path, big_path = servers.bench_paths(2)
        for mode in ("upstream", "listener"):
            if f"nginx_tls_{mode}" in want:
                ng = servers.start_nginx_tls_proxy(self.procs, self.workdir, up, self.cpus.proxy,
                                                   tls, mode)
                assert ng.proc is not None and ng.big_url is not None
                self.add(Target(f"nginx_tls_{mode}", {"small": ng.small_url + small_path,
                                                      "64KiB": ng.big_url + big_path},
                                {"small": [ng.proc], "64KiB": [ng.proc]}, [up.proc]))
            name = f"strangler_tls_{mode}"
            if name not in want:
                continue
            if self.strangler_broken:
                self.strangler_skip(name, f"strangler did not start ({self.strangler_broken})")
                continue
            port, admin = free_port(), free_port()
            config = servers.tls_config(port=port, admin_port=admin,
                                        state_dir=self.workdir / f"state-{name}", up=up,
                                        tls=tls, mode=mode)
            try:
                proc = servers.start_strangler(self.procs, self.workdir, name, config,
                                               self.cpus.proxy)
            except StartError as exc:
                self.strangler_skip(name, str(exc))
                continue
            base = f"{'https' if mode == 'listener' else 'http'}://127.0.0.1:{port}"
            self.add(Target(name, {"small": base + small_path, "64KiB": base + big_path},
                            {"small": [proc], "64KiB": [proc]}, [up.proc], admin_port=admin))

    def start_traced(self, name: str, up: Upstream, ratio: float) -> None:
        if self.strangler_broken:
            self.strangler_skip(name, f"strangler did not start ({self.strangler_broken})")
            return
        sink_port = free_port()
        sink = self.procs.start(f"otlp-sink-{name}", [sys.executable, "-m", "bench.otlp_sink",
                                                      str(sink_port)], self.cpus.upstream,
                                env={"PYTHONPATH": str(REPO)})
        port, admin = free_port(), free_port()
        config = servers.strangler_config(port=port, admin_port=admin,
                                          state_dir=self.workdir / f"state-{name}", up=up)
        config["tracing"] = {"otlp_endpoint": f"http://127.0.0.1:{sink_port}",
                             "sample_ratio": ratio}
        try:
            proc = servers.start_strangler(self.procs, self.workdir, name, config,
                                           self.cpus.proxy)
        except StartError as exc:
            self.strangler_skip(name, str(exc))
            return
        small_path, _ = servers.bench_paths(10)
        self.add(Target(name, {"small": f"http://127.0.0.1:{port}{small_path}"},
                        {"small": [proc]}, [up.proc, sink], admin_port=admin))

    def add(self, target: Target) -> None:
        """Keep `target` if every URL answers 200 with the expected body, else note why not."""
        for body, url in target.urls.items():
            problem = servers.check_get(url, BODY_LEN[body])
            if problem:
                self.results.note(f"{target.name} skipped: GET {url} -> {problem}")
                self.log(f"skip {target.name}: {problem}")
                return
        self.targets.append(target)

    def strangler_skip(self, name: str, why: str) -> None:
        first = why.strip().splitlines()
        short = " / ".join(line.strip() for line in first[-6:])[:600]
        self.results.note(f"{name} skipped: {short}")
        self.log(f"skip {name}: {why}")

    def start_strangler(self, name: str, up: Upstream) -> None:
        if self.strangler_broken:
            self.strangler_skip(name, f"strangler did not start ({self.strangler_broken})")
            return
        n_routes = 10_000 if name == "strangler_10k" else 10
        shadow_url = None
        upstreams = [up.proc]
        if name == "strangler_shadow":
            shadow = servers.start_upstream(
                self.procs, self.workdir, "shadow-upstream", self.cpus.upstream
            )
            shadow_url = shadow.small_url
            upstreams.append(shadow.proc)
        port, admin = free_port(), free_port()
        config = servers.strangler_config(
            port=port,
            admin_port=admin,
            state_dir=self.workdir / f"state-{name}",
            up=up,
            n_routes=n_routes,
            shadow_url=shadow_url,
        )
        if name in NO_INVENTORY:
            config["inventory"] = {"enabled": False}
        workers = 2 if name == "strangler_w2" else 1
        cpus = None if workers > 1 else self.cpus.proxy
        # strangler_pure: the same serve on the pure-Python data plane (issue 29)
        env = {"STRANGLER_NO_EXTENSIONS": "1" if name == "strangler_pure" else ""}
        try:
            proc = servers.start_strangler(self.procs, self.workdir, name, config, cpus, workers,
                                           env=env)
        except StartError as exc:
            if name == "strangler":
                self.strangler_broken = str(exc).splitlines()[0]
            self.strangler_skip(name, str(exc))
            return
        small_path, big_path = servers.bench_paths(n_routes)
        base = f"http://127.0.0.1:{port}"
        urls = {"small": base + small_path}
        if name in ("strangler", "strangler_pure"):
            urls["64KiB"] = base + big_path
        script = None
        if name in RANDOM_PATHS:
            urls = {"small": base + "/r/first"}  # unmatched: the default upstream answers
            script = str(servers.random_paths_script(self.workdir))
        procs = {key: [proc] for key in urls}
        latency = name in ("strangler", "strangler_pure")
        self.add(Target(name, urls, procs, upstreams, latency=latency, admin_port=admin,
                        script=script))

    def start_differing(self, name: str, up: Upstream, new: Upstream) -> None:
        if self.strangler_broken:
            self.strangler_skip(name, f"strangler did not start ({self.strangler_broken})")
            return
        port, admin = free_port(), free_port()
        default = name in ("strangler_default_diff", "strangler_default_noinv")
        shadow = None if default else {"sample": 1.0, "max_rate": "unlimited"}
        config = servers.differing_config(port=port, admin_port=admin,
                                          state_dir=self.workdir / f"state-{name}", up=up,
                                          new=new, shadow=shadow)
        env = None
        if name.endswith("_pg"):
            try:
                dsn, stop = servers.start_postgres()
            except StartError as exc:
                self.strangler_skip(name, str(exc))
                return
            self.cleanups.append(stop)
            config["store"] = {"backend": "postgres"}
            env = {"STRANGLER_DATABASE_URL": dsn}
        if name in NO_INVENTORY:
            config["inventory"] = {"enabled": False}
        try:
            proc = servers.start_strangler(self.procs, self.workdir, name, config,
                                           self.cpus.proxy, env=env)
        except StartError as exc:
            self.strangler_skip(name, str(exc))
            return
        small_path, big_path = servers.bench_paths(2)
        base = f"http://127.0.0.1:{port}"
        # At weight 50 half the answers come from the new service: any length is fine.
        target = Target(name, {"small": base + small_path, "64KiB": base + big_path},
                        {"small": [proc], "64KiB": [proc]}, [up.proc, new.proc], latency=True,
                        admin_port=admin)
        if default:
            self.targets.append(target)
        else:
            self.add(target)

    def start_stream(self) -> None:
        if self.strangler_broken:
            self.strangler_skip("stream", f"strangler did not start ({self.strangler_broken})")
            return
        upstream, url = servers.start_stream_upstream(self.procs, self.cpus.upstream)
        port, admin = free_port(), free_port()
        config = servers.stream_config(
            port=port, admin_port=admin, state_dir=self.workdir / "state-stream", upstream_url=url
        )
        try:
            self.stream_proxy = servers.start_strangler(
                self.procs, self.workdir, "strangler_stream", config, self.cpus.proxy
            )
        except StartError as exc:
            self.strangler_skip("stream", str(exc))
            self.procs.stop(upstream)
            return
        self.stream_url = f"http://127.0.0.1:{port}/stream"

    # --- measurements -----------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        for rep in range(args.repeat):
            for target in self.targets:
                for body, url in target.urls.items():
                    watched = {
                        "proxy": [p.pid for p in target.procs.get(body, [])],
                        "upstream": [p.pid for p in target.upstreams],
                    }
                    if rep == 0 and args.warmup > 0:
                        with contextlib.suppress(load.LoadError):
                            load.wrk(url, args.warmup, self.cpus.gen, {}, script=target.script)
                    self.throughput(rep, target, body, url, watched)
                if target.latency:
                    self.latency(
                        rep,
                        target,
                        target.urls["small"],
                        {
                            "proxy": [p.pid for p in target.procs.get("small", [])],
                            "upstream": [p.pid for p in target.upstreams],
                        },
                    )
                for procs in target.procs.values():
                    for p in procs:
                        p.truncate_log()
            if self.stream_proxy is not None:
                self.stream(rep)
        self.cpu_pairs()

    def cpu_pairs(self) -> None:
        """Issue 29's CPU ratio once more, from back-to-back pairs of short runs.

        The host's speed moves in phases of tens of seconds (bench/README.md, round 8), and in
        the runs above the bare forwarder's and strangler's small-body runs are ~15 s apart, so
        one phase can fall on one of them only. Here each pair runs the two seconds apart, in
        alternating order (bare first in even pairs), and the ratio is taken within the pair."""
        by_name = {t.name: t for t in self.targets}
        pair = [by_name.get("bare"), by_name.get("strangler")]
        if self.args.cpu_pairs == 0 or None in pair:
            return
        for k in range(self.args.cpu_pairs):
            for t in (pair if k % 2 == 0 else pair[::-1]):
                assert t is not None
                what = f"[pair {k + 1}/{self.args.cpu_pairs}] {t.name} CPU per request"
                watched = {"proxy": [p.pid for p in t.procs.get("small", [])],
                           "upstream": [p.pid for p in t.upstreams]}
                self.wait_quiet()
                r = self._guard(what, lambda t=t, w=watched: load.wrk(
                    t.urls["small"], self.args.pair_duration, self.cpus.gen, w))
                cpu = r["cpu"].get("proxy") if r is not None else None
                ok = (r is not None and cpu and r["rps"] > 0
                      and r["errors"] <= MAX_ERROR_SHARE * max(1, r["requests"]))
                value = cpu * 1e4 / r["rps"] if ok else None  # type: ignore[index,operator]
                self.results.add(t.name, "cpu_pair_us", "small", "µs", k, value, r)
                if value is not None:
                    self.log(f"{what}: {value:.1f} µs ({r['rps']:,.0f} req/s)")  # type: ignore[index]

    def _guard(self, what: str, fn: Callable[[], dict]) -> dict | None:
        try:
            return fn()
        except load.LoadError as exc:
            self.results.note(f"{what}: {exc}")
            self.log(f"{what}: FAILED {exc}")
            return None

    def wait_quiet(self) -> float:
        """Seconds waited for the machine to be quiet (our idle servers use ~nothing)."""
        started = time.monotonic()
        while time.monotonic() - started < self.args.quiet_wait:
            before = MachineCpu.read()
            time.sleep(0.5)
            if (MachineCpu.read().busy - before.busy) / 0.5 < QUIET_SHARE:
                break
        return round(time.monotonic() - started, 1)

    def throughput(self, rep: int, t: Target, body: str, url: str, watched: dict) -> None:
        what = f"[{rep + 1}/{self.args.repeat}] {t.name} throughput {body}"
        waited = self.wait_quiet()
        shadow = t.name in SHADOW_SCENARIOS
        before = servers.shadow_counters(t.admin_port) if shadow else None
        r = self._guard(what, lambda: load.wrk(url, self.args.duration, self.cpus.gen, watched,
                                               script=t.script))
        value = None
        if r is not None and before is not None:
            self.shadow_detail(r, t, before, self.args.duration)
        if r is not None:
            r["quiet_wait_s"] = waited
            value = r["rps"]
            if r["errors"] > MAX_ERROR_SHARE * max(1, r["requests"]):
                self.results.note(
                    f"{what}: {r['errors']} of {r['requests']} requests failed; run not counted"
                )
                value = None
            self.log(f"{what}: {r['rps']:,.0f} req/s, errors {r['errors']}, CPU % {r['cpu']}")
        self.results.add(t.name, "throughput", body, "req/s", rep, value, r)
        proxy_cpu = r["cpu"].get("proxy") if r is not None else None
        if value and proxy_cpu:  # CPU per request: the figure issue 29's goal is about
            self.results.add(t.name, "cpu_us", body, "µs", rep, proxy_cpu * 1e4 / value, r)

    def shadow_detail(self, r: dict, t: Target, before: dict, seconds: float) -> None:
        """Comparisons completed (per second of the run) beside what was shed, from /metrics.
        Counted after a pause, so a comparison still running at the end counts if it ends."""
        time.sleep(1.0)
        after = servers.shadow_counters(t.admin_port) or {}
        r["shadow"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
        compared = sum(v for k, v in r["shadow"].items() if k.startswith("compared_"))
        shed = sum(v for k, v in r["shadow"].items()
                   if k.startswith("skipped_") and k != "skipped_sampled_out")
        r["shadow_compared_share"] = compared / max(1, r["requests"])
        r["shadow_compared_per_s"] = compared / seconds
        r["shadow_shed_per_s"] = shed / seconds

    def latency(self, rep: int, t: Target, url: str, watched: dict) -> None:
        what = f"[{rep + 1}/{self.args.repeat}] {t.name} latency"
        waited = self.wait_quiet()
        shadow = t.name in SHADOW_SCENARIOS
        before = servers.shadow_counters(t.admin_port) if shadow else None
        r = self._guard(
            what,
            lambda: load.fixed_rate(
                url,
                self.args.latency_duration,
                self.cpus.gen,
                watched,
                warmup=1.0 if rep == 0 else 0.5,
            ),
        )
        p50 = p99 = None
        if r is not None and before is not None:
            self.shadow_detail(r, t, before, self.args.latency_duration)
        if r is not None:
            r["quiet_wait_s"] = waited
            bad = r["errors"] > MAX_ERROR_SHARE * max(1, r["requests"])
            if bad:
                self.results.note(f"{what}: {r['errors']} of {r['requests']} failed; not counted")
            else:
                p50, p99 = float(r["p50_us"]), float(r["p99_us"])
            self.log(
                f"{what}: p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, "
                f"{r['achieved_rps']} req/s, errors {r['errors']}, late {r['late']}"
            )
        self.results.add(t.name, "p50", "small", "µs", rep, p50, r)
        self.results.add(t.name, "p99", "small", "µs", rep, p99, r)

    def stream(self, rep: int) -> None:
        """Upload then download the stream body; peak RSS growth of the proxy's processes."""
        assert self.stream_proxy is not None
        what = f"[{rep + 1}/{self.args.repeat}] stream {self.args.stream_bytes >> 20} MiB"
        pids = tree(self.stream_proxy.pid)
        baseline = {pid: status_kib(pid, "VmRSS") or 0 for pid in pids}
        reset = all(reset_peak_rss(pid) for pid in pids)
        sampled = dict(baseline)
        client = self.procs.start(
            f"stream-client-{rep}",
            [
                sys.executable,
                "-m",
                "bench.stream",
                "client",
                "--url",
                self.stream_url,
                "--bytes",
                str(self.args.stream_bytes),
                "--timeout",
                "120",
            ],
            self.cpus.gen,
            env={"PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 600
        while client.alive() and time.monotonic() < deadline:
            for pid in pids:
                sampled[pid] = max(sampled[pid], status_kib(pid, "VmRSS") or 0)
            time.sleep(0.02)
        self.procs.stop(client)
        growth_kib = 0
        for pid in pids:
            peak = sampled[pid]
            if reset:
                peak = max(peak, status_kib(pid, "VmHWM") or 0)
            growth_kib += max(0, peak - baseline[pid])
        try:
            r = json.loads(client.tail(1))
        except ValueError:
            r = {"ok": False, "error": client.tail(5)}
        detail = {
            **r,
            "baseline_mib": sum(baseline.values()) / 1024,
            "peak_source": "VmHWM after reset + VmRSS sampled every 20 ms"
            if reset
            else "VmRSS sampled every 20 ms",
            "processes": len(pids),
        }
        if r.get("upload_s"):
            detail["upload_mib_s"] = self.args.stream_bytes / 2**20 / max(r["upload_s"], 1e-9)
        if r.get("download_s"):
            detail["download_mib_s"] = self.args.stream_bytes / 2**20 / max(r["download_s"], 1e-9)
        value = growth_kib / 1024 if r.get("ok") else None
        if not r.get("ok"):
            self.results.note(f"{what}: failed: {r}")
        self.log(f"{what}: peak RSS growth {growth_kib / 1024:.1f} MiB, {r}")
        self.results.add("stream", "rss_growth", "1GiB", "MiB", rep, value, detail)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ensure_tools()
    cpus = Cpus.detect()
    results = Results(machine(args, argv, cpus))
    if args.stream_bytes != 1 << 30 and "stream" in args.scenarios:
        results.note(f"the streamed body was {args.stream_bytes >> 20} MiB, not 1 GiB")
    workdir = Path(tempfile.mkdtemp(prefix="strangler-bench-"))
    results.meta["workdir"] = str(workdir)
    servers.chmod_for_nginx_workers(workdir)
    procs = Procs(workdir)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    started = time.monotonic()
    bench: Bench | None = None
    try:
        bench = Bench(args, procs, results, cpus)
        bench.start()
        bench.run()
    except KeyboardInterrupt:
        results.note("interrupted: the figures are partial")
        print("interrupted; stopping everything", file=sys.stderr)
    except StartError as exc:
        results.note(f"set-up failed: {str(exc).splitlines()[0]}")
        print(f"set-up failed: {exc}", file=sys.stderr)
    finally:
        procs.stop_all()
        for cleanup in bench.cleanups if bench is not None else ():
            cleanup()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.meta["wall_s"] = round(time.monotonic() - started, 1)
    results.meta["loadavg_end"] = _loadavg()
    results.finish()
    js, md = results.write(args.out)
    print(results.markdown())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0 if any(r.values for r in results.rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
