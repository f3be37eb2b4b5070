"""/metrics as operators' tools expect it: `process_*` per process (the workers and comparers
too), OpenMetrics or text as the scraper asks, and `promtool check metrics` clean on a live
scrape of a real `strangler serve --workers 2`."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import aiohttp
import pytest

from tests.test_metrics import parse, send, start, total

PROMTOOL = shutil.which("promtool")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"  # newer clients add escaping=
TEXT = "text/plain; version=0.0.4"


async def _get(proxy, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/metrics",
                                                   headers=headers) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


@pytest.mark.slow
async def test_process_metrics_per_worker_and_comparer_negotiated_and_promtool_clean(
        upstreams, proxy_process):
    proxy = await start(upstreams, proxy_process, args=("--workers", "2"))
    await send(proxy, same=60, diff=10, deletes=0, broken=0)

    # Every process of the serve, by the name its log lines carry.
    _, text = await _get(proxy)
    m = parse(text)
    names = {dict(labels)["process"] for name, labels in m
             if name == "process_resident_memory_bytes"}
    assert {"main", "worker-0", "worker-1"} <= names
    assert names & {"worker-0/comparer", "worker-1/comparer"}  # shadowing: comparers run
    for name in names:
        assert total(m, "process_resident_memory_bytes", process=name) > 1_000_000
        assert total(m, "process_open_fds", process=name) > 2
        assert total(m, "process_start_time_seconds", process=name) > 1.6e9
    assert total(m, "process_cpu_seconds_total", process="worker-0") + \
        total(m, "process_cpu_seconds_total", process="worker-1") > 0
    assert total(m, "python_info") == 1

    # Negotiated by prometheus-client: OpenMetrics when asked for, text otherwise.
    content_type, om = await _get(proxy, "application/openmetrics-text; version=1.0.0,"
                                         "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert content_type.startswith(OPENMETRICS)
    assert om.endswith("# EOF\n") and "strangler_requests_total{" in om
    content_type, plain = await _get(proxy, "text/plain")
    assert content_type.startswith(TEXT) and "# EOF" not in plain

    # promtool (Debian's prometheus package ships it) lints the live exposition.
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed (scripts/install-test-deps installs prometheus)")
        pytest.skip("promtool not installed")
    lint = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"], input=plain,
                                   capture_output=True, text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
        lint.stdout + lint.stderr)
    assert await proxy.stop() == 0
