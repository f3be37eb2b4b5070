"""`python -m bench.accesslog` runs end to end: both logs really on in the "on" rows, really off
in the "off" rows, every ratio and the log-alone figure present (no timed assertions)."""

from __future__ import annotations

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
def test_quick_run_reports_every_server_with_its_log_on_or_off(tmp_path: Path) -> None:
    out = tmp_path / "accesslog.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.accesslog", "--repeat", "1", "--duration", "1",
         "--quiet-wait", "0", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    md = out.read_text()
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in ("nginx_off", "nginx_on", "strangler_on", "strangler_off"):
            rows[cells[0]] = cells
    assert set(rows) == {"nginx_off", "nginx_on", "strangler_on", "strangler_off"}
    for name, cells in rows.items():
        lines_per_request = float(cells[5])
        if name.endswith("_on"):
            assert 0.95 <= lines_per_request <= 1.1, (name, cells)  # one line per request
        else:
            assert lines_per_request == 0.0, (name, cells)
        assert float(cells[2].split(" / ")[1]) > 0  # CPU µs per request, median
    for pair in ("strangler on / nginx on", "strangler off / nginx off",
                 "nginx on / nginx off", "strangler on / strangler off"):
        assert f"| {pair} |" in md
    assert "| this tree |" in md  # the log alone
