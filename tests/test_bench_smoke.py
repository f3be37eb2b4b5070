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
