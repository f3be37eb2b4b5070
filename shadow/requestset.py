"""The request set `strangler reconcile` replays: read from a file or from the diff store.

File formats, detected from the content:
- `jsonl` (what `strangler diffs ROUTE --export jsonl FILE` writes): one JSON object per line,
  `{"method": "GET", "path": "/api/v1/balance/7?x=1", "headers": [["accept", "..."]]}`
  (`method` defaults to GET, `headers` may also be an object; other keys are ignored);
- `hurl` (what `--export hurl` writes): request lines `GET {{BASE_URL}}/path` followed by header
  lines; the assertions are not used (reconcile compares legacy with target, not with a record);
- plain lines: `GET /path`, `HEAD /path` or just `/path` (GET); `#` starts a comment line.

Only GET and HEAD are ever replayed; other methods are kept in the set so that the caller can
count them as skipped, never send them. Headers are filtered to safe ones (`safe_headers`):
credentials (Authorization, Cookie, X-Api-Key, ... and the route's `header:` redactions), values
already redacted, hop-by-hop, Host, lengths, X-Forwarded-* and X-Strangler-* are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shadow.redact import ALWAYS_REDACTED_HEADERS, REDACTED

__all__ = ["REPLAYED_METHODS", "ReplayRequest", "RequestSetError", "from_samples", "parse",
           "safe_headers"]

REPLAYED_METHODS = frozenset({"GET", "HEAD"})
_NOT_REPLAYED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "proxy-connection", "accept-encoding", "forwarded", "x-request-id", "expect",
})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HURL_REQUEST = re.compile(r"([A-Z]+) +(?:\{\{BASE_URL\}\}|https?://[^/\s]+)(/\S*)\s*")
_PLAIN = re.compile(r"(?:([A-Za-z]+) +)?(\S+)")


class RequestSetError(ValueError):
    """A request file that cannot be read; `problems` are `FILE:LINE: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    method: str  # upper-case
    path: str  # path and query, starting with "/"
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, already safe
    line: int = 0  # where it came from in a file (0: the store)


def safe_headers(headers: Iterable[Sequence[str]],
                 redacted: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """The headers of a recorded request that may be replayed (and stored with a run)."""
    secret = ALWAYS_REDACTED_HEADERS | {h.lower() for h in redacted}
    out: list[tuple[str, str]] = []
    for k, v in headers:
        name = str(k).strip().lower()
        value = str(v)
        if (name in secret or name in _NOT_REPLAYED or name.startswith("x-forwarded-")
                or name.startswith("x-strangler-") or REDACTED in value
                or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00")):
            continue
        out.append((name, value.strip()))
    return tuple(out)


def _check_path(path: str) -> str | None:
    if not path.startswith("/"):
        return f"expected a path starting with '/', got {path[:60]!r}"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "a path cannot contain whitespace or control characters"
    return None


def parse(text: str, source: str, redacted_headers: Iterable[str] = ()) -> list[ReplayRequest]:
    """Every request in `text` (the file named `source` in messages). Raises RequestSetError
    listing every problem."""
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")),
                 "")
    if first.startswith("{"):
        return _parse_jsonl(lines, source, redacted_headers)
    if first.startswith(("import ", "from ", '"""')):
        raise RequestSetError([f"{source}:1: a pytest export cannot be replayed; export jsonl "
                               "or hurl (strangler diffs ROUTE --export jsonl FILE)"])
    if any(_HURL_REQUEST.fullmatch(ln) and "{{BASE_URL}}" in ln for ln in lines):
        return _parse_hurl(lines, source, redacted_headers)
    return _parse_plain(lines, source)


def _parse_jsonl(lines: list[str], source: str, redacted: Iterable[str]) -> list[ReplayRequest]:
    out: list[ReplayRequest] = []
    problems: list[str] = []
    red = tuple(redacted)
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append(f"{source}:{n}: not a JSON object: {exc}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{source}:{n}: expected a JSON object per line")
            continue
        method = obj.get("method", "GET")
        path = obj.get("path")
        headers = obj.get("headers") or []
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            problems.append(f"{source}:{n}: method: expected an HTTP method like GET")
            continue
        if not isinstance(path, str):
            problems.append(f"{source}:{n}: path: required, a string like \"/api/v1/x\"")
            continue
        why = _check_path(path)
        if why:
            problems.append(f"{source}:{n}: path: {why}")
            continue
        if isinstance(headers, dict):
            headers = list(headers.items())
        if not isinstance(headers, list) or not all(
                isinstance(h, list | tuple) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers):
            problems.append(f"{source}:{n}: headers: expected [[name, value], ...] or an object")
            continue
        out.append(ReplayRequest(method.upper(), path, safe_headers(headers, red), n))
    if problems:
        raise RequestSetError(problems)
    return out


def _unescape_hurl(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _parse_hurl(lines: list[str], source: str, redacted: Iterable[str]) -> list[ReplayRequest]:
    out: list[ReplayRequest] = []
    red = tuple(redacted)
    current: tuple[str, str, int] | None = None
    headers: list[tuple[str, str]] = []

    def close() -> None:
        nonlocal current, headers
        if current is not None:
            out.append(ReplayRequest(current[0], current[1], safe_headers(headers, red),
                                     current[2]))
        current, headers = None, []

    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        m = _HURL_REQUEST.fullmatch(line)
        if m:
            close()
            current = (m.group(1), m.group(2), n)
            continue
        if current is None or not line or line.startswith("#"):
            if not line:
                close()
            continue
        name, sep, value = line.partition(":")
        if sep and _TOKEN.fullmatch(name.strip()) and not line.startswith(("HTTP", "[")):
            headers.append((name.strip(), _unescape_hurl(value.strip())))
        else:  # body, response section, assertions: the request part is over
            close()
    close()
    return out


def _parse_plain(lines: list[str], source: str) -> list[ReplayRequest]:
    out: list[ReplayRequest] = []
    problems: list[str] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PLAIN.fullmatch(line)
        if not m:
            problems.append(f"{source}:{n}: expected 'METHOD /path' or '/path', got "
                            f"{line[:60]!r}")
            continue
        method, path = (m.group(1) or "GET").upper(), m.group(2)
        why = _check_path(path)
        if why:
            problems.append(f"{source}:{n}: {why}")
            continue
        out.append(ReplayRequest(method, path, (), n))
    if problems:
        raise RequestSetError(problems)
    return out


def from_samples(samples: Iterable[dict[str, object]],
                 redacted_headers: Iterable[str] = ()) -> list[ReplayRequest]:
    """The request set of `DiffStore.samples_for_export(route)`: one per distinct request."""
    red = tuple(redacted_headers)
    out: list[ReplayRequest] = []
    seen: set[tuple[str, str]] = set()
    for s in samples:
        method, path = str(s["method"]).upper(), str(s["path"])
        if (method, path) in seen or _check_path(path):
            continue
        seen.add((method, path))
        out.append(ReplayRequest(method, path,
                                 safe_headers(s.get("headers") or (), red)))  # type: ignore[arg-type]
    return out
