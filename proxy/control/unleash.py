"""Route weights from Unleash: one toggle per route, its gradual-rollout percentage is the weight.

`UnleashFlags` keeps a snapshot `{toggle name: FlagState}` fresh by polling Unleash's client API
every `refresh_interval` and writes through the Unleash Admin API, both on one aiohttp session
of its own (remade when its TLS files change, see TLS below). The proxy evaluates its split
itself from the snapshot (stable hash, 0.01% granularity); no SDK evaluation is involved.

Why a poller of our own and not the Python SDK: all this backend needs from an SDK is "the
features body, each time a poll brings one" and "the poll failed, and why" (the outage warnings,
`connected`, `/readyz`'s `flags_stale`). The SDK's public interface gives neither: its event
callback reports evaluations and a `FETCHED` event without failures, its errors only reach its
log, and its file cache has no documented format. Reaching into its internals for them (the
transport's `fetch_features`, log text, the cache's key) broke silently whenever the SDK
reorganised. The client API, by contrast, is Unleash's documented, versioned contract with every
SDK: `GET {url}/client/features` with the token in `Authorization`, the identification headers
(`UNLEASH-APPNAME`, `UNLEASH-INSTANCEID`, `UNLEASH-CONNECTION-ID`, `UNLEASH-SDK`,
`UNLEASH-INTERVAL`), `If-None-Match` with the last `ETag` (304 when nothing changed), and
`POST {url}/client/register` once at start so the instance shows in Unleash's Applications view.
Usage metrics (`/client/metrics`) are not sent: nothing here calls `is_enabled`, so there are
none. tests/test_unleash_seam.py pins these requests against a stand-in server in the fast tier;
the `unleash` tier runs them against a real Unleash.

Weights with two decimals: the Admin API stores a strategy's `rollout` as a string without
checking it, but Unleash's SDKs (Yggdrasil) evaluate a non-integer rollout such as "25.5" as 0%.
So `rollout` always holds an integer (what the UI and every other SDK understand) and the exact
weight goes in a parameter of our own, `stranglerWeight`. The snapshot uses `stranglerWeight`
while it agrees with `rollout` (rounds to it); when someone edits the rollout in Unleash's UI,
the rollout wins.

Fail-safe: every features body Unleash sends is kept in `cache_dir/features.json` (written to a
temporary file, fsynced, then renamed over the old one: a crash leaves the old or the new file,
never half of one). Unleash unreachable at start -> the cached state; no cache -> `degraded`
(the caller routes everything to legacy); unreachable mid-run -> the last known state and one
warning per outage, naming the error.

TLS (an https url): one client context for polls and Admin API writes, from
`flags.unleash.tls` (the system CAs when absent; `ca_file`, a client certificate, `server_name`,
`verify`, `min_version`, as for an https upstream). Its files are checked before every request
(a poll comes every `refresh_interval`) and re-read when they changed: a new session is made with
the new context, and the old one is closed once the requests still on it are done. A TLS failure
(unknown CA, expired, name mismatch, client certificate refused, a TLS terminator's refusal) is
named in words, logged once per cause, and kept in `tls_failure` for /readyz until a poll works.

A write (`set_rollout`, `set_enabled`, `ensure_flag`) takes effect in the snapshot as soon as
Unleash has accepted it, and holds until a poll confirms it (or `write_hold` seconds pass and
the server says otherwise), so a poll that was already in flight cannot flip it back.

Errors: `UnleashError` > `UnleashConfigError` (token env var not set, url not http(s), TLS
files that cannot be loaded),
`UnleashWriteError` (Admin API refused the write or could not be reached; `.status` is None
when unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from proxy import __version__
from proxy.config.spec import ClientTlsSpec, UnleashSpec
from proxy.config.tls import TlsFileError
from proxy.dataplane.tls import ClientCredentials, tls_cause

__all__ = [
    "CACHE_FILE",
    "WEIGHT_PARAM",
    "FlagState",
    "UnleashConfigError",
    "UnleashError",
    "UnleashFlags",
    "UnleashWriteError",
    "client_headers",
    "parse_features",
    "registration",
]

log = structlog.get_logger("strangler.unleash")

WEIGHT_PARAM = "stranglerWeight"
ROLLOUT_STRATEGY = "flexibleRollout"
REQUEST_TIMEOUT = 5.0  # seconds per request (polls, registration, admin writes)
FEATURES_PATH = "client/features"  # the client API, relative to the configured url (.../api)
REGISTER_PATH = "client/register"
CACHE_FILE = "features.json"  # in cache_dir
CACHE_FORMAT = 1
SDK_NAME = "strangler"  # the UNLEASH-SDK header and the registration's sdkVersion: NAME:VERSION
STRATEGIES = ("default", ROLLOUT_STRATEGY)  # the strategy names this client understands
TLS_KEY = "flags.unleash.tls"  # where failures tell users to look
PEER = "Unleash"
# What nginx, the usual TLS terminator in front of Unleash (which has no https of its own),
# answers instead of a TLS alert: 400 with these words in its error page.
_TERMINATOR_REFUSALS = (
    ("No required SSL certificate was sent", "client_cert_required",
     f"the TLS terminator in front of Unleash requires a client certificate (set "
     f"{TLS_KEY}.cert_file and key_file)"),
    ("The SSL certificate error", "client_cert_refused",
     "the TLS terminator in front of Unleash refused the client certificate (not signed by a CA "
     f"it trusts, or expired: check {TLS_KEY}.cert_file)"),
    ("The plain HTTP request was sent to HTTPS port", "http_to_https_port",
     "flags.unleash.url is http:// but that port speaks TLS: use https://"),
)


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


def client_headers(spec: UnleashSpec, token: str, instance_id: str, connection_id: str,
                   ) -> dict[str, str]:
    """The headers of every client API request (Unleash's SDK specification names them)."""
    return {
        "Authorization": token,
        "UNLEASH-APPNAME": spec.app_name,
        "UNLEASH-INSTANCEID": instance_id,
        "UNLEASH-CONNECTION-ID": connection_id,
        "UNLEASH-SDK": f"{SDK_NAME}:{__version__}",
        "UNLEASH-INTERVAL": str(round(spec.refresh_interval * 1000)),
        "User-Agent": f"{SDK_NAME}/{__version__}",
    }


def registration(spec: UnleashSpec, instance_id: str, connection_id: str, started: str,
                 ) -> dict[str, Any]:
    """The body of `POST client/register` (Unleash's clientApplicationSchema)."""
    return {
        "appName": spec.app_name,
        "instanceId": instance_id,
        "connectionId": connection_id,
        "sdkVersion": f"{SDK_NAME}:{__version__}",
        "strategies": list(STRATEGIES),
        "started": started,
        "interval": round(spec.refresh_interval * 1000),
        "platformName": platform.python_implementation(),
        "platformVersion": platform.python_version(),
    }


def tls_failure_of(exc: BaseException) -> tuple[str, str] | None:
    """(cause, sentence) when a request to Unleash failed in TLS, else None."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            return tls_cause(err.certificate_error, PEER, TLS_KEY)
        if isinstance(err, aiohttp.ClientConnectorError) and \
                isinstance(err.os_error, ssl.SSLError):
            return tls_cause(err.os_error, PEER, TLS_KEY)
        if isinstance(err, ssl.SSLError | ssl.CertificateError):
            return tls_cause(err, PEER, TLS_KEY)
        err = err.__cause__ or err.__context__
    return None


def terminator_refusal(status: int, body: str) -> tuple[str, str] | None:
    """(cause, sentence) when a 400 is a TLS terminator refusing how we speak TLS to it."""
    if status != 400:
        return None
    for words, cause, sentence in _TERMINATOR_REFUSALS:
        if words in body:
            return cause, sentence
    return None


def _base_url(spec: UnleashSpec) -> URL:
    """The configured url (ends in /api) as a directory, or UnleashConfigError."""
    try:
        url = URL(spec.url)
    except (TypeError, ValueError) as exc:
        raise UnleashConfigError(f"flags.unleash.url {spec.url!r} is not usable: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UnleashConfigError(
            f"flags.unleash.url {spec.url!r} is not usable: expected an http:// or https:// url "
            "of Unleash's API, e.g. http://unleash:4242/api"
        )
    return url if url.path.endswith("/") else url.with_path(url.path + "/")


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
        self._connection_id = str(uuid.uuid4())  # one per start of this client
        self._session: aiohttp.ClientSession | None = None
        self._creds: ClientCredentials | None = None  # https: the context, following its files
        self._inflight: dict[aiohttp.ClientSession, int] = {}  # requests on each session
        self._cache_writing: asyncio.Future[None] | None = None  # the cache file being written
        self._tls_down: tuple[str, str] | None = None  # (cause, sentence) of the last poll
        self._outage_logged = ""  # what this outage was logged as: "unreachable" or a TLS cause
        self._new_context = False  # use_tls() was called: the next request makes a new session
        self._poller: asyncio.Task | None = None
        self._etag = ""  # of the features body the snapshot was built from
        self._last_error: str | None = None  # why the last poll failed
        self._registered = False
        self._started_at = ""

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
    def tls_failure(self) -> tuple[str, str] | None:
        """(cause, sentence) while polls fail in TLS (e.g. an unknown CA), else None."""
        return self._tls_down

    @property
    def last_error(self) -> str | None:
        """Why the last poll failed (None before any failure)."""
        return self._last_error

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
        """Load the cache, then fetch once from Unleash; never raises for an unreachable server.

        Raises UnleashConfigError for a url that is not http(s), or TLS files that cannot be
        loaded (`validate` reports those first)."""
        if self._session is not None:
            raise RuntimeError("UnleashFlags already started")
        base = _base_url(self.spec)
        if base.scheme == "https":
            self._creds = _credentials(self.spec.tls or ClientTlsSpec())
        self._features_url = base.join(URL(FEATURES_PATH))
        self._register_url = base.join(URL(REGISTER_PATH))
        self._headers = client_headers(self.spec, self._client_token, self._instance_id,
                                       self._connection_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cached = self._read_cache()
        if cached is not None:
            self._apply_server_state(cached, source="cache")
        self._started_at = datetime.now(UTC).isoformat()
        self._session = self._new_session()
        await self._poll()
        self._poller = asyncio.get_running_loop().create_task(self._poll_loop(),
                                                              name="unleash-poll")

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        session, self._session = self._session, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        writing, self._cache_writing = self._cache_writing, None
        if writing is not None:  # the last state polled reaches the cache file before we stop
            with contextlib.suppress(Exception):  # `_write_cache` reports its own failures
                await writing
        for other in [session, *self._inflight]:
            if other is not None and not other.closed:
                await other.close()
        self._inflight.clear()
        self._connected = False

    def use_tls(self, tls: ClientTlsSpec) -> None:
        """Other TLS settings (a reload): polls and writes use them from the next request on.
        Raises UnleashConfigError when their files cannot be loaded (the old ones stay)."""
        if self._creds is None:
            raise UnleashConfigError("flags.unleash.tls is only used with an https:// url")
        if tls == self._creds.spec:
            return
        creds = _credentials(tls)
        self.spec = replace(self.spec, tls=tls)
        self._creds = creds
        self._new_context = True

    # -- the session ----------------------------------------------------------------------

    def _new_session(self) -> aiohttp.ClientSession:
        self._new_context = False
        connector = None
        if self._creds is not None:
            connector = aiohttp.TCPConnector(ssl=self._creds.ctx)
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
                                     connector=connector)

    def _tls_kw(self) -> dict[str, Any]:
        tls = self.spec.tls
        return {"server_hostname": tls.server_name} if tls and tls.server_name else {}

    async def _tls_failure(self, exc: BaseException) -> tuple[str, str] | None:
        """(cause, sentence) when `exc` is a TLS failure. A TLS 1.3 server refuses a client
        certificate with an alert after the handshake, which reaches aiohttp as a broken pipe
        or a closed connection: then one bare handshake waits for that alert to name it."""
        tls = tls_failure_of(exc)
        if tls is not None or self._creds is None or not isinstance(
                exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError) or isinstance(
                exc, aiohttp.ClientConnectorError):
            return tls
        url = self._features_url
        name = self.spec.tls.server_name if self.spec.tls else None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    url.host, url.port, ssl=self._creds.ctx, server_hostname=name or url.host)
                try:
                    await asyncio.wait_for(reader.read(1), 1.0)
                finally:
                    writer.close()
        except ssl.SSLError as alert:
            return tls_cause(alert, PEER, TLS_KEY)
        except (TimeoutError, OSError):
            pass
        return None

    @contextlib.asynccontextmanager
    async def _use_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The session for one request. When the TLS files changed (or a reload named other
        ones) a new session is made with the new context first; the old one is closed once the
        requests still on it are done, so a rotation never cuts a poll or a write short."""
        if self._session is None:
            raise RuntimeError("UnleashFlags not started")
        if self._creds is not None and (self._creds.refresh() or self._new_context):
            old, self._session = self._session, self._new_session()
            if old not in self._inflight:
                await old.close()
        session = self._session
        self._inflight[session] = self._inflight.get(session, 0) + 1
        try:
            yield session
        finally:
            left = self._inflight.pop(session) - 1
            if left:
                self._inflight[session] = left
            elif session is not self._session and not session.closed:
                await session.close()

    async def __aenter__(self) -> UnleashFlags:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- polling (Unleash's client API) ---------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.spec.refresh_interval)
            try:
                await self._poll()
                if self._connected and not self._registered:
                    self._registered = await self._register()
            except Exception:  # a bug here must not end polling: the next poll may work
                log.exception("unleash.poll_failed", url=self.spec.url)

    async def _poll(self) -> None:
        """One `GET client/features`: a new body, 304 (unchanged), or a failure."""
        headers = dict(self._headers)
        if self._etag:
            headers["If-None-Match"] = self._etag
        params = {"project": self.spec.project}
        body: str | None = None
        etag = ""
        try:
            async with self._use_session() as session, session.get(
                    self._features_url, headers=headers, params=params,
                    **self._tls_kw()) as resp:
                if resp.status == 200:
                    body = await resp.text()
                    etag = resp.headers.get("ETag", "")
                elif resp.status != 304:
                    refusal = terminator_refusal(resp.status, await _excerpt(resp))
                    if refusal is not None:
                        self._last_error = f"TLS to Unleash failed: {refusal[1]}"
                    else:
                        self._last_error = (f"Unleash answered {resp.status} {resp.reason} to "
                                            f"GET {self._features_url}")
                    self._poll_failed(refusal)
                    return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            tls = await self._tls_failure(exc)
            if tls is not None:
                self._last_error = f"TLS to Unleash failed: {tls[1]}"
            else:
                self._last_error = f"GET {self._features_url}: {type(exc).__name__}: {exc}"
            self._poll_failed(tls)
            return
        if body is not None:
            if not self._apply_server_state(body, source="unleash"):
                return  # reported; the next poll asks again without If-None-Match
            if etag != self._etag or not etag:
                # Its own task, shielded: a poll cancelled by `stop` does not abandon the write,
                # and `stop` waits for it (a restart during an outage must find this state).
                writing = asyncio.ensure_future(asyncio.to_thread(self._write_cache, body, etag))
                self._cache_writing = writing
                await asyncio.shield(writing)
            self._etag = etag
        self._poll_reached()

    def _poll_failed(self, tls: tuple[str, str] | None = None) -> None:
        """One line per outage, and one more each time its TLS cause changes (not per poll)."""
        self._connected = False
        self._tls_down = tls
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        kind = f"tls:{tls[0]}" if tls is not None else "unreachable"
        if kind == self._outage_logged:
            return
        self._outage_logged = kind
        using = ("last known state" if self._have_data else
                 "no cached flag state: every route at weight 0 until it answers")
        if tls is not None:
            log.error("unleash.tls_failed", url=self.spec.url, cause=tls[0], reason=tls[1],
                      using=using)
        elif self._have_data:
            log.warning("unleash.unreachable", url=self.spec.url, reason=self._last_error,
                        using=using)
        else:
            log.warning("unleash.degraded", url=self.spec.url, reason=self._last_error,
                        detail="Unleash unreachable and no cached flag state: every route at "
                        "weight 0 until it answers")

    def _poll_reached(self) -> None:
        self._connected = True
        self._tls_down = None
        self._outage_logged = ""
        if self._outage_since is not None:
            log.info(
                "unleash.reconnected",
                url=self.spec.url,
                outage_s=round(time.monotonic() - self._outage_since, 1),
            )
            self._outage_since = None
        self._publish()

    async def _register(self) -> bool:
        """`POST client/register` (the Applications view in Unleash); True once accepted."""
        body = registration(self.spec, self._instance_id, self._connection_id, self._started_at)
        try:
            async with self._use_session() as session, session.post(
                    self._register_url, headers=self._headers, json=body,
                    **self._tls_kw()) as resp:
                if resp.status < 300:
                    return True
                log.info("unleash.register_refused", status=resp.status, url=self.spec.url)
                return resp.status < 500  # refused for good (e.g. 403): do not ask every poll
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False  # unreachable: the poll reports it

    # -- the cache file -------------------------------------------------------------------

    def _cache_key(self) -> dict[str, str]:
        return {"url": self.spec.url, "project": self.spec.project,
                "environment": self.spec.environment}

    def _read_cache(self) -> str | None:
        """The features body of the last poll that brought one, when it is for this Unleash."""
        path = self.cache_dir / CACHE_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unleash.cache_unreadable", path=str(path), error=str(exc))
            return None
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            log.warning("unleash.cache_unreadable", path=str(path), error="unknown format")
            return None
        if {k: doc.get(k) for k in self._cache_key()} != self._cache_key():
            log.warning("unleash.cache_other_server", path=str(path),
                        detail="the cached flag state is for another Unleash url, project or "
                        "environment: not used")
            return None
        return json.dumps(doc.get("features") or {})

    def _write_cache(self, body: str, etag: str) -> None:
        """Replace the cache file atomically (temporary file, fsync, rename, fsync the dir)."""
        try:
            doc = {"format": CACHE_FORMAT, **self._cache_key(), "etag": etag,
                   "saved_at": datetime.now(UTC).isoformat(), "features": json.loads(body)}
            fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=self.cache_dir)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, separators=(",", ":"))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.cache_dir / CACHE_FILE)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(self.cache_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except (OSError, ValueError) as exc:  # routing goes on; only a restart loses it
            log.warning("unleash.cache_write_failed", path=str(self.cache_dir / CACHE_FILE),
                        error=str(exc))

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
        try:
            async with self._use_session() as session, session.request(
                    method, url, json=body, headers={"Authorization": self._admin_token},
                    **self._tls_kw()) as resp:
                text = await resp.text()
                refusal = terminator_refusal(resp.status, text)
                if refusal is not None:
                    raise UnleashWriteError(f"Unleash unreachable at {url}: TLS: {refusal[1]}")
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
            tls = await self._tls_failure(exc)
            if tls is not None:
                raise UnleashWriteError(f"Unleash unreachable at {url}: TLS: {tls[1]}") from exc
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


def _credentials(tls: ClientTlsSpec) -> ClientCredentials:
    try:
        return ClientCredentials(tls, PEER)
    except TlsFileError as exc:
        raise UnleashConfigError(f"{TLS_KEY}.{exc.field}: {exc.message}") from None


async def _excerpt(resp: aiohttp.ClientResponse, limit: int = 4096) -> str:
    """The start of an error answer (enough for a TLS terminator's error page)."""
    try:
        return (await resp.content.read(limit)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        return ""


def _sort_order(strategy: Mapping[str, Any]) -> int:
    order = strategy.get("sortOrder")
    return order if isinstance(order, int) else 0
