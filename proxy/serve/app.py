"""Process lifetimes of `strangler serve`: one process, or a control process and N workers.

- `--workers 1`: the control plane (admin API, state, gate) and the data plane share one event
  loop; runtime changes are plain assignments.
- `--workers N`: the control process runs the admin API and state; N spawned workers each run a
  full data plane on the same port (SO_REUSEPORT) and talk to it over a socketpair
  (`proxy.control.planes`). Metrics are aggregated in the control process from worker deltas.
SIGHUP or a change of the file on disk reloads; SIGTERM/SIGINT drains and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from proxy.config import logsetup
from proxy.config.crosscheck import unused_upstreams
from proxy.config.loader import ConfigError, load_config
from proxy.config.spec import Config
from proxy.control.planes import LocalPlane, WorkerLink, apply_updates, build_table
from proxy.control.runtime import Runtime
from proxy.dataplane.access_log import AccessLog
from proxy.dataplane.recorder import Recorder
from proxy.dataplane.server import DataPlane
from proxy.dataplane.tls import ServerCredentials
from proxy.serve import extensions  # shadow, flags, gate controller: optional pieces
from proxy.serve.errors import ServeError

log = structlog.get_logger("strangler.app")

T = TypeVar("T")
FLUSH_INTERVAL = 0.2
WATCH_INTERVAL = 1.0
TLS_WATCH_INTERVAL = 1.0


@dataclass
class ServeOptions:
    config_path: str
    workers: int = 1
    log_format: str = "json"
    log_level: str = "info"
    access_log: bool = True
    access_log_sample: float = 1.0
    watch: bool = True
    create_flags: bool = False  # unleash backend: create missing toggles at the file's weight
    extra: dict = field(default_factory=dict)


def admin_token_problem(config: Config) -> str | None:
    from proxy.api.auth import Tokens

    _, problems = Tokens.from_config(config)
    if problems:
        return "; ".join(problems)
    host = config.admin.listen.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not config.admin.tokens and not os.environ.get("STRANGLER_ADMIN_TOKEN"):
        return (
            f"refusing to start the admin listener on {config.admin.listen} without a token: "
            "set STRANGLER_ADMIN_TOKEN (read-write) and optionally STRANGLER_READ_TOKEN, "
            "or bind admin.listen to 127.0.0.1"
        )
    return None


def warn_config(config: Config) -> None:
    """What `strangler validate` prints as warnings, in serve's log (once, at start)."""
    for upstream in unused_upstreams(config):
        log.warning("config.unused_upstream", upstream=upstream.name, line=upstream.line,
                    detail="no route nor default_upstream uses it")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's `new_event_loop` when uvloop is installed (not on Windows), else None (asyncio's
    default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a uvloop loop: `asyncio.Runner(loop_factory=...)`, the way
    asyncio and uvloop document. (Not uvloop's install or its policy class: event-loop
    policies are deprecated since Python 3.12 and go away in 3.16.)"""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def run(opts: ServeOptions) -> int:
    logsetup.configure(opts.log_format, opts.log_level, process="main")
    try:
        text = Path(opts.config_path).read_text()
    except OSError as exc:
        raise ServeError(f"cannot read {opts.config_path}: {exc.strerror}") from exc
    config = load_config(opts.config_path, text)  # ConfigError -> exit 2 by the command
    problem = admin_token_problem(config)
    if problem:
        raise ServeError(problem)
    warn_config(config)
    from proxy.control.recovery import RefuseToStart, check_audit_log
    from proxy.control.stores import StoreRefused, check_shared

    try:
        if config.store.shared:
            check_shared(config)  # migrates; unreachable: serve degraded, buffer on disk
        else:
            check_audit_log(config.state_dir)
    except (RefuseToStart, StoreRefused) as exc:
        raise ServeError(str(exc)) from exc
    return run_loop(_serve(opts, config, text))


class Server:
    """Everything one `serve` owns; started and stopped in order."""

    def __init__(self, opts: ServeOptions, config: Config, text: str) -> None:
        self.opts = opts
        self.runtime = Runtime(opts.config_path, config, text)
        self.ready = False
        self.ready_once = False  # started serving (stop is also called after a failed start)
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.plane: DataPlane | None = None
        self.recorder = Recorder()
        self.workers: list[WorkerLink] = []
        self.access = (
            AccessLog(sample=opts.access_log_sample, fmt=opts.log_format)
            if opts.access_log else None
        )
        self.admin_runner: Any = None
        self.admin_tls: ServerCredentials | None = None  # admin.tls, re-read when files change
        self.shadow: Any = None
        self.diff_store: Any = None
        self.extras: list[Any] = []  # things with async start()/stop() (controller, flags)
        self.rollups: Any = None  # proxy.control.rollups.Rollups (the traffic inventory)

    def processes(self) -> list[tuple[str, int]]:
        """(name, pid) of every process of this serve, named as in their log lines' `process`
        field: `main`, `worker-N`, and `<owner>/comparer` for each data plane's comparer. The
        `process_*` metrics are labelled with these names."""
        from proxy.api.metrics import comparer_children

        main = os.getpid()
        workers = [(f"worker-{link.index}", link.process.pid) for link in self.workers
                   if link.process.pid is not None and link.process.is_alive()]
        planes = workers if self.workers else [("main", main)]  # who runs a data plane
        out = [("main", main), *workers]
        for owner, pid in planes:
            out += [(f"{owner}/comparer", child) for child in comparer_children(pid)]
        return out

    @property
    def degraded(self) -> dict | None:
        """Why routing runs reduced (/readyz reports it, still 200: legacy keeps serving)."""
        flags = self.runtime.flags
        reason = getattr(flags, "degraded_reason", None) if flags is not None else None
        store = self.store_problem()
        behind = [{"worker": link.index, "pid": link.process.pid, **link.unacked}
                  for link in self.workers if link.unacked is not None]
        if store is None and not behind:
            return reason
        out = dict(reason) if isinstance(reason, dict) else {"flags": reason} if reason else {}
        if store is not None:
            out["store"] = store
        if behind:  # a worker that has not applied a change yet (its loop held): it will
            out["planes"] = behind
        return out

    def store_problem(self) -> dict | None:
        """The shared store (store.backend: postgres) when it is unavailable, audit entries
        wait on this replica's disk or inventory rollups in its memory; None when all is well
        (or the store is local)."""
        status = getattr(self.runtime.audit, "status", None)
        if status is None:
            return None
        audit = status()
        inventory = self.rollups.status() if self.rollups is not None else None
        # The audit shipper tries the store all the time, so its state is the store's; the
        # diff store's reader only learns it at its next read, and is shown, not judged. The
        # inventory's rollups write every 2 s: rows waiting after a failed write are judged.
        if audit["up"] and not audit.get("buffered") and "slow_seconds" not in audit and (
                inventory is None or inventory["up"]):
            return None
        diffs = getattr(self.diff_store, "status", None)
        return {"audit": audit, "diffs": diffs() if diffs is not None else None,
                "inventory": inventory}

    async def _shadow_for(self, config: Config) -> None:
        """A reload that makes the first route shadow: the mirror (and its comparer) of the
        in-process plane, started before the new table is built, which it prepares."""
        if self.shadow is not None or self.plane is None:
            return
        self.shadow = await extensions.attach_shadow(self.plane, config, self.recorder, 1,
                                                     self.opts.log_format, self.opts.log_level)
        if self.shadow is not None:
            for p in self.runtime.planes:
                if isinstance(p, LocalPlane):
                    p.prepare = self.shadow.prepare

    async def start(self) -> None:
        rt = self.runtime
        config = rt.config


        await extensions.before_planes(self)
        if self.opts.workers <= 1:
            self.plane = DataPlane(self.recorder, self.access)
            if self.shadow is not None:
                self.plane.shadow = self.shadow
                self.shadow.tls = self.plane.tls  # one set of TLS contexts and sessions
            local = LocalPlane(self.plane, prepare=self.shadow.prepare if self.shadow else None,
                               before_install=self._shadow_for)
            local.install_now(config, rt.generation, rt.weights_bp())
            rt.planes.append(local)
            await self.plane.listen(config.listen.host, config.listen.port)
            self.tasks.append(asyncio.create_task(self._flush_loop()))
        else:
            await self._start_workers()
        await self._start_admin()
        await extensions.after_planes(self)
        if self.opts.watch:
            self.tasks.append(asyncio.create_task(self._watch_file()))
        self.ready = True
        self.ready_once = True
        rt.serve_started(self.opts.workers)
        log.info(
            "serving",
            listen=str(config.listen),
            admin=str(config.admin.listen),
            workers=self.opts.workers,
            routes=len(config.routes),
            pid=os.getpid(),
        )

    async def _start_admin(self) -> None:
        from aiohttp import web

        from proxy.api.admin import build_admin_app

        app = build_admin_app(self)
        self.admin_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.admin_runner.setup()
        admin = self.runtime.config.admin
        listen = admin.listen
        ssl_context = None
        if admin.tls is not None:
            self.admin_tls = ServerCredentials(admin.tls, "admin listener")
            ssl_context = self.admin_tls.listener
            self.runtime.on_reload.append(self._admin_tls_reloaded)
            self.tasks.append(asyncio.create_task(self._watch_admin_tls()))
        site = web.TCPSite(self.admin_runner, listen.host, listen.port, reuse_address=True,
                           ssl_context=ssl_context)
        await site.start()

    def _admin_tls_reloaded(self, config: Config) -> None:
        if self.admin_tls is None or config.admin.tls is None:
            if (self.admin_tls is None) != (config.admin.tls is None):
                log.warning("admin.tls was turned on or off: that takes a restart")
            return
        try:
            self.admin_tls.update(config.admin.tls)
        except Exception as exc:  # validated by the reload; only a race with a rotation
            log.error("admin.tls files cannot be loaded; the previous certificate stays",
                      error=str(exc))

    async def _watch_admin_tls(self) -> None:
        """The admin certificate follows its files (rotation without a restart)."""
        while self.admin_tls is not None:
            await asyncio.sleep(TLS_WATCH_INTERVAL)
            try:
                self.admin_tls.refresh()
            except Exception:
                log.exception("checking admin.tls files failed")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        delta = self.recorder.take()
        if not delta.empty():
            self.runtime.agg.merge(delta)
        if self.plane is not None:
            rows = self.plane.endpoints.take()
            if rows and self.rollups is not None:
                self.rollups.add(rows)
        if self.access is not None:
            self.access.flush()

    async def _watch_file(self) -> None:
        path = Path(self.opts.config_path)
        last = _stat_key(path)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = _stat_key(path)
            if now == last:
                continue
            await asyncio.sleep(0.3)  # debounce editors that write in several steps
            now = _stat_key(path)
            last = now
            await self.reload("file change")

    async def reload(self, source: str) -> int | None:
        try:
            return await self.runtime.reload(actor="system", reason=source)
        except ConfigError:
            return None
        except Exception:
            log.exception("reload failed", source=source)
            return None

    async def _start_workers(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        rt = self.runtime
        for i in range(self.opts.workers):
            parent, child = socket.socketpair()
            proc = ctx.Process(
                target=worker_main,
                args=(i, self.opts, rt.config_text, rt.generation, rt.weights_bp(), child),
                name=f"strangler-worker-{i}",
                daemon=False,
            )
            proc.start()
            child.close()
            reader, writer = await asyncio.open_unix_connection(sock=parent, limit=2**24)
            link = WorkerLink(i, reader, writer, rt.agg.merge, proc)
            link.on_inventory = self.rollups.add if self.rollups is not None else None
            self.workers.append(link)
            rt.planes.append(link)
        for link in self.workers:
            await asyncio.wait_for(link.ready, 30)

    async def stop(self) -> None:
        drain = self.runtime.config.limits.drain_timeout
        self.ready = False
        log.info("draining", timeout=drain)
        if self.plane is not None:
            cut = await self.plane.drain(drain)
            if cut:
                log.warning("drain timeout: connections cut", connections=cut)
        for link in self.workers:
            link.drain()
        for link in self.workers:
            await asyncio.to_thread(link.process.join, drain + 5)
            if link.process.is_alive():
                link.process.kill()


        await extensions.stop(self)
        self.flush()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        if self.ready_once:
            self.runtime.serve_stopped("serve stopped (SIGTERM or SIGINT): drained and exited")
        await asyncio.to_thread(self.runtime.close)  # a shared trail ships what it buffers
        log.info("stopped")


def _stat_key(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


async def _serve(opts: ServeOptions, config: Config, text: str) -> int:
    server = Server(opts, config, text)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stopping.set)
    loop.add_signal_handler(signal.SIGINT, server.stopping.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: asyncio.ensure_future(server.reload("SIGHUP"))
    )
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        await server.stop()
        return 1
    await server.stopping.wait()
    await server.stop()
    return 0


# -- worker processes -------------------------------------------------------------------------
def worker_main(index: int, opts: ServeOptions, text: str, generation: int,
                weights: dict, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when to stop
    logsetup.configure(opts.log_format, opts.log_level, process=f"worker-{index}")
    try:
        run_loop(_worker(index, opts, text, generation, weights, sock))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


async def _worker(index: int, opts: ServeOptions, text: str, generation: int, weights: dict,
                  sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2**24)
    config = load_config(opts.config_path, text)
    recorder = Recorder()
    access = AccessLog(sample=opts.access_log_sample, fmt=opts.log_format, shared=True) \
        if opts.access_log else None  # shared: every worker writes to the one stdout
    plane = DataPlane(recorder, access)


    shadow = await extensions.attach_shadow(plane, config, recorder, opts.workers,
                                            opts.log_format, opts.log_level)
    states: dict = {}

    def install(cfg: Config, gen: int, w: dict) -> None:
        table = build_table(cfg, states, gen, w)
        if shadow is not None:
            shadow.prepare(table)
        plane.install(table)

    async def shadow_for(cfg: Config) -> None:
        """A reload that makes the first route shadow: this worker's mirror, before its table."""
        nonlocal shadow
        if shadow is None:
            shadow = await extensions.attach_shadow(plane, cfg, recorder, opts.workers,
                                                    opts.log_format, opts.log_level)

    install(config, generation, weights)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await plane.listen(config.listen.host, config.listen.port, reuse_port=True)
    except OSError as exc:
        writer.write(json.dumps({"op": "error", "message": str(exc)}).encode() + b"\n")
        await writer.drain()
        return
    writer.write(json.dumps({"op": "ready", "pid": os.getpid()}).encode() + b"\n")

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            _send_delta()

    def _send_delta() -> None:
        delta = recorder.take()
        if not delta.empty():
            writer.write(json.dumps({"op": "delta", "data": delta.to_wire()}).encode() + b"\n")
        rows = plane.endpoints.take()
        if rows:  # the traffic inventory (proxy.dataplane.inventory)
            writer.write(json.dumps({"op": "inventory", "rows": rows}).encode() + b"\n")
        if access is not None:
            access.flush()

    async def control() -> None:
        while True:
            line = await reader.readline()
            if not line:
                stop.set()
                return
            msg = json.loads(line)
            op = msg.get("op")
            if op == "weights":
                _send_delta()  # what was recorded so far belongs to the old step
                apply_updates(states, msg["updates"])
            elif op == "install":
                _send_delta()
                try:
                    cfg = load_config(opts.config_path, msg["text"])
                    await shadow_for(cfg)
                    install(cfg, msg["generation"], msg["weights"])
                except ConfigError as exc:
                    log.error("worker could not install config", error=str(exc))
            elif op == "drain":
                stop.set()
            if "id" in msg:
                ack = {"op": "ack", "id": msg["id"]}
                if op == "tasks":  # GET /admin/debug/tasks (soak runs): read-only
                    ack["tasks"] = len(asyncio.all_tasks())
                writer.write(json.dumps(ack).encode() + b"\n")

    tasks = [asyncio.create_task(flush_loop()), asyncio.create_task(control())]
    await stop.wait()
    await plane.drain(config.limits.drain_timeout)
    if shadow is not None:
        await shadow.stop()
    _send_delta()
    with contextlib.suppress(Exception):
        await writer.drain()
    for t in tasks:
        t.cancel()
