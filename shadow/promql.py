"""Gate evidence read from Prometheus, summed over every replica that it scrapes.

The queries use the contract's metric names (CONTRACT.md §6) over the current step's window:
- requests and errors: `strangler_requests_total{route,backend,code}`; an error is any 5xx,
  which includes the proxy's own 502 (connect failure) and 504 (timeout) answers.
  (`strangler_upstream_errors_total` is per upstream, not per route, so it is not used.)
- p99: `histogram_quantile(0.99, sum by (le) (increase(..._bucket[W])))`, the count of
  latency samples from `strangler_request_duration_seconds_count`.
- shadow: `strangler_shadow_comparisons_total{route,result}`; every result counts as compared
  and `mismatch` and `error` count as mismatched (a side that cannot answer is not equivalent).
`increase()` extrapolates to the window's edges, so counts are rounded to whole numbers.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from proxy.config.spec import CheckSpec, ClientTlsSpec, GateSourceSpec
from proxy.config.tls import TlsFileError, client_context, file_stamp
from shadow.evidence import BackendEvidence, CheckResult, Evidence

WINDOW_PLACEHOLDER = "$window"  # in a check's query: replaced by the step's window, e.g. "300s"


class MetricsUnavailable(Exception):
    """Prometheus could not answer: unreachable, an HTTP error, or a query it rejected."""


class CredentialsMissing(Exception):
    """`gate` names an environment variable that is not set (the message names it, never a
    value)."""


def credentials(spec: GateSourceSpec, env: Mapping[str, str] | None = None,
                ) -> dict[str, str]:
    """The headers `spec` sends with every query (tenant headers, Authorization), read from
    the environment. Raises CredentialsMissing naming every unset variable."""
    env = os.environ if env is None else env
    headers: dict[str, str] = {}
    missing: list[str] = []

    def value(var: str) -> str:
        got = env.get(var)
        if not got:
            missing.append(var)
            return ""
        return got

    for name, var in spec.headers:
        headers[name] = value(var)
    if spec.bearer_token_env:
        headers["authorization"] = f"Bearer {value(spec.bearer_token_env)}"
    if spec.basic_auth is not None:
        password = value(spec.basic_auth.password_env)
        token = f"{spec.basic_auth.username}:{password}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
    if missing:
        raise CredentialsMissing("gate: environment variable(s) not set: " + ", ".join(missing))
    return headers


# --- query builders (pure) ----------------------------------------------------------------


def label_value(value: str) -> str:
    """A PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def range_selector(window_seconds: float) -> str:
    return f"[{max(1, math.ceil(window_seconds))}s]"


def requests_query(route: str, backend: str, window_seconds: float, *, errors: bool = False) -> str:
    code = ',code=~"5.."' if errors else ""
    sel = f"route={label_value(route)},backend={label_value(backend)}{code}"
    return f"sum(increase(strangler_requests_total{{{sel}}}{range_selector(window_seconds)}))"


def p99_query(route: str, backend: str, window_seconds: float) -> str:
    sel = f"route={label_value(route)},backend={label_value(backend)}"
    return (
        "histogram_quantile(0.99, sum by (le) (increase("
        f"strangler_request_duration_seconds_bucket{{{sel}}}{range_selector(window_seconds)})))"
    )


def latency_count_query(route: str, backend: str, window_seconds: float) -> str:
    sel = f"route={label_value(route)},backend={label_value(backend)}"
    return (
        f"sum(increase(strangler_request_duration_seconds_count{{{sel}}}"
        f"{range_selector(window_seconds)}))"
    )


def comparisons_query(route: str, window_seconds: float, *, mismatched: bool = False) -> str:
    result = ',result=~"mismatch|error"' if mismatched else ""
    return (
        f"sum(increase(strangler_shadow_comparisons_total{{route={label_value(route)}{result}}}"
        f"{range_selector(window_seconds)}))"
    )


def check_query(query: str, window_seconds: float | None) -> str:
    if window_seconds is None:
        return query
    return query.replace(WINDOW_PLACEHOLDER, range_selector(window_seconds)[1:-1])


def parse_result(promql: str, body: Any) -> float | None:
    """One number from an instant-query response; None for no data (empty vector or NaN)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise MetricsUnavailable(f"Prometheus rejected {promql!r}: {error or body!r}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = result[1]
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise MetricsUnavailable(
                f"{promql!r} returned {len(result)} series; aggregate it to one number "
                f"(e.g. sum(...) or max(...))"
            )
        value = result[0]["value"][1]
    else:
        raise MetricsUnavailable(f"{promql!r} returned a {kind}, not a number")
    number = float(value)
    return None if math.isnan(number) else number


# --- the source ---------------------------------------------------------------------------


class PrometheusSource:
    """Reads gate evidence with instant queries against `url` (e.g. http://127.0.0.1:9090).

    Use as `async with PrometheusSource(url) as source:` or call `close()`; one HTTP session
    is kept for the source's lifetime.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, headers: Mapping[str, str] = (),
                 tls: ClientTlsSpec | None = None, spec: GateSourceSpec | None = None) -> None:
        self.url = url.rstrip("/")
        self.spec = spec  # what it was made from (a reload compares it)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = dict(headers)  # credentials: never logged, never in a message
        self._tls = tls  # https: trusted CAs and client certificate, files re-read on change
        self._stamp: tuple | None = None
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_spec(cls, spec: GateSourceSpec, env: Mapping[str, str] | None = None,
                  ) -> PrometheusSource:
        """The source `gate:` describes; CredentialsMissing for an unset variable."""
        assert spec.url is not None
        return cls(spec.url, headers=credentials(spec, env), tls=spec.tls, spec=spec)

    async def _ensure_session(self) -> aiohttp.ClientSession:
        """One session for the source's lifetime, remade when its TLS files change."""
        if self._tls is not None:
            stamp = file_stamp(self._tls)
            if stamp != self._stamp:
                try:
                    ctx = client_context(self._tls)
                except TlsFileError as exc:
                    if self._ssl is None:
                        raise MetricsUnavailable(f"Prometheus at {self.url}: {exc.message}") \
                            from None
                else:  # a half-written rotation keeps the previous context
                    self._stamp, self._ssl = stamp, ctx
                    if self._session is not None:
                        await self._session.close()
                        self._session = None
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers,
                                                  connector=connector)
        return self._session

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, promql: str) -> float | None:
        """Instant query; None when there is no data. Raises MetricsUnavailable."""
        session = await self._ensure_session()
        endpoint = f"{self.url}/api/v1/query"
        try:
            async with session.post(endpoint, data={"query": promql}) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status in (401, 403):
                    raise MetricsUnavailable(
                        f"Prometheus at {self.url} refused the gate's credentials (HTTP "
                        f"{resp.status}): check gate.headers, bearer_token_env or basic_auth")
                if resp.status >= 400 and not isinstance(body, dict):
                    raise MetricsUnavailable(
                        f"Prometheus at {self.url} answered HTTP {resp.status} to {promql!r}"
                    )
        except aiohttp.ClientConnectorCertificateError as e:
            raise MetricsUnavailable(
                f"Prometheus at {self.url}: its TLS certificate was refused "
                f"({e.certificate_error}); set gate.tls.ca_file") from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} is unreachable: {e.__class__.__name__}: {e}"
            ) from e
        return parse_result(promql, body)

    async def check(self, spec: CheckSpec, window_seconds: float | None = None) -> CheckResult:
        value = await self.query(check_query(spec.query, window_seconds))
        return CheckResult(spec.name, spec.query, value, spec.max, spec.min)

    async def evidence(
        self,
        route: str,
        weight: float,
        window_seconds: float,
        shadow_enabled: bool,
        checks: Iterable[CheckSpec] = (),
    ) -> Evidence:
        """The route's evidence over the last `window_seconds` (the current step), all replicas."""
        w = window_seconds
        queries = [
            requests_query(route, "legacy", w),
            requests_query(route, "legacy", w, errors=True),
            p99_query(route, "legacy", w),
            latency_count_query(route, "legacy", w),
            requests_query(route, "target", w),
            requests_query(route, "target", w, errors=True),
            p99_query(route, "target", w),
            latency_count_query(route, "target", w),
            comparisons_query(route, w),
            comparisons_query(route, w, mismatched=True),
        ]
        check_specs = tuple(checks)
        values = await asyncio.gather(*(self.query(q) for q in queries))
        results = await asyncio.gather(*(self.check(c, w) for c in check_specs))
        c = [_count(v) for v in values]
        # Each series is extrapolated on its own: keep the parts within their wholes.
        return Evidence(
            route=route,
            weight=weight,
            legacy=BackendEvidence(c[0], min(c[1], c[0]), values[2], c[3]),
            target=BackendEvidence(c[4], min(c[5], c[4]), values[6], c[7]),
            compared=c[8],
            mismatched=min(c[9], c[8]),
            shadow_enabled=shadow_enabled,
            checks=tuple(results),
        )


def _count(x: float | None) -> int:
    return 0 if x is None or not math.isfinite(x) else max(0, round(x))
