"""Tests that need the machine to themselves (`@pytest.mark.alone`): they measure latency that
a busy CPU would distort. Every other test of the run holds a shared lock while it runs; an
`alone` test takes it exclusively, so it starts once the running tests have ended and none
starts until it has. The lock lives in a directory that pytest-xdist's workers share (and that
`make test` shares between the tiers it runs side by side: STRANGLER_TEST_ALONE_DIR).

A waiting `alone` test leaves a file named by its pid: tests about to start wait while one is
there, so a stream of shared holders cannot starve it (flock alone would let them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "STRANGLER_TEST_ALONE_DIR"


def _waiting(directory: Path) -> bool:
    """Is an `alone` test waiting or running (a live process's file)? Removes stale ones."""
    found = False
    for marker in directory.glob("alone-*"):
        try:
            os.kill(int(marker.name.removeprefix("alone-")), 0)
        except ProcessLookupError:
            marker.unlink(missing_ok=True)
            continue
        except (ValueError, PermissionError):
            pass
        found = True
    return found


@contextlib.contextmanager
def machine_share(directory: Path, alone: bool) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("a") as lock:
        if alone:
            marker = directory / f"alone-{os.getpid()}"
            marker.touch()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            finally:
                marker.unlink(missing_ok=True)
            return
        while True:
            while _waiting(directory):
                time.sleep(0.05)
            fcntl.flock(lock, fcntl.LOCK_SH)
            if not _waiting(directory):
                break
            fcntl.flock(lock, fcntl.LOCK_UN)  # one came meanwhile: let it go first
        yield
