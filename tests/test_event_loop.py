"""Every strangler process runs on uvloop through `asyncio.Runner(loop_factory=...)`, never
through the event-loop policy API (deprecated since Python 3.12, removed in 3.16, where
`uvloop.install()` raises AttributeError, which an `except ImportError` does not catch)."""

from __future__ import annotations

import asyncio
import re
import warnings
from pathlib import Path

import uvloop

from proxy.serve.app import loop_factory, run_loop

ROOT = Path(__file__).resolve().parent.parent
DEPRECATED = re.compile(r"uvloop\.install\(|EventLoopPolicy\(|set_event_loop_policy\(")


def test_run_loop_runs_on_uvloop_without_deprecation_warnings() -> None:
    async def which() -> type:
        return type(asyncio.get_running_loop())

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert issubclass(run_loop(which()), uvloop.Loop)
    assert loop_factory() is uvloop.new_event_loop


def test_no_code_uses_the_event_loop_policy_api() -> None:
    found = [f"{p.relative_to(ROOT)}:{n}" for top in ("proxy", "shadow")
             for p in sorted((ROOT / top).rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if DEPRECATED.search(line) and not line.lstrip().startswith(("#", '"'))]
    assert found == []
