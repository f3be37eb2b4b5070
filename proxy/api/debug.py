"""Read-only process introspection for soak runs: asyncio task counts per process.

`GET /admin/debug/tasks` (behind the admin auth like every /admin/ path) answers
`{"control": {"pid", "tasks"}, "workers": [{"index", "pid", "tasks"}]}`; a worker that does not
answer within a second is reported with `"tasks": null`. A steadily rising count under steady
load is a task leak; `bench/soak.py` samples it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any


async def task_counts(server: Any) -> dict[str, Any]:
    control = {"pid": os.getpid(), "tasks": len(asyncio.all_tasks())}
    workers = []
    for link in getattr(server, "workers", []):
        tasks = None
        with contextlib.suppress(Exception):
            tasks = await link.task_count(timeout=1.0)
        workers.append({"index": link.index, "pid": link.process.pid, "tasks": tasks})
    return {"control": control, "workers": workers}
