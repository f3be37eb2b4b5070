"""The benchmark harness runs end to end and writes numeric results (no timed assertions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    not (shutil.which("nginx") and shutil.which("wrk")), reason="needs nginx and wrk (make deps)"
)
def test_quick_run_writes_numeric_rows_for_direct_and_nginx(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "direct,nginx",
         "--duration", "1", "--latency-duration", "1", "--warmup", "0", "--quiet-wait", "0",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    rows = {(r["scenario"], r["metric"], r["body"]): r for r in result["rows"]}
    for scenario in ("direct", "nginx"):
        for key in ((scenario, "throughput", "small"), (scenario, "throughput", "64KiB"),
                    (scenario, "p50", "small"), (scenario, "p99", "small")):  # fmt: skip
            row = rows[key]
            assert isinstance(row["median"], float) and row["median"] > 0, row
    # Every figure is also given as a ratio to nginx measured in the same run.
    assert rows[("nginx", "throughput", "small")]["median_ratio_to_nginx"] == 1.0
    assert rows[("direct", "throughput", "small")]["median_ratio_to_nginx"] > 0
    md = (tmp_path / "latest.md").read_text()
    assert "| nginx reverse proxy, 1 worker, keepalive | small |" in md
    assert "## Targets (issue 9)" in md
    # Nothing the run started is left behind (nginx runs with -p WORKDIR), and the temp dir is gone.
    workdir = result["meta"]["workdir"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
    assert workdir not in ps.stdout
    assert not Path(workdir).exists()


@pytest.mark.skipif(
    not (shutil.which("nginx") and shutil.which("wrk")), reason="needs nginx and wrk (make deps)"
)
def test_soak_smoke_samples_every_process_and_audits_every_change(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--requests", "3000", "--reloads", "4",
         "--weights", "4", "--settle", "4", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "soak-latest.json").read_text())
    start, end = data["samples"][0], data["samples"][-1]
    assert (start["label"], end["label"]) == ("start", "end")
    roles = sorted(p["role"] for p in end["procs"])
    # The whole tree: the control process, 2 workers and the comparer each worker started.
    assert roles.count("control") == 1 and roles.count("worker") == 2
    assert roles.count("comparer") == 2
    for p in end["procs"]:
        assert p["rss_kib"] > 0 and p["fds"] > 0, p
        if p["role"] in ("control", "worker"):  # read through GET /admin/debug/tasks
            assert isinstance(p["tasks"], int) and p["tasks"] > 0, p
    # Every reload and weight change went through the admin API and is in the audit log.
    assert data["reload_failures"] == [] and data["weight_failures"] == []
    assert (end["reloads"], end["weights"]) == (4, 4)
    assert end["audit_entries"] - start["audit_entries"] == 8
    assert data["wrk"]["requests"] >= 3000
    assert data["wrk"]["non2xx"] == 0 and data["wrk"]["socket_errors"] == 0
    # Shadowing ran: answers differ, so what was compared mismatched.
    assert data["shadow"].get("compared_mismatch", 0) > 0
    md = next(tmp_path.glob("soak-*.md")).read_text()
    assert "| RSS growth <= 32 MiB" in md and "| sample | requests |" in md


@pytest.mark.skipif(
    not (shutil.which("nginx") and shutil.which("wrk")), reason="needs nginx and wrk (make deps)"
)
def test_cpusplit_prints_user_and_system_cpu_and_wakeups_per_request() -> None:
    """`bench.cpusplit` (where the CPU ratio to the bare forwarder comes from) runs end to end
    and prints a figure for each server and the within-pair ratio (values are not judged)."""
    done = subprocess.run([sys.executable, "-m", "bench.cpusplit", "--pairs", "1",
                           "--duration", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for name in ("strangler", "bare"):
        line = next(s for s in out.splitlines() if s.strip().startswith(f"{name} ") and
                    "user" in s)
        assert float(line.split("user ")[1].split()[0]) > 0, line
        assert "wrk sleeps" in line and "upstream sleeps" in line
    assert "strangler / bare within each pair: median" in out
