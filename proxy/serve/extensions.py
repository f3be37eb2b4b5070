"""Optional pieces plugged into `serve`: shadow mirroring, the flag backend, the gate controller.

Kept apart from `proxy.serve.app` so the process lifetimes read the same with or without them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from proxy.config.spec import Config
from proxy.dataplane.recorder import Recorder
from proxy.serve.errors import ServeError

log = structlog.get_logger("strangler.serve")


async def before_planes(server: Any) -> None:
    """Runs before data planes start (in the control process)."""
    config = server.runtime.config
    from shadow.store_check import quarantine_if_corrupt

    # Before anything (mirror, workers, comparer) opens the store: a corrupt file is moved aside.
    if not config.store.shared:
        server.diff_store_recovered = quarantine_if_corrupt(config.state_dir / "diffs.sqlite3")
    await start_notifier(server)
    start_inventory(server)
    # Before anything listens: an unset credential variable stops the start (exit 2).
    _sync_prometheus(server, config, starting=True)
    if config.tracing is not None:
        import os

        unset = [var for _, var in config.tracing.headers if not os.environ.get(var)]
        if unset:
            raise ServeError("tracing: environment variable(s) not set: " + ", ".join(unset))
    server.runtime.on_reload.append(lambda cfg: _sync_prometheus(server, cfg))
    if config.flags.backend == "unleash":
        await start_flags(server)
    if server.opts.workers <= 1:
        server.shadow = await worker_shadow(config, server.recorder, 1, server.opts.log_format,
                                            server.opts.log_level)
    _open_diff_store(server, config)
    # Shadowing turned on by a reload (no route shadowed at start): the data planes start their
    # mirrors as they install the new table; the control process opens the store to read.
    server.runtime.on_reload.append(lambda cfg: _open_diff_store(server, cfg))


def _open_diff_store(server: Any, config: Config) -> None:
    """The control process's reader of the diff store, once a route shadows (at start or at
    the first reload that makes one shadow; `store` itself is read at start only)."""
    if server.diff_store is not None or not _shadows(config):
        return
    from shadow.sqldb import locator
    from shadow.store import DiffStore

    # Comparer processes write the store; the control process reads it for the diffs view.
    server.diff_store = DiffStore(locator(config))
    if config.store.shared:  # the fleet's windows follow every replica's steps
        rt = server.runtime
        mark = server.diff_store.mark_step
        rt.on_new_step.append(lambda name, step: mark(name, step, rt.replica))
        for r in config.routes:  # a step for every route: this start's, or the one it is in
            mark(r.name, rt.state.route(r.name).step, rt.replica)


async def start_notifier(server: Any) -> None:
    """Notification sinks (`proxy.control.notify`); a sink whose url_env is unset refuses the start.

    Started first so it is stopped last: the controller's last rollbacks are still sent.
    """
    from proxy.control.notify import Notifier

    rt = server.runtime
    notifier = Notifier(rt.counters.setdefault("notifications", {}))
    problems = notifier.configure(rt.config)
    if problems:
        raise ServeError("; ".join(problems))
    await notifier.start()
    notifier.settle = getattr(rt.audit, "settle", None)
    rt.notifier = notifier
    rt.on_reload.append(notifier.reconfigure)
    server.extras.append(notifier)


def start_inventory(server: Any) -> None:
    """The traffic inventory's rollups (state_dir/inventory.sqlite3, or the shared store),
    fed by every data plane; read even when `inventory.enabled` is off (what was recorded stays
    readable)."""
    from proxy.control.rollup_sqlite import NewerInventory
    from proxy.control.rollups import Rollups
    from proxy.control.stores import open_rollups

    rt = server.runtime
    config = rt.config
    try:
        store = open_rollups(config)
    except NewerInventory as exc:
        raise ServeError(str(exc)) from exc
    rollups = Rollups(store, config.inventory, lambda: rt.agg.shadow)
    rollups.start()
    server.rollups = rollups
    rt.on_reload.append(lambda cfg: rollups.configure(cfg.inventory))


async def start_flags(server: Any) -> None:
    """Weights from Unleash (`proxy.control.flags_link`); a startup problem is a ServeError
    (exit 2)."""
    from proxy.control.flags_link import FlagsLink, FlagsStartupError

    link = FlagsLink(server.runtime, create_flags=getattr(server.opts, "create_flags", False))
    try:
        await link.start()
    except FlagsStartupError as exc:
        raise ServeError(str(exc)) from exc
    server.runtime.flags = link
    server.extras.append(link)


async def after_planes(server: Any) -> None:
    """Runs once the data planes accept traffic (in the control process)."""
    from proxy.control.controller import Controller

    controller = Controller(server.runtime)
    await controller.start()
    server.extras.append(controller)


def _sync_prometheus(server: Any, config: Config, starting: bool = False) -> None:
    """The gate's Prometheus source follows `gate` (url, credentials, TLS) across reloads. A
    credential variable that is not set stops the start (exit 2); on a reload it is logged and
    the previous source stays."""
    from shadow.promql import CredentialsMissing, PrometheusSource

    rt = server.runtime
    gate = config.gate
    if rt.prometheus is not None and rt.prometheus.spec == gate:
        return
    new = None
    if gate.url:
        try:
            new = PrometheusSource.from_spec(gate)
        except CredentialsMissing as exc:
            if starting:
                raise ServeError(str(exc)) from None
            log.error("reload: the gate keeps its previous Prometheus settings", error=str(exc))
            return
    if rt.prometheus is not None:
        server.extras.append(_Closer(rt.prometheus))
    rt.prometheus = new


class _Closer:
    def __init__(self, source: Any) -> None:
        self.source = source

    async def stop(self) -> None:
        await self.source.close()


async def stop(server: Any) -> None:
    for extra in reversed(server.extras):
        await extra.stop()
    if server.runtime.prometheus is not None:
        await server.runtime.prometheus.close()
    if server.shadow is not None:
        await server.shadow.stop()
    if server.diff_store is not None:
        server.diff_store.close()
    if server.rollups is not None:
        for link in server.workers:  # a worker's last rows arrive before its channel closes
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(link.task), 2.0)
        server.flush()  # the in-process data plane's last inventory rows
        await server.rollups.stop()


async def worker_shadow(config: Config, recorder: Recorder, workers: int = 1,
                        log_format: str = "json", log_level: str = "info") -> Any:
    """The shadow mirror of one data plane (and its comparer process), or None when no route
    shadows."""
    if not _shadows(config):
        return None
    try:
        from proxy.dataplane.mirror import Mirror
    except ImportError:
        return None
    mirror = Mirror(config, recorder, workers=workers, log_format=log_format,
                    log_level=log_level)
    await mirror.start()
    return mirror


async def attach_shadow(plane: Any, config: Config, recorder: Recorder, workers: int,
                        log_format: str, log_level: str) -> Any:
    """`worker_shadow`, attached to `plane` (a DataPlane): at a worker's start, or at the
    first reload that makes a route shadow. None when no route shadows."""
    mirror = await worker_shadow(config, recorder, workers, log_format, log_level)
    if mirror is not None:
        plane.shadow = mirror
        mirror.tls = plane.tls  # one set of TLS contexts and sessions
    return mirror


def _shadows(config: Config) -> bool:
    return any(r.shadow.enabled and r.shadow.sample > 0 for r in config.routes)
