"""Frozen, typed form of routes.yaml (version 1).

`proxy.config.loader.load_config` turns a file into a `Config`; everything downstream (the compiled
route table, the data plane, the gate) reads these values and never the raw YAML.
Durations are float seconds, sizes are int bytes, weights are float percent (0-100, 2 decimals).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy.config.templates import DeclaredTemplate

MiB = 1024 * 1024

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True, slots=True)
class ClientTlsSpec:
    """TLS towards a server the proxy calls (an https upstream, Prometheus): what it trusts and
    which certificate it shows. Paths are absolute (resolved against the config file's
    directory); the files are re-read when they change (proxy.dataplane.tls)."""

    ca_file: str | None = None  # PEM bundle trusted instead of the system CAs
    cert_file: str | None = None  # client certificate (mTLS), with key_file
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name the certificate must carry; else the host
    verify: bool = True  # False: no certificate check at all (warned at load and in /readyz)
    min_version: str = "1.2"
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ServerTlsSpec:
    """TLS on a listener (`tls` for the proxy, `admin.tls`); files re-read when they change."""

    cert_file: str
    key_file: str
    min_version: str = "1.2"
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    name: str
    url: str  # as written, e.g. "http://127.0.0.1:8001"
    host: str
    port: int
    scheme: str = "http"  # http | https
    tls: ClientTlsSpec | None = None  # set for every https upstream (defaults: system CAs)
    # The Host sent upstream: "client" (as received), "upstream" (the url's host[:port]) or a
    # literal name.
    host_header: str = "client"
    base_path: str = ""  # path prefix of the url without trailing slash ("" for none)
    connect_timeout: float = 1.0
    timeout: float = 30.0  # from the request's last byte until the response headers arrive
    read_timeout: float = 60.0  # between two reads of the response (nginx's proxy_read_timeout)
    max_connections: int = 256
    max_header_bytes: int = 64 * 1024  # the response head; larger -> 502
    line: int = 0


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    max_body: int = 100 * MiB
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    # a client that takes no byte of its answer this long is cut (nginx's send_timeout)
    send_timeout: float = 60.0
    drain_timeout: float = 30.0
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100


@dataclass(frozen=True, slots=True)
class MatchSpec:
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] | None = None  # upper-case; None = any (see `matched_methods`)
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, exact value)

    def matched_methods(self) -> frozenset[str] | None:
        """The methods the route takes: `methods`, with HEAD wherever GET is listed (HEAD is GET
        without the body, RFC 9110 9.3.2; nginx's `limit_except GET` allows both). None: any."""
        if self.methods is None:
            return None
        return frozenset(self.methods) | ({"HEAD"} if "GET" in self.methods else set())


@dataclass(frozen=True, slots=True)
class StickySpec:
    header: str | None = None  # lower-case header name
    cookie: str | None = None


@dataclass(frozen=True, slots=True)
class CompareSpec:
    headers: tuple[str, ...] = ("content-type",)  # lower-case
    ignore: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()
    numeric_tolerance: float = 0.0
    array_keys: tuple[tuple[str, str], ...] = ()  # (array path, key field)
    noise_upstream: str | None = None
    max_decoded: int = 16 * MiB  # a body decoding to more is skipped (a decompression bomb)
    max_fields: int = 2000  # distinct field rows per route and step; the rest count as `other`


@dataclass(frozen=True, slots=True)
class ShadowSpec:
    enabled: bool = True
    sample: float = 1.0
    # Off by default: mirroring target-served requests back to legacy keeps the monolith's
    # load at 100% whatever the weight, and relieving it is why teams migrate.
    reverse: bool = False
    methods: tuple[str, ...] = ("GET", "HEAD")
    allow_unsafe: bool = False
    max_body: int = 1 * MiB
    compare: CompareSpec = field(default_factory=CompareSpec)
    pipeline: bool = True  # GET mirrors may be HTTP/1.1-pipelined to a fast target
    max_rate: float | None = 100.0  # mirrors per second for this route; None: no route limit


@dataclass(frozen=True, slots=True)
class CheckSpec:
    name: str
    query: str
    max: float | None = None
    min: float | None = None
    dry_run: bool = False  # evaluated and reported, never fails or holds the gate


@dataclass(frozen=True, slots=True)
class AutoSpec:
    enabled: bool = False
    interval: float = 60.0


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    """Fast automatic rollback when target errors spike, independent of promotion."""

    enabled: bool = True
    window: float = 5.0  # sliding window, seconds
    min_requests: int = 20  # target requests in the window before it can trigger
    max_error_rate: float = 0.2  # target error rate in the window...
    min_error_rate_increase: float = 0.1  # ...and at least this much above legacy's


@dataclass(frozen=True, slots=True)
class MaxHoldSpec:
    """`promotion.max_hold`: after this long (or this many route requests) at one step, a gate
    that still holds answers `inconclusive`. At least one of the two is set."""

    duration: float | None = None  # seconds since the step began
    requests: int | None = None  # legacy + target requests at the step


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    """`promotion.approval`: four eyes on promotions to `from_weight` and above."""

    from_weight: float
    expires: float = 3600.0  # a request not approved within this long lapses
    approvers: tuple[str, ...] | None = None  # `admin.tokens` names; None: any admin token


@dataclass(frozen=True, slots=True)
class PromotionSpec:
    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    min_requests: int = 500
    min_comparisons: int = 500
    max_mismatch_rate: float = 0.001
    max_shadow_error_rate: float = 0.01  # mirrors target did not answer (not differences)
    max_error_rate_increase: float = 0.005
    max_p99_ratio: float | None = 1.25  # None: the unpaired p99 is not judged
    max_paired_latency_increase: float | None = None  # seconds; None: reported, not judged
    # The gate's evidence floors, which apply whatever min_requests/min_comparisons say:
    min_latency_samples: int = 1000  # per backend (or pairs), before latency is judged
    early_fail_samples: int = 50  # a fail may be judged this early (or at the min, if lower)
    min_fail_events: int = 3  # mismatches or target errors before a fail (Wilson's small-n)
    auto_rollback: bool = True
    auto: AutoSpec = field(default_factory=AutoSpec)
    checks: tuple[CheckSpec, ...] = ()
    guardrail: GuardrailSpec = field(default_factory=GuardrailSpec)
    max_hold: MaxHoldSpec | None = None  # None: a step may hold for ever
    approval: ApprovalSpec | None = None  # None: no second approval needed


@dataclass(frozen=True, slots=True)
class OverrideSpec:
    """A route's `override`: a trusted request may pin itself to legacy or target by header."""

    header: str = "x-strangler-backend"  # lower-case
    line: int = 0  # line of the route's `override:` key


@dataclass(frozen=True, slots=True)
class OverrideTrustSpec:
    """`overrides.trusted`: who may pin requests (a peer in `cidrs`, or a matching secret).

    The secret's value is read from the environment variable `secret_env` when the table is
    built, never from the file.
    """

    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    secret_header: str | None = None  # lower-case
    secret_env: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    match: MatchSpec
    legacy: str  # upstream name
    target: str  # upstream name
    weight: float = 0.0  # percent of matching traffic to target
    sticky: StickySpec | None = None
    fallback_to_legacy: bool = True
    # Which failures fall back (`fallback_to_legacy: {on: [...]}`): "connect", "timeout",
    # "reset", "tls" and status codes; None: every one of them (`true`).
    fallback_on: tuple[str | int, ...] | None = None
    # A request with an Idempotency-Key header may be sent again like an idempotent one
    # (proxy.dataplane.resend).
    retry_with_idempotency_key: bool = False
    flag: str | None = None
    websocket: bool = False  # pass WebSocket upgrades through (never mirrored)
    shadow: ShadowSpec = field(default_factory=ShadowSpec)
    promotion: PromotionSpec = field(default_factory=PromotionSpec)
    override: OverrideSpec | None = None  # None: the route cannot be pinned by a header
    line: int = 0  # line of the route's `- name:` entry in the file
    group: str | None = None  # the group it moves with (`groups:`), if any


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """`admin.tokens[i]`: a named credential; its secret is read from `token_env` at start."""

    name: str
    role: Literal["admin", "read"]
    token_env: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class AdminSpec:
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 9901))
    dashboard_url: str | None = None  # where people open the dashboard (notification links)
    # Host names (lower-case) the admin API answers to besides its address, IP addresses and
    # localhost; "*" any (proxy.api.browser_guard).
    allowed_hosts: tuple[str, ...] = ()
    tokens: tuple[TokenSpec, ...] = ()  # named credentials; replace the two env tokens
    tls: ServerTlsSpec | None = None  # serve the admin listener over TLS


NOTIFY_EVENTS = ("rollback", "fail", "promote", "complete", "resume", "weight_changed",
                 "inconclusive", "approval_requested")


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """One notification sink (`notify[i]`): where decisions and rollbacks are posted.

    Exactly one of `url` and `url_env` is set; with `url_env` the url (a secret, for Slack)
    is read from the environment when serve starts, never from the file.
    """

    url: str | None = None
    url_env: str | None = None
    events: tuple[str, ...] = NOTIFY_EVENTS
    format: Literal["json", "slack"] = "json"
    routes: tuple[str, ...] | None = None  # None: every route
    timeout: float = 5.0  # per delivery attempt
    line: int = 0


@dataclass(frozen=True, slots=True)
class ShadowBudgetSpec:
    """Proxy-wide limits on shadow work (routes.yaml `shadow_budget`)."""

    max_rate: float | None = 1000.0  # mirrors per second, whole proxy (split across workers)
    max_pending: int = 16 * MiB  # pair bytes waiting for the comparer, per data plane
    comparer_nice: int = 10  # CPU priority of the comparer process (0-19; higher yields more)


@dataclass(frozen=True, slots=True)
class BasicAuthSpec:
    username: str
    password_env: str  # the environment variable holding the password (never the file)


@dataclass(frozen=True, slots=True)
class InventorySpec:
    """`inventory:`: the map of the monolith's traffic (proxy.dataplane.inventory,
    proxy.control.rollups). `declared` holds `templates` and the OpenAPI document's endpoints."""

    enabled: bool = True
    templates: tuple[str, ...] = ()  # as written
    openapi: str | None = None  # as written, relative to routes.yaml's directory
    openapi_prefix: str | None = None  # the path the document's paths live under
    max_templates: int = 1000  # per data plane and per rollup bucket; the rest count as `other`
    retention_days: int = 90  # daily rollups kept this long (hourly ones: 15 days at most)
    declared: tuple[DeclaredTemplate, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """`groups.NAME`: routes that move together (one weight, state and sticky assignment; see
    proxy.control.groups). `routes[0]` leads: the group's approvals are kept under its name."""

    name: str
    routes: tuple[str, ...]
    line: int = 0


@dataclass(frozen=True, slots=True)
class GateSourceSpec:
    metrics: Literal["local", "prometheus"] = "local"
    url: str | None = None  # Prometheus base url (needed for prometheus metrics or checks)
    # Credentials for Prometheus (Mimir, Cortex, Thanos...): header name -> environment
    # variable holding its value; a bearer token's variable; basic auth; TLS trust.
    headers: tuple[tuple[str, str], ...] = ()
    bearer_token_env: str | None = None
    basic_auth: BasicAuthSpec | None = None
    tls: ClientTlsSpec | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class TracingSpec:
    """OpenTelemetry tracing (`tracing:`); absent: off, no span work at all."""

    otlp_endpoint: str  # OTLP/HTTP base url, e.g. http://collector:4318 (/v1/traces appended)
    sample_ratio: float = 0.01  # of requests without a sampled parent; a parent's flag is kept
    service_name: str = "strangler"
    headers: tuple[tuple[str, str], ...] = ()  # header name -> environment variable
    timeout: float = 10.0  # per export request
    max_queue: int = 8192  # finished spans waiting for export; more are dropped (counted)
    tls: ClientTlsSpec | None = None


@dataclass(frozen=True, slots=True)
class UnleashSpec:
    url: str = "http://127.0.0.1:4242/api"
    app_name: str = "strangler"
    refresh_interval: float = 1.0
    token_env: str = "UNLEASH_API_TOKEN"
    admin_token_env: str = "UNLEASH_ADMIN_TOKEN"
    environment: str = "development"
    project: str = "default"
    tls: ClientTlsSpec | None = None  # set for an https url (defaults: the system CAs)


@dataclass(frozen=True, slots=True)
class FlagsSpec:
    backend: Literal["file", "unleash"] = "file"
    unleash: UnleashSpec | None = None


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where the audit trail, pending approvals and the diff store live (routes.yaml `store`):
    `local` (files and SQLite in state_dir, one replica) or `postgres` (shared by every
    replica). The DSN is read from the environment variable `dsn_env`, never from the file."""

    backend: Literal["local", "postgres"] = "local"
    dsn_env: str = "STRANGLER_DATABASE_URL"
    sslmode: str | None = None  # None: as the DSN says (libpq's default: prefer)
    sslrootcert: str | None = None  # CA file for verify-ca / verify-full
    connect_timeout: float = 5.0

    @property
    def shared(self) -> bool:
        return self.backend == "postgres"


@dataclass(frozen=True, slots=True)
class Config:
    source: Path  # the file as given (used in messages)
    version: int
    listen: HostPort
    admin: AdminSpec
    state_dir: Path  # resolved relative to the file's directory
    upstreams: dict[str, UpstreamSpec]
    default_upstream: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    limits: LimitsSpec
    gate: GateSourceSpec
    flags: FlagsSpec
    routes: tuple[RouteSpec, ...]
    notify: tuple[NotifySpec, ...] = ()
    overrides: OverrideTrustSpec | None = None  # `overrides.trusted`; None: nobody may pin
    shadow_budget: ShadowBudgetSpec = field(default_factory=ShadowBudgetSpec)
    store: StoreSpec = field(default_factory=StoreSpec)
    tls: ServerTlsSpec | None = None  # serve the proxy listener over TLS
    tracing: TracingSpec | None = None
    inventory: InventorySpec = field(default_factory=InventorySpec)
    groups: tuple[GroupSpec, ...] = ()

    def route(self, name: str) -> RouteSpec | None:
        for r in self.routes:
            if r.name == name:
                return r
        return None

    def group(self, name: str) -> GroupSpec | None:
        """The group called `name`, or the group route `name` belongs to."""
        for g in self.groups:
            if g.name == name or name in g.routes:
                return g
        return None

    def file_weights(self) -> dict[str, float]:
        return {r.name: r.weight for r in self.routes}
