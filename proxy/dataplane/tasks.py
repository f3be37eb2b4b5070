"""Ending a data-plane component's background tasks (shared by `DataPlane` and the mirror)."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_tasks(sweeper: asyncio.Task | None, tasks: set[asyncio.Task]) -> None:
    """Cancel the sweeper and wait until it has ended, then cancel every spawned task (not
    awaited: each one's done callback takes it out of `tasks`)."""
    if sweeper is not None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    for task in list(tasks):
        task.cancel()
