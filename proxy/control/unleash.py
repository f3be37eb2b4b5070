"""Route weights from Unleash: one toggle per route, its gradual-rollout percentage is the weight.

`UnleashFlags` keeps a snapshot `{toggle name: FlagState}` fresh with the SDK's asyncio client
(`UnleashClient.AsyncUnleashClient`, polling on the event loop every `refresh_interval`) and
writes through the Unleash Admin API. The proxy evaluates its split itself from the snapshot
(stable hash, 0.01% granularity); the SDK's own evaluation is not used per request.

Weights with two decimals: the Admin API stores a strategy's `rollout` as a string without
checking it, but Unleash's SDKs (Yggdrasil) evaluate a non-integer rollout such as "25.5" as 0%.
So `rollout` always holds an integer (what the UI and every other SDK understand) and the exact
weight goes in a parameter of our own, `stranglerWeight`. The snapshot uses `stranglerWeight`
while it agrees with `rollout` (rounds to it); when someone edits the rollout in Unleash's UI,
the rollout wins.

Fail-safe: the SDK keeps the last fetched state in a file cache in `cache_dir`. Unleash
unreachable at start -> the cached state; no cache -> `degraded` (the caller routes everything to
legacy); unreachable mid-run -> the last known state and one warning per outage. The SDK's own
per-poll error logs (a traceback each time) are filtered while a client runs.

A write (`set_rollout`, `set_enabled`, `ensure_flag`) takes effect in the snapshot as soon as
Unleash has accepted it, and holds until a poll confirms it (or `write_hold` seconds pass and
the server says otherwise), so a poll that was already in flight cannot flip it back.

Errors: `UnleashError` > `UnleashConfigError` (token env var not set), `UnleashWriteError`
(Admin API refused the write or could not be reached; `.status` is None when unreachable).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from UnleashClient import AsyncUnleashClient
from UnleashClient._transport import FetchResult
from UnleashClient.cache import FileCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.utils import InstanceAllowType

from proxy.config.spec import UnleashSpec

__all__ = [
    "WEIGHT_PARAM",
    "FlagState",
    "UnleashConfigError",
    "UnleashError",
    "UnleashFlags",
    "UnleashWriteError",
    "parse_features",
]

log = structlog.get_logger("strangler.unleash")

WEIGHT_PARAM = "stranglerWeight"
ROLLOUT_STRATEGY = "flexibleRollout"
SDK_LOGGER = "UnleashClient"
REQUEST_TIMEOUT = 5.0  # seconds per socket operation (polls) and per admin request


class UnleashError(Exception):
    """Base of the errors this module raises."""


class UnleashConfigError(UnleashError):
    """A setting the Unleash backend needs is missing (e.g. the token env var)."""


class UnleashWriteError(UnleashError):
    """The Admin API refused a write, or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FlagState:
    """One toggle in the configured environment.

    `rollout` is the flexibleRollout percentage (0-100, two decimals); None when the toggle
    does not exist in Unleash.
    """

    enabled: bool
    rollout: float | None

    @property
    def missing(self) -> bool:
        return self.rollout is None

    @property
    def weight(self) -> float:
        """Percent of traffic to the target: 0 when disabled (rolled back) or missing."""
        return self.rollout if self.enabled and self.rollout is not None else 0.0


MISSING = FlagState(enabled=False, rollout=None)


def _unleash_rollout(percent: float) -> str:
    """The integer percentage Unleash's UI and SDKs understand (half rounds up)."""
    return str(int(Decimal(str(percent)).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _check_percent(percent: float) -> float:
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"weight must be between 0 and 100, got {percent}")
    return round(float(percent), 2)


def _strategy_rollout(params: Mapping[str, Any]) -> float:
    """The weight a flexibleRollout strategy stands for (see the module docstring)."""
    try:
        rollout = float(params.get("rollout", 0))
    except (TypeError, ValueError):
        return 0.0
    exact = params.get(WEIGHT_PARAM)
    if exact is not None:
        try:
            value = float(exact)
        except (TypeError, ValueError):
            value = None
        if (
            value is not None
            and 0 <= value <= 100
            and _unleash_rollout(value) == _unleash_rollout(rollout)
        ):
            return round(value, 2)
    return round(min(max(rollout, 0.0), 100.0), 2)


def _feature_state(feature: Mapping[str, Any]) -> FlagState:
    """FlagState of a feature as the client API returns it.

    The first active flexibleRollout strategy sets the rollout; a toggle with no strategies, or
    with Unleash's `default` strategy, is on for everyone (100); other strategy types alone
    count as 0 (we cannot express them as a percentage, so they send nobody to the target).
    """
    strategies = [s for s in feature.get("strategies") or [] if not s.get("disabled")]
    rollout = 100.0 if not strategies else 0.0
    for strategy in strategies:
        if strategy.get("name") == ROLLOUT_STRATEGY:
            rollout = _strategy_rollout(strategy.get("parameters") or {})
            break
        if strategy.get("name") == "default":
            rollout = 100.0
            break
    return FlagState(enabled=bool(feature.get("enabled")), rollout=rollout)


def parse_features(
    raw: str | Mapping[str, Any], watched: Iterable[str] = ()
) -> dict[str, FlagState]:
    """Snapshot from a /client/features body: every toggle, plus `watched` names as missing."""
    body = json.loads(raw) if isinstance(raw, str) else raw
    states = {f["name"]: _feature_state(f) for f in body.get("features") or [] if "name" in f}
    for name in watched:
        states.setdefault(name, MISSING)
    return states


class _SdkLogFilter(logging.Filter):
    """Drops the SDK's per-poll chatter and connection errors (a traceback per poll).

    We report outages ourselves, once each (see `UnleashFlags._after_fetch`), with the last
    error message kept here. Other SDK warnings (e.g. a toggle it cannot parse) pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_error: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if "failed" in message and not message.startswith("Scheduled job"):
            # A bad HTTP status is re-raised as a generic "...fetch failed!": keep the status.
            if not message.endswith("!"):
                self.last_error = message
            return False
        return "cached features" not in message  # "no cache yet": our degraded warning says it


ChangeCallback = Callable[[dict[str, FlagState]], None]


class UnleashFlags:
    """Flag state from one Unleash server (see the module docstring).

    Use from one event loop: `await start()`, read `snapshot()` / subscribe with `on_change`,
    `await stop()`.
    """

    def __init__(
        self,
        spec: UnleashSpec,
        cache_dir: Path,
        *,
        flags: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        instance_id: str | None = None,
        write_hold: float = 10.0,
    ) -> None:
        env = os.environ if env is None else env
        self.spec = spec
        self.cache_dir = Path(cache_dir)
        self._client_token = env.get(spec.token_env, "")
        if not self._client_token:
            raise UnleashConfigError(
                f"flags.backend unleash needs a backend API token in env {spec.token_env} "
                f"(an Unleash client/backend token for environment {spec.environment!r})"
            )
        self._admin_token = env.get(spec.admin_token_env, "")
        self._instance_id = instance_id or f"strangler-{socket.gethostname()}-{os.getpid()}"
        self._write_hold = write_hold
        self._watched: tuple[str, ...] = tuple(flags)
        self._server: dict[str, FlagState] = {}  # last state from Unleash or its cache
        # flag -> (state we wrote, server state before the write, hold until)
        self._pending: dict[str, tuple[FlagState, frozenset[FlagState], float]] = {}
        self._snapshot: dict[str, FlagState] = parse_features({}, self._watched)
        self._callbacks: list[ChangeCallback] = []
        self._have_data = False
        self._connected = False
        self._outage_since: float | None = None
        self._client: AsyncUnleashClient | None = None
        self._admin: aiohttp.ClientSession | None = None
        self._log_filter = _SdkLogFilter()

    # -- reading --------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while there is no flag data at all: Unleash never answered and no cache."""
        return not self._have_data

    @property
    def connected(self) -> bool:
        """True when the last poll reached Unleash."""
        return self._connected

    @property
    def unconfirmed(self) -> tuple[str, ...]:
        """Toggles written here that no poll has confirmed yet (shown as written meanwhile)."""
        return tuple(self._pending)

    def snapshot(self) -> dict[str, FlagState]:
        """Every toggle known, plus watched toggles (missing ones with rollout None)."""
        return dict(self._snapshot)

    def missing(self) -> list[str]:
        """Watched toggles that do not exist in Unleash (meaningful once not degraded)."""
        return [name for name in self._watched if self._snapshot.get(name, MISSING).missing]

    def watch(self, flags: Iterable[str]) -> None:
        """Replace the set of toggle names the snapshot always reports (e.g. after a reload)."""
        self._watched = tuple(flags)
        self._publish()

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(snapshot)` on the event loop whenever the snapshot changes.

        Returns a function that unsubscribes. A failing callback is logged, not raised.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the cache, then fetch once from Unleash; never raises for an unreachable server."""
        if self._client is not None:
            raise RuntimeError("UnleashFlags already started")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger(SDK_LOGGER).addFilter(self._log_filter)
        cache = FileCache(self.spec.app_name, directory=str(self.cache_dir))
        cached = cache.get(FEATURES_URL)
        if cached:
            self._apply_server_state(cached, source="cache")
        interval = self.spec.refresh_interval
        self._client = AsyncUnleashClient(
            url=self.spec.url,
            app_name=self.spec.app_name,
            environment=self.spec.environment,
            instance_id=self._instance_id,
            refresh_interval=int(interval) if interval == int(interval) else interval,
            disable_metrics=True,  # we never call is_enabled, so there is nothing to report
            custom_headers={"Authorization": self._client_token},
            request_timeout=REQUEST_TIMEOUT,
            request_retries=0,  # the next poll is one refresh_interval away
            cache=cache,
            project_name=self.spec.project,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        # The one seam into the SDK's internals (6.x): observe every poll's result.
        transport = self._client._transport
        fetch = transport.fetch_features

        async def observed_fetch(etag: str = "") -> FetchResult:
            result = await fetch(etag=etag)
            self._after_fetch(result)
            return result

        transport.fetch_features = observed_fetch  # type: ignore[method-assign]
        self._admin = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            headers={"Authorization": self._admin_token} if self._admin_token else None,
        )
        try:
            await self._client.initialize_client()
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            await self.stop()
            raise UnleashConfigError(
                f"flags.unleash.url {self.spec.url!r} is not usable: {exc}"
            ) from exc

    async def stop(self) -> None:
        client, self._client = self._client, None
        admin, self._admin = self._admin, None
        try:
            if client is not None:
                await client.destroy()
            if admin is not None:
                await admin.close()
        finally:
            logging.getLogger(SDK_LOGGER).removeFilter(self._log_filter)
            self._connected = False

    async def __aenter__(self) -> UnleashFlags:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- polling --------------------------------------------------------------------------

    def _after_fetch(self, result: FetchResult) -> None:
        if result.raw_state:
            if not self._apply_server_state(result.raw_state, source="unleash"):
                return
        elif not result.not_modified:
            self._connected = False
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                if self._have_data:
                    log.warning(
                        "unleash.unreachable",
                        url=self.spec.url,
                        reason=self._log_filter.last_error,
                        using="last known state",
                    )
                else:
                    log.warning(
                        "unleash.degraded",
                        url=self.spec.url,
                        reason=self._log_filter.last_error,
                        detail="Unleash unreachable and no cached flag state: "
                        "every route at weight 0 until it answers",
                    )
            return
        self._connected = True
        if self._outage_since is not None:
            log.info(
                "unleash.reconnected",
                url=self.spec.url,
                outage_s=round(time.monotonic() - self._outage_since, 1),
            )
            self._outage_since = None
        self._publish()

    def _apply_server_state(self, raw: str, source: str) -> bool:
        try:
            self._server = parse_features(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("unleash.bad_state", source=source, error=str(exc))
            return False
        self._have_data = True
        self._publish()
        return True

    def _publish(self) -> None:
        """Recompute the snapshot (server state + unconfirmed writes); notify on change."""
        now = time.monotonic()
        for name, (state, stale, hold_until) in list(self._pending.items()):
            server = self._server.get(name, MISSING)
            if server == state:
                del self._pending[name]  # confirmed
            elif server not in stale or now > hold_until:
                # Changed again after our write (someone else wrote), or never confirmed.
                del self._pending[name]
                log.info("unleash.write_superseded", flag=name, wrote=state, unleash=server)
        merged = dict(self._server)
        merged.update({name: state for name, (state, _, _) in self._pending.items()})
        snapshot = parse_features({}, self._watched) | merged
        if snapshot == self._snapshot:
            return
        self._snapshot = snapshot
        for callback in list(self._callbacks):
            try:
                callback(dict(snapshot))
            except Exception:
                log.exception("unleash.on_change_failed", callback=repr(callback))

    # -- writes (Admin API) ---------------------------------------------------------------

    def _feature_url(self, flag: str = "") -> str:
        base = self.spec.url.rstrip("/")
        url = f"{base}/admin/projects/{quote(self.spec.project, safe='')}/features"
        return f"{url}/{quote(flag, safe='')}" if flag else url

    def _env_url(self, flag: str) -> str:
        return f"{self._feature_url(flag)}/environments/{quote(self.spec.environment, safe='')}"

    async def _request(self, method: str, url: str, body: Any = None) -> Any:
        if not self._admin_token:
            raise UnleashWriteError(
                f"writing to Unleash needs an admin API token in env {self.spec.admin_token_env}"
            )
        if self._admin is None:
            raise RuntimeError("UnleashFlags not started")
        try:
            async with self._admin.request(method, url, json=body) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    try:
                        message = json.loads(text).get("message") or text
                    except (ValueError, AttributeError):
                        message = text
                    raise UnleashWriteError(
                        f"Unleash refused {method} {url}: {resp.status} {message}", resp.status
                    )
                return json.loads(text) if text else None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UnleashWriteError(f"Unleash unreachable at {url}: {exc!r}") from exc

    async def _rollout_strategy(self, flag: str) -> tuple[dict[str, Any] | None, bool]:
        """(first flexibleRollout strategy in our environment or None, environment enabled)."""
        feature = await self._request("GET", self._feature_url(flag))
        for env in feature.get("environments") or []:
            if env.get("name") == self.spec.environment:
                for strategy in sorted(env.get("strategies") or [], key=_sort_order):
                    if strategy.get("name") == ROLLOUT_STRATEGY and not strategy.get("disabled"):
                        return strategy, bool(env.get("enabled"))
                return None, bool(env.get("enabled"))
        raise UnleashWriteError(
            f"environment {self.spec.environment!r} not found on toggle {flag!r}", 404
        )

    def _strategy_body(
        self, flag: str, percent: float, base: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        params = dict((base or {}).get("parameters") or {})
        params.setdefault("stickiness", "default")
        params.setdefault("groupId", flag)
        params["rollout"] = _unleash_rollout(percent)
        params[WEIGHT_PARAM] = f"{percent:.2f}"
        body: dict[str, Any] = {
            "name": ROLLOUT_STRATEGY,
            "constraints": list((base or {}).get("constraints") or []),
            "parameters": params,
        }
        for key in ("segments", "variants", "title", "disabled", "sortOrder"):
            if base and key in base:
                body[key] = base[key]
        return body

    async def set_rollout(self, flag: str, percent: float) -> None:
        """Set the toggle's gradual-rollout percentage (0-100, two decimals).

        Updates the first flexibleRollout strategy in the environment, or adds one. Leaves the
        toggle's on/off state alone (a rolled-back toggle stays off).
        """
        percent = _check_percent(percent)
        before = self._server.get(flag, MISSING)
        strategy, enabled = await self._rollout_strategy(flag)
        strategies = f"{self._env_url(flag)}/strategies"
        if strategy is None:
            await self._request("POST", strategies, self._strategy_body(flag, percent))
        else:
            body = self._strategy_body(flag, percent, strategy)
            await self._request("PUT", f"{strategies}/{quote(strategy['id'], safe='')}", body)
        self._hold(flag, FlagState(enabled=enabled, rollout=percent), before)

    async def set_enabled(self, flag: str, enabled: bool) -> None:
        """Turn the toggle on or off in the environment (off = every user to legacy).

        The rollout it holds is the latest one known once Unleash took the write (our own
        unconfirmed rollout write included), not the one from before the request.
        """
        before = self._server.get(flag, MISSING)
        await self._request("POST", f"{self._env_url(flag)}/{'on' if enabled else 'off'}")
        state = self._snapshot.get(flag, MISSING)
        if state.missing:
            strategy, _ = await self._rollout_strategy(flag)
            rollout = _strategy_rollout(strategy["parameters"]) if strategy else 100.0
            state = FlagState(enabled=enabled, rollout=rollout)
        self._hold(flag, FlagState(enabled=enabled, rollout=state.rollout), before)

    async def ensure_flag(self, flag: str, percent: float, *, stickiness: str = "default") -> bool:
        """Create the toggle, on, with a flexibleRollout strategy at `percent`.

        The strategy's groupId is the toggle name, so a user's bucket is the same for every
        weight. Returns False (and changes nothing) when the toggle already exists.
        """
        percent = _check_percent(percent)
        before = self._server.get(flag, MISSING)
        body = {"name": flag, "type": "release", "description": "strangler route weight"}
        try:
            await self._request("POST", self._feature_url(), body)
        except UnleashWriteError as exc:
            if exc.status != 409:
                raise
            try:  # 409 also means "archived": that one is not usable until revived
                await self._request("GET", self._feature_url(flag))
            except UnleashWriteError as missing:
                if missing.status == 404:
                    raise UnleashWriteError(
                        f"toggle {flag!r} is archived in Unleash: revive or delete it", 409
                    ) from exc
                raise
            return False
        strategy = self._strategy_body(flag, percent, {"parameters": {"stickiness": stickiness}})
        await self._request("POST", f"{self._env_url(flag)}/strategies", strategy)
        await self._request("POST", f"{self._env_url(flag)}/on")
        self._hold(flag, FlagState(enabled=True, rollout=percent), before)
        return True

    def _hold(self, flag: str, state: FlagState, before: FlagState) -> None:
        """Show a write Unleash accepted until a poll brings the server's view of it.

        Polls may still show any state from before this write — including our own earlier
        writes that are not confirmed yet — so all of those are stale, not someone else's.
        That includes what a poll brought while this write was on its way (`_server` now, when
        it differs from `before`): e.g. the poll that confirmed our rollback landing during
        resume's rollout write. Without it, that state would supersede the write at once and
        resume would enable the toggle at the rollout from before the rollback (issue 17)."""
        stale = {before, self._server.get(flag, MISSING)}
        earlier = self._pending.get(flag)
        if earlier is not None:
            stale |= earlier[1] | {earlier[0]}
        stale.discard(state)
        self._pending[flag] = (state, frozenset(stale), time.monotonic() + self._write_hold)
        self._publish()


def _sort_order(strategy: Mapping[str, Any]) -> int:
    order = strategy.get("sortOrder")
    return order if isinstance(order, int) else 0
