"""The Unleash flag backend wired into the control plane (`Runtime.flags`).

`FlagsLink` owns an `UnleashFlags` client and keeps three things in step with it:

- reads: `weight(spec)` / `rolled_back(spec)` answer the runtime from the latest snapshot;
- follows: every snapshot change (a poll, a write from another replica, Unleash's own UI)
  pushes the changed routes' weights to the data planes, starts a new gate step for each and
  writes one audit entry per route (actor `unleash`);
- writes: `set_weight`, `rollback`, `resume` go to the Unleash Admin API; the runtime applies
  them locally at once (see `proxy.control.runtime`).

Rollback state: `runtime.state.route(name).rolled_back` mirrors "toggle disabled". It changes
when the toggle's on/off state changes in Unleash, or by a local rollback/resume. A local
rollback moves traffic before Unleash hears of it; if the Admin API cannot be reached the
rollback still holds here and is written again every refresh interval until Unleash takes it.

Startup (`start`): a toggle missing in Unleash is a `FlagsStartupError` naming it, unless
`create_flags` (then created at the file's weight). Unleash unreachable -> the last features
body, cached in state_dir/unleash-cache; no cache -> every route at weight 0 and
`degraded_reason` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from proxy.config.spec import Config, RouteSpec, UnleashSpec
from proxy.control.runtime import Runtime, RuntimeError_, default_actor
from proxy.control.unleash import FlagState, UnleashConfigError, UnleashFlags, UnleashWriteError
from proxy.dataplane.split import bp_to_weight, weight_to_bp

__all__ = ["CACHE_DIR", "FlagsLink", "FlagsStartupError"]

log = structlog.get_logger("strangler.flags")

CACHE_DIR = "unleash-cache"  # under state_dir
WRITE_HOLD = 10.0  # seconds our own write outranks older states shown by polls
SETTLE_SLACK = 1.0  # seconds beyond two refresh intervals before a missing toggle is an error


@dataclass(frozen=True, slots=True)
class _Write:
    state: FlagState  # what the toggle is after our write
    stale: frozenset[FlagState]  # states from before it that polls may still show
    until: float  # monotonic deadline


class FlagsStartupError(Exception):
    """The Unleash backend cannot start as configured (serve exits 2 with this message)."""


def _flags_of(config: Config) -> dict[str, RouteSpec]:
    return {r.flag: r for r in config.routes if r.flag}


def _write_failure(exc: UnleashWriteError, flag: str, what: str) -> RuntimeError_:
    """The admin API's answer when Unleash did not take a write (nothing changed here)."""
    detail = {"toggle": flag, "unleash_status": exc.status, "message": str(exc)}
    if exc.status == 404:
        return RuntimeError_(409, f"toggle '{flag}' not found in Unleash: {what} not applied",
                             detail)
    if exc.status is None:
        return RuntimeError_(503, f"Unleash unreachable: {what} not applied", detail)
    return RuntimeError_(502, f"Unleash refused the change: {what} not applied", detail)


class FlagsLink:
    """Route weights from Unleash toggles, for one `Runtime` (see the module docstring)."""

    def __init__(self, runtime: Runtime, *, create_flags: bool = False,
                 client: UnleashFlags | None = None) -> None:
        self.runtime = runtime
        self.create_flags = create_flags
        config = runtime.config
        self.spec: UnleashSpec = config.flags.unleash or UnleashSpec()
        self.cache_dir = config.state_dir / CACHE_DIR
        self._client = client
        self._snap: dict[str, FlagState] = {}
        self._writes: dict[str, _Write] = {}  # our writes Unleash has not confirmed yet
        self._seen: dict[str, FlagState] = {}  # toggle state last mirrored into runtime.state
        self._applied: dict[str, int] = {}  # route -> basis points the data planes have
        self._retry: set[str] = set()  # routes whose rollback Unleash has not taken yet
        self._frozen: dict[str, bool] = {}  # route -> rolled back, as last pushed from here
        self._missing_reported: set[str] = set()
        # What the data planes route by: no flag data (all legacy) until the weights computed
        # from Unleash's first answer are pushed. /readyz reads this, not the client's state,
        # so it never says "recovered" while the planes still send everyone to legacy.
        self._planes_degraded = True
        # Rollback, its retries and resume write the on/off state one at a time, in order: a
        # retried rollback still on its way must not land after (and undo) a resume.
        self._onoff = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe: Any = None

    # -- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (or fall back to the cache / degraded), check toggles, mirror their state.

        Raises FlagsStartupError for a missing token, an unusable URL, or missing toggles.
        """
        try:
            if self._client is None:
                self._client = UnleashFlags(self.spec, self.cache_dir,
                                            flags=_flags_of(self.runtime.config))
            await self._client.start()
        except UnleashConfigError as exc:
            raise FlagsStartupError(str(exc)) from exc
        try:
            if self._client.connected:
                await self._check_missing(startup=True)
            elif self._client.degraded:
                log.warning("flags.degraded", url=self.spec.url, cache=str(self.cache_dir),
                            reason=self._client.last_error,
                            detail="Unleash unreachable and no cached state: every route at "
                            "weight 0 (all legacy) until Unleash answers")
            else:
                log.warning("flags.from_cache", url=self.spec.url, cache=str(self.cache_dir),
                            reason=self._client.last_error,
                            detail="Unleash unreachable: routing on the cached flag state")
        except BaseException:
            await self._client.stop()
            raise
        self._snap = self._client.snapshot()
        self._sync()  # before any data plane exists: nothing to push
        self._planes_degraded = self._client.degraded
        self.runtime._persist()
        self._unsubscribe = self._client.on_change(self._on_change)
        self.runtime.on_reload.append(self._on_reload)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(), name="flags-follow"),
                       loop.create_task(self._retry_rollbacks(), name="flags-retry")]
        log.info("flags.started", backend="unleash", url=self.spec.url,
                 connected=self._client.connected, toggles=len(self._snap),
                 weights={r.name: self.weight(r) for r in self.runtime.config.routes})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with contextlib.suppress(ValueError):
            self.runtime.on_reload.remove(self._on_reload)
        if self._client is not None:
            await self._client.stop()
        if self._retry:
            log.error("flags.rollback_not_in_unleash", routes=sorted(self._retry),
                      detail="stopped before Unleash took these rollbacks: other replicas "
                      "still route by the toggle; disable it in Unleash")

    # -- reads (called by Runtime) ------------------------------------------------------------
    @property
    def client(self) -> UnleashFlags:
        if self._client is None:
            raise RuntimeError("FlagsLink not started")
        return self._client

    @property
    def degraded_reason(self) -> dict | None:
        """What /readyz reports while routing is reduced by the flag backend, else None."""
        if self._client is None:
            return None
        tls = self._client.tls_failure
        if tls is not None:  # a set-up problem, not an outage that passes: said as degraded
            routing = ("no cached flag state: every route at weight 0 (all legacy)"
                       if self._planes_degraded else "routing on the last known flag state; "
                       "weight changes are refused and rollbacks hold here until it works")
            return {"flags": f"TLS to Unleash at {self.spec.url} fails: {tls[1]}; {routing}",
                    "tls_cause": tls[0]}
        if self._planes_degraded:  # until the planes have the weights of Unleash's answer
            return {"flags": f"Unleash at {self.spec.url} unreachable and no cached flag "
                    "state: every route at weight 0 (all legacy)"}
        missing = self._missing_routes()
        if missing:
            return {"flags": "toggles missing in Unleash: these routes are at weight 0",
                    "missing_toggles": missing}
        return None

    @property
    def stale_reason(self) -> str | None:
        """Unleash unreachable while a last known state routes: /readyz says so (still ready)."""
        client = self._client
        if client is None or client.degraded or client.connected:
            return None
        return (f"Unleash at {self.spec.url} unreachable: routing on the last known flag "
                "state; weight changes are refused and rollbacks hold here until it answers")

    def weight(self, spec: RouteSpec) -> float:
        if self._client is None or self._client.degraded:
            return 0.0
        if self.runtime.state.route(spec.name).rolled_back:
            return 0.0
        state = self._state(spec.flag)
        return state.weight if state is not None else 0.0

    def rolled_back(self, spec: RouteSpec) -> bool:
        rt = self.runtime.state.routes.get(spec.name)
        return bool(rt and rt.rolled_back)

    # -- writes (called by Runtime) -----------------------------------------------------------
    async def set_weight(self, spec: RouteSpec, weight: float) -> None:
        """Write the toggle's rollout; raises RuntimeError_ (nothing changed) if Unleash refuses."""
        flag = self._flag(spec)
        prior = self._state(flag)
        try:
            await self.client.set_rollout(flag, weight)
        except UnleashWriteError as exc:
            raise _write_failure(exc, flag, f"weight {weight}") from exc
        self._wrote(flag, prior)
        # The runtime pushes this weight itself: do not report it again as an Unleash change.
        self._applied[spec.name] = weight_to_bp(self.weight(spec))

    async def rollback(self, spec: RouteSpec) -> None:
        """Disable the toggle. Traffic already moved; never raises (retried until taken)."""
        self._applied[spec.name] = 0
        async with self._onoff:
            if not await self._disable(spec):
                self._retry.add(spec.name)

    def rollback_unconfirmed(self, name: str) -> bool:
        """A rollback Unleash has not taken yet: it holds here, other replicas wait for it."""
        return name in self._retry

    async def resume(self, spec: RouteSpec) -> None:
        """Rollout 0, then enable the toggle; on failure the route stays rolled back here.

        The caller lifts the freeze only after this returns: while the writes are on their
        way the toggle may still show the rollout from before the rollback."""
        flag = self._flag(spec)
        rt = self.runtime.state.route(spec.name)
        async with self._onoff:
            self._retry.discard(spec.name)
            prior = self._state(flag)
            try:
                await self.client.set_rollout(flag, 0)
                self._wrote(flag, prior)
                await self.client.set_enabled(flag, True)
            except UnleashWriteError as exc:
                rt.rolled_back = True
                raise _write_failure(exc, flag, "resume") from exc
            self._wrote(flag, prior)
        self._applied[spec.name] = 0

    def _flag(self, spec: RouteSpec) -> str:
        if not spec.flag:
            raise RuntimeError_(409, f"route '{spec.name}' has no Unleash toggle (flag:)",
                                {"route": spec.name})
        return spec.flag

    async def _disable(self, spec: RouteSpec) -> bool:
        """Disable the route's toggle; False when Unleash did not take it (worth a retry)."""
        if not spec.flag:
            return True
        prior = self._state(spec.flag)
        try:
            await self.client.set_enabled(spec.flag, False)
        except UnleashWriteError as exc:
            if exc.status == 404:  # no toggle: nothing in Unleash sends traffic to target
                log.warning("flags.rollback_no_toggle", route=spec.name, toggle=spec.flag)
                return True
            if spec.name not in self._retry:
                log.error("flags.rollback_write_failed", route=spec.name, toggle=spec.flag,
                          error=str(exc), detail="rolled back here; other replicas follow once "
                          "Unleash takes it (retrying every refresh interval)")
            return False
        self._wrote(spec.flag, prior)
        return True

    def _wrote(self, flag: str, prior: FlagState | None) -> None:
        """Remember a write Unleash accepted, until a poll shows it (see `_state`).

        `prior` is the state when the write started; the snapshot followed polls while the
        write was on its way, and what they showed is from before the write too."""
        during = self._snap.get(flag)
        self._snap = self.client.snapshot()
        written = self._snap.get(flag)
        if written is None:
            return
        earlier = self._writes.get(flag)
        stale = set(earlier.stale) | {earlier.state} if earlier else set()
        for state in (prior, during):
            if state is not None:
                stale.add(state)
        stale.discard(written)
        self._writes[flag] = _Write(written, frozenset(stale), time.monotonic() + WRITE_HOLD)

    def _state(self, flag: str | None) -> FlagState | None:
        """The toggle's state: the snapshot, or our own write while polls still show a state
        from before it. (Unleash's client API lags writes by its revision tick, and a poll can
        show our previous write after our latest one was accepted: that is not someone else's
        change, and must not undo a rollback even for a moment.)
        """
        if not flag:
            return None
        state = self._snap.get(flag)
        write = self._writes.get(flag)
        if write is None:
            return state
        if state == write.state or state not in write.stale or time.monotonic() > write.until:
            del self._writes[flag]  # confirmed, changed by someone else, or never confirmed
            return state
        return write.state

    # -- following Unleash --------------------------------------------------------------------
    def _on_change(self, snapshot: dict[str, FlagState]) -> None:
        self._snap = snapshot
        self._changed.set()

    async def _follow(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._apply_changes()
            except Exception:
                log.exception("flags.follow_failed")

    async def _apply_changes(self) -> None:
        rt = self.runtime
        if self._client is not None and self._client.connected:
            await self._check_missing(startup=False)
        before = {name: bp_to_weight(bp) for name, bp in self._applied.items()}
        degraded = self._client is None or self._client.degraded
        changed = self._sync()
        frozen = [n for n in self._freeze_changes() if n not in changed]
        if frozen:  # rolled back or resumed without a weight change (a route at 0%): the data
            await rt._push(frozen)  # planes refuse `target` pins while a route is rolled back
        if not changed:
            self._planes_degraded = degraded
            return
        for name in changed:
            rt._new_step(name)
        # traffic first, bookkeeping after (as a rollback does); a worker that did not
        # acknowledge has the change waiting in its socket: the audit entry names it
        unconfirmed = await rt._push(changed)
        self._planes_degraded = degraded
        after = {name: bp_to_weight(self._applied[name]) for name in changed}
        async with rt.lock:
            rt._persist()
            for name in changed:
                spec = rt.config.route(name)
                flag = spec.flag if spec else None
                state = self._state(flag)
                rt._audit(
                    action="flag_change", actor="unleash",
                    reason=f"toggle {flag} changed in Unleash", route=name,
                    before=before.get(name), after=after[name],
                    evidence={"toggle": flag,
                              "enabled": state.enabled if state else None,
                              "rollout": state.rollout if state else None,
                              "rolled_back": rt.rolled_back(name)},
                    **({"unconfirmed_planes": unconfirmed} if unconfirmed else {}),
                )
        log.info("flags.weights_changed", weights=after)

    def _freeze_changes(self) -> list[str]:
        """Routes whose rolled-back state changed since this was last asked (all, at first)."""
        out = []
        for spec in self.runtime.config.routes:
            rolled = self.runtime.rolled_back(spec.name)
            if self._frozen.get(spec.name) != rolled:
                self._frozen[spec.name] = rolled
                out.append(spec.name)
        return out

    def _sync(self) -> list[str]:
        """Mirror toggle on/off into runtime.state; routes whose pushed weight must change."""
        state = self.runtime.state
        changed = []
        for spec in self.runtime.config.routes:
            rr = state.route(spec.name)
            toggle = self._state(spec.flag)
            if toggle is not None and not toggle.missing:
                seen = self._seen.get(spec.flag or "")
                if seen is None or seen.missing or seen.enabled != toggle.enabled:
                    # Changed in Unleash: its on/off state is the rollback state. (A local
                    # rollback that Unleash has not taken yet keeps the route rolled back.)
                    if not (toggle.enabled and spec.name in self._retry):
                        rr.rolled_back = not toggle.enabled
                if not rr.rolled_back:
                    rr.weight = toggle.rollout
                self._seen[spec.flag or ""] = toggle
            bp = weight_to_bp(self.weight(spec))
            if self._applied.get(spec.name) != bp:
                if rr.rolled_back and toggle is not None and toggle.enabled and bp == 0:
                    # A local rollback on its way to Unleash: the runtime already pushed it.
                    self._applied[spec.name] = bp
                    continue
                self._applied[spec.name] = bp
                changed.append(spec.name)
        return changed

    def _missing_routes(self) -> list[str]:
        if self._client is None or self._client.degraded:
            return []
        flags = _flags_of(self.runtime.config)
        return [f"{name} (route {flags[name].name})" for name in self._client.missing()
                if name in flags]

    async def _check_missing(self, startup: bool) -> None:
        """Create missing toggles (create_flags) or report them: at startup as an error."""
        missing = self.client.missing()
        if missing and startup and not self.create_flags:
            missing = await self._settle(missing)
        if not missing:
            self._missing_reported.clear()
            return
        routes = _flags_of(self.runtime.config)
        if self.create_flags:
            for name in missing:
                spec = routes.get(name)
                if spec is not None:
                    await self._create(name, spec, startup)
            return
        described = ", ".join(
            f"'{name}' (route '{routes[name].name}')" for name in missing if name in routes
        )
        message = (
            f"Unleash toggle(s) missing in project {self.spec.project!r}, environment "
            f"{self.spec.environment!r} at {self.spec.url}: {described}. Create them in "
            "Unleash, or start with `strangler serve --create-flags` to create each at its "
            "route's weight in routes.yaml"
        )
        if startup:
            raise FlagsStartupError(message)
        new = set(missing) - self._missing_reported
        if new:
            log.error("flags.missing", toggles=sorted(new), detail=message + "; routed at 0")
        self._missing_reported = set(missing)

    async def _settle(self, missing: list[str]) -> list[str]:
        """Missing toggles after a few more polls: Unleash's client API lags a new toggle by
        its revision tick (about a second), so one created just before `serve` is not an error.
        """
        deadline = time.monotonic() + 2 * self.spec.refresh_interval + SETTLE_SLACK
        while missing and self.client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            missing = self.client.missing()
        return missing

    async def _create(self, flag: str, spec: RouteSpec, startup: bool) -> None:
        stickiness = "userId" if spec.sticky is not None else "random"
        try:
            created = await self.client.ensure_flag(flag, spec.weight, stickiness=stickiness)
        except UnleashWriteError as exc:
            if startup:
                raise FlagsStartupError(
                    f"--create-flags: cannot create toggle '{flag}' (route '{spec.name}'): "
                    f"{exc}") from exc
            log.error("flags.create_failed", toggle=flag, route=spec.name, error=str(exc))
            return
        if created:
            log.info("flags.created", toggle=flag, route=spec.name, weight=spec.weight)
            self.runtime._audit(action="create_flag", actor=default_actor(),
                                reason="serve --create-flags", route=spec.name, before=None,
                                after=spec.weight, evidence={"toggle": flag})
        self._snap = self.client.snapshot()

    async def _on_reload(self, config: Config) -> None:
        new = config.flags.unleash or UnleashSpec()
        if config.flags.backend == "unleash" and new != self.spec and \
                replace(new, tls=self.spec.tls) == self.spec and new.tls is not None:
            try:  # only flags.unleash.tls changed: the next poll uses it
                self.client.use_tls(new.tls)
                self.spec = new
                log.info("flags.tls_changed", url=self.spec.url)
            except UnleashConfigError as exc:
                log.error("flags.tls_not_loaded", error=str(exc),
                          detail="the previous flags.unleash.tls stays in use")
        elif config.flags.backend != "unleash" or new != self.spec:
            log.warning("flags.settings_changed", detail="flags settings changed in the file: "
                        "restart strangler serve to apply them; the running backend stays")
        self.client.watch(_flags_of(config))
        self._snap = self.client.snapshot()
        self._changed.set()  # new routes, missing toggles: handled by the follower

    async def _retry_rollbacks(self) -> None:
        interval = max(0.5, self.spec.refresh_interval)
        while True:
            await asyncio.sleep(interval)
            if self._writes:
                self._changed.set()  # an unconfirmed write may have expired: look again
            for name in sorted(self._retry):
                async with self._onoff:
                    if name not in self._retry:  # resumed, or taken, meanwhile
                        continue
                    spec = self.runtime.config.route(name)
                    if spec is None or not self.runtime.rolled_back(name):
                        self._retry.discard(name)
                        continue
                    if await self._disable(spec):
                        self._retry.discard(name)
                        log.info("flags.rollback_written", route=name, toggle=spec.flag)
