"""Processes the benchmark starts: free ports, CPU pinning, CPU and memory sampling, clean stop.

Every process is started through `Procs.start` and stopped by PID (with its descendants, found
through /proc before signalling) by `Procs.stop_all`, which `run.py` calls in a `finally`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the kernel picks it), never one this
    process handed out before: two servers started side by side must not get the same one."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once 127.0.0.1:port accepts a connection; False on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out += [int(x) for x in text.split()]
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen or not Path(f"/proc/{p}").exists():
            continue
        seen.append(p)
        todo += children(p)
    return seen


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by the given processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


@dataclass(frozen=True)
class MachineCpu:
    """Cumulative CPU seconds from /proc/stat: busy per CPU, softirq and total busy."""

    per_cpu: dict[str, float]
    softirq: float
    busy: float

    @classmethod
    def read(cls) -> MachineCpu:
        per_cpu: dict[str, float] = {}
        softirq = busy = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/stat").read_text().splitlines():
                if not line.startswith("cpu"):
                    break
                name, *rest = line.split()
                ticks = [int(x) for x in rest[:8]]  # user nice system idle iowait irq softirq steal
                used = (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / CLK_TCK
                if name == "cpu":
                    busy, softirq = used, ticks[6] / CLK_TCK
                else:
                    per_cpu[name] = used
        return cls(per_cpu, softirq, busy)


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` field (VmRSS, VmHWM) of /proc/PID/status, in KiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """`cmd` under `taskset -c CPUS` (if given and taskset exists)."""
    if cpus is None or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cpus, *cmd]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def truncate_log(self) -> None:
        """Keep the log from growing over a long run (the child appends: O_APPEND)."""
        with contextlib.suppress(OSError):
            os.truncate(self.log, 0)


@dataclass
class Procs:
    """Every process the benchmark started, stopped by PID at the end."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        cpus: str | None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                pinned(cmd, cpus),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not them
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM the process (then SIGKILL), then any descendant still alive, all by PID."""
        pids = tree(proc.pid)
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                proc.popen.wait(5)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(proc)


# `strangler` in a given tree (PYTHONPATH=tree), for the A/B benches that run older commits too
STRANGLER_MAIN = (
    "import sys\n"
    "try:\n"
    "    from proxy.cli.main import main\n"
    "except ImportError:  # a tree from before the package layout of issue 16\n"
    "    from proxy.cli import main\n"
    "sys.exit(main())\n"
)
