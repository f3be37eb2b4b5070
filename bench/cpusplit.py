"""Where the CPU ratio to the bare forwarder comes from: `python -m bench.cpusplit [--pairs N]`.

Starts the bench's upstream nginx (CPU 1), the bare forwarder and one `strangler serve` (both on
CPU 0, the bench's routes.yaml, access log on), then runs pairs of `wrk -t1 -c64` runs (CPU 1) on
the two back to back, the order alternating as in `bench.run --cpu-pairs`. For each run it
prints the server's user and system CPU per request (all its threads, from /proc), and how
often per request wrk and the upstream nginx went to sleep and had to be woken (voluntary
context switches): on a 2-core VM, each wake-up of a sleeping task on the other CPU is charged
to the waker's system time (the IPI in `sock_def_readable`), so a slower proxy pays more system
time per request for the same syscalls. `--syscalls` also counts each server's syscalls per
request under strace once (slow; the counts, not the times, are what it is for).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import load, servers
from bench.procs import Procs, free_port, tree

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> tuple[int, int]:
    """User and system ticks of all of `pid`'s threads."""
    user = system = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def _sleeps(pids: list[int]) -> int:
    """Voluntary context switches of `pids` so far (each one a wake-up to come)."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
    return total


def _wrk(url: str, seconds: float, cpus: str | None) -> int:
    """`bench.load.wrk` (`wrk -t1 -c64`, as bench.run runs it); the requests it completed."""
    return int(load.wrk(url, seconds, cpus, {})["requests"])


def measure(url: str, pid: int, upstream: list[int], seconds: float, cpus: str | None) -> dict:
    """One wrk run on `url`: the server's CPU per request (µs, user and system) and the
    sleeps per request of wrk and of the upstream."""
    cpu0, up0 = _threads(pid), _sleeps(upstream)
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    n = _wrk(url, seconds, cpus)
    cpu1, up1 = _threads(pid), _sleeps(upstream)
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    per = 1e6 / CLK_TCK / max(n, 1)
    return {"requests": n, "user_us": (cpu1[0] - cpu0[0]) * per,
            "sys_us": (cpu1[1] - cpu0[1]) * per, "wrk_sleeps": (wrk1 - wrk0) / max(n, 1),
            "upstream_sleeps": (up1 - up0) / max(n, 1)}


def syscalls(url: str, pid: int, seconds: float, cpus: str | None, out: Path) -> dict[str, float]:
    """Syscalls per request of `pid` (all threads) during one wrk run, counted by strace."""
    trace = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                             stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        n = _wrk(url, seconds, cpus)
    finally:
        trace.terminate()
        trace.wait(30)
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3]) / max(n, 1)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpusplit",
                                description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--duration", type=float, default=2.0, help="seconds of each wrk run")
    p.add_argument("--syscalls", action="store_true", help="count syscalls under strace once")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.duration <= 0:
        p.error("--pairs must be >= 1 and --duration positive")
    pinned = len(os.sched_getaffinity(0)) >= 2
    proxy_cpu, gen_cpu = ("0", "1") if pinned else (None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-cpusplit-"))
    servers.chmod_for_nginx_workers(work)
    procs = Procs(work)
    try:
        up = servers.start_upstream(procs, work, "upstream", gen_cpu)
        port, admin = free_port(), free_port()
        config = servers.strangler_config(port=port, admin_port=admin,
                                          state_dir=work / "state", up=up)
        strangler = servers.start_strangler(procs, work, "strangler", config, proxy_cpu)
        bare, _ = servers.start_bare(procs, up, proxy_cpu)
        path = servers.bench_paths(10)[0]
        targets = {"strangler": (f"http://127.0.0.1:{port}{path}", strangler.pid),
                   "bare": (bare.small_url + path, bare.proc.pid)}
        upstream = tree(up.proc.pid)
        for url, _ in targets.values():
            _wrk(url, 1, gen_cpu)  # warm-up
        if args.syscalls:
            for name, (url, pid) in targets.items():
                counts = syscalls(url, pid, 3, gen_cpu, work / f"{name}.strace")
                print(f"{name:9s} syscalls per request: {sum(counts.values()):.3f} "
                      + " ".join(f"{k} {v:.3f}" for k, v in sorted(counts.items(),
                                                               key=lambda kv: -kv[1])[:6]))
        rows: dict[str, list[dict]] = {name: [] for name in targets}
        print(f"{'pair':>4} {'server':9s} {'req/s':>8} {'user µs':>8} {'sys µs':>7} "
              f"{'total':>6} {'wrk sleeps/req':>15} {'upstream sleeps/req':>20}")
        for k in range(args.pairs):
            order = list(targets.items())
            if k % 2:
                order.reverse()
            for name, (url, pid) in order:
                r = measure(url, pid, upstream, args.duration, gen_cpu)
                rows[name].append(r)
                print(f"{k + 1:>4} {name:9s} {r['requests'] / args.duration:>8,.0f} "
                      f"{r['user_us']:>8.1f} {r['sys_us']:>7.1f} "
                      f"{r['user_us'] + r['sys_us']:>6.1f} {r['wrk_sleeps']:>15.3f} "
                      f"{r['upstream_sleeps']:>20.3f}", flush=True)
        print("medians:")
        for name, rs in rows.items():
            med = {key: statistics.median(r[key] for r in rs)
                   for key in ("user_us", "sys_us", "wrk_sleeps", "upstream_sleeps")}
            print(f"  {name:9s} user {med['user_us']:.1f} µs, system {med['sys_us']:.1f} µs, "
                  f"wrk sleeps {med['wrk_sleeps']:.3f}, upstream sleeps "
                  f"{med['upstream_sleeps']:.3f} per request")
        ratios = [(s["user_us"] + s["sys_us"]) / (b["user_us"] + b["sys_us"])
                  for s, b in zip(rows["strangler"], rows["bare"], strict=True)
                  if b["user_us"] + b["sys_us"] > 0]
        if ratios:
            print(f"  CPU per request, strangler / bare within each pair: median "
                  f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max "
                  f"{max(ratios):.2f})")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
