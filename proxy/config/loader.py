"""routes.yaml -> frozen `proxy.config.spec.Config`, or every problem in the file at once.

The file is composed (not loaded) with PyYAML so that every node keeps its line; the walker below
checks each key against the schema in contract §3 and records a `Problem(file, line, path,
message)` instead of stopping. `load_config` raises `ConfigError` carrying all of them, sorted by
line, so `strangler validate` and a rejected reload can show the whole list.

    ConfigError(Exception)      .problems: tuple[Problem, ...]
"""

from __future__ import annotations

import difflib
import gc
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config import overrides as override_config
from proxy.config.checks import BAD, ENV_RE, FLAG_RE, NAME_RE, TOKEN_RE
from proxy.config.paths import BadPath, canonical_path
from proxy.config.spec import (
    SAFE_METHODS,
    AdminSpec,
    AutoSpec,
    CheckSpec,
    CompareSpec,
    Config,
    FlagsSpec,
    GateSourceSpec,
    GuardrailSpec,
    HostPort,
    LimitsSpec,
    MatchSpec,
    PromotionSpec,
    RouteSpec,
    ShadowBudgetSpec,
    ShadowSpec,
    StickySpec,
    UnleashSpec,
    UpstreamSpec,
)
from proxy.config.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_size

__all__ = [
    "ConfigError",
    "Problem",
    "format_problems",
    "load_config",
    "parse_host_port",
]

_TAG = "tag:yaml.org,2002:"
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader whose implicit-tag resolution is memoised per document (its regexes dominate
    composing a 10,000-route file, whose scalars repeat: upstream names, methods, keys)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if not implicit[0]:
                return f"{_TAG}str"
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return f"{_TAG}seq" if kind is SequenceNode else f"{_TAG}map"

    # SafeLoader has no path resolvers: skip the bookkeeping composing does for them per node
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


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



@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file, at the line of the offending key (or value)."""

    file: str
    line: int
    path: str  # field path, e.g. routes[0].shadow.sample
    message: str

    def __str__(self) -> str:
        if self.line <= 0 and not self.path:  # the file as a whole (unreadable)
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


def format_problems(problems: Iterable[Problem]) -> str:
    """One problem per line, as `strangler validate` prints them."""
    return "\n".join(str(p) for p in problems)


class ConfigError(Exception):
    """The file is not a valid routes.yaml; `problems` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.line))
        super().__init__(format_problems(self.problems))

    def __str__(self) -> str:
        return format_problems(self.problems)


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Parse and validate routes.yaml; `text` replaces reading `path` (which still names it).

    Raises ConfigError with every problem found. `state_dir` is resolved against the file's
    directory (against the working directory when `text` is given and `path` is not a real file).
    """
    file = str(path)
    source = Path(path)
    if text is None:
        try:
            text = source.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            raise ConfigError([Problem(file, 0, "", "no such file")]) from None
        except IsADirectoryError:
            raise ConfigError([Problem(file, 0, "", "is a directory, not a file")]) from None
        except OSError as exc:
            raise ConfigError([Problem(file, 0, "", f"cannot read: {exc.strerror}")]) from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError([Problem(file, line, "syntax", "not valid UTF-8")]) from None
        base = source.absolute().parent
    else:
        base = source.absolute().parent if source.is_file() else Path.cwd()
    walker = _Walker(file)
    # Composing allocates a node per scalar and no garbage; the cyclic GC would rescan the
    # growing tree over and over (5x the parse time for 10,000 routes), so it waits until the end.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        config = walker.config(text, source, base)
    finally:
        if gc_was_enabled:
            gc.enable()
    if walker.problems or config is None:
        raise ConfigError(walker.problems)
    return config


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


# --------------------------------------------------------------------------------------------
# The walker


class _Entry(NamedTuple):
    """A value in the document: its node, the line problems with it are reported at, its path."""

    node: Node
    line: int
    path: str




def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _describe(node: Node, value: Any = None) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.removeprefix(_TAG)
    if tag == "null":
        return "null"
    if tag == "bool":
        return f"boolean {str(value).lower()}"
    if tag in ("int", "float"):
        return f"number {node.value}"
    if tag == "str":
        shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return f"string {shown!r}"
    return f"{tag} {node.value!r}"


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'; expected one of: {', '.join(allowed)}{hint}"


def _two_decimals(value: float) -> bool:
    return abs(value * 100 - round(value * 100)) < 1e-6


def _path_problem(path: str, *, prefix: bool) -> str | None:
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


def _field_path_problem(entry: str) -> str | None:
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


class _Walker:
    """Checks one document against the schema; collects problems instead of raising."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self._ctor = yaml.constructor.SafeConstructor()
        self.gate_url_reported = False
        self.override_trust: Any = None  # `overrides.trusted`, read before the routes

    # -- recording -----------------------------------------------------------------------------

    def problem(self, line: int, path: str, message: str) -> Any:
        self.problems.append(Problem(self.file, max(1, line), path, message))
        return BAD

    def reject(self, line: int, path: str, message: str) -> bool:
        """Record a problem; False, for `ok = self.reject(...)`."""
        self.problem(line, path, message)
        return False

    def expected(self, e: _Entry, what: str, value: Any = None) -> Any:
        return self.problem(e.line, e.path, f"expected {what}, got {_describe(e.node, value)}")

    # -- structure -----------------------------------------------------------------------------

    def mapping(
        self, e: _Entry, allowed: Sequence[str], *, what: str = "a mapping"
    ) -> dict[str, _Entry] | None:
        """The keys of a mapping node as entries; reports duplicates and unknown keys."""
        node = e.node
        if not isinstance(node, MappingNode):
            self.expected(e, what, self.scalar_value(node))
            return None
        out: dict[str, _Entry] = {}
        prefix = f"{e.path}." if e.path else ""
        for key_node, value_node in self._pairs(node, e):
            key = self._key(key_node, e)
            if key is None:
                continue
            path = f"{prefix}{key}"
            line = _line(key_node)
            if key in out:
                self.problem(line, path, f"duplicate key '{key}' (first at line {out[key].line})")
                continue
            if allowed and key not in allowed:
                self.problem(line, path, _suggest(key, allowed))
                continue
            out[key] = _Entry(value_node, line, path)
        return out

    def free_mapping(self, e: _Entry) -> list[tuple[str, _Entry]] | None:
        """A mapping with user-chosen keys (upstreams, headers, array_keys), in file order."""
        node = e.node
        if node.tag == f"{_TAG}null" and isinstance(node, ScalarNode):
            return []
        if not isinstance(node, MappingNode):
            self.expected(e, "a mapping", self.scalar_value(node))
            return None
        out: list[tuple[str, _Entry]] = []
        seen: dict[str, int] = {}
        prefix = f"{e.path}." if e.path else ""
        for key_node, value_node in self._pairs(node, e):
            key = self._key(key_node, e)
            if key is None:
                continue
            line = _line(key_node)
            if key in seen:
                self.problem(line, f"{prefix}{key}", f"duplicate key '{key}' (first at line "
                             f"{seen[key]})")
                continue
            seen[key] = line
            out.append((key, _Entry(value_node, line, f"{prefix}{key}")))
        return out

    def _pairs(self, node: MappingNode, e: _Entry) -> list[tuple[Node, Node]]:
        """The mapping's pairs; merge keys are refused (they hide where a value comes from)."""
        if node.tag != f"{_TAG}map":
            self.problem(e.line, e.path, f"unsupported YAML tag {node.tag!r} on a mapping")
        pairs: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == f"{_TAG}merge":
                self.problem(_line(key_node), e.path, "YAML merge keys (<<) are not supported; "
                             "write the keys out")
                continue
            pairs.append((key_node, value_node))
        return pairs

    def _key(self, key_node: Node, e: _Entry) -> str | None:
        if isinstance(key_node, ScalarNode) and key_node.tag == f"{_TAG}str":
            return str(key_node.value)
        value = self.scalar_value(key_node)
        self.problem(_line(key_node), e.path,
                     f"keys must be strings, got {_describe(key_node, value)}")
        return None

    def sequence(self, e: _Entry, what: str = "a list") -> list[_Entry] | None:
        """Items of a list node (null = empty list), each with its own line and `path[i]`."""
        node = e.node
        if isinstance(node, ScalarNode) and node.tag == f"{_TAG}null":
            return []
        if not isinstance(node, SequenceNode):
            self.expected(e, what, self.scalar_value(node))
            return None
        if node.tag != f"{_TAG}seq":
            self.problem(e.line, e.path, f"unsupported YAML tag {node.tag!r} on a list")
        return [_Entry(item, _line(item), f"{e.path}[{i}]") for i, item in enumerate(node.value)]

    # -- scalars ------------------------------------------------------------------------------

    def scalar_value(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return BAD
        try:
            return self._ctor.construct_object(node, deep=True)
        except Exception:  # third-party constructor on arbitrary input: any failure = bad value
            self._ctor = yaml.constructor.SafeConstructor()
            return BAD

    def scalar(self, e: _Entry, what: str) -> Any:
        """The Python value of a scalar node, or BAD (reported) for lists, mappings, bad tags."""
        if not isinstance(e.node, ScalarNode):
            return self.expected(e, what)
        value = self.scalar_value(e.node)
        if value is BAD:
            return self.problem(e.line, e.path, f"expected {what}; cannot read "
                                f"{e.node.value!r} (tag {e.node.tag!r})")
        return value

    def string(self, e: _Entry, *, what: str = "a string", nullable: bool = False,
               pattern: re.Pattern[str] | None = None, pattern_hint: str = "") -> Any:
        value = self.scalar(e, what)
        if value is BAD:
            return BAD
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            return self.expected(e, what, value)
        if not value.strip():
            return self.problem(e.line, e.path, "must not be empty")
        if pattern is not None and not pattern.match(value):
            return self.problem(e.line, e.path, f"invalid value {value!r}: {pattern_hint}")
        return value

    def boolean(self, e: _Entry) -> Any:
        value = self.scalar(e, "true or false")
        if value is BAD:
            return BAD
        if not isinstance(value, bool):
            return self.expected(e, "true or false", value)
        return value

    def number(self, e: _Entry, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, nullable: bool = False) -> Any:
        value = self.scalar(e, "a number")
        if value is BAD:
            return BAD
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.expected(e, "a number", value)
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            return self.problem(e.line, e.path, "must be a finite number")
        too_low = lo is not None and (value < lo or (lo_open and value == lo))
        if too_low or (hi is not None and value > hi):
            return self.problem(e.line, e.path,
                                f"{value:g} is out of range: must be {_bounds(lo, hi, lo_open)}")
        return value

    def integer(self, e: _Entry, *, lo: int = 1) -> Any:
        value = self.scalar(e, "a whole number")
        if value is BAD:
            return BAD
        if isinstance(value, bool) or not isinstance(value, int):
            return self.expected(e, "a whole number", value)
        if value < lo:
            return self.problem(e.line, e.path, f"{value} is out of range: must be at least {lo}")
        return value

    def duration(self, e: _Entry, *, positive: bool = True) -> Any:
        value = self.scalar(e, DURATION_HINT)
        if value is BAD:
            return BAD
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            return self.expected(e, DURATION_HINT, value)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            return self.problem(e.line, e.path, str(exc))
        if positive and seconds <= 0:
            return self.problem(e.line, e.path, "must be greater than 0")
        return seconds

    def size(self, e: _Entry, *, lo: int = 0) -> Any:
        value = self.scalar(e, SIZE_HINT)
        if value is BAD:
            return BAD
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            return self.expected(e, SIZE_HINT, value)
        try:
            size = parse_size(value)
        except ValueError as exc:
            return self.problem(e.line, e.path, str(exc))
        if size < lo:
            return self.problem(e.line, e.path, f"must be at least {lo} bytes")
        return size

    def choice(self, e: _Entry, options: Sequence[str]) -> Any:
        what = " or ".join(options)
        value = self.string(e, what=what)
        if value is BAD:
            return BAD
        if value not in options:
            return self.problem(e.line, e.path, f"invalid value {value!r}: expected {what}")
        return value

    def address(self, e: _Entry) -> Any:
        value = self.string(e, what="HOST:PORT")
        if value is BAD:
            return BAD
        try:
            return parse_host_port(value)
        except ValueError as exc:
            return self.problem(e.line, e.path, str(exc))

    def http_url(self, e: _Entry, *, nullable: bool = False) -> Any:
        """An http(s) base url for an external service (Prometheus, Unleash)."""
        value = self.string(e, what="a url", nullable=nullable)
        if value is BAD or value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError when invalid
        except ValueError as exc:
            return self.problem(e.line, e.path, f"invalid url {value!r}: {exc}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return self.problem(e.line, e.path,
                                f"invalid url {value!r}: expected http(s)://HOST[:PORT][/path]")
        return value.rstrip("/")

    def methods(self, e: _Entry) -> Any:
        items = self.sequence(e, "a list of HTTP methods")
        if items is None:
            return BAD
        if not items:
            return self.problem(e.line, e.path, "must not be empty (leave it out to mean any "
                                "method)")
        out: list[str] = []
        ok = True
        for item in items:
            value = self.string(item, what="an HTTP method")
            if value is BAD:
                ok = False
                continue
            method = value.upper()
            if not TOKEN_RE.match(method):
                ok = self.reject(item.line, item.path, f"invalid HTTP method {value!r}")
                continue
            if method in out:
                ok = self.reject(item.line, item.path, f"duplicate method {method}")
                continue
            out.append(method)
        return tuple(out) if ok else BAD

    def header_name(self, e: _Entry, value: Any) -> Any:
        if value is BAD:
            return BAD
        if not TOKEN_RE.match(value):
            return self.problem(e.line, e.path, f"invalid header name {value!r}")
        return value.lower()

    def fields(self, m: dict[str, _Entry], spec: dict[str, Callable[[_Entry], Any]]
               ) -> dict[str, Any]:
        """Apply a checker per present key; keys whose value was bad are left to the default."""
        out: dict[str, Any] = {}
        for key, check in spec.items():
            if key in m:
                value = check(m[key])
                if value is not BAD:
                    out[key] = value
        return out

    def require(self, m: dict[str, _Entry], key: str, parent: _Entry, hint: str = "") -> bool:
        if key in m:
            return True
        path = f"{parent.path}.{key}" if parent.path else key
        self.problem(parent.line, path, f"missing required key '{key}'{hint}")
        return False

    # -- the document ---------------------------------------------------------------------------

    def config(self, text: str, source: Path, base: Path) -> Config | None:
        try:
            root = yaml.compose(text, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            message = exc.problem or "invalid YAML"
            if exc.context:
                ctx_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
                message = f"{message} ({exc.context}{ctx_line})"
            self.problem(line, "syntax", f"invalid YAML: {message}")
            return None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, max(0, exc.position)) + 1
            self.problem(line, "syntax", f"invalid YAML: {exc.reason} "
                         f"(character #x{exc.character:04x})" if isinstance(exc.character, int)
                         else f"invalid YAML: {exc.reason}")
            return None
        except yaml.YAMLError as exc:
            self.problem(1, "syntax", f"invalid YAML: {exc}")
            return None
        except RecursionError:
            self.problem(1, "syntax", "invalid YAML: nested too deeply")
            return None
        if root is None:
            self.problem(1, "", "the file is empty; expected a mapping starting with 'version: 1'")
            return None
        top = _Entry(root, _line(root), "")
        m = self.mapping(top, TOP_KEYS, what="a mapping of routes.yaml settings")
        if m is None:
            return None

        if self.require(m, "version", top, " (write 'version: 1')"):
            e = m["version"]
            v = self.scalar(e, "1")
            if v is not BAD and (isinstance(v, bool) or v != 1):
                self.problem(e.line, e.path, f"unsupported version {e.node.value!r}: "
                             "only version 1 exists")
        listen = HostPort("0.0.0.0", 8080)
        if "listen" in m:
            value = self.address(m["listen"])
            listen = listen if value is BAD else value
        admin = self.admin(m["admin"]) if "admin" in m else AdminSpec()
        state_dir = base / ".strangler"
        if "state_dir" in m:
            e = m["state_dir"]
            value = self.string(e, what="a directory path")
            if value is not BAD and "\x00" in value:
                value = self.problem(e.line, e.path, "must not contain NUL characters")
            if value is not BAD:
                try:
                    state_dir = base / Path(value).expanduser()
                except RuntimeError as exc:  # ~user that does not exist
                    self.problem(e.line, e.path, f"cannot expand {value!r}: {exc}")
        upstreams: dict[str, UpstreamSpec] = {}
        if self.require(m, "upstreams", top):
            upstreams = self.upstreams(m["upstreams"])
        default_upstream = ""
        if self.require(m, "default_upstream", top, " (where unmatched requests go)"):
            e = m["default_upstream"]
            value = self.string(e, what="an upstream name")
            if value is not BAD:
                default_upstream = value
                self.check_upstream_ref(e, value, upstreams)
        trusted = self.trusted_proxies(m["trusted_proxies"]) if "trusted_proxies" in m else ()
        limits = self.limits(m["limits"]) if "limits" in m else LimitsSpec()
        gate = self.gate(m["gate"]) if "gate" in m else GateSourceSpec()
        flags = self.flags(m["flags"]) if "flags" in m else FlagsSpec()
        shadow_budget = self.shadow_budget(m["shadow_budget"]) if "shadow_budget" in m \
            else ShadowBudgetSpec()
        self.override_trust = override_config.overrides(self, m["overrides"]) \
            if "overrides" in m else None
        routes: tuple[RouteSpec, ...] = ()
        if "routes" in m:
            routes = self.routes(m["routes"], upstreams, gate, flags)
        override_config.check_consumed(self, routes, self.override_trust)
        notify: tuple[Any, ...] = ()
        if "notify" in m:
            from proxy.config.notify import notify_sinks

            names = None if self.problems else [r.name for r in routes]
            notify = notify_sinks(self, m["notify"], names)
        if self.problems:
            return None
        return Config(
            source=source,
            version=1,
            listen=listen,
            admin=admin,
            state_dir=Path(os.path.normpath(state_dir)),
            upstreams=upstreams,
            default_upstream=default_upstream,
            trusted_proxies=trusted,
            limits=limits,
            gate=gate,
            flags=flags,
            routes=routes,
            notify=notify,
            overrides=self.override_trust,
            shadow_budget=shadow_budget,
        )

    def admin(self, e: _Entry) -> AdminSpec:
        m = self.mapping(e, ("listen", "dashboard_url"))
        if not m:
            return AdminSpec()
        return AdminSpec(**self.fields(m, {
            "listen": self.address,
            "dashboard_url": lambda x: self.http_url(x, nullable=True),
        }))

    def upstreams(self, e: _Entry) -> dict[str, UpstreamSpec]:
        items = self.free_mapping(e)
        if items is None:
            return {}
        if not items:
            self.problem(e.line, e.path, "define at least one upstream, e.g. "
                         "monolith: {url: \"http://127.0.0.1:8001\"}")
            return {}
        out: dict[str, UpstreamSpec] = {}
        for name, entry in items:
            if not NAME_RE.match(name):
                self.problem(entry.line, entry.path, f"invalid upstream name {name!r}: use "
                             "letters, digits, '-', '_' and '.', starting with a letter or digit")
            spec = self.upstream(name, entry)
            if spec is not None:
                out[name] = spec
            else:  # keep the name known so references to it are not reported twice
                out[name] = UpstreamSpec(name=name, url="", host="", port=0, line=entry.line)
        return out

    def upstream(self, name: str, e: _Entry) -> UpstreamSpec | None:
        m = self.mapping(e, UPSTREAM_KEYS, what="a mapping with url: http://HOST:PORT")
        if m is None or not self.require(m, "url", e):
            return None
        kw = self.fields(m, {
            "connect_timeout": self.duration,
            "timeout": self.duration,
            "max_connections": self.integer,
        })
        target = self.upstream_url(m["url"])
        if target is BAD:
            return None
        return UpstreamSpec(name=name, line=e.line, **target, **kw)

    def upstream_url(self, e: _Entry) -> Any:
        url = self.string(e, what="a url like http://127.0.0.1:8001")
        if url is BAD:
            return BAD
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            return self.problem(e.line, e.path, f"invalid url {url!r}: {exc}")
        scheme = parts.scheme.lower()
        if scheme == "https":
            return self.problem(e.line, e.path, "https upstreams are not supported; terminate "
                                "TLS in front or use http")
        if scheme != "http":
            return self.problem(e.line, e.path, f"invalid url {url!r}: expected "
                                "http://HOST:PORT[/base/path]")
        if parts.username is not None or parts.password is not None:
            return self.problem(e.line, e.path, "credentials in an upstream url are not "
                                "supported")
        host = parts.hostname or ""
        if not host or (":" in host and not _is_ipv6(host)) or (
            ":" not in host and not _HOSTNAME_RE.match(host)
        ):
            return self.problem(e.line, e.path, f"invalid url {url!r}: missing or invalid host")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            return self.problem(e.line, e.path, f"invalid url {url!r}: an upstream url cannot "
                                "have a query or fragment")
        base_path = parts.path.rstrip("/")
        if base_path:
            why = _path_problem(base_path, prefix=False)
            if why:
                return self.problem(e.line, e.path, f"invalid url {url!r}: its path {why}")
        if port == 0:
            return self.problem(e.line, e.path, f"invalid url {url!r}: port 0")
        return {"url": url, "host": host, "port": port or 80, "base_path": base_path}

    def check_upstream_ref(self, e: _Entry, name: str, upstreams: dict[str, UpstreamSpec]
                           ) -> bool:
        if name in upstreams or not upstreams:
            return name in upstreams
        close = difflib.get_close_matches(name, list(upstreams), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.problem(e.line, e.path, f"unknown upstream '{name}'; defined: "
                     f"{', '.join(upstreams)}{hint}")
        return False

    def trusted_proxies(self, e: _Entry) -> tuple[Any, ...]:
        items = self.sequence(e, "a list of CIDRs or IP addresses")
        out = []
        for item in items or ():
            value = self.string(item, what="a CIDR or IP address like 10.0.0.0/8")
            if value is BAD:
                continue
            try:
                out.append(ipaddress.ip_network(value.strip()))
            except ValueError as exc:
                self.problem(item.line, item.path, f"invalid network {value!r}: {exc}")
        return tuple(out)

    def rate(self, e: _Entry) -> Any:
        """Mirrors per second: a positive number, or `unlimited`."""
        value = self.scalar_value(e.node) if isinstance(e.node, ScalarNode) else None
        if value == "unlimited":
            return None
        return self.number(e, lo=0, lo_open=True)

    def nice(self, e: _Entry) -> Any:
        value = self.integer(e, lo=0)
        if value is not BAD and value > 19:
            return self.problem(e.line, e.path, f"{value} is out of range: must be 0 to 19")
        return value

    def shadow_budget(self, e: _Entry) -> ShadowBudgetSpec:
        m = self.mapping(e, SHADOW_BUDGET_KEYS)
        if not m:
            return ShadowBudgetSpec()
        return ShadowBudgetSpec(**self.fields(m, {
            "max_rate": self.rate,
            "max_pending": lambda x: self.size(x, lo=64 * 1024),
            "comparer_nice": self.nice,
        }))

    def limits(self, e: _Entry) -> LimitsSpec:
        m = self.mapping(e, LIMITS_KEYS)
        if not m:
            return LimitsSpec()
        return LimitsSpec(**self.fields(m, {
            "max_body": self.size,
            "header_timeout": self.duration,
            "body_idle_timeout": self.duration,
            "drain_timeout": lambda x: self.duration(x, positive=False),
            "max_request_line": lambda x: self.size(x, lo=64),
            "max_header_bytes": lambda x: self.size(x, lo=256),
            "max_headers": self.integer,
        }))

    def gate(self, e: _Entry) -> GateSourceSpec:
        m = self.mapping(e, ("metrics", "url"))
        if not m:
            return GateSourceSpec()
        kw = self.fields(m, {
            "metrics": lambda x: self.choice(x, ("local", "prometheus")),
            "url": lambda x: self.http_url(x, nullable=True),
        })
        # an invalid url was reported already; a missing (or null) one is reported here or at
        # the routes whose promotion.checks need it
        self.gate_url_reported = "url" in m and "url" not in kw
        if kw.get("metrics") == "prometheus" and kw.get("url") is None \
                and not self.gate_url_reported:
            where = m["url"].line if "url" in m else m["metrics"].line
            self.problem(where, f"{e.path}.url", "required with metrics: prometheus "
                         "(the Prometheus base url, e.g. http://prometheus:9090)")
        return GateSourceSpec(**kw)

    def flags(self, e: _Entry) -> FlagsSpec:
        m = self.mapping(e, ("backend", "unleash"))
        if not m:
            return FlagsSpec()
        kw = self.fields(m, {"backend": lambda x: self.choice(x, ("file", "unleash"))})
        backend = kw.get("backend", "file")
        if "unleash" in m:
            u = m["unleash"]
            if backend == "file" and ("backend" not in m or "backend" in kw):
                self.problem(u.line, u.path, "only used with backend: unleash (set "
                             "flags.backend: unleash, or remove this block)")
            um = self.mapping(u, UNLEASH_KEYS)
            if um is not None:
                def env_name(x: _Entry) -> Any:
                    return self.string(x, what="an environment variable name", pattern=ENV_RE,
                                       pattern_hint="expected an environment variable name")
                kw["unleash"] = UnleashSpec(**self.fields(um, {
                    "url": self.http_url,
                    "app_name": self.string,
                    "refresh_interval": self.duration,
                    "token_env": env_name,
                    "admin_token_env": env_name,
                    "environment": self.string,
                    "project": self.string,
                }))
        elif backend == "unleash":
            kw["unleash"] = UnleashSpec()
        return FlagsSpec(**kw)

    # -- routes ---------------------------------------------------------------------------------

    def routes(self, e: _Entry, upstreams: dict[str, UpstreamSpec], gate: GateSourceSpec,
               flags: FlagsSpec) -> tuple[RouteSpec, ...]:
        items = self.sequence(e, "a list of routes")
        if not items:
            return ()
        names: dict[str, int] = {}
        flag_names: dict[str, str] = {}
        out: list[RouteSpec] = []
        coverage = _Coverage()
        for item in items:
            route = self.route(item, upstreams, gate, flags, names, flag_names)
            if route is None:
                continue
            out.append(route)
            earlier = coverage.covering(route)
            if earlier is not None:
                self.problem(item.line, item.path, f"route '{route.name}' can never match: "
                             f"route '{earlier.name}' (line {earlier.line}) matches every "
                             "request it would")
            coverage.add(route)
        return tuple(out)

    def route(self, e: _Entry, upstreams: dict[str, UpstreamSpec], gate: GateSourceSpec,
              flags: FlagsSpec, names: dict[str, int], flag_names: dict[str, str]
              ) -> RouteSpec | None:
        m = self.mapping(e, ROUTE_KEYS, what="a route (a mapping with name, match, legacy, "
                         "target)")
        if m is None:
            return None
        ok = True
        name: Any = BAD
        if self.require(m, "name", e):
            name = self.string(m["name"], what="a route name", pattern=NAME_RE, pattern_hint=(
                "use letters, digits, '-', '_' and '.', starting with a letter or digit"))
            if name is not BAD:
                if name in names:
                    self.problem(m["name"].line, m["name"].path, f"duplicate route name "
                                 f"'{name}' (first at line {names[name]})")
                else:
                    names[name] = e.line
        ok = name is not BAD
        sides: dict[str, Any] = {}
        for side in ("legacy", "target"):
            sides[side] = BAD
            if self.require(m, side, e, " (an upstream name)"):
                value = self.string(m[side], what="an upstream name")
                if value is not BAD and self.check_upstream_ref(m[side], value, upstreams):
                    sides[side] = value
            ok = ok and sides[side] is not BAD
        if ok and sides["legacy"] == sides["target"]:
            self.problem(m["target"].line, m["target"].path, "target must be a different "
                         f"upstream from legacy ('{sides['legacy']}')")
        match = self.match(m["match"]) if "match" in m else MatchSpec()
        kw = self.fields(m, {
            "weight": self.weight,
            "sticky": self.sticky,
            "fallback_to_legacy": self.boolean,
            "flag": lambda x: self.string(x, what="a feature flag name", nullable=True,
                                          pattern=FLAG_RE, pattern_hint="use letters, digits, "
                                          "'-', '_', '.' and '~'"),
            "websocket": self.boolean,
        })
        flag = kw.get("flag")
        if flag is not None and name is not BAD:
            if flag in flag_names:
                self.problem(m["flag"].line, m["flag"].path, f"flag '{flag}' is already used by "
                             f"route '{flag_names[flag]}'; each route needs its own toggle")
            else:
                flag_names[flag] = name
        flag_reported = "flag" in m and "flag" not in kw
        if flags.backend == "unleash" and flag is None and not flag_reported:
            self.problem(e.line, f"{e.path}.flag", "required with flags.backend: unleash "
                         "(the Unleash toggle that holds this route's weight)")
        if "override" in m:
            value = override_config.route_override(self, m["override"], self.override_trust,
                                                   kw.get("sticky"))
            if value is not BAD:
                kw["override"] = value
        shadow = ShadowSpec()
        if "shadow" in m:
            shadow = self.shadow(m["shadow"], upstreams, sides)
        promotion = PromotionSpec()
        if "promotion" in m:
            promotion = self.promotion(m["promotion"], gate)
        if match is BAD or not ok:
            return None
        return RouteSpec(name=name, match=match, legacy=sides["legacy"], target=sides["target"],
                         shadow=shadow, promotion=promotion, line=e.line, **kw)

    def weight(self, e: _Entry) -> Any:
        value = self.number(e, lo=0, hi=100)
        if value is not BAD and not _two_decimals(value):
            return self.problem(e.line, e.path, f"{value:g} has more than two decimals "
                                "(granularity is 0.01%)")
        return value

    def match(self, e: _Entry) -> Any:
        m = self.mapping(e, MATCH_KEYS)
        if m is None:
            return BAD
        present = [k for k in ("path", "path_prefix", "path_regex") if k in m]
        if len(present) > 1:
            second = m[present[1]]
            self.problem(second.line, second.path, f"use only one of path, path_prefix, "
                         f"path_regex (found {' and '.join(present)})")
        kw: dict[str, Any] = {}
        ok = len(present) <= 1
        for key in present:
            value = self.string(m[key], what="a path" if key != "path_regex" else
                                "a regular expression")
            if value is BAD:
                ok = False
                continue
            if key == "path_regex":
                try:
                    re.compile(value)
                except (re.error, RecursionError, OverflowError) as exc:
                    ok = self.reject(m[key].line, m[key].path,
                                      f"invalid regular expression: {exc}")
                    continue
            else:
                why = _path_problem(value, prefix=key == "path_prefix")
                if why:
                    ok = self.reject(m[key].line, m[key].path, f"{value!r} {why}")
                    continue
            kw[key] = value
        if "methods" in m:
            methods = self.methods(m["methods"])
            ok = ok and methods is not BAD
            kw["methods"] = methods
        if "headers" in m:
            headers = self.match_headers(m["headers"])
            ok = ok and headers is not BAD
            kw["headers"] = headers
        return MatchSpec(**kw) if ok else BAD

    def match_headers(self, e: _Entry) -> Any:
        items = self.free_mapping(e)
        if items is None:
            return BAD
        out: dict[str, str] = {}
        ok = True
        for key, entry in items:
            name = self.header_name(entry, key)
            value = self.scalar(entry, "a header value (a string)")
            if value is not BAD:
                if isinstance(value, bool) or not isinstance(value, str | int | float) or (
                    isinstance(value, float) and not math.isfinite(value)
                ):
                    value = self.expected(entry, "a header value (quote it: \"...\")", value)
                else:
                    value = entry.node.value if not isinstance(value, str) else value
            if name is BAD or value is BAD:
                ok = False
                continue
            if name in out:
                ok = self.reject(entry.line, entry.path, f"header '{name}' is listed twice "
                                  "(names are case-insensitive)")
                continue
            out[name] = value
        return tuple(out.items()) if ok else BAD

    def sticky(self, e: _Entry) -> Any:
        node = e.node
        if isinstance(node, ScalarNode) and node.tag == f"{_TAG}null":
            return None
        m = self.mapping(e, ("header", "cookie"), what="{header: NAME} or {cookie: NAME}")
        if m is None:
            return BAD
        if len(m) != 1:
            return self.problem(e.line, e.path, "give exactly one of header or cookie")
        ((key, entry),) = m.items()
        value = self.string(entry, what=f"a {key} name")
        if value is BAD:
            return BAD
        if not TOKEN_RE.match(value):
            return self.problem(entry.line, entry.path, f"invalid {key} name {value!r}")
        return StickySpec(header=value.lower()) if key == "header" else StickySpec(cookie=value)

    def shadow(self, e: _Entry, upstreams: dict[str, UpstreamSpec], sides: dict[str, Any]
               ) -> ShadowSpec:
        node = e.node
        if isinstance(node, ScalarNode):
            value = self.scalar_value(node)
            if value is None:
                return ShadowSpec()
            if isinstance(value, bool):
                return ShadowSpec(enabled=value)
        m = self.mapping(e, SHADOW_KEYS, what="a mapping, or false to turn mirroring off")
        if m is None:
            return ShadowSpec()
        kw = self.fields(m, {
            "enabled": self.boolean,
            "sample": lambda x: self.number(x, lo=0, hi=1),
            "reverse": self.boolean,
            "methods": self.methods,
            "allow_unsafe": self.boolean,
            "max_body": self.size,
            "pipeline": self.boolean,
            "max_rate": self.rate,
        })
        if "methods" in kw and not kw.get("allow_unsafe", False):
            items = self.sequence(m["methods"]) or []
            for method, item in zip(kw["methods"], items, strict=False):
                if method not in SAFE_METHODS:
                    self.problem(item.line, item.path, f"{method} is not a safe method: mirroring"
                                 " it repeats its side effects on the target; set allow_unsafe: "
                                 "true if the target is isolated")
        if "compare" in m:
            kw["compare"] = self.compare(m["compare"], upstreams, sides)
        return ShadowSpec(**kw)

    def compare(self, e: _Entry, upstreams: dict[str, UpstreamSpec], sides: dict[str, Any]
                ) -> CompareSpec:
        m = self.mapping(e, COMPARE_KEYS)
        if not m:
            return CompareSpec()

        def header_list(x: _Entry) -> Any:
            items = self.sequence(x, "a list of header names")
            if items is None:
                return BAD
            out = [self.header_name(i, self.string(i, what="a header name")) for i in items]
            return BAD if BAD in out else tuple(dict.fromkeys(out))

        def field_list(x: _Entry) -> Any:
            items = self.sequence(x, "a list of 'header:NAME' or '$.field' entries")
            if items is None:
                return BAD
            out: list[str] = []
            for item in items:
                value = self.string(item, what="'header:NAME' or a '$.field' path")
                if value is BAD:
                    out.append(BAD)
                    continue
                why = _field_path_problem(value)
                if why:
                    out.append(self.problem(item.line, item.path, why))
                    continue
                if value.startswith("header:"):
                    value = "header:" + value[len("header:") :].lower()
                out.append(value)
            return BAD if BAD in out else tuple(out)

        def array_keys(x: _Entry) -> Any:
            items = self.free_mapping(x)
            if items is None:
                return BAD
            out: list[Any] = []
            for path, item in items:
                key = self.string(item, what="the key field of the array's elements")
                why = None if path.startswith("$") and JSON_PATH_RE.match(path) else (
                    f"{path!r} is not an array path like $.items")
                if why:
                    self.problem(item.line, item.path, why)
                out.append(BAD if why or key is BAD else (path, key))
            return BAD if BAD in out else tuple(out)

        def noise(x: _Entry) -> Any:
            name = self.string(x, what="an upstream name", nullable=True)
            if name is BAD or name is None:
                return name
            if not self.check_upstream_ref(x, name, upstreams):
                return BAD
            if name in (sides.get("legacy"), sides.get("target")):
                role = "legacy" if name == sides.get("legacy") else "target"
                return self.problem(x.line, x.path, f"noise_upstream must be a second copy of "
                                    f"legacy, not the route's {role} ('{name}') itself")
            return name

        return CompareSpec(**self.fields(m, {
            "headers": header_list,
            "ignore": field_list,
            "redact": field_list,
            "numeric_tolerance": lambda x: self.number(x, lo=0),
            "array_keys": array_keys,
            "noise_upstream": noise,
        }))

    def promotion(self, e: _Entry, gate: GateSourceSpec) -> PromotionSpec:
        node = e.node
        if isinstance(node, ScalarNode) and node.tag == f"{_TAG}null":
            return PromotionSpec()
        m = self.mapping(e, PROMOTION_KEYS)
        if m is None:
            return PromotionSpec()
        kw = self.fields(m, {
            "steps": self.steps,
            "min_requests": self.integer,
            "min_comparisons": self.integer,
            "max_mismatch_rate": lambda x: self.number(x, lo=0, hi=1),
            "max_error_rate_increase": lambda x: self.number(x, lo=0, hi=1),
            "max_p99_ratio": lambda x: self.number(x, lo=0, lo_open=True),
            "min_latency_samples": self.integer,
            "early_fail_samples": self.integer,
            "min_fail_events": self.integer,
            "auto_rollback": self.boolean,
            "auto": self.auto,
            "checks": self.checks,
            "guardrail": self.guardrail,
        })
        if kw.get("checks") and gate.url is None and not self.gate_url_reported:
            c = m["checks"]
            self.problem(c.line, c.path, "checks need a Prometheus url: set gate.url "
                         "(e.g. gate: {metrics: local, url: http://prometheus:9090})")
        return PromotionSpec(**kw)

    def steps(self, e: _Entry) -> Any:
        items = self.sequence(e, "a list of weights, e.g. [1, 5, 25, 50, 100]")
        if items is None:
            return BAD
        if not items:
            return self.problem(e.line, e.path, "must list at least one step (the last is 100)")
        out: list[float] = []
        ok = True
        for item in items:
            value = self.number(item, lo=0, hi=100, lo_open=True)
            if value is not BAD and not _two_decimals(value):
                value = self.problem(item.line, item.path, f"{value:g} has more than two "
                                     "decimals")
            if value is BAD:
                ok = False
                continue
            if out and value <= out[-1]:
                ok = self.reject(item.line, item.path, f"steps must increase: {value:g} comes "
                                  f"after {out[-1]:g}")
                continue
            out.append(value)
        last = self.scalar_value(items[-1].node)
        if isinstance(last, int | float) and not isinstance(last, bool) and last != 100 and (
            out and last == out[-1]
        ):
            return self.problem(items[-1].line, items[-1].path, f"the last step must be 100, "
                                f"not {last:g}")
        return tuple(out) if ok else BAD

    def auto(self, e: _Entry) -> Any:
        m = self.mapping(e, ("enabled", "interval"))
        if m is None:
            return BAD
        return AutoSpec(**self.fields(m, {"enabled": self.boolean, "interval": self.duration}))

    def guardrail(self, e: _Entry) -> Any:
        m = self.mapping(e, GUARDRAIL_KEYS)
        if m is None:
            return BAD
        return GuardrailSpec(**self.fields(m, {
            "enabled": self.boolean,
            "window": self.duration,
            "min_requests": self.integer,
            "max_error_rate": lambda x: self.number(x, lo=0, hi=1),
            "min_error_rate_increase": lambda x: self.number(x, lo=0, hi=1),
        }))

    def checks(self, e: _Entry) -> Any:
        items = self.sequence(e, "a list of {name, query, max/min}")
        if items is None:
            return BAD
        out: list[CheckSpec] = []
        seen: dict[str, int] = {}
        ok = True
        for item in items:
            m = self.mapping(item, ("name", "query", "max", "min"))
            if m is None:
                ok = False
                continue
            complete = all([self.require(m, k, item) for k in ("name", "query")])
            kw = self.fields(m, {
                "name": lambda x: self.string(x, what="a check name", pattern=NAME_RE,
                                              pattern_hint="use letters, digits, '-', '_', '.'"),
                "query": lambda x: self.string(x, what="a PromQL query"),
                "max": lambda x: self.number(x, nullable=True),
                "min": lambda x: self.number(x, nullable=True),
            })
            lo, hi = kw.get("min"), kw.get("max")
            if lo is None and hi is None:
                if not ({"max", "min"} & m.keys()) or all(
                    k not in m or k in kw for k in ("max", "min")
                ):
                    self.problem(item.line, item.path, "give max, min or both (the bounds the "
                                 "query's value must stay within)")
                complete = False
            elif lo is not None and hi is not None and lo > hi:
                complete = self.reject(m["min"].line, m["min"].path,
                                        f"min {lo:g} is above max {hi:g}")
            name = kw.get("name")
            if name is not None:
                if name in seen:
                    complete = self.reject(m["name"].line, m["name"].path, f"duplicate check "
                                            f"name '{name}' (first at line {seen[name]})")
                else:
                    seen[name] = m["name"].line
            if complete and "name" in kw and "query" in kw:
                out.append(CheckSpec(**kw))
            else:
                ok = False
        return tuple(out) if ok else BAD


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None and not lo_open:
        return f"between {lo:g} and {hi:g}"
    parts = [f"{'greater than' if lo_open else 'at least'} {lo:g}"] if lo is not None else []
    if hi is not None:
        parts.append(f"at most {hi:g}")
    return " and ".join(parts)


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


class _Coverage:
    """Finds an earlier route that matches every request a later one could (so it never will).

    Routes are indexed by their path condition so that 10,000 routes are checked in linear time:
    a later route only looks up the exact path, the segment prefixes of its path, and its regex.
    """

    def __init__(self) -> None:
        self.everything: list[RouteSpec] = []
        self.prefix: dict[str, list[RouteSpec]] = {}
        self.exact: dict[str, list[RouteSpec]] = {}
        self.regex: dict[str, list[RouteSpec]] = {}

    def add(self, route: RouteSpec) -> None:
        m = route.match
        if m.headers:  # conditional on headers: never covers a route without the same headers
            return
        if m.path_prefix is not None and m.path_prefix != "/":  # "/" is every path
            self.prefix.setdefault(m.path_prefix, []).append(route)
        elif m.path is not None:
            self.exact.setdefault(m.path, []).append(route)
        elif m.path_regex is not None:
            self.regex.setdefault(m.path_regex, []).append(route)
        else:
            self.everything.append(route)

    def covering(self, route: RouteSpec) -> RouteSpec | None:
        m = route.match
        candidates: list[RouteSpec] = list(self.everything)
        if m.path_regex is not None:
            candidates += self.regex.get(m.path_regex, ())
        path = m.path if m.path is not None else m.path_prefix
        if path is not None:
            if m.path is not None:
                candidates += self.exact.get(m.path, ())
            end = len(path)
            while end > 0:
                candidates += self.prefix.get(path[:end], ())
                end = path.rfind("/", 0, end)
        found = [c for c in candidates if _methods_cover(c.match.methods, m.methods)]
        return min(found, key=lambda c: c.line) if found else None


def _methods_cover(earlier: tuple[str, ...] | None, later: tuple[str, ...] | None) -> bool:
    if earlier is None:
        return True
    return later is not None and set(later) <= set(earlier)


TOP_KEYS = ("version", "listen", "admin", "state_dir", "upstreams", "default_upstream",
            "trusted_proxies", "limits", "gate", "flags", "routes", "notify", "overrides",
            "shadow_budget")
UPSTREAM_KEYS = ("url", "connect_timeout", "timeout", "max_connections")
LIMITS_KEYS = ("max_body", "header_timeout", "body_idle_timeout", "drain_timeout",
               "max_request_line", "max_header_bytes", "max_headers")
UNLEASH_KEYS = ("url", "app_name", "refresh_interval", "token_env", "admin_token_env",
                "environment", "project")
ROUTE_KEYS = ("name", "match", "legacy", "target", "weight", "sticky", "fallback_to_legacy",
              "flag", "websocket", "override", "shadow", "promotion")
MATCH_KEYS = ("path", "path_prefix", "path_regex", "methods", "headers")
SHADOW_KEYS = ("enabled", "sample", "reverse", "methods", "allow_unsafe", "max_body", "compare",
               "pipeline", "max_rate")
SHADOW_BUDGET_KEYS = ("max_rate", "max_pending", "comparer_nice")
COMPARE_KEYS = ("headers", "ignore", "redact", "numeric_tolerance", "array_keys",
                "noise_upstream")
PROMOTION_KEYS = ("steps", "min_requests", "min_comparisons", "max_mismatch_rate",
                  "max_error_rate_increase", "max_p99_ratio", "min_latency_samples",
                  "early_fail_samples", "min_fail_events", "auto_rollback", "auto", "checks",
                  "guardrail")
GUARDRAIL_KEYS = ("enabled", "window", "min_requests", "max_error_rate",
                  "min_error_rate_increase")
