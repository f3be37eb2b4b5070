"""Admin API tokens: who is calling, and may they change anything.

Either named credentials from routes.yaml (`admin.tokens`: a name, a role `admin` or `read`,
and the environment variable holding the secret), or, without them, two anonymous bearer
tokens from the environment of `strangler serve`:
- `STRANGLER_ADMIN_TOKEN`: read-write (role `admin`);
- `STRANGLER_READ_TOKEN`: read-only (role `read`).
With named credentials the two environment tokens are not accepted, and the audit log's actor is
the credential's name (a client's `X-Strangler-Actor` is ignored): what four-eyes approval
relies on.

Compared in constant time (`hmac.compare_digest`) against every configured token, so the time
taken says nothing about which one, or how much of one, matched. With no token configured at all,
every caller is allowed (serve only binds a tokenless admin listener to loopback). Tokens are
never logged or echoed back.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config.spec import Config

ADMIN_ENV = "STRANGLER_ADMIN_TOKEN"
READ_ENV = "STRANGLER_READ_TOKEN"
ACTOR_HEADER = "X-Strangler-Actor"

_ACTOR_UNSAFE = re.compile(r"[^\w .@+\-/:]")
MAX_ACTOR = 64


@dataclass(frozen=True, slots=True)
class Caller:
    role: str  # "admin", "read" or "open" (no token configured)
    can_write: bool
    name: str | None = None  # the credential's name (admin.tokens); None for anonymous tokens


class AuthError(Exception):
    """401 (no or wrong token) or 403 (read token on a mutation)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class Tokens:
    def __init__(self, admin: str | None, read: str | None,
                 named: tuple[tuple[str, str, str], ...] = ()) -> None:
        """`named`: (name, role, secret) of each admin.tokens entry; when given, the two
        anonymous tokens are ignored."""
        self._tokens: list[tuple[bytes, Caller]] = []
        for name, role, secret in named:
            self._tokens.append((secret.encode(), Caller(role, role == "admin", name)))
        if named:
            return
        if admin:
            self._tokens.append((admin.encode(), Caller("admin", True)))
        if read:
            self._tokens.append((read.encode(), Caller("read", False)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tokens:
        env = os.environ if env is None else env
        return cls(env.get(ADMIN_ENV) or None, env.get(READ_ENV) or None)

    @classmethod
    def from_config(cls, config: Config,
                    env: Mapping[str, str] | None = None) -> tuple[Tokens, list[str]]:
        """The tokens `serve` accepts, and the problems (an unset or empty token_env, or
        two entries with the same secret): each names the variable, never a value."""
        env = os.environ if env is None else env
        if not config.admin.tokens:
            return cls.from_env(env), []
        named, problems = [], []
        seen: dict[str, str] = {}
        for t in config.admin.tokens:
            secret = env.get(t.token_env) or ""
            if not secret:
                problems.append(f"admin.tokens: {t.name}'s token_env {t.token_env} is not set "
                                "(or empty)")
            elif secret in seen:
                problems.append(f"admin.tokens: {t.name} and {seen[secret]} have the same "
                                "token: each person needs a secret of their own")
            else:
                seen[secret] = t.name
                named.append((t.name, t.role, secret))
        return cls(None, None, tuple(named)), problems

    def replace_with(self, other: Tokens) -> None:
        """Take `other`'s tokens (a reload), keeping this object the one the app holds."""
        self._tokens = other._tokens

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: str | None) -> Caller:
        """The caller behind an `Authorization` header; raises AuthError (401)."""
        if not self._tokens:
            return Caller("open", True)
        presented = _bearer(authorization)
        if presented is None:
            raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                            f"(the CLI reads --token or ${ADMIN_ENV})")
        # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: compare the bytes
        # the client sent (a plain encode() raised, and the caller got a 500 instead of a 401).
        given = presented.encode("utf-8", "surrogateescape")
        found: Caller | None = None
        for token, caller in self._tokens:  # no early exit: compare against every token
            if hmac.compare_digest(given, token) and found is None:
                found = caller
        if found is None:
            raise AuthError(401, "invalid token")
        return found

    def authorize(self, authorization: str | None, write: bool) -> Caller:
        caller = self.identify(authorization)
        if write and not caller.can_write:
            if caller.name is not None:
                raise AuthError(403, f"{caller.name}'s token is read-only (role read); changes "
                                "need a token with role admin")
            raise AuthError(403, "this token is read-only; changes need the admin token "
                            f"(${ADMIN_ENV})")
        return caller


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def actor_name(caller: Caller, claimed: str | None) -> str:
    """The audit log's actor: a named credential's name (`alice`); else the name the client
    claims plus the role that vouches for it, e.g. `alice (admin token)`. The claim is
    sanitised: it is free text from the client."""
    if caller.name is not None:
        return caller.name
    name = _ACTOR_UNSAFE.sub("", (claimed or "").strip())[:MAX_ACTOR] or "unknown"
    vouch = "no token" if caller.role == "open" else f"{caller.role} token"
    return f"{name} ({vouch})"


__all__ = ["ACTOR_HEADER", "ADMIN_ENV", "READ_ENV", "AuthError", "Caller", "Tokens",
           "actor_name"]
