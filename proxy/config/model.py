"""routes.yaml as one typed model (pydantic v2): what each key accepts, its default, its schema.

Why pydantic and not msgspec: `strangler validate` lists every problem in the file at once, and
msgspec stops at the first. Pydantic collects all of them with their field paths, lets a check
report several items of a list at their own paths, and writes the JSON Schema that editors,
`strangler schema`, docs/routes.schema.json and the Helm chart use.

The value types (and their messages) are in `proxy.config.values`; checks that need more than
one value of the same block are `_check` hooks here; checks across blocks (references to
upstreams, route names, coverage) are on `RoutesFile`. Defaults come from the frozen specs in
`proxy.config.spec`, which is what the rest of the proxy reads; the loader turns a valid model
into those specs.
"""

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from proxy.config import values as v
from proxy.config.checks import ENV_RE, FLAG_RE, NAME_RE
from proxy.config.document import Loc
from proxy.config.header_names import FORWARDED_HEADERS, HOP_BY_HOP
from proxy.config.spec import (
    NOTIFY_EVENTS,
    SAFE_METHODS,
    SSL_MODES,
    AdminSpec,
    ApprovalSpec,
    AutoSpec,
    ClientTlsSpec,
    CompareSpec,
    GateSourceSpec,
    GuardrailSpec,
    InventorySpec,
    LimitsSpec,
    NotifySpec,
    PromotionSpec,
    RouteSpec,
    ShadowBudgetSpec,
    ShadowSpec,
    StoreSpec,
    TracingSpec,
    UnleashSpec,
    UpstreamSpec,
)

Found = list[tuple[Loc, PydanticCustomError]]
D = v.spec_default

DEFAULT_OVERRIDE_HEADER = "x-strangler-backend"
# Headers the proxy frames, re-adds or interprets itself: never a pin or secret header.
_RESERVED = (HOP_BY_HOP | FORWARDED_HEADERS | {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"x-request-id",
    b"x-strangler-shadow", b"x-strangler-reconcile", b"cookie", b"authorization", b"expect",
})


def reserved(name: str) -> bool:
    return name.encode() in _RESERVED


class Block(BaseModel):
    """A mapping in routes.yaml: unknown keys are problems; `WHAT` is what a wrong value is
    told it should have been; `HINTS` follow `missing required key 'x'`."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True,
                              hide_input_in_errors=True)
    WHAT: ClassVar[str] = "a mapping"
    HINTS: ClassVar[dict[str, str]] = {}


def bad_locs(errors: list[dict[str, Any]]) -> set[Loc]:
    """Every path at or above an error: `loc in bad` means the value there is not usable."""
    out: set[Loc] = set()
    for e in errors:
        loc = tuple(e["loc"])
        for k in range(1, len(loc) + 1):
            out.add(loc[:k])
    return out


def reraise(errors: list[dict[str, Any]], found: Found) -> None:
    """Raise the model's own errors together with `found` (the hook's)."""
    from pydantic_core import InitErrorDetails

    details = [InitErrorDetails(type=PydanticCustomError(e["type"], "{m}", {
        **(e.get("ctx") or {}), "m": e["msg"]}), loc=tuple(e["loc"]), input=e.get("input"))
        for e in errors]
    if found:
        try:
            v.at(found)
        except ValidationError as exc:
            details += [InitErrorDetails(type=PydanticCustomError(e["type"], "{m}", {
                **(e.get("ctx") or {}), "m": e["msg"]}), loc=tuple(e["loc"]), input=None)
                for e in exc.errors()]
    raise ValidationError.from_exception_data("routes.yaml", details)


class Checked(Block):
    """A block with checks over several of its keys (`_check`), run even when some keys are
    wrong, so that one `strangler validate` shows everything."""

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _whole(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            value = handler(data)
            errors: list[dict[str, Any]] = []
        except ValidationError as exc:
            value, errors = None, exc.errors()
        found = cls._check(data, bad_locs(errors), value) if isinstance(data, dict) else []
        if errors or found:
            reraise(errors, found)
        return value


def ok(raw: dict[str, Any], key: str, bad: set[Loc]) -> bool:
    """`key` is present and its value passed its own check."""
    return key in raw and (key,) not in bad


def _or(*also: dict[str, Any]) -> Any:
    """JSON Schema: the block, or one of the shorthand values a BeforeValidator turns into it."""

    class _Also:
        def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> Any:
            schema = handler(core_schema)
            return {"anyOf": [*schema.get("anyOf", [schema]), *also]}
    return _Also()


def _scalar_to(mapping: Callable[[Any], Any]) -> Any:
    return BeforeValidator(mapping)


# -- the blocks ---------------------------------------------------------------------------------


_HOST_NAME = re.compile(r"\*|[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _allowed_host(x: Any) -> str:
    value = v.string(x, "a host name").strip().lower().rstrip(".")
    if not _HOST_NAME.fullmatch(value):
        raise v.problem(f"{value!r} is not a host name (no scheme, port or path; '*' allows any "
                        "Host)")
    return value


def _allowed_hosts(x: Any) -> tuple[str, ...]:
    out, bad = v.items(v.seq(x, "a list of host names"), _allowed_host)
    if bad:
        v.at(bad)
    return tuple(dict.fromkeys(out))
class Token(Block):
    WHAT = "a mapping with name, role and token_env"
    HINTS = {"token_env": " (the environment variable holding the token)"}
    name: v.Str("a token name", pattern=NAME_RE, hint=v.NAME_HINT)  # type: ignore[valid-type]
    role: v.Choice("admin", "read")  # type: ignore[valid-type]
    token_env: v.EnvName = Field(description="the environment variable holding the token "
                                 "(never the token itself)")


def _tokens(x: Any) -> tuple[Any, ...]:
    """Named admin credentials: names and token_env variables each used once."""
    values = v.seq(x, "a list of {name, role, token_env}")
    tokens = adapter(Token)
    out: list[Any] = []
    found: Found = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(values):
        try:
            out.append(tokens.validate_python(item))
        except ValidationError as exc:
            for e in exc.errors():
                found.append(((i, *e["loc"]), PydanticCustomError(
                    e["type"], "{m}", {**(e.get("ctx") or {}), "m": e["msg"]})))
        for key in ("name", "token_env"):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str):
                continue
            if (key, value) in seen:
                why = ("one name per person: the audit log names them" if key == "name" else
                       "two names with one secret cannot be told apart")
                found.append(((i, key), v.problem(
                    f"duplicate {key} '{value}' (first at line {v.LINE}): {why}",
                    line_of=(seen[(key, value)], key))))
            else:
                seen[(key, value)] = i
    if found:
        _at_nested(found)
    return tuple(out)


def _tls_version(x: Any) -> str:
    value = v.scalar(x, '"1.2" or "1.3"')
    if isinstance(value, float) and value in (1.2, 1.3):  # unquoted in YAML
        value = str(value)
    if value not in ("1.2", "1.3"):
        raise v.problem(f"invalid value {value!r}: expected \"1.2\" or \"1.3\" (the oldest TLS "
                        "version accepted)")
    return value


TlsVersion = v.value_type(str, _tls_version, {
    "anyOf": [{"enum": ["1.2", "1.3"]}, {"enum": [1.2, 1.3]}],  # "1.2" or unquoted 1.2
    "description": "the oldest TLS version accepted"})
FilePath = v.Str("a file path", description="a PEM file; relative to this file's directory")


def _server_name(x: Any) -> str:
    value = v.string(x, "a host name").strip().lower().rstrip(".")
    if not _HOST_NAME.fullmatch(value) or value == "*":
        raise v.problem(f"{value!r} is not a host name")
    return value


class ClientTls(Checked):
    """TLS towards a server the proxy calls: what it trusts, which certificate it shows."""

    WHAT = "a mapping with ca_file, cert_file, key_file, server_name, verify, min_version"
    ca_file: FilePath = Field(None, description="PEM CA bundle trusted instead of the system "  # type: ignore
                              "CAs")
    cert_file: FilePath = Field(None, description="client certificate (mTLS); with key_file")  # type: ignore
    key_file: FilePath = Field(None, description="the client certificate's key (unencrypted)")  # type: ignore
    server_name: v.value_type(str, _server_name, {  # type: ignore[valid-type]
        "type": "string", "description": "SNI and the name the certificate must carry; "
        "default: the url's host"}) = None
    verify: v.Bool = Field(D(ClientTlsSpec, "verify"), description="false: no certificate "
                           "check at all (warned at load and in /readyz)")
    min_version: TlsVersion = D(ClientTlsSpec, "min_version")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if ("cert_file" in raw) != ("key_file" in raw):
            present, missing = ("cert_file", "key_file") if "cert_file" in raw else \
                ("key_file", "cert_file")
            return [((missing,), v.problem(f"{present} needs {missing} too (a client "
                                           "certificate and its key)", line_of=(present,)))]
        return []


class ServerTls(Block):
    """TLS on a listener."""

    WHAT = "a mapping with cert_file and key_file"
    HINTS = {"cert_file": " (the listener's certificate chain, PEM)",
             "key_file": " (its private key, PEM, unencrypted)"}
    cert_file: FilePath  # type: ignore[valid-type]
    key_file: FilePath  # type: ignore[valid-type]
    min_version: TlsVersion = "1.2"


class Admin(Block):
    listen: v.Address = Field(D(AdminSpec, "listen"), description="the admin API and dashboard")
    dashboard_url: v.HttpUrl(nullable=True) = Field(  # type: ignore[valid-type]
        None, description="where people open the dashboard; notifications link to it")
    allowed_hosts: v.value_type(tuple, _allowed_hosts, {  # type: ignore[valid-type]
        "type": "array", "items": {"type": "string", "pattern": _HOST_NAME.pattern},
        "description": "host names the admin API answers to besides its address, IP addresses "
        "and localhost (DNS rebinding defence); '*' any"}) = D(AdminSpec, "allowed_hosts")
    tokens: v.value_type(tuple, _tokens, {  # type: ignore[valid-type]
        "type": "array", "items": {"x-strangler-ref": "Token"},
        "description": "named credentials (the audit log's actor comes from them); when set, "
                       "STRANGLER_ADMIN_TOKEN and STRANGLER_READ_TOKEN are not accepted"}) = ()
    tls: ServerTls | None = Field(None, description="serve the admin API over TLS")


_HOST_HEADER = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                          r"(:[0-9]{1,5})?")


def _host_header(x: Any) -> str:
    value = v.string(x, "client, upstream or a host name")
    if value in ("client", "upstream"):
        return value
    name = value.strip().lower()
    if not _HOST_HEADER.fullmatch(name) or (":" in name and int(name.rsplit(":", 1)[1]) > 65535):
        raise v.problem(f"invalid value {value!r}: expected client (the Host the client sent), "
                        "upstream (the url's host[:port]) or a host name like ledger.internal")
    return name


class Upstream(Checked):
    WHAT = "a mapping with url: http://HOST:PORT or https://HOST:PORT"
    url: v.UpstreamUrl
    tls: ClientTls | None = Field(None, description="https only: CAs trusted, client certificate, "
                                  "server name; absent: the system CAs")
    host_header: v.value_type(str, _host_header, {  # type: ignore[valid-type]
        "type": "string", "description": "the Host sent upstream: client (as received), "
        "upstream (the url's host[:port]) or a literal host name"}) = D(UpstreamSpec,
                                                                         "host_header")
    connect_timeout: v.Duration() = D(UpstreamSpec, "connect_timeout")  # type: ignore[valid-type]
    timeout: v.Duration() = Field(D(UpstreamSpec, "timeout"),  # type: ignore[valid-type]
                                  description="from the request's last byte until the response "
                                  "headers arrive")
    read_timeout: v.Duration() = Field(D(UpstreamSpec, "read_timeout"),  # type: ignore
                                       description="between two reads of the response body")
    max_connections: v.Integer() = D(UpstreamSpec, "max_connections")  # type: ignore[valid-type]
    max_header_bytes: v.Size(1024) = Field(  # type: ignore[valid-type]
        D(UpstreamSpec, "max_header_bytes"), description="the response head; larger -> 502")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        url = raw.get("url")
        if "tls" in raw and ok(raw, "url", bad) and isinstance(url, str) and \
                url.strip().lower().startswith("http://"):
            return [(("tls",), v.problem("tls is only used with an https:// url"))]
        return []


class Limits(Block):
    max_body: v.Size() = D(LimitsSpec, "max_body")  # type: ignore[valid-type]
    header_timeout: v.Duration() = D(LimitsSpec, "header_timeout")  # type: ignore[valid-type]
    body_idle_timeout: v.Duration() = D(LimitsSpec, "body_idle_timeout")  # type: ignore
    send_timeout: v.Duration() = D(LimitsSpec, "send_timeout")  # type: ignore[valid-type]
    drain_timeout: v.Duration(positive=False) = D(LimitsSpec, "drain_timeout")  # type: ignore
    max_request_line: v.Size(64) = D(LimitsSpec, "max_request_line")  # type: ignore[valid-type]
    max_header_bytes: v.Size(256) = D(LimitsSpec, "max_header_bytes")  # type: ignore
    max_headers: v.Integer() = D(LimitsSpec, "max_headers")  # type: ignore[valid-type]


def _env_headers(x: Any) -> tuple[tuple[str, str], ...]:
    """{Header-Name: ENV_VAR}: the header's value is read from the environment at start."""
    if x is None:
        return ()
    if not isinstance(x, dict):
        raise v.expected("a mapping of header name -> environment variable name")
    out: dict[str, str] = {}
    found: Found = []
    for key, env in x.items():
        try:
            name = v.header_name(key)
            if name in ("host", "content-length", "transfer-encoding", "connection"):
                raise v.problem(f"'{name}' is a header the client sets itself")
            out[name] = v.string(env, "an environment variable name", pattern=ENV_RE,
                                 hint="the name of the environment variable holding the "
                                 "header's value (never the value itself)")
        except PydanticCustomError as exc:
            found.append(((key,), exc))
    if found:
        v.at(found)
    return tuple(out.items())


ENV_HEADERS_SCHEMA = {"type": "object", "additionalProperties": {"type": "string", "pattern":
                      ENV_RE.pattern}, "propertyNames": v.HEADER_SCHEMA,
                      "description": "header name -> the environment variable holding its value"}
EnvHeaders = v.value_type(tuple, _env_headers, ENV_HEADERS_SCHEMA)


class BasicAuth(Block):
    WHAT = "a mapping with username and password_env"
    username: v.Str("a user name")  # type: ignore[valid-type]
    password_env: v.EnvName


class Gate(Checked):
    metrics: v.Choice("local", "prometheus") = D(GateSourceSpec, "metrics")  # type: ignore
    url: v.HttpUrl(nullable=True, description="Prometheus base url, e.g. http://prometheus:9090"  # type: ignore
                   ) = None
    headers: EnvHeaders = Field((), description="sent with every query, e.g. {X-Scope-OrgID: "  # type: ignore
                                "TENANT_ENV}; values from the environment")
    bearer_token_env: v.EnvName = Field(None, description="environment variable holding a "
                                        "bearer token")
    basic_auth: BasicAuth | None = None
    tls: ClientTls | None = Field(None, description="for an https url: CAs trusted, client "
                                  "certificate")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        found: Found = []
        if "bearer_token_env" in raw and "basic_auth" in raw:
            found.append((("basic_auth",), v.problem("give bearer_token_env or basic_auth, not "
                                                     "both (each is an Authorization header)")))
        headers = raw.get("headers")
        if isinstance(headers, dict) and ("bearer_token_env" in raw or "basic_auth" in raw):
            for key in headers:
                if isinstance(key, str) and key.lower() == "authorization":
                    found.append((("headers", key), v.problem(
                        "Authorization is set by bearer_token_env or basic_auth already")))
        url = raw.get("url")
        if "tls" in raw and ok(raw, "url", bad) and isinstance(url, str) and \
                url.strip().lower().startswith("http://"):
            found.append((("tls",), v.problem("tls is only used with an https:// url")))
        return found


class Tracing(Checked):
    """OpenTelemetry traces over OTLP/HTTP (protobuf); absent: tracing is off."""

    HINTS = {"otlp_endpoint": " (the collector's OTLP/HTTP url, e.g. http://collector:4318)"}
    otlp_endpoint: v.HttpUrl(description="OTLP/HTTP base url; /v1/traces is appended")  # type: ignore
    sample_ratio: v.Number(0, 1) = Field(D(TracingSpec, "sample_ratio"),  # type: ignore
                                         description="share of requests traced when no sampled "
                                         "parent decides")
    service_name: v.Str("a service name") = D(TracingSpec, "service_name")  # type: ignore
    headers: EnvHeaders = Field((), description="sent with every export; values from the "  # type: ignore
                                "environment")
    timeout: v.Duration() = D(TracingSpec, "timeout")  # type: ignore[valid-type]
    max_queue: v.Integer(16, 1_000_000) = D(TracingSpec, "max_queue")  # type: ignore
    tls: ClientTls | None = None

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        url = raw.get("otlp_endpoint")
        if "tls" in raw and ok(raw, "otlp_endpoint", bad) and isinstance(url, str) and \
                url.strip().lower().startswith("http://"):
            return [(("tls",), v.problem("tls is only used with an https:// endpoint"))]
        return []


class Unleash(Checked):
    url: v.HttpUrl() = D(UnleashSpec, "url")  # type: ignore[valid-type]
    app_name: v.Str() = D(UnleashSpec, "app_name")  # type: ignore[valid-type]
    refresh_interval: v.Duration() = D(UnleashSpec, "refresh_interval")  # type: ignore
    token_env: v.EnvName = D(UnleashSpec, "token_env")
    admin_token_env: v.EnvName = D(UnleashSpec, "admin_token_env")
    environment: v.Str() = D(UnleashSpec, "environment")  # type: ignore[valid-type]
    project: v.Str() = D(UnleashSpec, "project")  # type: ignore[valid-type]
    tls: ClientTls | None = Field(None, description="for an https url (polls and Admin API "
                                  "writes): CAs trusted, client certificate, server name; "
                                  "absent: the system CAs")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        url = raw.get("url", D(UnleashSpec, "url"))
        if "tls" in raw and ("url" not in raw or ok(raw, "url", bad)) and \
                isinstance(url, str) and url.strip().lower().startswith("http://"):
            return [(("tls",), v.problem("tls is only used with an https:// url"))]
        return []


class Flags(Checked):
    backend: v.Choice("file", "unleash") = "file"  # type: ignore[valid-type]
    unleash: Unleash | None = None

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if "unleash" in raw and ("backend" not in raw or (
                ok(raw, "backend", bad) and raw["backend"] == "file")):
            return [(("unleash",), v.problem("only used with backend: unleash (set "
                                             "flags.backend: unleash, or remove this block)"))]
        return []


class Store(Checked):
    WHAT = "a mapping like {backend: postgres, dsn_env: STRANGLER_DATABASE_URL}"
    backend: v.Choice("local", "postgres") = Field(  # type: ignore[valid-type]
        D(StoreSpec, "backend"), description="local: files and SQLite in state_dir (one "
        "replica); postgres: the audit trail, approvals and diffs shared by every replica")
    dsn_env: v.EnvName = Field(D(StoreSpec, "dsn_env"), description="the environment "
                               "variable holding the PostgreSQL connection string")
    sslmode: v.Choice(*SSL_MODES) = Field(  # type: ignore[valid-type]
        None, description="TLS to PostgreSQL (libpq sslmode); unset: as the DSN says")
    sslrootcert: v.Str("a file path", nullable=True) = Field(  # type: ignore[valid-type]
        None, description="CA certificate file for sslmode verify-ca / verify-full")
    connect_timeout: v.Duration() = D(StoreSpec, "connect_timeout")  # type: ignore[valid-type]

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if ("backend",) in bad or raw.get("backend", "local") != "local":
            return []
        return [((key,), v.problem("only used with backend: postgres"))
                for key in raw if key != "backend"]


class ShadowBudget(Block):
    max_rate: v.Rate = D(ShadowBudgetSpec, "max_rate")
    max_pending: v.Size(64 * 1024) = D(ShadowBudgetSpec, "max_pending")  # type: ignore
    comparer_nice: v.Integer(0, 19) = D(ShadowBudgetSpec, "comparer_nice")  # type: ignore


class Sticky(Checked):
    WHAT = "{header: NAME} or {cookie: NAME}"
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})
    header: v.value_type(str, lambda x: _sticky_name(x, "header"), v.HEADER_SCHEMA) = None  # type: ignore
    cookie: v.value_type(str, lambda x: _sticky_name(x, "cookie"), v.HEADER_SCHEMA) = None  # type: ignore

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        known = [k for k in raw if k in cls.model_fields]
        return [] if len(known) == 1 else [((), v.problem("give exactly one of header or cookie"))]


def _sticky_name(x: Any, key: str) -> str:
    value = v.string(x, f"a {key} name")
    from proxy.config.checks import TOKEN_RE

    if not TOKEN_RE.match(value):
        raise v.problem(f"invalid {key} name {value!r}")
    return value.lower() if key == "header" else value


def _match_headers(x: Any) -> tuple[tuple[str, str], ...]:
    if x is None:
        return ()
    if not isinstance(x, dict):
        raise v.expected("a mapping")
    out: dict[str, str] = {}
    found: Found = []
    for key, value in x.items():
        try:
            name = v.header_name(key)
        except PydanticCustomError as exc:
            found.append(((key,), exc))
            name = None
        try:
            value = v.scalar(value, "a header value (a string)")
            if isinstance(value, bool) or not isinstance(value, str | int | float) or (
                    (isinstance(value, float) and value != value) or value in (
                        float("inf"), float("-inf"))):
                raise v.expected("a header value (quote it: \"...\")")
        except PydanticCustomError as exc:
            found.append(((key,), exc))
            continue
        if name is None:
            continue
        if name in out:
            found.append(((key,), v.problem(f"header '{name}' is listed twice (names are "
                                            "case-insensitive)")))
            continue
        out[name] = value if isinstance(value, str) else str(value)
    if found:
        v.at(found)
    return tuple(out.items())


class Match(Checked):
    model_config = ConfigDict(json_schema_extra={"not": {"anyOf": [
        {"required": ["path", "path_prefix"]}, {"required": ["path", "path_regex"]},
        {"required": ["path_prefix", "path_regex"]}]}})
    path: v.MatchPath(prefix=False) = None  # type: ignore[valid-type]
    path_prefix: v.MatchPath(prefix=True) = None  # type: ignore[valid-type]
    path_regex: v.Regex = None
    methods: v.Methods = Field(None, description="any method when left out")
    headers: v.value_type(tuple, _match_headers, {  # type: ignore[valid-type]
        "type": "object", "additionalProperties": {"type": ["string", "number"]},
        "propertyNames": v.HEADER_SCHEMA, "description": "header name -> exact value"}) = ()

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        present = [k for k in ("path", "path_prefix", "path_regex") if k in raw]
        if len(present) > 1:
            return [((present[1],), v.problem(f"use only one of path, path_prefix, path_regex "
                                              f"(found {' and '.join(present)})"))]
        return []


def _header_list(x: Any) -> tuple[str, ...]:
    out, bad = v.items(v.seq(x, "a list of header names"), v.header_name)
    if bad:
        v.at(bad)
    return tuple(dict.fromkeys(out))


def _field_entry(item: Any) -> str:
    value = v.string(item, "'header:NAME' or a '$.field' path")
    why = v.field_path_problem(value)
    if why:
        raise v.problem(why)
    if value.startswith("header:"):
        value = "header:" + value[len("header:") :].lower()
    return value


def _field_list(x: Any) -> tuple[str, ...]:
    out, bad = v.items(v.seq(x, "a list of 'header:NAME' or '$.field' entries"), _field_entry)
    if bad:
        v.at(bad)
    return tuple(out)


def _array_keys(x: Any) -> tuple[tuple[str, str], ...]:
    if x is None:
        return ()
    if not isinstance(x, dict):
        raise v.expected("a mapping")
    out: list[tuple[str, str]] = []
    found: Found = []
    for path, item in x.items():
        key: Any = None
        try:
            key = v.string(item, "the key field of the array's elements")
        except PydanticCustomError as exc:
            found.append(((path,), exc))
        if not (path.startswith("$") and v.JSON_PATH_RE.match(path)):
            found.append(((path,), v.problem(f"{path!r} is not an array path like $.items")))
        elif key is not None:
            out.append((path, key))
    if found:
        v.at(found)
    return tuple(out)


FIELD_LIST_SCHEMA = {"type": "array", "items": {
    "type": "string", "description": "header:NAME or a field path: $.field, $..field, "
    "$.list[0], $.list[*], $['odd key']"}}


class Compare(Block):
    headers: v.value_type(tuple, _header_list, {  # type: ignore[valid-type]
        "type": "array", "items": v.HEADER_SCHEMA}) = D(CompareSpec, "headers")
    ignore: v.value_type(tuple, _field_list, FIELD_LIST_SCHEMA) = ()  # type: ignore
    redact: v.value_type(tuple, _field_list, FIELD_LIST_SCHEMA) = ()  # type: ignore
    numeric_tolerance: v.Number(0) = 0.0  # type: ignore[valid-type]
    array_keys: v.value_type(tuple, _array_keys, {  # type: ignore[valid-type]
        "type": "object", "additionalProperties": {"type": "string", "minLength": 1},
        "description": "array path ($.items) -> the key field its elements are matched by"}
    ) = ()
    noise_upstream: v.Str("an upstream name", nullable=True) = None  # type: ignore
    max_decoded: v.Size(1024) = D(CompareSpec, "max_decoded")  # type: ignore[valid-type]
    max_fields: v.Integer(10, 1_000_000) = D(CompareSpec, "max_fields")  # type: ignore


class Shadow(Checked):
    WHAT = "a mapping, or false to turn mirroring off"
    enabled: v.Bool = True
    sample: v.Number(0, 1) = D(ShadowSpec, "sample")  # type: ignore[valid-type]
    reverse: v.Bool = D(ShadowSpec, "reverse")
    methods: v.Methods = D(ShadowSpec, "methods")
    allow_unsafe: v.Bool = False
    max_body: v.Size() = D(ShadowSpec, "max_body")  # type: ignore[valid-type]
    compare: Compare = Compare()
    pipeline: v.Bool = True
    max_rate: v.Rate = D(ShadowSpec, "max_rate")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if not ok(raw, "methods", bad) or (ok(raw, "allow_unsafe", bad) and raw["allow_unsafe"]):
            return []
        return [(("methods", i), v.problem(
            f"{m.upper()} is not a safe method: mirroring it repeats its side effects on the "
            "target; set allow_unsafe: true if the target is isolated"))
            for i, m in enumerate(raw["methods"]) if m.upper() not in SAFE_METHODS]


def _steps(x: Any) -> tuple[float, ...]:
    values = v.seq(x, "a list of weights, e.g. [1, 5, 25, 50, 100]")
    if not values:
        raise v.problem("must list at least one step (the last is 100)")
    out: list[float] = []
    found: Found = []
    for i, item in enumerate(values):
        try:
            value = v._step(item)
        except PydanticCustomError as exc:
            found.append(((i,), exc))
            continue
        if out and value <= out[-1]:
            found.append(((i,), v.problem(f"steps must increase: {value:g} comes after "
                                          f"{out[-1]:g}")))
            continue
        out.append(value)
    last = values[-1]
    if isinstance(last, int | float) and not isinstance(last, bool) and last != 100 and (
            out and last == out[-1]):
        found.append(((len(values) - 1,), v.problem(f"the last step must be 100, not {last:g}")))
    if found:
        v.at(found)
    return tuple(out)


class Auto(Block):
    enabled: v.Bool = D(AutoSpec, "enabled")
    interval: v.Duration() = D(AutoSpec, "interval")  # type: ignore[valid-type]


class Guardrail(Block):
    enabled: v.Bool = D(GuardrailSpec, "enabled")
    window: v.Duration() = D(GuardrailSpec, "window")  # type: ignore[valid-type]
    min_requests: v.Integer() = D(GuardrailSpec, "min_requests")  # type: ignore[valid-type]
    max_error_rate: v.Number(0, 1) = D(GuardrailSpec, "max_error_rate")  # type: ignore
    min_error_rate_increase: v.Number(0, 1) = D(GuardrailSpec,  # type: ignore[valid-type]
                                                "min_error_rate_increase")


class Check(Checked):
    name: v.Str("a check name", pattern=NAME_RE,  # type: ignore[valid-type]
                hint="use letters, digits, '-', '_', '.'")
    query: v.Str("a PromQL query")  # type: ignore[valid-type]
    max: v.Number(nullable=True) = None  # type: ignore[valid-type]
    min: v.Number(nullable=True) = None  # type: ignore[valid-type]
    dry_run: v.Bool = Field(False, description="evaluated and reported, never fails or holds")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        lo, hi = raw.get("min"), raw.get("max")
        lo = lo if ok(raw, "min", bad) else None
        hi = hi if ok(raw, "max", bad) else None
        if lo is None and hi is None:
            if not ({"max", "min"} & raw.keys()) or all(
                    k not in raw or (k,) not in bad for k in ("max", "min")):
                return [((), v.problem("give max, min or both (the bounds the query's value "
                                       "must stay within)"))]
        elif lo is not None and hi is not None and lo > hi:
            return [(("min",), v.problem(f"min {lo:g} is above max {hi:g}"))]
        return []


def _checks(x: Any) -> tuple[Any, ...]:
    values = v.seq(x, "a list of {name, query, max/min}")
    checks = adapter(Check)
    out: list[Any] = []
    found: Found = []
    seen: dict[str, int] = {}
    for i, item in enumerate(values):
        try:
            out.append(checks.validate_python(item))
        except ValidationError as exc:
            for e in exc.errors():
                found.append(((i, *e["loc"]), PydanticCustomError(
                    e["type"], "{m}", {**(e.get("ctx") or {}), "m": e["msg"]})))
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and NAME_RE.match(name):
            if name in seen:
                found.append(((i, "name"), v.problem(
                    f"duplicate check name '{name}' (first at line {v.LINE})",
                    line_of=(seen[name], "name"))))
            else:
                seen[name] = i
    if found:
        _at_nested(found)
    return tuple(out)


_ADAPTERS: dict[type, Any] = {}


def adapter(model: type) -> Any:
    from pydantic import TypeAdapter

    if model not in _ADAPTERS:
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]


def _at_nested(found: Found) -> None:
    """Like `values.at`, for errors that came from a nested model (their `line_of`/`depth`
    are relative to where they were raised, which `at` must not re-base)."""
    from pydantic_core import InitErrorDetails

    details = []
    for loc, error in found:
        ctx = dict(error.context or {})
        if "line_of" in ctx and "depth" not in ctx:
            ctx["depth"] = len(loc)
        details.append(InitErrorDetails(type=PydanticCustomError(error.type, "{m}", ctx),
                                        loc=loc, input=None))
    raise ValidationError.from_exception_data("routes.yaml", details)


class MaxHold(Checked):
    WHAT = "a mapping with duration and/or requests"
    duration: v.Duration() = Field(None, description="time at one step")  # type: ignore
    requests: v.Integer() = Field(None, description="legacy + target requests at one "  # type: ignore
                                  "step")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if not ({"duration", "requests"} & raw.keys()):
            return [((), v.problem("give duration, requests or both (e.g. {duration: 2h}): "
                                   "after that long at one step a gate still holding answers "
                                   "inconclusive"))]
        return []


class Approval(Block):
    WHAT = "a mapping with from_weight"
    HINTS = {"from_weight": " (promotions to this weight and above need a second person)"}
    from_weight: v.Step = Field(description="promotions to this weight or above need "
                                "`strangler approve` by a second person")
    expires: v.Duration() = D(ApprovalSpec, "expires")  # type: ignore[valid-type]
    approvers: v.value_type(tuple, lambda x: _name_list(  # type: ignore[valid-type]
        x, what="a list of admin.tokens names", item="a token name", kind="approver",
        empty="leave it out: any named admin token may approve"), {
        "type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string"},
        "description": "admin.tokens names that may approve (default: every admin one)"}) = None


class Promotion(Checked):
    steps: v.value_type(tuple, _steps, {  # type: ignore[valid-type]
        "type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0,
                                                  "maximum": 100},
        "description": "increasing weights, the last 100"}) = D(PromotionSpec, "steps")
    min_requests: v.Integer() = D(PromotionSpec, "min_requests")  # type: ignore[valid-type]
    min_comparisons: v.Integer() = D(PromotionSpec, "min_comparisons")  # type: ignore
    max_mismatch_rate: v.Number(0, 1) = D(PromotionSpec, "max_mismatch_rate")  # type: ignore
    max_shadow_error_rate: v.Number(0, 1) = D(PromotionSpec,  # type: ignore[valid-type]
                                              "max_shadow_error_rate")
    max_error_rate_increase: v.Number(0, 1) = D(PromotionSpec,  # type: ignore[valid-type]
                                                "max_error_rate_increase")
    max_p99_ratio: v.Number(0, lo_open=True, nullable=True) = Field(  # type: ignore
        D(PromotionSpec, "max_p99_ratio"), description="target p99 / legacy p99; null: the "
        "unpaired p99 is not judged")
    max_paired_latency_increase: v.Duration(positive=False, nullable=True) = Field(  # type: ignore
        None, description="target minus legacy on the same mirrored request (median); null: "
        "reported, not judged")
    min_latency_samples: v.Integer() = D(PromotionSpec, "min_latency_samples")  # type: ignore
    early_fail_samples: v.Integer() = D(PromotionSpec, "early_fail_samples")  # type: ignore
    min_fail_events: v.Integer() = D(PromotionSpec, "min_fail_events")  # type: ignore
    auto_rollback: v.Bool = D(PromotionSpec, "auto_rollback")
    auto: Auto = Auto()
    checks: v.value_type(tuple, _checks, {  # type: ignore[valid-type]
        "type": "array", "items": {"x-strangler-ref": "Check"}}) = ()
    guardrail: Guardrail = Guardrail()
    max_hold: MaxHold | None = Field(None, description="after this long at one step, a gate "
                                     "that still holds answers inconclusive")
    approval: Approval | None = Field(None, description="four eyes: promotions to from_weight "
                                      "and above need a second person's approval")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        hold = raw.get("max_hold")
        if not isinstance(hold, dict) or ("max_hold",) in bad \
                or ("max_hold", "requests") in bad or not isinstance(hold.get("requests"), int):
            return []
        floors = {}
        for key in ("min_requests", "min_comparisons", "min_latency_samples"):
            if key in raw and (key,) in bad:
                return []
            floors[key] = raw.get(key, D(PromotionSpec, key))
        name, floor = max(floors.items(), key=lambda kv: kv[1])
        if hold["requests"] < floor:
            return [(("max_hold", "requests"), v.problem(
                f"{hold['requests']} is below the sample floor {name} = {floor}: the step "
                "would be inconclusive before the gate could judge it"))]
        return []


def _own_header(example: str) -> Any:
    """A header name of the user's own: not one the proxy frames or interprets itself."""
    def check(x: Any) -> str:
        name = v.header_name(x)
        if reserved(name):
            raise v.problem(f"'{name}' is a header the proxy handles itself; choose a name of "
                            f"your own, e.g. {example}")
        return name
    return v.value_type(str, check, v.HEADER_SCHEMA)


class RouteOverride(Block):
    WHAT = "{header: X-Strangler-Backend}, true or false"
    header: _own_header("X-Strangler-Backend") = DEFAULT_OVERRIDE_HEADER  # type: ignore


def _shadow_shorthand(x: Any) -> Any:
    if x is None:
        return {}
    if isinstance(x, bool):
        return {"enabled": x}
    return x


def _override_shorthand(x: Any) -> Any:
    if x is True:
        return {}
    if x is False:
        return None
    return x


def _list_of(what: str) -> Any:
    return BeforeValidator(lambda x: v.seq(x, what))


def _null_is_default(x: Any) -> Any:
    return {} if x is None else x


FALLBACK_KINDS = ("connect", "timeout", "reset", "tls")
FALLBACK_SCHEMA = {"anyOf": [{"type": "boolean"}, {
    "type": "object", "additionalProperties": False, "required": ["on"],
    "properties": {"on": {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"enum": [*FALLBACK_KINDS, "5xx"]},
        {"type": "integer", "minimum": 500, "maximum": 599}]}}}}]}


def _fallback(x: Any) -> bool | tuple[str | int, ...]:
    """true, false, or {on: [connect, timeout, reset, tls, 502, 503, 504, 5xx]}."""
    x = v.scalar(x, "true, false or {on: [...]}") if not isinstance(x, dict) else x
    if isinstance(x, bool):
        return x
    if not isinstance(x, dict):
        raise v.expected("true, false or {on: [connect, timeout, reset, 502, 503, 504]}")
    found: Found = [((k,), v.problem(v.unknown_key(str(k), ["on"]))) for k in x if k != "on"]
    if "on" not in x:
        found.append(((), v.problem("missing required key 'on' (the failures that fall back, "
                                    "e.g. [connect, timeout, reset, 502, 503, 504])")))
        v.at(found)
    items = v.seq(x["on"], "a list of failures") if not isinstance(x["on"], str) else [x["on"]]
    if not items:
        found.append((("on",), v.problem("must not be empty (fallback_to_legacy: false falls "
                                         "back on nothing)")))
    out: list[str | int] = []
    for i, item in enumerate(items):
        token = str(item).strip().lower() if isinstance(item, str | int) and not isinstance(
            item, bool) else None
        if token in FALLBACK_KINDS or token == "5xx":
            values: list[str | int] = list(range(500, 600)) if token == "5xx" else [token]
        elif token is not None and token.isdigit() and 500 <= int(token) <= 599:
            values = [int(token)]
        else:
            found.append((("on", i), v.problem(
                f"invalid failure {item!r}: expected connect, timeout, reset, tls, a status "
                "code from 500 to 599, or 5xx")))
            continue
        out += [value for value in values if value not in out]
    if found:
        v.at(found)
    return tuple(out)


class Route(Block):
    WHAT = "a route (a mapping with name, match, legacy, target)"
    HINTS = {"legacy": " (an upstream name)", "target": " (an upstream name)"}
    name: v.Str("a route name", pattern=NAME_RE, hint=v.NAME_HINT)  # type: ignore[valid-type]
    match: Match = Field(Match(), description="what requests the route takes; every request "
                         "when left out")
    legacy: v.Str("an upstream name")  # type: ignore[valid-type]
    target: v.Str("an upstream name")  # type: ignore[valid-type]
    weight: v.Weight = D(RouteSpec, "weight")
    sticky: Sticky | None = None
    fallback_to_legacy: v.value_type(Any, _fallback, FALLBACK_SCHEMA) = Field(  # type: ignore
        D(RouteSpec, "fallback_to_legacy"), description="true: a request that fails on target "
        "is sent to legacy once when that cannot repeat a side effect; {on: [...]}: only for "
        "these failures")
    retry_with_idempotency_key: v.Bool = Field(
        D(RouteSpec, "retry_with_idempotency_key"),
        description="a request carrying an Idempotency-Key header may be sent again (after a "
        "stale pooled connection) or fall back to legacy like an idempotent one")
    flag: v.Str("a feature flag name", nullable=True, pattern=FLAG_RE,  # type: ignore
                hint="use letters, digits, '-', '_', '.' and '~'") = None
    websocket: v.Bool = D(RouteSpec, "websocket")
    override: Annotated[RouteOverride | None, _scalar_to(_override_shorthand),
                        _or({"type": "boolean"})] = None
    shadow: Annotated[Shadow, _scalar_to(_shadow_shorthand),
                      _or({"type": "boolean"}, {"type": "null"})] = Shadow()
    promotion: Annotated[Promotion, _scalar_to(_null_is_default),
                         _or({"type": "null"})] = Promotion()


def _webhook(x: Any) -> str:
    value = v.string(x, "an http(s) url")
    why = v.url_problem(value)
    if why is not None:  # never quote the url: it may carry a webhook's secret
        raise v.problem(f"the url {why}")
    return value.strip()


def _name_list(x: Any, *, what: str, item: str, empty: str, kind: str,
               known: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A non-empty list of distinct names (of `known` ones, when given)."""
    values = v.seq(x, what)
    if not values:
        raise v.problem(f"must not be empty ({empty})")
    out: list[str] = []
    found: Found = []
    for i, entry in enumerate(values):
        try:
            value = v.string(entry, item)
        except PydanticCustomError as exc:
            found.append(((i,), exc))
            continue
        if known is not None and value not in known:
            found.append(((i,), v.problem(f"unknown {kind} '{value}'; expected one of: "
                                          f"{', '.join(known)}{v.suggest(value, known)}")))
        elif value in out:
            found.append(((i,), v.problem(f"duplicate {kind} '{value}'")))
        else:
            out.append(value)
    if found:
        v.at(found)
    return tuple(out)


def _events(x: Any) -> tuple[str, ...]:
    return _name_list(x, what="a list of events", item="an event name", kind="event",
                      empty=f"leave it out for every event: {', '.join(NOTIFY_EVENTS)}",
                      known=NOTIFY_EVENTS)


def _route_names(x: Any) -> tuple[str, ...]:
    return _name_list(x, what="a list of route names", item="a route name", kind="route",
                      empty="leave it out for every route")


class NotifySink(Checked):
    WHAT = "a mapping with url or url_env"
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["url"]}, "then": {"not": {"required": ["url_env"]}},
        "else": {"required": ["url_env"]}})
    url: v.value_type(str, _webhook, {"type": "string", "pattern": "^https?://"}) = Field(  # type: ignore
        None, description="the webhook url (set url_env instead when it is a secret)")
    url_env: v.EnvName = Field(None, description="the environment variable holding the url")
    events: v.value_type(tuple, _events, {  # type: ignore[valid-type]
        "type": "array", "minItems": 1, "uniqueItems": True,
        "items": {"enum": list(NOTIFY_EVENTS)}}) = D(NotifySpec, "events")
    format: v.Choice("json", "slack") = D(NotifySpec, "format")  # type: ignore[valid-type]
    routes: v.value_type(tuple, _route_names, {  # type: ignore[valid-type]
        "type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string"},
        "description": "every route when left out"}) = None
    timeout: v.Duration() = D(NotifySpec, "timeout")  # type: ignore[valid-type]

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        if ("url" in raw) != ("url_env" in raw):
            return []
        return [(("url_env",) if "url_env" in raw else (), v.problem(
            "set exactly one of 'url' and 'url_env' (url_env names the environment variable "
            "holding the url, for webhooks whose url is a secret)"))]


class Trusted(Checked):
    WHAT = "a mapping with cidrs and/or secret_header + secret_env"
    model_config = ConfigDict(json_schema_extra={"dependentRequired": {
        "secret_header": ["secret_env"], "secret_env": ["secret_header"]}})
    cidrs: v.Networks("a CIDR or IP address like 10.20.0.0/16") = Field(  # type: ignore
        (), description="TCP peers trusted to pin requests (CIDRs or IPs)")
    secret_header: _own_header("X-Strangler-Override-Secret") = Field(  # type: ignore
        None, description="a request carrying this header with the secret is trusted")
    secret_env: v.EnvName = Field(None, description="environment variable holding the secret "
                                  "(never in this file)")

    @classmethod
    def _check(cls, raw: dict[str, Any], bad: set[Loc], value: Any = None) -> Found:
        found: Found = []
        has_header, has_env = "secret_header" in raw, "secret_env" in raw
        if has_header != has_env:
            present, missing = ("secret_header", "secret_env") if has_header else \
                ("secret_env", "secret_header")
            found.append(((missing,), v.problem(
                f"{present} needs {missing} too (the header carries the secret; its value comes "
                "from that environment variable, never from this file)", line_of=(present,))))
        if not found and not bad and not raw.get("cidrs") and not has_header:
            found.append(((), v.problem("trusts nobody: give cidrs, secret_header + secret_env, "
                                        "or both")))
        return found


class Overrides(Block):
    HINTS = {"trusted": " (who may pin requests: cidrs, secret_header + secret_env, or both)"}
    trusted: Trusted


# -- inventory ----------------------------------------------------------------------------------


def _template(x: Any) -> str:
    from proxy.config.templates import method_problem, split_method, template_problem

    value = v.string(x, "a path template like /users/{id} (or GET /users/{id})")
    method, path = split_method(value)
    problem = (method_problem(method) if method is not None else None) or template_problem(path)
    if problem is not None:
        raise v.problem(problem)
    return f"{method} {path}" if method is not None else path


def _templates(x: Any) -> tuple[str, ...]:
    out, bad = v.items(v.seq(x, "a list of path templates"), _template)
    if bad:
        v.at(bad)
    return tuple(dict.fromkeys(out))


def _prefix(x: Any) -> str | None:
    value = v.string(x, "a path like /api/v1", nullable=True)
    if value is None:
        return None
    if not value.startswith("/") or value.endswith("/") or "{" in value or "?" in value:
        raise v.problem(f"invalid value {value!r}: a path starting with '/', without a trailing "
                        "'/' (e.g. /api/v1)")
    return value


class Inventory(Block):
    WHAT = "a mapping of inventory settings"
    enabled: v.Bool = Field(D(InventorySpec, "enabled"), description="count every request's "
                            "endpoint (method + path template) for `strangler inventory`")
    templates: v.value_type(tuple, _templates, {  # type: ignore[valid-type]
        "type": "array", "uniqueItems": True,
        "items": {"type": "string", "pattern": "^([!#$%&'*+.^_`|~0-9A-Za-z-]+ )?/"},
        "description": "declared path templates, e.g. /users/{id} or GET /users/{id}"}) = ()
    openapi: v.Str("a file name", nullable=True,  # type: ignore[valid-type]
                   description="an OpenAPI 3 document (JSON or YAML) whose paths are "
                   "templates; relative to this file") = None
    openapi_prefix: v.value_type(str | None, _prefix, {  # type: ignore[valid-type]
        "anyOf": [{"type": "string", "pattern": "^/.*[^/]$"}, {"type": "null"}],
        "description": "the path the OpenAPI document's paths live under, e.g. /api/v1"}) = None
    max_templates: v.Integer(10, 100_000) = Field(  # type: ignore[valid-type]
        D(InventorySpec, "max_templates"), description="endpoints counted by name; beyond, "
        "`other`")
    retention_days: v.Integer(1, 3650) = Field(  # type: ignore[valid-type]
        D(InventorySpec, "retention_days"), description="days of rollups kept (state_dir or the "
        "shared store)")


# -- groups --------------------------------------------------------------------------------------


def _member_names(x: Any) -> tuple[str, ...]:
    return _name_list(x, what="a list of route names", item="a route name", kind="route",
                      empty="list the routes that move together")


class Group(Block):
    WHAT = "a mapping with routes, e.g. {routes: [cart-read, cart-write]}"
    HINTS = {"routes": " (the routes that move together, e.g. [cart-read, cart-write])"}
    routes: v.value_type(tuple, _member_names, {  # type: ignore[valid-type]
        "type": "array", "minItems": 2, "uniqueItems": True, "items": {"type": "string"},
        "description": "routes that share one weight, state and sticky assignment"})


def _version(x: Any) -> int:
    value = v.scalar(x, "1")
    if isinstance(value, bool) or value != 1:
        raise PydanticCustomError("version", "{m}", {"m": "unsupported version"})
    return 1


def _state_dir(x: Any) -> str:
    from pathlib import Path

    value = v.string(x, "a directory path")
    if "\x00" in value:
        raise v.problem("must not contain NUL characters")
    try:
        Path(value).expanduser()
    except RuntimeError as exc:  # ~user that does not exist
        raise v.problem(f"cannot expand {value!r}: {exc}") from None
    return value


def _upstreams(x: Any) -> Any:
    if x is None or x == {}:
        raise v.problem("define at least one upstream, e.g. monolith: {url: "
                        "\"http://127.0.0.1:8001\"}")
    return x


class RoutesFile(Block):
    model_config = ConfigDict(title="strangler routes.yaml")
    WHAT = "a mapping of routes.yaml settings"
    HINTS = {"version": " (write 'version: 1')", "default_upstream": " (where unmatched "
             "requests go)"}
    version: v.value_type(int, _version, {"const": 1})  # type: ignore[valid-type]
    listen: v.Address = Field(v.parse_host_port("0.0.0.0:8080"),
                              description="where the proxy takes requests")
    admin: Admin = Admin()
    state_dir: v.value_type(str, _state_dir, {  # type: ignore[valid-type]
        "type": "string", "minLength": 1,
        "description": "rollback state and audit log; relative to this file's directory"}
    ) = ".strangler"
    upstreams: Annotated[dict[str, Upstream], BeforeValidator(_upstreams)] = Field(
        description="name -> upstream; routes refer to them by name", min_length=1)
    default_upstream: v.Str("an upstream name")  # type: ignore[valid-type]
    trusted_proxies: v.Networks("a CIDR or IP address like 10.0.0.0/8") = Field(  # type: ignore
        (), description="peers whose X-Forwarded-For is believed")
    limits: Limits = Limits()
    gate: Gate = Gate()
    flags: Flags = Flags()
    routes: Annotated[tuple[Route, ...], _list_of("a list of routes")] = ()
    notify: Annotated[tuple[NotifySink, ...], _list_of(
        "a list of notification sinks, e.g. [{url_env: SLACK_WEBHOOK, format: slack}]")] = ()
    overrides: Overrides | None = Field(None, description="who may pin a request to legacy or "
                                        "target (routes[].override)")
    shadow_budget: ShadowBudget = ShadowBudget()
    store: Store = Field(Store(), description="where the audit trail, approvals and diffs "
                         "live: local files, or PostgreSQL shared by every replica")
    tls: ServerTls | None = Field(None, description="serve the proxy's listener over TLS "
                                  "(ALPN http/1.1)")
    tracing: Tracing | None = Field(None, description="OpenTelemetry tracing; off when absent")
    inventory: Inventory = Inventory()
    groups: dict[str, Group] = Field({}, description="name -> routes that move together (one "
                                     "weight, state and sticky assignment)")


def blocks() -> dict[str, type[Block]]:
    """Every block by class name (a `model_type` error names the class)."""
    out: dict[str, type[Block]] = {}
    todo: list[type[Block]] = [RoutesFile]
    while todo:
        cls = todo.pop()
        if cls.__name__ in out:
            continue
        out[cls.__name__] = cls
        for f in cls.model_fields.values():
            todo += [t for t in _inner(f.annotation) if isinstance(t, type) and issubclass(
                t, Block)]
    out["Check"] = Check
    out["Token"] = Token
    return out


def _inner(tp: Any) -> list[Any]:
    import typing

    args = typing.get_args(tp)
    return [tp, *[x for a in args for x in _inner(a)]]


def block_at(loc: Loc) -> type[Block] | None:
    """The block a field path points into: `("routes", 2)` -> Route."""
    import typing

    tp: Any = RoutesFile
    for part in loc:
        tp = _block_or_container(tp)
        if isinstance(tp, type) and issubclass(tp, Block):
            if not isinstance(part, str) or part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
            if tp is tuple and part in ("checks", "tokens"):
                item = Check if part == "checks" else Token
                tp = tuple[item, ...]  # type: ignore[valid-type]
            continue
        origin = typing.get_origin(tp)
        if origin in (tuple, list) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict and isinstance(part, str):
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _block_or_container(tp)
    return tp if isinstance(tp, type) and issubclass(tp, Block) else None


def _block_or_container(tp: Any) -> Any:
    import types
    import typing

    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp

