"""Load generators: wrk for throughput, bench.fixedrate for latency at a fixed rate.

Each run also reports the CPU used (percent of one core) by the load generator and by the
watched process trees (the proxy under test, the upstream), so a result says what limited it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from bench.procs import MachineCpu, cpu_seconds, pinned, tree
from bench.servers import REPO

_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_ENV = {**os.environ, "PYTHONPATH": str(REPO)}
_TOTAL = re.compile(r"^\s+(\d+) requests in", re.M)


class LoadError(RuntimeError):
    pass


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(
    cmd: list[str], timeout: float, watched: Mapping[str, Sequence[int]]
) -> tuple[str, float, dict[str, float]]:
    """Run a load generator; return its stdout, wall seconds and CPU % of everyone involved."""
    pids = {name: [p for pid in roots for p in tree(pid)] for name, roots in watched.items()}
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    gen_before = _children_cpu()
    machine_before = MachineCpu.read()
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=_ENV
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills it
        raise LoadError(f"{cmd[0]} did not finish in {timeout:.0f}s") from exc
    wall = time.monotonic() - t0
    machine = MachineCpu.read()
    used = {name: cpu_seconds(p) - before[name] for name, p in pids.items() if p}
    used["loadgen"] = _children_cpu() - gen_before
    # The network stack's softirq work (mostly not charged to any process), then everything
    # else on the machine (other jobs): the second is noise a reader should know about.
    used["softirq"] = machine.softirq - machine_before.softirq
    used["other"] = max(0.0, machine.busy - machine_before.busy - sum(used.values()))
    for name, secs in machine.per_cpu.items():
        used[name] = secs - machine_before.per_cpu.get(name, 0.0)
    cpu = {name: 100 * v / wall for name, v in used.items()}
    if done.returncode != 0:
        raise LoadError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}")
    return done.stdout, wall, {k: round(v, 1) for k, v in cpu.items()}


def wrk(
    url: str,
    duration: float,
    cpus: str | None,
    watched: Mapping[str, Sequence[int]],
    connections: int = 64,
    script: str | None = None,
) -> dict:
    """`wrk -t1 -cN -dD URL`: requests/s, errors (socket errors + non-2xx) and CPU use.
    `script`: a wrk Lua script (`-s`) that writes the requests."""
    cmd = pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
         *(("-s", script) if script else ()), url],
        cpus,
    )
    out, _, cpu = _run(cmd, duration + 60, watched)
    m = _RPS.search(out)
    if not m:
        raise LoadError(f"no Requests/sec in wrk output:\n{out[-800:]}")
    sock = _SOCKERR.search(out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    non2xx = int(m2.group(1)) if (m2 := _NON2XX.search(out)) else 0
    total = int(m3.group(1)) if (m3 := _TOTAL.search(out)) else 0
    return {
        "rps": float(m.group(1)),
        "requests": total,
        "errors": errors + non2xx,
        "cpu": cpu,
    }


def fixed_rate(
    url: str,
    duration: float,
    cpus: str | None,
    watched: Mapping[str, Sequence[int]],
    rate: float = 1000.0,
    connections: int = 16,
    warmup: float = 1.0,
) -> dict:
    """Latency at a fixed request rate (bench.fixedrate): p50/p90/p99/max in microseconds."""
    cmd = pinned(
        [
            sys.executable,
            "-m",
            "bench.fixedrate",
            "--url",
            url,
            "--rate",
            str(rate),
            "--connections",
            str(connections),
            "-d",
            str(duration),
            "--warmup",
            str(warmup),
        ],
        cpus,
    )
    out, _, cpu = _run(cmd, duration + warmup + 60, watched)
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise LoadError(f"fixedrate printed no result: {out[-500:]}") from exc
    result["cpu"] = cpu
    return result
