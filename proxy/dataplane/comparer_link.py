"""The data plane's end of the comparer process (`shadow.comparer`).

`submit()` is the whole cost of a mismatching pair on the request loop: one pickle of bytes the
mirror already holds and one non-blocking pipe write. What the pipe cannot take waits in the
transport's buffer up to `max_pending` bytes; past that a pair is refused (the mirror counts it
`comparer_busy`). Results come back in batches and are counted in the recorder under the step
they were taken at. Results counted here (byte-identical pairs, mirrors whose other side did
not answer) go to the comparer in batches, for the diff store's counts to agree with the gate's;
while the comparer is away they wait for it. A comparer that dies is restarted (with a pause);
pairs in its pipe are lost and logged, never retried. At stop the comparer gets EOF, then
SIGTERM (it writes what it has and exits), and is killed only if it is still there after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import signal
import sys
from typing import Any

import structlog

from proxy.dataplane.recorder import Recorder
from shadow.comparer import FrameReader, encode

log = structlog.get_logger("strangler.shadow")

PIPE_SIZE = 1 << 20  # kernel pipe buffer asked for (Linux F_SETPIPE_SZ)
RESTART_PAUSE = 1.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ComparerLink:
    def __init__(self, recorder: Recorder, max_pending: int, log_format: str = "json",
                 log_level: str = "info", nice: int = 10) -> None:
        self.recorder = recorder
        self.max_pending = max_pending
        self.args = [log_format, log_level, str(nice)]
        self.proc: asyncio.subprocess.Process | None = None
        self.transport: Any = None
        self.config_frame: tuple | None = None
        self.counts: dict[tuple[str, int, str], int] = {}  # (route, step, result) -> n
        self._reader_task: asyncio.Task | None = None
        self._flushes: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count(1)
        self._closing = False
        self._counts_handle: asyncio.TimerHandle | None = None
        self.sent = 0  # pairs handed over (for tests and the bench)
        self.restarts = 0

    # -- lifetime -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadow.comparer", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.transport = self.proc.stdin.transport
        pipe = self.transport.get_extra_info("pipe")
        if pipe is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
        # Let the transport buffer up to max_pending before it asks us to pause (we never do:
        # submit() checks the size itself and refuses past the limit).
        self.transport.set_write_buffer_limits(high=self.max_pending + (1 << 20))
        if self.config_frame is not None:
            self._write(self.config_frame)
        self._send_counts()  # what was counted while no comparer was there
        self._reader_task = asyncio.get_running_loop().create_task(self._read(self.proc))

    def configure(self, frame: tuple) -> None:
        self.config_frame = frame
        if self.transport is not None:
            self._write(frame)

    async def stop(self, timeout: float = 5.0) -> None:
        """Hand over what is counted, let the comparer finish what it has, wait for it."""
        self._closing = True
        self._send_counts()
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            self.transport.close()  # EOF: the comparer writes what it has and exits
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            # Still comparing what was in the pipe: SIGTERM makes it write what it has.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                log.warning("comparer did not finish in time; killed", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader_task, 2.0)
        for fut in self._flushes.values():
            if not fut.done():
                fut.set_result(False)

    # -- the hot path ---------------------------------------------------------------------------
    def busy(self) -> bool:
        """The comparer is behind (or gone): a new mirror would be shed anyway. (Mirror.wants
        reads the same condition inline, once per request: keep the two alike.)"""
        t = self.transport
        return t is None or t.is_closing() or t.get_write_buffer_size() >= self.max_pending

    def submit(self, frame: tuple) -> bool:
        if self.busy():
            return False
        self._write(frame)
        self.sent += 1
        return True

    def count(self, route: str, step: int, result: str) -> None:
        """Count a result of this data plane for the store ("match": a byte-identical pair,
        "error": the other side did not answer); sent in batches."""
        key = (route, step, result)
        c = self.counts
        c[key] = c.get(key, 0) + 1
        if self._counts_handle is None:
            self._counts_handle = asyncio.get_running_loop().call_later(0.05, self._send_counts)

    def _send_counts(self) -> None:
        self._counts_handle = None
        t = self.transport
        if not self.counts or t is None or t.is_closing():
            return  # kept until a comparer is there (bounded: one entry per route, step, result)
        items = [(r, s, x, n) for (r, s, x), n in self.counts.items()]
        self.counts = {}
        self._write(("counts", items))

    def _write(self, frame: tuple) -> None:
        head, payload = encode(frame)
        self.transport.writelines((head, payload))

    async def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every pair handed over so far is compared and on disk (bounded)."""
        self._send_counts()
        t = self.transport
        if t is None or t.is_closing():
            return False
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._flushes[token] = fut
        self._write(("flush", token))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return False
        finally:
            self._flushes.pop(token, None)

    # -- results --------------------------------------------------------------------------------
    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        reader = FrameReader()
        stdout = proc.stdout
        assert stdout is not None
        rec = self.recorder
        try:
            while True:
                data = await stdout.read(1 << 16)
                if not data:
                    break
                for frame in reader.feed(data):
                    if frame[0] == "results":
                        d = rec.delta.shadow
                        for route, step, result, n in frame[1]:
                            key = (route, step, result)
                            d[key] = d.get(key, 0) + n
                    elif frame[0] == "skipped":
                        sk = rec.delta.skipped
                        for route, reason, n in frame[1]:
                            sk[(route, reason)] = sk.get((route, reason), 0) + n
                    elif frame[0] == "store":
                        st = rec.delta.store
                        for event, n in frame[1]:
                            st[event] = st.get(event, 0) + n
                    elif frame[0] == "flushed":
                        fut = self._flushes.get(frame[1])
                        if fut is not None and not fut.done():
                            fut.set_result(True)
        finally:
            code = await proc.wait()
            if not self._closing:
                self.restarts += 1
                log.error("comparer process exited; restarting it, pairs in its pipe are lost",
                          code=code, pid=proc.pid)
                self.transport = None
                asyncio.get_running_loop().call_later(RESTART_PAUSE, self._restart)

    def _restart(self) -> None:
        if self._closing:
            return
        task = asyncio.get_running_loop().create_task(self.start())
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("comparer restart failed", error=str(task.exception()))
