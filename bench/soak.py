"""Soak: under a long bounded load with shadowing, reloads and weight changes, nothing grows.

    python -m bench.soak                       # 1,000,000 requests, 1,000 reloads, 1,000 weights
    python -m bench.soak --requests 20000 --reloads 20 --weights 20      # smoke

`strangler serve --workers 2 --no-watch` in front of two nginx upstreams whose answers differ
(legacy, and a new service with other values), both routes shadowed at sample 1.0 with no
per-route rate limit (`shadow.max_rate: unlimited`) under the proxy-wide budget at its default
(1,000 mirrors/s): mirrors and comparisons run all the time, and what the budget sheds is
counted. Load is a loop of short `wrk` runs (1 in `--big-every` requests asks for the 64 KiB
answer); between runs, at the start, every `--sample-every` requests and at the end, every
process of the strangler tree (control, workers, comparers) is sampled: RSS, open fds, threads,
asyncio tasks (`GET /admin/debug/tasks`), plus the diff store (bytes and rows) and the audit log.
Reloads (routes.yaml rewritten with other weights and compare rules, then `POST /admin/reload`;
`--no-watch`, so each rewrite is exactly one reload) and weight changes (`PUT
/admin/routes/{name}/weight`) run in two threads, paced by the request count.

Bounded: stops after `--requests` or `--max-time` seconds, whichever comes first; every process
it started is stopped by PID. The table goes to bench/results/soak-DATE.md and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Proc, Procs, free_port, status_kib, tree, wait_port
from bench.servers import (
    REPO,
    StartError,
    chmod_for_nginx_workers,
    differing_config,
    route_name,
    start_upstream,
    strangler_cmd,
)
from shadow.store import STEPS_KEPT

RESULTS = Path(__file__).resolve().parent / "results"
RSS_TARGET_MIB = 32.0
ROUTES = (route_name(0), route_name(1))  # small-body route, 64 KiB route
_TOTAL = re.compile(r"^\s+(\d+) requests in", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_METRIC = re.compile(r'^(strangler_[a-z_]+)\{([^}]*)\}\s+(\S+)$', re.M)


# -- the admin API ------------------------------------------------------------------------------
@dataclass
class Admin:
    base: str
    token: str

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float = 10.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "X-Strangler-Actor": "soak"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            return r.read().decode()


def counters(text: str) -> dict[str, float]:
    """Requests per code class, comparisons per result and skipped mirrors per reason."""
    out: dict[str, float] = {}
    for name, labels, value in _METRIC.findall(text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "strangler_requests_total":
            key = f"requests_{lab.get('backend')}_{lab.get('code', '?')[0]}xx"
        elif name == "strangler_shadow_comparisons_total":
            key = f"compared_{lab.get('result')}"
        elif name == "strangler_shadow_skipped_total":
            key = f"skipped_{lab.get('reason')}"
        else:
            continue
        out[key] = out.get(key, 0.0) + float(value)
    return out


# -- routes.yaml variants (one per reload) ------------------------------------------------------
def base_config(port: int, admin_port: int, state_dir: Path, up: Any, new: Any) -> dict:
    cfg = differing_config(port=port, admin_port=admin_port, state_dir=state_dir, up=up,
                           new=new, shadow={"enabled": True, "sample": 1.0,
                                            "max_rate": "unlimited"})
    cfg.pop("shadow_budget", None)  # the proxy-wide budget at its default (1,000/s)
    return cfg


def variant(cfg: dict, i: int) -> dict:
    """Reload `i`: other file weights (small, so most traffic stays mirrored) and compare rules."""
    out = json.loads(json.dumps(cfg))
    for k, route in enumerate(out["routes"]):
        route["weight"] = round(((i + k) % 10) * 0.5, 2)
        compare: dict[str, Any] = {}
        if i % 2:
            compare["ignore"] = ["$.pad"] if k else ["$.name"]
        if i % 3 == 0:
            compare["numeric_tolerance"] = 0.001 * (1 + i % 5)
        if i % 4 == 1:
            compare["headers"] = ["content-type", "content-length"]
        if compare:
            route["shadow"] = {**route["shadow"], "compare": compare}
    return out


# -- sampling -----------------------------------------------------------------------------------
def role(pid: int, root: int) -> str:
    if pid == root:
        return "control"
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "shadow.comparer" in cmd:
            return "comparer"
        if "resource_tracker" in cmd:
            return "mp-tracker"
        if "spawn_main" in cmd:
            return "worker"
        return Path(cmd.split(" ", 1)[0]).name or "?"
    return "?"


def fd_counts(pid: int) -> tuple[int | None, int | None]:
    """(open fds, of which sockets): sockets follow the keep-alive pools and the clients
    connected at that moment; the rest (files, pipes, eventfds) must not move at all."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None, None
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return len(fds), sockets


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def store_rows(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    out: dict[str, int] = {}
    with contextlib.suppress(sqlite3.Error), \
            contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                               timeout=5)) as conn:
        for table in ("comparisons", "fields", "samples", "sample_refs", "field_values"):
            with contextlib.suppress(sqlite3.Error):
                out[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        with contextlib.suppress(sqlite3.Error):
            out["steps"] = int(conn.execute(
                "SELECT COUNT(*) FROM comparisons WHERE step >= 0").fetchone()[0])
    return out


@dataclass
class Sample:
    label: str
    requests: int
    elapsed: float
    procs: list[dict]  # {pid, role, rss_kib, fds, threads, tasks}
    store: dict[str, int]  # db, wal, shm bytes
    rows: dict[str, int]
    audit_bytes: int
    audit_entries: int
    reloads: int
    weights: int
    shadow: dict[str, float] = field(default_factory=dict)

    @property
    def rss_kib(self) -> int:
        return sum(p["rss_kib"] or 0 for p in self.procs)

    def by_role(self) -> dict[str, dict]:
        """Per process, keyed `control`, `worker0`, `comparer0`... (numbered by pid order)."""
        keyed: dict[str, dict] = {}
        counts: dict[str, int] = {}
        for p in sorted(self.procs, key=lambda p: (p["role"], p["worker"], p["pid"])):
            r = p["role"]
            n = counts.get(r, 0)
            counts[r] = n + 1
            keyed[r if r == "control" else f"{r}{n}"] = p
        return keyed


def sample(label: str, requests: int, t0: float, root: int, admin: Admin, state_dir: Path,
           reloads: int, weights: int) -> Sample:
    tasks: dict[int, int | None] = {}
    worker_of: dict[int, int] = {}
    with contextlib.suppress(Exception):
        status, body = admin.call("GET", "/admin/debug/tasks", timeout=5)
        if status == 200:
            tasks[body["control"]["pid"]] = body["control"]["tasks"]
            for w in body["workers"]:
                tasks[w["pid"]] = w["tasks"]
                worker_of[w["pid"]] = w["index"]
    procs = []
    pids = tree(root)
    parent = {c: p for p in pids for c in _children(p)}
    for pid in pids:
        r = role(pid, root)
        w = worker_of.get(pid, worker_of.get(parent.get(pid, -1), -1))
        fds, sockets = fd_counts(pid)
        procs.append({"pid": pid, "role": r, "worker": w, "rss_kib": status_kib(pid, "VmRSS"),
                      "fds": fds, "sockets": sockets,
                      "other_fds": None if fds is None or sockets is None else fds - sockets,
                      "threads": _threads(pid), "tasks": tasks.get(pid)})
    db = state_dir / "diffs.sqlite3"
    audit = state_dir / "audit.log"
    try:
        entries = sum(1 for line in audit.read_bytes().splitlines() if line.strip())
    except OSError:
        entries = 0
    shadow: dict[str, float] = {}
    with contextlib.suppress(Exception):
        shadow = counters(admin.metrics())
    return Sample(
        label, requests, time.monotonic() - t0, procs,
        {"db": file_size(db), "wal": file_size(db.with_name(db.name + "-wal")),
         "shm": file_size(db.with_name(db.name + "-shm"))},
        store_rows(db), file_size(audit), entries, reloads, weights, shadow,
    )


def _children(pid: int) -> list[int]:
    from bench.procs import children

    return children(pid)


def _threads(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


# -- admin actions, paced by the request count --------------------------------------------------
@dataclass
class Pacer:
    """Where the load is: requests done in finished wrk runs plus an estimate for the current."""

    total: int
    done: int = 0
    run_started: float = 0.0
    rate: float = 0.0
    finished: threading.Event = field(default_factory=threading.Event)

    def progress(self) -> float:
        if self.run_started:
            return self.done + self.rate * (time.monotonic() - self.run_started)
        return float(self.done)


class Actions(threading.Thread):
    """`count` admin actions, action k due when the load reaches (k + 0.5) / count of it."""

    def __init__(self, name: str, count: int, pacer: Pacer, act: Any) -> None:
        super().__init__(name=name, daemon=True)
        self.count, self.pacer, self.act = count, pacer, act
        self.done = 0
        self.failures: list[str] = []
        self.seconds: list[float] = []
        self.stop_now = threading.Event()

    def run(self) -> None:
        while self.done < self.count and not self.stop_now.is_set():
            due = (self.done + 0.5) / self.count * self.pacer.total
            if self.pacer.progress() < due and not self.pacer.finished.is_set():
                time.sleep(0.005)
                continue
            t = time.monotonic()
            try:
                problem = self.act(self.done)
            except Exception as exc:  # an unreachable admin API is a finding, not a crash
                problem = f"{type(exc).__name__}: {exc}"
            self.seconds.append(time.monotonic() - t)
            if problem:
                self.failures.append(problem)
            self.done += 1


# -- the run ------------------------------------------------------------------------------------
def wrk_lua(workdir: Path, big_every: int) -> Path:
    small, big = (f"/svc/{r}/item" for r in ROUTES)
    script = workdir / "soak.lua"
    script.write_text(
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f"  if n % {big_every} == 0 then return wrk.format('GET', '{big}') end\n"
        f"  return wrk.format('GET', '{small}')\n"
        "end\n"
    )
    return script


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
           "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr[-500:]}")
    m = _TOTAL.search(done.stdout)
    if not m:
        raise RuntimeError(f"no request count in wrk output:\n{done.stdout[-800:]}")
    non2xx = _NON2XX.search(done.stdout)
    sock = _SOCKERR.search(done.stdout)
    return {"requests": int(m.group(1)), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0}


def start_strangler(procs: Procs, workdir: Path, cfg_path: Path, admin: Admin, port: int,
                    workers: int) -> Proc:
    cmd = [*strangler_cmd(), "serve", "-c", str(cfg_path), "--workers", str(workers),
           "--no-watch"]
    # The token reaches serve through its environment only (never a file).
    proc = procs.start("strangler", cmd, None, env={
        "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "STRANGLER_ADMIN_TOKEN": admin.token})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"strangler exited {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(OSError):
            if admin.call("GET", "/readyz", timeout=1)[0] == 200 and wait_port(port, 1):
                return proc
        time.sleep(0.2)
    raise StartError(f"strangler not ready after 90 s:\n{proc.tail()}")


@dataclass
class Result:
    args: argparse.Namespace
    samples: list[Sample]
    wrk: dict[str, int]
    runs: int
    shadow: dict[str, float]
    reloads: Actions
    weights: Actions
    elapsed: float
    stopped_by: str
    load_before: str
    load_after: str
    warmup_index: int


def soak(args: argparse.Namespace) -> Result:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.soak needs {tool} on PATH (make deps)")
    workdir = Path(tempfile.mkdtemp(prefix="strangler-soak-"))
    chmod_for_nginx_workers(workdir)
    procs = Procs(workdir)
    try:
        return _soak(args, workdir, procs)
    finally:
        procs.stop_all()
        if args.keep:
            print(f"workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _soak(args: argparse.Namespace, workdir: Path, procs: Procs) -> Result:
    load_before = _uptime()
    up = start_upstream(procs, workdir, "legacy", None)
    new = start_upstream(procs, workdir, "new", None, different=True)
    port, admin_port = free_port(), free_port()
    state_dir = workdir / "state"
    cfg = base_config(port, admin_port, state_dir, up, new)
    cfg_path = workdir / "routes.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    admin = Admin(f"http://127.0.0.1:{admin_port}", secrets.token_hex(16))
    proc = start_strangler(procs, workdir, cfg_path, admin, port, args.workers)
    url = f"http://127.0.0.1:{port}"
    script = wrk_lua(workdir, args.big_every)

    pacer = Pacer(args.requests)

    def reload(i: int) -> str | None:
        cfg_path.write_text(yaml.safe_dump(variant(cfg, i + 1), sort_keys=False))
        status, body = admin.call("POST", "/admin/reload")
        return None if status == 200 else f"reload {i}: {status} {str(body)[:200]}"

    def weight(i: int) -> str | None:
        route = ROUTES[i % 2]
        w = round((i % 20) * 0.5 + 0.25, 2)  # 0.25..9.75 %: each differs from the last
        status, body = admin.call("PUT", f"/admin/routes/{route}/weight",
                                  {"weight": w, "reason": f"soak weight change {i}"})
        return None if status == 200 else f"weight {i}: {status} {str(body)[:200]}"

    reloads = Actions("reloads", args.reloads, pacer, reload)
    weights = Actions("weights", args.weights, pacer, weight)
    t0 = time.monotonic()
    samples = [sample("start", 0, t0, proc.pid, admin, state_dir, 0, 0)]
    _print_progress(samples[-1])
    reloads.start()
    weights.start()
    totals = {"requests": 0, "non2xx": 0, "socket_errors": 0}
    runs = 0
    next_sample = args.sample_every
    chunk = args.chunk
    stopped_by = "requests"
    try:
        while totals["requests"] < args.requests:
            left_time = args.max_time - (time.monotonic() - t0)
            if left_time < 1:
                stopped_by = "time limit"
                break
            seconds = min(chunk if pacer.rate else 1.0, left_time)  # the first run: the rate
            if pacer.rate:
                need = min(args.requests - totals["requests"], next_sample - totals["requests"])
                seconds = min(seconds, max(1.0, need / pacer.rate))
            pacer.run_started = time.monotonic()
            got = run_wrk(url, script, seconds, args.connections)
            wall = time.monotonic() - pacer.run_started
            runs += 1
            for k, v in got.items():
                totals[k] += v
            pacer.rate = got["requests"] / wall if wall > 0 else pacer.rate
            pacer.done, pacer.run_started = totals["requests"], 0.0
            proc.truncate_log()  # the access log of 1M requests is not what is measured
            if not proc.alive():
                raise RuntimeError(f"strangler exited during the soak:\n{proc.tail()}")
            if totals["requests"] >= next_sample and totals["requests"] < args.requests:
                samples.append(sample(f"{totals['requests'] // 1000}k", totals["requests"], t0,
                                      proc.pid, admin, state_dir, reloads.done, weights.done))
                _print_progress(samples[-1])
                while next_sample <= totals["requests"]:
                    next_sample += args.sample_every
    finally:
        pacer.finished.set()  # actions still owed (the estimate lagged) run now, unpaced
    for t in (reloads, weights):
        t.join(timeout=300)
        t.stop_now.set()
    shadow = settle(admin, args.settle)
    samples.append(sample("end", totals["requests"], t0, proc.pid, admin, state_dir,
                          reloads.done, weights.done))
    _print_progress(samples[-1])
    warm = next((i for i, s in enumerate(samples) if s.requests >= args.warmup), 0)
    if warm == len(samples) - 1 and len(samples) > 1:
        warm = 0  # no sample between warm-up and the end: compare with the start
    return Result(args, samples, totals, runs, shadow, reloads, weights,
                  time.monotonic() - t0, stopped_by, load_before, _uptime(), warm)


def settle(admin: Admin, timeout: float = 120.0) -> dict[str, float]:
    """The shadow counters once the comparers have worked off their backlog (no change in 2 s,
    at most `timeout`): the end sample then shows the store at rest."""
    last: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = counters(admin.metrics())
        if now == last:
            break
        last = now
    return last


def _uptime() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _print_progress(s: Sample) -> None:
    print(f"[{s.elapsed:7.1f}s] {s.label:>6}: {s.requests:>9,} requests, RSS "
          f"{s.rss_kib / 1024:.1f} MiB in {len(s.procs)} processes, reloads {s.reloads}, "
          f"weights {s.weights}", file=sys.stderr, flush=True)


# -- the report ---------------------------------------------------------------------------------
def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def report(r: Result) -> str:
    s0, sw, s1 = r.samples[0], r.samples[r.warmup_index], r.samples[-1]
    keys = list(s1.by_role())
    for s in r.samples:  # a process that came or went (a restarted comparer) shows as a column
        keys += [k for k in s.by_role() if k not in keys]
    out: list[str] = []
    a = r.args
    date = dt.datetime.now(dt.UTC)
    out.append(f"# Soak {date:%Y-%m-%d %H:%M} UTC (issue 17 part 2)\n")
    out.append(
        f"`python -m bench.soak --requests {a.requests} --reloads {a.reloads} --weights "
        f"{a.weights}` (workers {a.workers}, wrk -t1 -c{a.connections} in runs of <= "
        f"{a.chunk:.0f} s, 1 in {a.big_every} requests for the 64 KiB answer). strangler serve "
        f"--workers {a.workers} --no-watch; two routes, legacy nginx vs a new nginx whose "
        "answers differ; shadow sample 1.0, `shadow.max_rate: unlimited` per route, proxy-wide "
        "`shadow_budget.max_rate` at its default (1,000/s); access log on (stdout, truncated "
        "between runs).\n")
    out.append(f"Ran {r.elapsed:.0f} s, stopped by {r.stopped_by}; {r.runs} wrk runs; load "
               f"average {r.load_before} before, {r.load_after} after (2 cores, shared).\n")
    out.append("## Per sample\n")
    tasked = [k for k in keys if not k.startswith(("comparer", "mp-"))]
    first = [f"{k} RSS MiB" for k in keys] + ["total RSS MiB"]
    second = [f"{k} fds (sockets)" for k in keys] + [f"{k} tasks" for k in tasked] + [
        "threads"]
    third = ["compared", "shed", "diffs db+wal+shm KiB", "samples", "field rows", "counted steps",
             "audit entries", "audit KiB", "reloads", "weights"]
    rows: list[tuple[list[str], list[str], list[str]]] = []
    for s in r.samples:
        roles = s.by_role()

        def get(k: str, f: str, roles: dict = roles) -> str:
            v = roles.get(k, {}).get(f)
            return "-" if v is None else (str(v) if f != "rss_kib" else _mib(v))
        rows.append((
            [get(k, "rss_kib") for k in keys] + [_mib(s.rss_kib)],
            [f"{get(k, 'fds')} ({get(k, 'sockets')})" for k in keys]
            + [get(k, "tasks") for k in tasked]
            + [str(sum(p["threads"] or 0 for p in s.procs))],
            [f"{_sum(s.shadow, 'compared_'):,.0f}", f"{_sum(s.shadow, 'skipped_'):,.0f}",
             f"{sum(s.store.values()) / 1024:,.0f}", str(s.rows.get("samples", "-")),
             str(s.rows.get("fields", "-")), str(s.rows.get("steps", "-")),
             str(s.audit_entries), f"{s.audit_bytes / 1024:,.0f}", str(s.reloads),
             str(s.weights)],
        ))
    for i, head in enumerate((first, second, third)):
        head = ["sample", "requests", "s", *head]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for s, cells in zip(r.samples, rows, strict=True):
            out.append("| " + " | ".join(
                [s.label, f"{s.requests:,}", f"{s.elapsed:.0f}", *cells[i]]) + " |")
        out.append("")

    growth = (s1.rss_kib - sw.rss_kib) / 1024
    fd_delta = _delta(sw, s1, "other_fds")
    sock_range = _range(r.samples[r.warmup_index:], "sockets")
    task_delta = _delta(sw, s1, "tasks")
    failed = r.wrk["non2xx"] + r.wrk["socket_errors"]
    sh = r.shadow
    compared = sum(v for k, v in sh.items() if k.startswith("compared_"))
    skipped = {k[8:]: v for k, v in sh.items() if k.startswith("skipped_") and v}
    legacy = sum(v for k, v in sh.items() if k.startswith("requests_legacy"))
    target = sum(v for k, v in sh.items() if k.startswith("requests_target"))
    non2xx_proxy = sum(v for k, v in sh.items() if k.startswith("requests_")
                       and not k.endswith("_2xx"))
    offered = compared + sum(skipped.values())
    entries = s1.audit_entries - s0.audit_entries
    per_entry = (s1.audit_bytes - s0.audit_bytes) / entries if entries else 0.0
    ok = lambda b: "yes" if b else "**NO**"  # noqa: E731
    # Flat: no more at the end than after warm-up (+2 of slack); fewer is fine (idle upstream
    # connections close). The range over the samples after warm-up is shown beside it.
    flat_fds = all(d <= 2 for d in fd_delta.values())
    flat_tasks = all(d <= 2 for d in task_delta.values())
    fd_range = _range(r.samples[r.warmup_index:], "other_fds")
    task_range = _range(r.samples[r.warmup_index:], "tasks")
    out.append(f"## Targets (after warm-up: from sample `{sw.label}` to `end`)\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    out.append(f"| RSS growth <= {RSS_TARGET_MIB:.0f} MiB (all processes summed) | "
               f"{growth:+.1f} MiB ({_mib(sw.rss_kib)} -> {_mib(s1.rss_kib)}); per process: "
               + ", ".join(f"{k} {v / 1024:+.1f}" for k, v in _delta(sw, s1, "rss_kib").items())
               + f" | {ok(growth <= RSS_TARGET_MIB)} |")
    out.append("| open fds flat: files, pipes, eventfds (per process: end - warm-up <= 2; "
               "[min-max] after warm-up) | "
               + ", ".join(f"{k} {v:+d} [{fd_range[k]}]" for k, v in fd_delta.items())
               + f" | {ok(flat_fds)} |")
    out.append("| sockets (clients and upstream keep-alive pools, <= max_connections per "
               "upstream; [min-max] after warm-up, end) | "
               + ", ".join(f"{k} [{sock_range[k]}] {s1.by_role().get(k, {}).get('sockets')}"
                           for k in sock_range) + " | (bounded by the pools) |")
    out.append("| asyncio tasks flat (per process: end - warm-up <= 2; [min-max]; sampled between "
               "load runs, admin actions go on) | "
               + (", ".join(f"{k} {v:+d} [{task_range[k]}]" for k, v in task_delta.items())
                  or "not read")
               + f" | {ok(flat_tasks and bool(task_delta))} |")
    samples_limit = 200 * len(ROUTES)
    out.append(
        f"| diff store bounded | {sum(s1.store.values()) / 1024:,.0f} KiB (db "
        f"{s1.store['db'] / 1024:,.0f}, wal {s1.store['wal'] / 1024:,.0f}, shm "
        f"{s1.store['shm'] / 1024:,.0f}); samples {s1.rows.get('samples')} (kept: 3 first + "
        f"5 latest per field path, at most 200 others per route), field-count rows "
        f"{s1.rows.get('fields')} over {s1.rows.get('steps')} steps (one set per weight step; "
        f"the newest {STEPS_KEPT} per route kept at each prune) | see below |")
    out.append(f"| 0 failed requests | wrk: {failed} ({r.wrk['non2xx']} non-2xx, "
               f"{r.wrk['socket_errors']} socket errors) of {r.wrk['requests']:,}; proxy "
               f"metrics: {non2xx_proxy:.0f} non-2xx | {ok(failed == 0 and non2xx_proxy == 0)} |")
    out.append("")
    out.append("## Shadow, reloads, weight changes, audit log\n")
    out.append(
        f"- Served: {legacy:,.0f} by legacy, {target:,.0f} by target (weights 0-10 %). "
        f"Mirrors offered {offered:,.0f}: compared {compared:,.0f} "
        f"({100 * compared / offered if offered else 0:.1f} %; "
        + ", ".join(f"{k[9:]} {v:,.0f}" for k, v in sh.items() if k.startswith("compared_"))
        + "), shed " + (", ".join(f"{k} {v:,.0f} ({100 * v / offered:.1f} %)"
                                  for k, v in skipped.items()) or "none") + ".")
    out.append(_actions_line("Reloads (rewrite + POST /admin/reload)", r.reloads))
    out.append(_actions_line("Weight changes (PUT /admin/routes/{name}/weight)", r.weights))
    out.append(
        f"- Audit log: {entries} entries added ({r.reloads.done + r.weights.done} expected: one "
        f"per reload and per weight change), {(s1.audit_bytes - s0.audit_bytes) / 1024:,.0f} "
        f"KiB, {per_entry:,.0f} bytes per entry. It grows by design (a hash-chained record of "
        "every change), not a leak.")
    peak_rows = max(s.rows.get("fields", 0) for s in r.samples)
    peak_bytes = max(sum(s.store.values()) for s in r.samples)
    out.append(
        f"- Diff store: the samples table is capped (here {s1.rows.get('samples')} rows, "
        f"limit about {samples_limit} + 8 per field path). Counter rows are one per field path "
        f"and weight step; only a route's newest {STEPS_KEPT} steps keep theirs (pruned once a "
        f"minute; totals kept): `fields` rows peaked at {peak_rows:,} between prunes, "
        f"{s1.rows.get('fields', 0):,} at the end; the files peaked at "
        f"{peak_bytes / 2**20:,.1f} MiB (SQLite reuses freed pages; the WAL keeps its largest "
        "size).")
    return "\n".join(out) + "\n"


def _actions_line(what: str, a: Actions) -> str:
    secs = sorted(a.seconds)
    p50 = secs[len(secs) // 2] * 1000 if secs else 0.0
    worst = secs[-1] * 1000 if secs else 0.0
    fails = f"{len(a.failures)} failed (first: {a.failures[0]})" if a.failures else "0 failed"
    return f"- {what}: {a.done} of {a.count}, {fails}; p50 {p50:.0f} ms, max {worst:.0f} ms."


def _sum(d: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in d.items() if k.startswith(prefix))


def _range(samples: list[Sample], f: str) -> dict[str, str]:
    values: dict[str, list[int]] = {}
    for s in samples:
        for k, p in s.by_role().items():
            if p.get(f) is not None:
                values.setdefault(k, []).append(p[f])
    return {k: f"{min(v)}-{max(v)}" for k, v in values.items()}


def _delta(a: Sample, b: Sample, f: str) -> dict[str, int]:
    ra, rb = a.by_role(), b.by_role()
    out = {}
    for k in rb:
        va, vb = ra.get(k, {}).get(f), rb[k].get(f)
        if va is not None and vb is not None:
            out[k] = vb - va
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--reloads", type=int, default=1000)
    p.add_argument("--weights", type=int, default=1000)
    p.add_argument("--max-time", type=float, default=1800.0, help="seconds (default 30 min)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--chunk", type=float, default=10.0, help="seconds per wrk run (at most)")
    p.add_argument("--big-every", type=int, default=10,
                   help="1 in N requests asks for the 64 KiB answer")
    p.add_argument("--sample-every", type=int, default=0,
                   help="requests between samples (default 100,000, or 1/10 of a smaller run)")
    p.add_argument("--warmup", type=int, default=0,
                   help="requests before the RSS baseline (default: the first sample interval)")
    p.add_argument("--settle", type=float, default=120.0,
                   help="seconds, at most, for the comparers' backlog before the end sample")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.reloads < 0 or args.weights < 0 or args.workers < 1:
        p.error("--requests and --workers must be >= 1, --reloads and --weights >= 0")
    if args.sample_every <= 0:
        args.sample_every = min(100_000, max(1, args.requests // 10))
    if args.warmup <= 0:
        args.warmup = args.sample_every
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = soak(args)
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{dt.datetime.now(dt.UTC):%Y-%m-%d}.md"
    path.write_text(text)
    (args.out / "soak-latest.json").write_text(json.dumps({
        "samples": [s.__dict__ for s in result.samples], "wrk": result.wrk,
        "shadow": result.shadow, "reload_failures": result.reloads.failures[:20],
        "weight_failures": result.weights.failures[:20]}, indent=1, default=str))
    print(text)
    print(f"written: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
