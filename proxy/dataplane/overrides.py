"""Pinning one request to legacy or target by header (QA and support), decided per request.

A route with `override: {header: X-Strangler-Backend}` lets a trusted requester choose its side:
`legacy` or `target`, whatever the weight. Trusted means: the TCP peer is in
`overrides.trusted.cidrs` (checked once per connection and config generation), or the request
carries `secret_header` with the value of the environment variable `secret_env` (compared in
constant time). Everything else is ignored: the header is consumed by the proxy and never
forwarded, from anyone, and neither is the secret header.

A pinned request is QA traffic, not a sample of what customers get, so it is recorded apart
(`strangler_override_requests_total`), never enters the gate's evidence or the guardrail, is
never shadowed (a mirror's comparison is gate evidence too) and never falls back to legacy (the
tester asked for the target's answer). While a route is rolled back only `legacy` is honoured:
`target` is refused and the request goes to legacy.

The policy is built once per table generation (`DataPlane.install`); a route without `override`
never reaches this module.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from proxy.config.spec import Config

# Outcomes of `OverridePolicy.decide` (also the access log's `override` field).
LEGACY = "legacy"
TARGET = "target"
REFUSED = "refused:rolled_back"  # asked for target on a rolled-back route: served by legacy
INVALID = "invalid"  # trusted, but the value is neither legacy nor target: answered 400
_VALUES = {b"legacy": LEGACY, b"target": TARGET}


class OverridePolicy:
    """Who may pin requests, and which request headers the proxy consumes."""

    __slots__ = ("missing_secret", "nets", "secret", "secret_header", "strip")

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        trust = config.overrides
        self.nets: tuple[Any, ...] = trust.cidrs if trust is not None else ()
        self.secret_header: bytes | None = None
        self.secret: bytes | None = None
        self.missing_secret: str | None = None  # env var named by secret_env but unset/empty
        strip = {r.override.header.encode() for r in config.routes if r.override is not None}
        if trust is not None and trust.secret_header is not None:
            self.secret_header = trust.secret_header.encode()
            strip.add(self.secret_header)
            value = env.get(trust.secret_env or "", "")
            if value:
                self.secret = value.encode()
            else:  # fail closed: the secret header trusts nobody
                self.missing_secret = trust.secret_env
        self.strip: frozenset[bytes] = frozenset(strip)

    def peer_trusted(self, peer: str) -> bool:
        if not self.nets or not peer:
            return False
        try:
            ip: Any = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # a dual-stack listener's IPv4 peer
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.nets)

    def trusted(self, conn: Any, headers: Mapping[bytes, bytes]) -> bool:
        cached = conn.override_peer
        if cached is None or cached[0] is not self:  # once per connection and generation
            cached = conn.override_peer = (self, self.peer_trusted(conn.peer))
        if cached[1]:
            return True
        secret = self.secret
        if secret is None:
            return False
        given = headers.get(self.secret_header)  # type: ignore[arg-type]
        return given is not None and hmac.compare_digest(given, secret)

    def decide(self, conn: Any, route: Any, value: bytes, headers: Mapping[bytes, bytes],
               recorder: Any) -> str | None:
        """LEGACY, TARGET, REFUSED or INVALID for a trusted requester; None (ignored, counted)
        for anyone else."""
        if not self.trusted(conn, headers):
            recorder.override_ignored(route.name, "untrusted")
            return None
        pin = _VALUES.get(value.strip().lower())
        if pin is None:
            recorder.override_ignored(route.name, "invalid")
            return INVALID
        if pin is TARGET and route.state.rolled_back:
            recorder.override_ignored(route.name, "rolled_back")
            return REFUSED
        return pin
