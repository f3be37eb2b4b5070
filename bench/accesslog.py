"""What an access log costs, strangler's against nginx's: `python -m bench.accesslog`.

Four proxies in front of the bench's upstream nginx, all pinned to CPU 0 (only one under load at
a time; wrk and the upstream on CPU 1):
- `nginx_off`: bench's reference nginx (proxy_nginx.conf.tmpl, `access_log off`);
- `nginx_on`: the same with `access_log FILE combined buffer=64k flush=1s`
  (proxy_nginx_accesslog.conf.tmpl);
- `strangler_on`: `strangler serve` as shipped (access log on: JSON lines on stdout, here a file
  as in the bench's other rows, PYTHONUNBUFFERED=1 as in the Docker image), the bench's 10 routes;
- `strangler_off`: the same with `--no-access-log`.

Each run, in an order that alternates between repeats: wait for the machine to be quiet, 1 s of
unmeasured wrk, then `wrk -t1 -c64 -dD` while `perf stat -e task-clock` (if perf works) and
/proc utime+stime count the proxy's CPU, giving req/s and CPU µs per request; then the lines the
log received per request (a check that the log was really on) and their size. The machine may
be shared: CPU per request moves much less with other work than req/s does.
`--tree DIR` runs another strangler source tree (e.g. `git archive COMMIT | tar -x -C DIR`);
`--old DIR` adds `strangler_on_old`, that tree's default serve, measured in the same rounds (before
and after a change, paired run by run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import load, servers
from bench.procs import CLK_TCK, STRANGLER_MAIN, MachineCpu, Proc, Procs, free_port, pinned, tree
from bench.servers import REPO

NAMES = ("nginx_off", "nginx_on", "strangler_on", "strangler_off")
QUIET_SHARE = 0.33  # machine busy (cores) below which a measurement may start
PROXY_CPU, GEN_CPU = "0", "1"
LOG_SETTLE = 1.3  # s after a run before counting log lines (nginx flushes every 1 s, we 0.2 s)


@dataclass
class Subject:
    name: str
    proc: Proc
    url: str
    log: Path  # where its access lines go (strangler: stdout, shared with stderr)
    runs: list[dict] = field(default_factory=list)


def check_templates() -> None:
    """The access-log-on template is the reference with one line changed, nothing else."""
    def body(name: str) -> list[str]:
        text = (servers.HERE / name).read_text().splitlines()
        return [ln for ln in text if not ln.startswith("#") and "access_log" not in ln]

    if body("proxy_nginx.conf.tmpl") != body("proxy_nginx_accesslog.conf.tmpl"):
        raise SystemExit("bench/proxy_nginx_accesslog.conf.tmpl differs from "
                         "proxy_nginx.conf.tmpl in more than its access_log line: update it")


def start_nginx(procs: Procs, work: Path, up: servers.Upstream, name: str, template: str,
                big: bool) -> Subject:
    ports = [free_port(), free_port()]
    conf = servers._render(template, work / f"{name}.conf", dir=work, name=name,
                           small_port=ports[0], big_port=ports[1],
                           small_upstream_port=up.small_port, big_upstream_port=up.big_port)
    proc = servers._nginx(procs, name, conf, ports, PROXY_CPU)
    path = servers.bench_paths(10)[1 if big else 0]
    return Subject(name, proc, f"http://127.0.0.1:{ports[1 if big else 0]}{path}",
                   work / f"{name}.access.log")


def start_strangler(procs: Procs, work: Path, up: servers.Upstream, name: str, tree_dir: Path,
                    extra: list[str], big: bool) -> Subject:
    port, admin = free_port(), free_port()
    cfg = servers.strangler_config(port=port, admin_port=admin, state_dir=work / f"st-{name}",
                                   up=up)
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-c", STRANGLER_MAIN,
           "serve", "-c", str(cfg_path), *extra]
    proc = procs.start(name, cmd, PROXY_CPU,
                       env={"PYTHONPATH": str(tree_dir), "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while servers._readyz(admin) != 200:
        if time.monotonic() > deadline or not proc.alive():
            raise servers.StartError(f"{name} did not start:\n{proc.tail()}")
        time.sleep(0.1)
    path = servers.bench_paths(10)[1 if big else 0]
    return Subject(name, proc, f"http://127.0.0.1:{port}{path}", proc.log)


def wait_quiet(limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = MachineCpu.read()
        time.sleep(0.5)
        if (MachineCpu.read().busy - before.busy) / 0.5 < QUIET_SHARE:
            break
    return round(time.monotonic() - started, 1)


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    done = subprocess.run(["perf", "stat", "-e", "task-clock", "-x,", "true"],
                          capture_output=True, text=True, timeout=10, check=False)
    return done.returncode == 0 and "task-clock" in done.stderr


def perf_start(pids: list[int], out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        pinned(["perf", "stat", "-e", "task-clock,page-faults", "-x,", "-o", str(out),
                "-p", ",".join(map(str, pids))], GEN_CPU),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # attached before the load starts
    return proc


def perf_stop(proc: subprocess.Popen[bytes], out: Path) -> dict[str, float]:
    """task-clock (ms) and page-faults counted since perf_start (printed on SIGINT)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return {}
    counts: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in out.read_text().splitlines():
            parts = line.split(",")
            with contextlib.suppress(ValueError, IndexError):
                counts[parts[2]] = float(parts[0])
    return counts


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds used so far by `pids` (/proc/PID/stat utime, stime)."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def count_lines(path: Path) -> tuple[int, int]:
    """(newlines, bytes) in a log file."""
    n = size = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            size += len(chunk)
    return n, size


def measure(s: Subject, duration: float, use_perf: bool, work: Path) -> dict:
    load.wrk(s.url, 1, GEN_CPU, {})  # warm-up
    time.sleep(LOG_SETTLE)  # the warm-up's lines are out before the log is emptied
    with contextlib.suppress(OSError):
        os.truncate(s.log, 0)  # both append (O_APPEND): the next line starts the file
    pids = tree(s.proc.pid)
    perf_out = work / f"perf-{s.name}.txt"
    perf = perf_start(pids, perf_out) if use_perf else None
    user0, sys0 = cpu_split(pids)
    try:
        r = load.wrk(s.url, duration, GEN_CPU, {"proxy": pids})
    finally:
        user1, sys1 = cpu_split(pids)
        cpu = user1 - user0 + sys1 - sys0
        counts = perf_stop(perf, perf_out) if perf is not None else {}
    time.sleep(LOG_SETTLE)
    lines, size = count_lines(s.log)
    n = max(1, r["requests"])
    r.update(
        proc_cpu_us=cpu * 1e6 / n,
        kernel_share=(sys1 - sys0) / cpu if cpu > 0 else 0.0,
        perf_cpu_us=counts["task-clock"] * 1e3 / n if "task-clock" in counts else None,
        faults_per_1k=counts["page-faults"] * 1e3 / n if "page-faults" in counts else None,
        lines_per_request=lines / n,
        bytes_per_line=size / lines if lines else None,
    )
    return r


def summary(r: dict) -> str:
    perf = f"{r['perf_cpu_us']:.1f}" if r["perf_cpu_us"] else "-"
    faults = f"{r['faults_per_1k']:.1f}" if r["faults_per_1k"] is not None else "-"
    return (f"{r['rps']:,.0f} req/s, CPU/request perf {perf} µs, /proc {r['proc_cpu_us']:.1f} µs "
            f"({r['kernel_share']:.0%} kernel), log lines/request {r['lines_per_request']:.3f}, "
            f"page faults/1k requests {faults}, other work {r['cpu'].get('other')}% of a core, "
            f"errors {r['errors']}")


# --- the log alone --------------------------------------------------------------------------

# Run in a fresh interpreter per tree (PYTHONPATH=tree): the data plane's calls into AccessLog on
# uvloop, 16 requests per loop iteration, lines to a real file, flushed every 2,000 lines (the
# 200 ms flush at 10k req/s); process CPU per line, minus the same loop without the log.
_LINE_COST = r"""
import asyncio, sys, time, uvloop
try:
    from proxy.dataplane.access_log import AccessLog
except ImportError:  # a tree from before issue 16's layout
    from proxy.logs import AccessLog
n, rounds, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def drive(log):
    t0 = time.process_time()
    for i in range(n // 16):
        for _ in range(16):
            if log is not None:
                log.request("6f1d3c9a2b7e4f08-000001", "r00008", "legacy", "legacy", b"GET",
                            b"/svc/r00008/item", 200, 0.000532, False)
        await asyncio.sleep(0)
        if log is not None and i % 125 == 124:
            log.flush()
    if log is not None:
        log.flush()
    return time.process_time() - t0
best = floor = 1e9
for _ in range(rounds):
    with open(path, "w") as f:
        best = min(best, uvloop.run(drive(AccessLog(stream=f))))
    floor = min(floor, uvloop.run(drive(None)))
print((best - floor) / n * 1e6)
"""


def line_cost(tree_dir: Path, work: Path, n: int = 200_000, rounds: int = 5) -> float | None:
    """CPU µs per access line of `tree_dir`'s AccessLog (pinned to CPU 0)."""
    cmd = pinned([sys.executable, "-c", _LINE_COST, str(n), str(rounds),
                  str(work / "line-cost.log")], PROXY_CPU)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(tree_dir)})
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"line cost of {tree_dir}: {done.stderr[-500:]}", file=sys.stderr)
        return None


def line_costs(trees: dict[str, Path], work: Path, repeat: int) -> dict[str, list[float]]:
    """`repeat` alternating measurements per tree."""
    got: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(repeat):
        for name, tree_dir in (trees.items() if rep % 2 == 0 else reversed(trees.items())):
            v = line_cost(tree_dir, work)
            if v is not None:
                got[name].append(v)
                print(f"[{rep + 1}/{repeat}] AccessLog alone, {name}: {v:.2f} µs/line",
                      file=sys.stderr, flush=True)
    return got


def line_cost_report(got: dict[str, list[float]]) -> list[str]:
    out = [
        "",
        "The log alone (`AccessLog` as the data plane calls it, on uvloop, 16 requests per loop "
        "iteration, to a file, flushed every 2,000 lines; process CPU per line minus the same "
        "loop without it, min of 5 rounds, pinned to CPU 0; steadier than wrk on a busy "
        "machine):",
        "",
        "| tree | CPU µs per line, min / median / max |",
        "|---|---:|",
    ]
    out += [f"| {name} | {_mmm(xs, '.2f')} |" for name, xs in got.items()]
    return out


# --- report ----------------------------------------------------------------------------------


def _mmm(xs: list[float], fmt: str) -> str:
    if not xs:
        return "-"
    return " / ".join(format(v, fmt) for v in (min(xs), statistics.median(xs), max(xs)))


def _vals(s: Subject, key: str) -> list[float]:
    return [r[key] for r in s.runs if r.get(key) is not None and r.get("ok", True)]


def _paired(a: Subject, b: Subject, key: str) -> list[float]:
    out = []
    for ra, rb in zip(a.runs, b.runs, strict=False):
        if ra.get(key) and rb.get(key) and ra.get("ok", True) and rb.get("ok", True):
            out.append(ra[key] / rb[key])
    return out


def cpu_key(subjects: dict[str, Subject]) -> str:
    perf_ok = all(_vals(s, "perf_cpu_us") for s in subjects.values())
    return "perf_cpu_us" if perf_ok else "proc_cpu_us"


def report(subjects: dict[str, Subject], meta: dict) -> str:
    key = cpu_key(subjects)
    how = ("`perf stat -e task-clock -p PIDS`" if key == "perf_cpu_us"
           else f"/proc/PID/stat utime+stime (1/{CLK_TCK} s ticks)")
    out = [
        f"# Access log cost, {meta['date']}",
        "",
        f"- command: `{meta['command']}`",
        f"- strangler tree: {meta['tree']} ({meta['commit']})",
        f"- machine: {meta['cpu']}, {os.cpu_count()} cores, **shared with other engineers' jobs**"
        f" (load average {meta['load_start']} at the start, {meta['load_end']} at the end)",
        f"- {meta['repeat']} runs of `wrk -t1 -c64 -d{meta['duration']:g}s` per server after 1 s "
        f"of warm-up, {meta['body']} body; proxy on CPU 0, wrk + upstream nginx on CPU 1",
        f"- CPU per request: the proxy's processes, {how}, over the wrk run, divided by the "
        "requests wrk completed (the steadier figure on a shared machine)",
        "- nginx on: `access_log FILE combined buffer=64k flush=1s`; strangler on: `strangler "
        "serve` defaults (JSON lines to stdout, here a file); off: `access_log off` / "
        "`--no-access-log`",
        "",
        "| server | req/s min / median / max | CPU µs/request min / median / max | /proc CPU "
        "µs/request (median) | other CPU % (median) | log lines per request | bytes per line "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in subjects:
        s = subjects[name]
        other = [r["cpu"].get("other", 0.0) for r in s.runs]
        lpr = _vals(s, "lines_per_request")
        bpl = _vals(s, "bytes_per_line")
        procs_cpu = _vals(s, "proc_cpu_us")
        out.append(
            f"| {name} | {_mmm(_vals(s, 'rps'), ',.0f')} | {_mmm(_vals(s, key), '.1f')} "
            f"| {statistics.median(procs_cpu) if procs_cpu else 0:.1f} "
            f"| {statistics.median(other) if other else 0:.0f} "
            f"| {statistics.median(lpr) if lpr else 0:.3f} "
            f"| {statistics.median(bpl) if bpl else 0:.0f} "
            f"| {sum(r['errors'] for r in s.runs)} |"
        )
    sn, so = subjects["strangler_on"], subjects["strangler_off"]
    nn, no = subjects["nginx_on"], subjects["nginx_off"]
    out += [
        "",
        "Ratios: medians of per-run ratios (run i over run i), min / median / max.",
        "",
        "| pair | req/s ratio | CPU/request ratio |",
        "|---|---:|---:|",
        f"| strangler on / nginx on | {_mmm(_paired(sn, nn, 'rps'), '.3f')} "
        f"| {_mmm(_paired(sn, nn, key), '.2f')} |",
        f"| strangler off / nginx off | {_mmm(_paired(so, no, 'rps'), '.3f')} "
        f"| {_mmm(_paired(so, no, key), '.2f')} |",
        f"| nginx on / nginx off | {_mmm(_paired(nn, no, 'rps'), '.3f')} "
        f"| {_mmm(_paired(nn, no, key), '.3f')} |",
        f"| strangler on / strangler off | {_mmm(_paired(sn, so, 'rps'), '.3f')} "
        f"| {_mmm(_paired(sn, so, key), '.3f')} |",
        "",
        "CPU µs per request the log adds (median on minus median off):",
        "",
    ]
    pairs = [("nginx", nn, no), ("strangler", sn, so)]
    if "strangler_on_old" in subjects:
        old = subjects["strangler_on_old"]
        pairs.append(("strangler, old tree", old, so))
        out[-4:-4] = [
            f"| strangler on / strangler on, old tree | {_mmm(_paired(sn, old, 'rps'), '.3f')} "
            f"| {_mmm(_paired(sn, old, key), '.3f')} |",
            f"| strangler on, old tree / nginx on | {_mmm(_paired(old, nn, 'rps'), '.3f')} "
            f"| {_mmm(_paired(old, nn, key), '.2f')} |",
        ]
    for label, on, off in pairs:
        a, b = _vals(on, key), _vals(off, key)
        if a and b:
            extra = statistics.median(a) - statistics.median(b)
            out.append(f"- {label}: {extra:+.2f} µs ({extra / statistics.median(b):+.1%} of its "
                       f"CPU per request with the log off)")
    out += ["", "Per run (req/s, CPU µs/request):", ""]
    for name in subjects:
        cells = [f"{r['rps']:,.0f} / {r[key] or 0:.1f}" for r in subjects[name].runs]
        out.append(f"- {name}: " + "; ".join(cells))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.accesslog",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (max 10)")
    p.add_argument("--big", action="store_true", help="the 64 KiB body instead of the small one")
    p.add_argument("--tree", type=Path, default=REPO, help="strangler source tree to run")
    p.add_argument("--old", type=Path, help="also run this tree's default serve (before/after)")
    p.add_argument("--quiet-wait", type=float, default=15.0)
    p.add_argument("--out", type=Path, help="default bench/results/accesslog-<date>.md")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--line-cost-only", action="store_true",
                   help="only the in-process cost of the log alone (this tree and --old)")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 10 or args.repeat < 1:
        p.error("--duration must be in (0, 10] and --repeat positive")
    check_templates()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: run scripts/install-test-deps")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs (proxy on CPU 0, wrk and upstream on CPU 1)")
    use_perf = perf_usable()
    now = dt.datetime.now(dt.UTC)
    tree_dir = args.tree.resolve()
    commit = subprocess.run(["git", "-C", str(tree_dir), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "unknown CPU")
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.accesslog", *argv]),
        "tree": tree_dir if tree_dir != REPO else "this checkout",
        "commit": commit or "not a git checkout",
        "cpu": cpu_model,
        "repeat": args.repeat,
        "duration": args.duration,
        "body": "64 KiB" if args.big else f"{len(servers.SMALL_BODY)}-byte",
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-accesslog-"))
    servers.chmod_for_nginx_workers(work)
    procs = Procs(work)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    subjects: dict[str, Subject] = {}
    interrupted = False
    trees = {"this tree": tree_dir, **({"old tree": args.old.resolve()} if args.old else {})}
    if args.line_cost_only:
        try:
            text = "\n".join(line_cost_report(line_costs(trees, work, args.repeat)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(text)
        return 0
    costs: dict[str, list[float]] = {}
    try:
        up = servers.start_upstream(procs, work, "upstream", GEN_CPU)
        subjects["nginx_off"] = start_nginx(procs, work, up, "nginx_off",
                                            "proxy_nginx.conf.tmpl", args.big)
        subjects["nginx_on"] = start_nginx(procs, work, up, "nginx_on",
                                           "proxy_nginx_accesslog.conf.tmpl", args.big)
        subjects["strangler_on"] = start_strangler(procs, work, up, "strangler_on", tree_dir,
                                                   [], args.big)
        subjects["strangler_off"] = start_strangler(procs, work, up, "strangler_off", tree_dir,
                                                    ["--no-access-log"], args.big)
        if args.old:
            subjects["strangler_on_old"] = start_strangler(
                procs, work, up, "strangler_on_old", args.old.resolve(), [], args.big)
            meta["tree"] = f"{meta['tree']}; strangler_on_old: {args.old.resolve()}"
        expect = servers.BIG_SIZE if args.big else len(servers.SMALL_BODY)
        for s in subjects.values():
            problem = servers.check_get(s.url, expect)
            if problem:
                raise servers.StartError(f"{s.name}: GET {s.url} -> {problem}")
        for rep in range(args.repeat):
            order = list(subjects) if rep % 2 == 0 else list(reversed(subjects))
            for name in order:
                s = subjects[name]
                waited = wait_quiet(args.quiet_wait)
                try:
                    r = measure(s, args.duration, use_perf, work)
                except load.LoadError as exc:
                    print(f"[{rep + 1}] {name}: FAILED {exc}", file=sys.stderr)
                    continue
                r["ok"] = r["errors"] <= 0.01 * max(1, r["requests"])
                r["quiet_wait_s"] = waited
                s.runs.append(r)
                print(f"[{rep + 1}/{args.repeat}] {name}: {summary(r)}", file=sys.stderr,
                      flush=True)
        procs.stop_all()  # the servers are idle, but the machine is quieter without them
        costs = line_costs(trees, work, args.repeat)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; stopping everything", file=sys.stderr)
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if interrupted or not set(NAMES) <= set(subjects) or not all(
            s.runs for s in subjects.values()):
        print("not every server was measured: no report written", file=sys.stderr)
        return 1
    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(subjects, meta) + "\n".join(line_cost_report(costs)) + "\n"
    out = args.out or REPO / "bench" / "results" / f"accesslog-{now:%Y-%m-%d}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
