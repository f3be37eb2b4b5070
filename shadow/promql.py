"""Gate evidence read from Prometheus, summed over every replica that it scrapes.

The queries use the contract's metric names (docs/contract.md §6) over the current step's
window (the time since the step began):
- requests and errors: `strangler_requests_total{route,backend,code}`; an error is any 5xx,
  which includes the proxy's own 502 (connect failure) and 504 (timeout) answers.
  (`strangler_upstream_errors_total` is per upstream, not per route, so it is not used.)
- latency: the bucket counts themselves, `sum by (le) (increase(..._bucket[W]))`. The buckets
  are the gate's own (`shadow.stats.LATENCY`), so the p99 and its bounds are computed by the
  same code as in-process: not `histogram_quantile`, whose linear interpolation differs.
- shadow: `strangler_shadow_comparisons_total{route,result}`: match and mismatch are compared
  pairs, error ones are not; which side did not answer, from `strangler_shadow_errors_total`.
- paired latency: `strangler_shadow_latency_difference_seconds_bucket{route,direction}`.
`increase()` extrapolates to the window's edges, so counts are rounded to whole numbers.
Samples scraped before the step began are outside the window, so a new step does not see the
old one's requests (except those still in flight at the change).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import math
import os
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from proxy.config.spec import CheckSpec, ClientTlsSpec, GateSourceSpec
from proxy.config.tls import TlsFileError, client_context, file_stamp
from shadow.evidence import BackendEvidence, CheckResult, Evidence
from shadow.stats import DIFFERENCE, LATENCY, PAIRED, Grid

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


def latency_buckets_query(route: str, backend: str, window_seconds: float) -> str:
    """The latency histogram's bucket counts over the window (one series per `le`)."""
    sel = f"route={label_value(route)},backend={label_value(backend)}"
    return (
        "sum by (le) (increase("
        f"strangler_request_duration_seconds_bucket{{{sel}}}{range_selector(window_seconds)}))"
    )


def comparisons_query(route: str, window_seconds: float, result: str = "match|mismatch") -> str:
    """Shadow pairs with a result matching `result` (compared pairs by default)."""
    return (
        f"sum(increase(strangler_shadow_comparisons_total{{route={label_value(route)},"
        f'result=~"{result}"}}{range_selector(window_seconds)}))'
    )


def shadow_errors_query(route: str, window_seconds: float) -> str:
    return (
        "sum by (side, kind) (increase(strangler_shadow_errors_total"
        f"{{route={label_value(route)}}}{range_selector(window_seconds)}))"
    )


def paired_query(route: str, window_seconds: float) -> str:
    return (
        "sum by (direction, le) (increase(strangler_shadow_latency_difference_seconds_bucket"
        f"{{route={label_value(route)}}}{range_selector(window_seconds)}))"
    )


def fallbacks_query(route: str, window_seconds: float) -> str:
    return (
        f"sum(increase(strangler_fallbacks_total{{route={label_value(route)}}}"
        f"{range_selector(window_seconds)}))"
    )


def check_query(query: str, window_seconds: float | None) -> str:
    if window_seconds is None:
        return query
    return query.replace(WINDOW_PLACEHOLDER, range_selector(window_seconds)[1:-1])


def _data(promql: str, body: Any) -> tuple[Any, Any]:
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise MetricsUnavailable(f"Prometheus rejected {promql!r}: {error or body!r}")
    data = body.get("data") or {}
    return data.get("resultType"), data.get("result")


def parse_vector(promql: str, body: Any) -> list[tuple[dict[str, str], float]]:
    """Every series of an instant-query vector: (labels, value); NaN values are left out."""
    kind, result = _data(promql, body)
    if kind != "vector":
        raise MetricsUnavailable(f"{promql!r} returned a {kind}, not a vector")
    out = []
    for item in result or ():
        value = float(item["value"][1])
        if not math.isnan(value):
            out.append((item.get("metric") or {}, value))
    return out


def bucket_counts(grid: Grid, series: Iterable[tuple[dict[str, str], float]]) -> list[float]:
    """Per-bucket counts of `grid` from cumulative `le` series (an `le` that is not one of the
    grid's bounds, e.g. from an older version, is ignored)."""
    bounds = (*grid.le_bounds(), math.inf)
    cumulative: dict[float, float] = {}
    for labels, value in series:
        le = float(labels.get("le", "nan"))
        i = _nearest(bounds, le)
        if i is not None:
            cumulative[bounds[i]] = max(cumulative.get(bounds[i], 0.0), value)
    # increase() extrapolates every series on its own: keep the cumulative counts monotone
    running = 0.0
    for b in bounds:
        if b in cumulative:
            running = max(running, cumulative[b])
            cumulative[b] = running
    return grid.counts_from_cumulative(cumulative)


def _nearest(bounds: tuple[float, ...], le: float) -> int | None:
    if math.isinf(le):
        return len(bounds) - 1
    i = bisect.bisect_left(bounds, le * (1 - 1e-4))
    if i < len(bounds) and abs(bounds[i] - le) <= 1e-4 * le:
        return i
    return None


def parse_result(promql: str, body: Any) -> float | None:
    """One number from an instant-query response; None for no data (empty vector or NaN)."""
    kind, result = _data(promql, body)
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
        # SNI and the name Prometheus's certificate must carry (gate.tls.server_name); None: the
        # url's host
        self._server_name = tls.server_name if tls is not None else None

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
        return parse_result(promql, await self._body(promql))

    async def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Instant query answering a vector: every series' labels and value."""
        return parse_vector(promql, await self._body(promql))

    async def _body(self, promql: str) -> Any:
        session = await self._ensure_session()
        endpoint = f"{self.url}/api/v1/query"
        try:
            async with session.post(endpoint, data={"query": promql},
                                    server_hostname=self._server_name) as resp:
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
        return body

    async def check(self, spec: CheckSpec, window_seconds: float | None = None) -> CheckResult:
        """A check's value; a `dry_run` check whose query fails reports no data instead of
        holding the gate (it is never judged)."""
        try:
            value = await self.query(check_query(spec.query, window_seconds))
        except MetricsUnavailable:
            if not spec.dry_run:
                raise
            value = None
        return CheckResult(spec.name, spec.query, value, spec.max, spec.min, spec.dry_run)

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
        numbers = [
            requests_query(route, "legacy", w),
            requests_query(route, "legacy", w, errors=True),
            requests_query(route, "target", w),
            requests_query(route, "target", w, errors=True),
            comparisons_query(route, w),
            comparisons_query(route, w, "mismatch"),
            comparisons_query(route, w, "error"),
            fallbacks_query(route, w),
        ]
        vectors = [
            latency_buckets_query(route, "legacy", w),
            latency_buckets_query(route, "target", w),
            shadow_errors_query(route, w),
            paired_query(route, w),
        ]
        check_specs = tuple(checks)
        values, series, results = await asyncio.gather(
            asyncio.gather(*(self.query(q) for q in numbers)),
            asyncio.gather(*(self.vector(q) for q in vectors)),
            asyncio.gather(*(self.check(c, w) for c in check_specs)))
        c = [_count(v) for v in values]
        legacy_lat, target_lat, errors, paired = series
        kinds = tuple(sorted(((lab.get("side", "?"), lab.get("kind", "?")), _count(v))
                             for lab, v in errors if _count(v)))
        slower = bucket_counts(PAIRED, [(lab, v) for lab, v in paired
                                        if lab.get("direction") == "target_slower"])
        faster = bucket_counts(PAIRED, [(lab, v) for lab, v in paired
                                        if lab.get("direction") == "target_faster"])
        # Each series is extrapolated on its own: keep the parts within their wholes.
        return Evidence(
            route=route,
            weight=weight,
            legacy=BackendEvidence(c[0], min(c[1], c[0]),
                                   tuple(bucket_counts(LATENCY, legacy_lat))),
            target=BackendEvidence(c[2], min(c[3], c[2]),
                                   tuple(bucket_counts(LATENCY, target_lat))),
            compared=c[4],
            mismatched=min(c[5], c[4]),
            shadow_enabled=shadow_enabled,
            checks=tuple(results),
            shadow_errors=max(c[6], sum(n for _, n in kinds)),
            shadow_error_kinds=kinds,
            paired=tuple(DIFFERENCE.join(slower, faster)),
            fallbacks=c[7],
        )


def _count(x: float | None) -> int:
    return 0 if x is None or not math.isfinite(x) else max(0, round(x))
