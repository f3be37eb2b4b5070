"""The value types of routes.yaml: each checks one value and describes itself in JSON Schema.

Every type is `Annotated[T, PlainValidator(check), WithJsonSchema(schema)]`, so the model in
`proxy.config.model` is the one place that says both what a field accepts and how it is published
(`strangler schema`, docs/routes.schema.json, the Helm chart). A check raises `expected(what)`
(the loader adds `, got <what the file has>` from the YAML node) or `problem(message)`; checks of
a list report each item at its own path through `at(...)`.
"""

import dataclasses
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn

from pydantic import PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from proxy.config.checks import ENV_RE, TOKEN_RE
from proxy.config.document import Loc, Unreadable
from proxy.config.paths import BadPath, canonical_path
from proxy.config.spec import HostPort
from proxy.config.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_size

# `{line}` stand-in in a message: the loader puts the line of `ctx["line_of"]` there.
LINE = "\x00line\x00"
NAME_HINT = "use letters, digits, '-', '_' and '.', starting with a letter or digit"

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# `$`, then `.field`, `..field`, `[N]`, `[*]`, `['quoted key']` / `["quoted key"]`
_FIELD = r"[^.\[\]'\"\s]+"
_BRACKET = r"\[(?:[0-9]+|\*|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
JSON_PATH_RE = re.compile(rf"^\$(?:\.{_FIELD}|\.\.{_FIELD}|\.\.{_BRACKET}|{_BRACKET})*$")
# a '%' that is no escape, or an escaped unreserved character (RFC 3986 decodes them) or '/'
_PCT_RE = re.compile(
    r"%(?![0-9A-Fa-f]{2})|%(?:2[DdEeFf]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])"
)

# -- raising ------------------------------------------------------------------------------------


def expected(what: str) -> PydanticCustomError:
    return PydanticCustomError("expected", "{m}", {"m": f"expected {what}", "what": what})


def problem(message: str, line_of: Loc | None = None) -> PydanticCustomError:
    """`line_of`: report at that field's line (relative to the raising validator), not its own."""
    ctx: dict[str, Any] = {"m": message}
    if line_of is not None:
        ctx["line_of"] = line_of
    return PydanticCustomError("problem", "{m}", ctx)


def at(found: Sequence[tuple[Loc, PydanticCustomError]]) -> NoReturn:
    """Raise every `(path below this value, error)` at once."""
    details = []
    for loc, error in found:
        ctx = dict(error.context or {})
        if "line_of" in ctx:  # relative to this value: remember how deep the error sits
            ctx["depth"] = len(loc)
        details.append(InitErrorDetails(
            type=PydanticCustomError(error.type, "{m}", ctx), loc=loc, input=None))
    raise ValidationError.from_exception_data("routes.yaml", details)


def suggest(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(key: str, allowed: Sequence[str]) -> str:
    return f"unknown key '{key}'; expected one of: {', '.join(allowed)}{suggest(key, allowed)}"


# -- building types -----------------------------------------------------------------------------


def value_type(py: Any, check: Callable[[Any], Any], schema: dict[str, Any]) -> Any:
    return Annotated[py, PlainValidator(check), WithJsonSchema(schema)]


def scalar(v: Any, what: str) -> Any:
    if isinstance(v, dict | list):
        raise expected(what)
    if isinstance(v, Unreadable):
        raise problem(f"expected {what}; cannot read {v.node.value!r} (tag {v.node.tag!r})")
    return v


def string(v: Any, what: str = "a string", *, nullable: bool = False,
           pattern: re.Pattern[str] | None = None, hint: str = "") -> Any:
    v = scalar(v, what)
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise expected(what)
    if not v.strip():
        raise problem("must not be empty")
    if pattern is not None and not pattern.match(v):
        raise problem(f"invalid value {v!r}: {hint}")
    return v


def _nullable(schema: dict[str, Any], nullable: bool) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def _go_pattern(pattern: re.Pattern[str]) -> str:
    return pattern.pattern


def Str(what: str = "a string", *, nullable: bool = False,
        pattern: re.Pattern[str] | None = None, hint: str = "",
        description: str | None = None) -> Any:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern is not None:
        schema["pattern"] = _go_pattern(pattern)
    if description:
        schema["description"] = description
    return value_type(str | None if nullable else str,
                      lambda v: string(v, what, nullable=nullable, pattern=pattern, hint=hint),
                      _nullable(schema, nullable))


def _boolean(v: Any) -> bool:
    v = scalar(v, "true or false")
    if not isinstance(v, bool):
        raise expected("true or false")
    return v


Bool = value_type(bool, _boolean, {"type": "boolean"})


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None and not lo_open:
        return f"between {lo:g} and {hi:g}"
    parts = [f"{'greater than' if lo_open else 'at least'} {lo:g}"] if lo is not None else []
    if hi is not None:
        parts.append(f"at most {hi:g}")
    return " and ".join(parts)


def number(v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           nullable: bool = False) -> Any:
    v = scalar(v, "a number")
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise expected("a number")
    try:
        value = float(v)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise problem("must be a finite number")
    too_low = lo is not None and (value < lo or (lo_open and value == lo))
    if too_low or (hi is not None and value > hi):
        raise problem(f"{value:g} is out of range: must be {_bounds(lo, hi, lo_open)}")
    return value


def _number_schema(lo: float | None, hi: float | None, lo_open: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return schema


def Number(lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, nullable: bool = False) -> Any:
    return value_type(float | None if nullable else float,
                      lambda v: number(v, lo, hi, lo_open, nullable),
                      _nullable(_number_schema(lo, hi, lo_open), nullable))


def two_decimals(value: float) -> bool:
    return abs(value * 100 - round(value * 100)) < 1e-6


def _weight(v: Any) -> float:
    value = number(v, 0, 100)
    if not two_decimals(value):
        raise problem(f"{value:g} has more than two decimals (granularity is 0.01%)")
    return value


Weight = value_type(float, _weight, {"type": "number", "minimum": 0, "maximum": 100,
                                     "description": "percent of matching traffic to target"})


def _step(v: Any) -> float:
    value = number(v, 0, 100, lo_open=True)
    if not two_decimals(value):
        raise problem(f"{value:g} has more than two decimals")
    return value


Step = value_type(float, _step, {"type": "number", "exclusiveMinimum": 0, "maximum": 100})


def integer(v: Any, lo: int = 1) -> int:
    v = scalar(v, "a whole number")
    if isinstance(v, bool) or not isinstance(v, int):
        raise expected("a whole number")
    if v < lo:
        raise problem(f"{v} is out of range: must be at least {lo}")
    return int(v)


def Integer(lo: int = 1, hi: int | None = None) -> Any:
    def check(v: Any) -> int:
        value = integer(v, lo)
        if hi is not None and value > hi:
            raise problem(f"{value} is out of range: must be {lo} to {hi}")
        return value
    schema: dict[str, Any] = {"type": "integer", "minimum": lo}
    if hi is not None:
        schema["maximum"] = hi
    return value_type(int, check, schema)


DURATION_SCHEMA = {
    "description": "250ms, 1s, 1.5s, 5m, 1h or a number of seconds",
    "oneOf": [
        {"type": "string",
         "pattern": r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|MS|Ms|mS|S|M|H)?\s*$"},
        {"type": "number", "minimum": 0},
    ],
}
SIZE_SCHEMA = {
    "description": "64KiB, 1MiB, 1GiB, 10MB or a number of bytes",
    "oneOf": [
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*"
                                      r"([KkMmGg][Ii]?[Bb]|[Bb])?\s*$"},
        {"type": "integer", "minimum": 0},
    ],
}


def _unit_value(v: Any, hint: str, parse: Callable[[Any], Any]) -> Any:
    """A duration or size as written (`1.5s`, `64KiB` or a plain number), parsed."""
    v = scalar(v, hint)
    if v is None or isinstance(v, bool) or not isinstance(v, str | int | float):
        raise expected(hint)
    try:
        return parse(v)
    except ValueError as exc:
        raise problem(str(exc)) from None


def Duration(*, positive: bool = True, nullable: bool = False) -> Any:
    def check(v: Any) -> float | None:
        if v is None and nullable:
            return None
        seconds = _unit_value(v, DURATION_HINT, parse_duration)
        if positive and seconds <= 0:
            raise problem("must be greater than 0")
        return seconds
    return value_type(float | None if nullable else float, check,
                      _nullable({"x-strangler-ref": "duration"}, nullable))


def Size(lo: int = 0) -> Any:
    def check(v: Any) -> int:
        size = _unit_value(v, SIZE_HINT, parse_size)
        if size < lo:
            raise problem(f"must be at least {lo} bytes")
        return size
    schema: dict[str, Any] = {"x-strangler-ref": "size"}
    if lo:
        schema = {"allOf": [schema], "description": f"at least {lo} bytes"}
    return value_type(int, check, schema)


def Choice(*options: str) -> Any:
    what = " or ".join(options)

    def check(v: Any) -> str:
        value = string(v, what)
        if value not in options:
            raise problem(f"invalid value {value!r}: expected {what}")
        return value
    return value_type(str, check, {"enum": list(options)})


# -- addresses and urls -------------------------------------------------------------------------


def parse_host_port(value: str, *, allow_port_zero: bool = True) -> HostPort:
    """`host:port` (IPv6 in brackets: `[::1]:9901`) -> HostPort; ValueError says what is wrong."""
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid address {value!r}: expected [IPv6]:PORT, e.g. [::1]:8080")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid address {value!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
        if ":" in host:
            raise ValueError(f"invalid address {value!r}: put IPv6 addresses in brackets, "
                             "e.g. [::1]:8080")
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"invalid address {value!r}: {host!r} is not a host name or IP")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"invalid address {value!r}: the port must be a number")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"invalid address {value!r}: port {port} is out of range")
    return HostPort(host, port)


def _address(v: Any) -> HostPort:
    value = string(v, "HOST:PORT")
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


Address = value_type(HostPort, _address, {
    "type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]*):[0-9]{1,5}$",
    "description": "HOST:PORT, e.g. 0.0.0.0:8080"})


def HttpUrl(*, nullable: bool = False, description: str | None = None) -> Any:
    """An http(s) base url for an external service (Prometheus, Unleash, the dashboard)."""
    from urllib.parse import urlsplit

    def check(v: Any) -> str | None:
        value = string(v, "a url", nullable=nullable)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError when invalid
        except ValueError as exc:
            raise problem(f"invalid url {value!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise problem(f"invalid url {value!r}: expected http(s)://HOST[:PORT][/path]")
        return value.rstrip("/")
    schema: dict[str, Any] = {"type": "string", "pattern": "^https?://"}
    if description:
        schema["description"] = description
    return value_type(str | None if nullable else str, check, _nullable(schema, nullable))


def url_problem(value: str) -> str | None:
    """Why `value` is not a usable webhook url (the message never quotes it), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError when invalid
    except ValueError:
        return "is not a valid url"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s)://HOST[:PORT]/path url"
    return None


def is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def path_problem(path: str, *, prefix: bool) -> str | None:
    """Why a match path is not canonical (routing sees only normalised paths), or None."""
    if not path.startswith("/"):
        return "must start with '/'"
    if any(c <= " " or c in "?#\x7f" for c in path):
        return "must not contain spaces, control characters, '?' or '#'"
    if "//" in path:
        return "must not contain '//' (requests are normalised before routing)"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "must not contain '.' or '..' segments (requests are normalised before routing)"
    bad = _PCT_RE.search(path)
    if bad:
        if bad.group(0) == "%":
            return "has a '%' that is not a percent-escape like %20"
        return (f"must not percent-encode {bad.group(0)!r}: write unreserved characters as "
                "themselves, and %2e / %2f are never allowed")
    if not path.isascii():
        return "must be ASCII: percent-encode other characters (e.g. 'é' as %C3%A9)"
    try:
        canonical = canonical_path(path.encode("ascii")).decode("ascii")
    except BadPath as exc:
        return f"is refused by the proxy's path rules: {exc}"
    if canonical != path:
        return f"is not canonical: requests are normalised to {canonical!r} before routing"
    if prefix and len(path) > 1 and path.endswith("/"):
        return ("must not end with '/': path_prefix matches whole segments, so "
                f"'{path.rstrip('/')}' already matches '{path}...'")
    return None


def _upstream_url(v: Any) -> dict[str, Any]:
    from urllib.parse import urlsplit

    url = string(v, "a url like http://127.0.0.1:8001")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise problem(f"invalid url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise problem(f"invalid url {url!r}: expected http(s)://HOST:PORT[/base/path]")
    if parts.username is not None or parts.password is not None:
        raise problem("credentials in an upstream url are not supported")
    host = parts.hostname or ""
    if not host or (":" in host and not is_ipv6(host)) or (
        ":" not in host and not _HOSTNAME_RE.match(host)
    ):
        raise problem(f"invalid url {url!r}: missing or invalid host")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise problem(f"invalid url {url!r}: an upstream url cannot have a query or fragment")
    base_path = parts.path.rstrip("/")
    if base_path:
        why = path_problem(base_path, prefix=False)
        if why:
            raise problem(f"invalid url {url!r}: its path {why}")
    if port == 0:
        raise problem(f"invalid url {url!r}: port 0")
    return {"url": url, "host": host, "port": port or (443 if scheme == "https" else 80),
            "base_path": base_path, "scheme": scheme}


UpstreamUrl = value_type(dict, _upstream_url, {
    "type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
    "description": "http(s)://HOST:PORT[/base/path]; https: certificate checked against the "
    "system CAs unless tls says otherwise"})


def MatchPath(*, prefix: bool) -> Any:
    def check(v: Any) -> str:
        value = string(v, "a path")
        why = path_problem(value, prefix=prefix)
        if why:
            raise problem(f"{value!r} {why}")
        return value
    return value_type(str, check, {"type": "string", "pattern": "^/"})


def _regex(v: Any) -> str:
    value = string(v, "a regular expression")
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise problem(f"invalid regular expression: {exc}") from None
    return value


Regex = value_type(str, _regex, {"type": "string", "minLength": 1,
                                 "description": "a Python regular expression (re.search)"})


# -- names and lists ----------------------------------------------------------------------------


def header_name(v: Any) -> str:
    value = string(v, "a header name")
    if not TOKEN_RE.match(value):
        raise problem(f"invalid header name {value!r}")
    return value.lower()


HEADER_SCHEMA = {"type": "string", "pattern": TOKEN_RE.pattern}
HeaderName = value_type(str, header_name, HEADER_SCHEMA)
EnvName = Str("an environment variable name", pattern=ENV_RE,
              hint="expected an environment variable name")


def seq(v: Any, what: str) -> list[Any]:
    """A list (null = empty); anything else is `expected what`."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise expected(what)
    return v


def items(v: list[Any], check: Callable[[Any], Any]) -> tuple[list[Any], list[tuple[Loc, Any]]]:
    """Each item checked: the values of the good ones and `(index, error)` for the others."""
    out: list[Any] = []
    bad: list[tuple[Loc, Any]] = []
    for i, item in enumerate(v):
        try:
            out.append(check(item))
        except PydanticCustomError as exc:
            bad.append(((i,), exc))
    return out, bad


def _methods(v: Any) -> tuple[str, ...]:
    values = seq(v, "a list of HTTP methods")
    if not values:
        raise problem("must not be empty (leave it out to mean any method)")
    out: list[str] = []
    bad: list[tuple[Loc, Any]] = []
    for i, item in enumerate(values):
        try:
            value = string(item, "an HTTP method")
        except PydanticCustomError as exc:
            bad.append(((i,), exc))
            continue
        method = value.upper()
        if not TOKEN_RE.match(method):
            bad.append(((i,), problem(f"invalid HTTP method {value!r}")))
        elif method in out:
            bad.append(((i,), problem(f"duplicate method {method}")))
        else:
            out.append(method)
    if bad:
        at(bad)
    return tuple(out)


Methods = value_type(tuple, _methods, {
    "type": "array", "minItems": 1, "uniqueItems": True,
    "items": {"type": "string", "pattern": TOKEN_RE.pattern}})


def Networks(what: str) -> Any:
    def network(item: Any) -> Any:
        value = string(item, what)
        try:
            return ipaddress.ip_network(value.strip())
        except ValueError as exc:
            raise problem(f"invalid network {value!r}: {exc}") from None

    def check(v: Any) -> tuple[Any, ...]:
        out, bad = items(seq(v, "a list of CIDRs or IP addresses"), network)
        if bad:
            at(bad)
        return tuple(out)
    return value_type(tuple, check, {"type": "array", "items": {
        "type": "string", "description": "a CIDR or an IP address, e.g. 10.0.0.0/8"}})


def _rate(v: Any) -> float | None:
    """Mirrors per second: a positive number, or `unlimited`."""
    if v == "unlimited":
        return None
    return number(v, lo=0, lo_open=True)


Rate = value_type(float | None, _rate, {
    "oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "unlimited"}],
    "description": "mirrors per second, or unlimited"})


def field_path_problem(entry: str) -> str | None:
    """Syntax of a compare.ignore / compare.redact entry, or None when it is fine."""
    if entry.startswith("header:"):
        name = entry[len("header:") :]
        return None if TOKEN_RE.match(name) else f"{entry!r}: 'header:' needs a header name"
    if entry.startswith("$"):
        if JSON_PATH_RE.match(entry):
            return None
        return (f"{entry!r} is not a field path: use $.field, $..field, $.list[0], $.list[*] "
                "or $['odd key']")
    return f"{entry!r}: expected 'header:NAME' or a field path starting with '$' (e.g. $.id)"


def spec_default(spec: type, name: str) -> Any:
    """The default of `spec`'s field `name`: the spec dataclass is where defaults live."""
    for f in dataclasses.fields(spec):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{spec.__name__} has no field {name!r}")
