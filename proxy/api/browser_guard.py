"""The admin API's defences against the operator's own browser (as the Jupyter server's).

A page of another site open in the same browser can send requests to the admin listener: a
`text/plain` form post or a `no-cors` fetch needs no permission, and on a token-less loopback
listener nothing else stands in the way. DNS rebinding goes further: a name the attacker
controls is pointed at 127.0.0.1, and the browser then treats the admin API as the attacker's
own origin, able to read and write. So, before authentication:

- `Host` must name the admin listener when it listens on loopback: an IP address, `localhost`
  (or a name under it), the listener's own name, or one of `admin.allowed_hosts` (`*` allows
  any). A non-loopback listener needs a token anyway and checks `Host` only when
  `allowed_hosts` is set. `/healthz` and `/readyz` are exempt (probes).
- A change (any method but GET, HEAD, OPTIONS) is refused when the browser says it comes from
  another site: `Sec-Fetch-Site` other than `same-origin` or `none`, or an `Origin` that is not
  the listener itself (its `Host`, or an allowed host).
- A change with a body must say `Content-Type: application/json`, which no form and no
  `no-cors` fetch can send; a form's content type is refused even without a body.

Non-browser clients (the CLI, curl, scripts) send neither `Origin` nor `Sec-Fetch-Site`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})
JSON = "application/json"
# What a page may send anywhere without asking (CORS-safelisted request content types).
FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


class BrowserRefusal(Exception):
    """A request the guard refuses: `status` 403 or 415, `error` the message."""

    def __init__(self, status: int, error: str, detail: dict[str, Any]) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def host_name(authority: str) -> str:
    """The host of `host[:port]` or `[v6]:port`, lower-cased, without a trailing dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.rpartition(":")[0].rstrip(".") if ":" in authority else authority.rstrip(".")


def is_loopback_listener(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserGuard:
    """Decides per request from the current admin settings (`settings()` returns the admin
    listener's host and `allowed_hosts`; they may change on reload)."""

    def __init__(self, settings: Callable[[], tuple[str, tuple[str, ...]]]) -> None:
        self.settings = settings

    def check(self, request: web.Request) -> None:
        listen_host, allowed = self.settings()
        host = request.headers.get("Host")
        if request.path not in PROBE_PATHS and host is not None:
            self._check_host(host, listen_host, allowed)
        if request.method in READ_METHODS:
            return
        self._check_origin(request, host, allowed)
        self._check_content_type(request)

    @staticmethod
    def _allowed(name: str, listen_host: str, allowed: tuple[str, ...]) -> bool:
        return (name in allowed or "*" in allowed or name == listen_host or _is_ip(name)
                or name == "localhost" or name.endswith(".localhost"))

    def _check_host(self, host: str, listen_host: str, allowed: tuple[str, ...]) -> None:
        if not allowed and not is_loopback_listener(listen_host):
            return  # a non-loopback listener needs a token; Host is checked when configured
        name = host_name(host)
        if not self._allowed(name, listen_host, allowed):
            raise BrowserRefusal(403, "Host not allowed: this admin listener answers to its own "
                                 "address, localhost, or a name in admin.allowed_hosts",
                                 {"host": host[:255], "setting": "admin.allowed_hosts"})

    def _check_origin(self, request: web.Request, host: str | None,
                      allowed: tuple[str, ...]) -> None:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in SAME_ORIGIN_FETCH:
            raise BrowserRefusal(403, "cross-site request refused: changes come from the "
                                 "dashboard itself, the CLI, or a script",
                                 {"sec_fetch_site": site[:64]})
        origin = request.headers.get("Origin")
        if origin is None:
            return
        parts = urlsplit(origin.strip()) if origin.strip().lower() != "null" else None
        same = parts is not None and parts.scheme in ("http", "https") and host is not None and (
            parts.netloc.lower() == host.strip().lower()
            or (bool(allowed) and (parts.hostname or "") in allowed))
        if not same:
            raise BrowserRefusal(403, "cross-origin request refused: changes come from the "
                                 "dashboard itself, the CLI, or a script",
                                 {"origin": origin[:255]})

    @staticmethod
    def _check_content_type(request: web.Request) -> None:
        """A body must be declared JSON; a form's content type is refused even with no body
        (an empty form posts one)."""
        has_body = request.content_length not in (None, 0) or (
            "Transfer-Encoding" in request.headers)
        declared = request.headers.get("Content-Type")
        ctype = request.content_type
        if (has_body and ctype != JSON) or (declared is not None and ctype in FORM_TYPES):
            raise BrowserRefusal(415, "a change's body must be JSON: send Content-Type: "
                                 "application/json", {"content_type": (declared or "")[:128]})


def middleware(guard: BrowserGuard, refuse: Callable[[int, str, Any], web.StreamResponse]) -> Any:
    """The aiohttp middleware; `refuse(status, error, detail)` builds the answer."""

    @web.middleware
    async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            guard.check(request)
        except BrowserRefusal as exc:
            return refuse(exc.status, exc.error, exc.detail)
        return await handler(request)

    return browser_guard
