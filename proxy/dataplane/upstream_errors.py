"""The ways an upstream can fail to give an answer; `kind` is the metric label.

Apart from proxy.dataplane.upstream so that the compiled exchange, which that module's types
cimport, imports no names from that module's body (it may not have run yet at start-up).
"""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream could not give an answer. `kind` is the metric label."""

    kind = "connect"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamBusy(UpstreamError):
    """Every connection of the pool stayed in use (`max_connections`): nothing was sent."""

    kind = "busy"


class UpstreamReset(UpstreamError):
    kind = "reset"


class UpstreamBadResponse(UpstreamError):
    kind = "reset"


class UpstreamTlsError(UpstreamError):
    """The TLS handshake failed, or the upstream ended TLS with an alert (a TLS 1.3 server
    refuses a client certificate after the client's handshake is done)."""

    kind = "tls"
