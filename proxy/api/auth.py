"""Admin API tokens: who is calling, and may they change anything.

Two bearer tokens from the environment of `strangler serve`:
- `STRANGLER_ADMIN_TOKEN`: read-write (role `admin`);
- `STRANGLER_READ_TOKEN`: read-only (role `read`).

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

ADMIN_ENV = "STRANGLER_ADMIN_TOKEN"
READ_ENV = "STRANGLER_READ_TOKEN"
ACTOR_HEADER = "X-Strangler-Actor"

_ACTOR_UNSAFE = re.compile(r"[^\w .@+\-/:]")
MAX_ACTOR = 64


@dataclass(frozen=True, slots=True)
class Caller:
    role: str  # "admin", "read" or "open" (no token configured)
    can_write: bool


class AuthError(Exception):
    """401 (no or wrong token) or 403 (read token on a mutation)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class Tokens:
    def __init__(self, admin: str | None, read: str | None) -> None:
        self._tokens: list[tuple[bytes, Caller]] = []
        if admin:
            self._tokens.append((admin.encode(), Caller("admin", True)))
        if read:
            self._tokens.append((read.encode(), Caller("read", False)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tokens:
        env = os.environ if env is None else env
        return cls(env.get(ADMIN_ENV) or None, env.get(READ_ENV) or None)

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
    """The audit log's actor: the name the client claims plus the role that vouches for it,
    e.g. `alice (admin token)`. The claim is sanitised: it is free text from the client."""
    name = _ACTOR_UNSAFE.sub("", (claimed or "").strip())[:MAX_ACTOR] or "unknown"
    vouch = "no token" if caller.role == "open" else f"{caller.role} token"
    return f"{name} ({vouch})"


__all__ = ["ACTOR_HEADER", "ADMIN_ENV", "READ_ENV", "AuthError", "Caller", "Tokens",
           "actor_name"]
