"""Links from the control plane to data planes: in-process, or worker processes over a socket.

Wire protocol with a worker (JSON lines over a socketpair):
  control -> worker: {"op": "weights", "id", "updates"} | {"op": "install", "id", "text",
                     "generation", "weights"} | {"op": "tasks", "id"} | {"op": "drain"}
  worker -> control: {"op": "ack", "id"[, "tasks"]} | {"op": "delta", "data"}
                     | {"op": "inventory", "rows"} | {"op": "ready", "pid"}
A change is acknowledged only after the worker applied it, so when `apply_weights` returns every
request accepted afterwards, in every worker, sees the new weight. A worker that does not
acknowledge in time (its loop held for seconds) has the change waiting in its socket: it applies
it before anything else it reads from there; the runtime says which worker has not confirmed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import structlog

from proxy.config.spec import Config
from proxy.dataplane.recorder import Delta
from proxy.dataplane.server import DataPlane
from proxy.dataplane.table import RouteState, RouteTable

log = structlog.get_logger("strangler.planes")

ACK_TIMEOUT = 5.0  # seconds a worker has to acknowledge a weight change
# ... and a reload's new config (it loads and compiles it first). A reload holds the lock every
# change takes, a rollback's bookkeeping too: this is how long a frozen worker can delay a
# rollback's answer (the reload's weights push after it skips a plane that did not confirm),
# well under the CLI's 30 s.
INSTALL_ACK_TIMEOUT = 10.0


def apply_updates(states: dict[str, RouteState], updates: dict[str, Any]) -> None:
    """route -> (basis points, step[, rolled back]) as `Runtime.weights_bp` sends them."""
    for name, update in updates.items():
        bp, step = update[0], update[1]
        st = states.get(name)
        if st is None:
            st = states[name] = RouteState()
        st.step = step
        st.weight_bp = bp
        st.rolled_back = bool(update[2]) if len(update) > 2 else bp == 0 and st.rolled_back


def build_table(config: Config, states: dict[str, RouteState], generation: int,
                weights: dict[str, Any]) -> RouteTable:
    for name in list(states):
        if config.route(name) is None:
            del states[name]
    apply_updates(states, weights)
    return RouteTable(config, states, generation)


class LocalPlane:
    """The data plane in this process: changes are plain assignments, effective at once."""

    def __init__(self, plane: DataPlane, prepare: Any = None,
                 before_install: Any = None) -> None:
        self.plane = plane
        self.states: dict[str, RouteState] = {}
        self.prepare = prepare  # callable(table) run before a table goes live (shadow compile)
        # async callable(config) run before a reload's table is built (a mirror started when
        # the first route begins to shadow); it may set `prepare`
        self.before_install = before_install

    def install_now(self, config: Config, generation: int, weights: dict[str, Any]) -> None:
        table = build_table(config, self.states, generation, weights)
        if self.prepare is not None:
            self.prepare(table)
        self.plane.install(table)

    async def apply_weights(self, updates: dict[str, Any]) -> None:
        apply_updates(self.states, updates)

    def describe(self) -> dict:
        return {"plane": "in-process"}

    async def install(self, config: Config, text: str, generation: int,
                      weights: dict[str, Any]) -> None:
        if self.before_install is not None:
            await self.before_install(config)
        self.install_now(config, generation, weights)


class WorkerLink:
    """Control-plane side of one worker process."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_delta: Any, process: Any) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.on_delta = on_delta
        self.process = process
        self.on_inventory: Any = None  # callable(rows): the worker's inventory rows
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict | None]] = {}
        # a change this worker did not acknowledge in time: {"op", "since"} until any later
        # ack (acks come in order, so that one was applied too); /readyz reports it
        self.unacked: dict | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                op = msg.get("op")
                if op == "delta":
                    self.on_delta(Delta.from_wire(msg["data"]))
                elif op == "inventory":
                    if self.on_inventory is not None:
                        self.on_inventory(msg["rows"])
                elif op == "ack":
                    self.unacked = None
                    fut = self.waiting.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif op == "ready" and not self.ready.done():
                    self.ready.set_result(msg.get("pid"))
                elif op == "error" and not self.ready.done():
                    self.ready.set_exception(RuntimeError(msg.get("message", "worker failed")))
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_result(None)  # a dead worker serves nothing: nothing to wait for
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(f"worker {self.index} exited"))

    async def _call(self, msg: dict, timeout: float = ACK_TIMEOUT) -> dict | None:
        """Send `msg`; the worker's ack (None if the worker is gone)."""
        if self.task.done():
            return None
        mid = next(self.ids)
        msg["id"] = mid
        fut = asyncio.get_running_loop().create_future()
        self.waiting[mid] = fut
        # The whole message goes into the transport's buffer now; waiting for the worker to
        # make room (a frozen worker, a message bigger than its socket holds) is part of the
        # wait for its ack, never unbounded: the message is delivered whole when it reads.
        self.writer.write(json.dumps(msg).encode() + b"\n")
        try:
            return await asyncio.wait_for(self._drained(fut), timeout)
        except TimeoutError:
            self.waiting.pop(mid, None)  # a late ack finds nothing to answer: nothing piles up
            if self.unacked is None:
                self.unacked = {"op": msg["op"], "since": time.time()}
            log.error("worker did not acknowledge", worker=self.index, op=msg["op"])
            raise TimeoutError(f"no acknowledgement of {msg['op']} in {timeout:g} s") from None

    async def _drained(self, fut: asyncio.Future) -> dict | None:
        await self.writer.drain()
        return await fut

    async def apply_weights(self, updates: dict[str, Any]) -> None:
        await self._call({"op": "weights", "updates": updates})

    def describe(self) -> dict:
        return {"worker": self.index, "pid": self.process.pid}

    async def install(self, config: Config, text: str, generation: int,
                      weights: dict[str, Any]) -> None:
        await self._call({"op": "install", "text": text, "generation": generation,
                          "weights": weights}, timeout=INSTALL_ACK_TIMEOUT)

    async def task_count(self, timeout: float = 1.0) -> int | None:
        """The worker's asyncio task count (read-only; for `GET /admin/debug/tasks`)."""
        ack = await self._call({"op": "tasks"}, timeout)
        return ack.get("tasks") if ack else None

    def drain(self) -> None:
        if not self.task.done():
            self.writer.write(b'{"op":"drain"}\n')
