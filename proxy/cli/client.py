"""The CLI's client for the admin API (httpx), and the options every such command shares.

Failures map to the contract's exit codes in one place:
- admin API unreachable, or refusing the token (401/403)  -> 3
- 400 (bad input) and 404 (unknown route)                  -> 2
- 409 (conflict: e.g. set-weight on a rolled-back route)   -> 1
- anything else the API answers with an error status       -> 1
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

from proxy.api.auth import ACTOR_HEADER, ADMIN_ENV
from proxy.cli.exitcodes import FAILED, UNREACHABLE, USAGE
from proxy.config.checks import NAME_RE

DEFAULT_ADMIN = "http://127.0.0.1:9901"
ADMIN_URL_ENV = "STRANGLER_ADMIN_URL"
TIMEOUT = 30.0


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


ADMIN_CA_ENV = "STRANGLER_ADMIN_CA"


def _admin_trust() -> Any:
    """An https admin listener with a private CA (`admin.tls`): the CA bundle named by
    $STRANGLER_ADMIN_CA is trusted (besides nothing else); else the system CAs."""
    ca = os.environ.get(ADMIN_CA_ENV)
    if not ca:
        return True
    import ssl

    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ClientFailure(USAGE, f"${ADMIN_CA_ENV}: {ca}: cannot be used as a CA bundle "
                            f"({getattr(exc, 'strerror', None) or exc})") from None


class ClientFailure(Exception):
    """A call that did not succeed; `code` is the exit code, `body` what --json prints."""

    def __init__(self, code: int, message: str, body: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.body = body if body is not None else {"error": message, "detail": None}


def add_client_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("admin API")
    g.add_argument("--admin", metavar="URL",
                   default=os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN,
                   help=f"admin API address (default: ${ADMIN_URL_ENV} or {DEFAULT_ADMIN})")
    g.add_argument("--token", default=None,
                   help=f"bearer token (default: ${ADMIN_ENV}); never printed")
    g.add_argument("--json", action="store_true",
                   help="print the API's answer as one JSON object")
    g.add_argument("--actor", default=None,
                   help="who you are, for the audit log (default: your OS user name)")


def route_path(route: str, action: str = "") -> str:
    """`/admin/routes/ROUTE[/action]` for a name as typed: one that cannot be a route's (or a
    group's) name is refused here, never sent (`..`, `/`, `?`, `#` would make the URL another
    endpoint: `x/../../rollback#` was a rollback of every route)."""
    if not NAME_RE.match(route):
        raise ClientFailure(USAGE, f"no route or group named {route!r}: a name is letters, "
                            "digits, '_', '.' and '-', starting with a letter or digit")
    return f"/admin/routes/{route}/{action}" if action else f"/admin/routes/{route}"


class AdminClient:
    def __init__(self, url: str, token: str | None, actor: str | None,
                 timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        headers = {ACTOR_HEADER: actor or default_actor(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            base = httpx.URL(self.url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ClientFailure(USAGE, f"--admin {url!r} is not a URL: {exc}") from None
        if base.scheme not in ("http", "https") or not base.host:
            raise ClientFailure(USAGE, f"--admin {url!r} is not an http:// or https:// URL "
                                "with a host (e.g. http://127.0.0.1:9901)")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  trust_env=False, verify=_admin_trust())

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        token = args.token if args.token is not None else os.environ.get(ADMIN_ENV)
        return cls(args.admin, token, args.actor)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: dict | None = None,
             params: dict | None = None) -> dict:
        """JSON answer of a successful call; raises ClientFailure otherwise."""
        resp = self._send(method, path, body, params)
        try:
            data = resp.json()
        except ValueError:
            raise ClientFailure(FAILED, f"admin API at {self.url} answered {resp.status_code} "
                                "with something that is not JSON: is this a strangler admin "
                                "listener?") from None
        if not isinstance(data, dict):
            raise ClientFailure(FAILED, f"admin API at {self.url} answered with a JSON "
                                f"{type(data).__name__}, expected an object")
        return data

    def text(self, path: str, params: dict | None = None) -> httpx.Response:
        return self._send("GET", path, None, params)

    def _send(self, method: str, path: str, body: dict | None,
              params: dict | None) -> httpx.Response:
        try:
            resp = self._http.request(method, path, json=body, params=params)
        except httpx.TimeoutException as exc:
            raise ClientFailure(UNREACHABLE, f"admin API at {self.url} unreachable: timed out "
                                f"({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise ClientFailure(UNREACHABLE, f"admin API at {self.url} unreachable: {exc} "
                                f"(is `strangler serve` running? set --admin or "
                                f"${ADMIN_URL_ENV})") from None
        if resp.status_code < 400:
            return resp
        raise _failure(self.url, resp)


def _failure(url: str, resp: httpx.Response) -> ClientFailure:
    status = resp.status_code
    try:
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        body = {"error": resp.text.strip()[:500] or resp.reason_phrase, "detail": None}
    error = str(body.get("error") or resp.reason_phrase)
    body.setdefault("status", status)
    if status == 401:
        return ClientFailure(UNREACHABLE, f"admin API at {url} refused the token (401): {error}; "
                             f"pass --token or set ${ADMIN_ENV}", body)
    if status == 403:
        return ClientFailure(UNREACHABLE, f"admin API at {url} refused the token (403): {error}",
                             body)
    if status in (400, 404, 405, 422):
        return ClientFailure(USAGE, f"{error}{_detail(body)}", body)
    if status == 409:
        return ClientFailure(FAILED, f"refused: {error}", body)
    return ClientFailure(FAILED, f"admin API at {url} failed ({status}): {error}", body)


def _detail(body: dict) -> str:
    detail = body.get("detail")
    if isinstance(detail, dict) and detail.get("routes"):
        return f" (known routes: {', '.join(map(str, detail['routes']))})"
    if isinstance(detail, dict) and detail.get("errors"):
        return "\n" + "\n".join(map(str, detail["errors"]))
    return ""


def run_with_client(args: argparse.Namespace,
                    body: Callable[[AdminClient], int]) -> int:
    """Run one command's body against the admin API; ClientFailure -> message and exit code."""
    try:
        with AdminClient.from_args(args) as client:
            return body(client)
    except ClientFailure as exc:
        if getattr(args, "json", False):
            print_json(exc.body)
        print(f"strangler {args.command}: {exc.message}", file=sys.stderr)
        return exc.code


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


__all__ = ["AdminClient", "ClientFailure", "add_client_options", "print_json", "route_path",
           "run_with_client"]
