"""TLS on the data plane: contexts that follow their files, session resumption, failures in words.

- `ClientCredentials`: the context towards one https upstream (or another server the proxy
  calls), built at config load. `refresh()` rebuilds it when a certificate, key or CA file
  changed on disk (cert-manager, Vault agent) and bumps `generation`: pools then open new
  connections with it and retire the old ones as their exchanges end (in-flight requests keep
  their connection). A file that cannot be loaded keeps the last good context (logged once).
- `ResumingContext`: a client context that offers the last TLS session it saw, so a new pooled
  connection resumes instead of doing a full handshake (nginx's `proxy_ssl_session_reuse`).
- `ServerCredentials`: a listener's context. The listening socket keeps one context whose
  server-name callback hands each new handshake the current one, so a rotated certificate is
  served from the next connection on without re-binding.
- `TlsFailures`: the cause of a failed upstream handshake in words (unknown CA, expired, name
  mismatch, client certificate refused, plain HTTP on an https url), logged once per cause and
  upstream, not per request.
"""

from __future__ import annotations

import ssl
from typing import Any

import structlog

from proxy.config.spec import ClientTlsSpec, ServerTlsSpec
from proxy.config.tls import TlsFileError, client_context, file_stamp, server_context

__all__ = ["ClientCredentials", "ResumingContext", "ServerCredentials", "TlsFailures",
           "tls_cause"]

_log = structlog.get_logger("strangler.tls")


class ResumingContext(ssl.SSLContext):
    """Offers `session` (the newest one a connection of this context got) in every new
    handshake. asyncio and uvloop create their TLS objects through `wrap_bio`."""

    session: ssl.SSLSession | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: Any = None, session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session=session or self.session)


class _Watched:
    """A context built from files, rebuilt when they change."""

    def __init__(self, spec: Any, what: str) -> None:
        self.spec = spec
        self.what = what  # for log lines: "upstream ledger", "listener", "admin listener"
        self.generation = 0
        self.stamp = file_stamp(spec)
        self.ctx = self._build()  # TlsFileError at start: the caller decides
        self._failed_stamp: tuple | None = None

    def _build(self) -> ssl.SSLContext:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Rebuild when a file changed; True when a new context is in force."""
        stamp = file_stamp(self.spec)
        if stamp == self.stamp:
            return False
        try:
            ctx = self._build()
        except TlsFileError as exc:
            if stamp != self._failed_stamp:  # a half-written rotation: once, then retried
                self._failed_stamp = stamp
                _log.error("TLS files changed but cannot be loaded; the previous certificate "
                           "stays in use", of=self.what, field=exc.field, error=exc.message)
            return False
        self.stamp = stamp
        self._failed_stamp = None
        self._swap(ctx)
        self.generation += 1
        _log.info("TLS certificate files reloaded", of=self.what, generation=self.generation)
        return True

    def _swap(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx


class ClientCredentials(_Watched):
    """The context towards one upstream (or Prometheus, the OTLP collector)."""

    spec: ClientTlsSpec

    def __init__(self, spec: ClientTlsSpec, what: str) -> None:
        super().__init__(spec, what)
        if not spec.verify:
            _log.warning("TLS certificate verification is OFF (verify: false): anyone on the "
                         "path can read and change this traffic", of=what)

    def _build(self) -> ssl.SSLContext:
        return client_context(self.spec, ResumingContext)

    def keep_session(self, transport: Any) -> None:
        """After a connection's first answer (TLS 1.3 tickets arrive after the handshake):
        its session is offered to the next connections."""
        obj = transport.get_extra_info("ssl_object")
        if obj is None:
            return
        session = obj.session
        ctx = self.ctx
        if session is not None and obj.context is ctx and not obj.session_reused:
            ctx.session = session  # type: ignore[attr-defined]


class ServerCredentials(_Watched):
    """A listener's certificate. `listener` is the context the socket keeps; each handshake is
    moved to the current context by the server-name callback (called with or without SNI)."""

    spec: ServerTlsSpec

    def __init__(self, spec: ServerTlsSpec, what: str) -> None:
        super().__init__(spec, what)
        self.listener = self.ctx
        self.listener.sni_callback = self._pick

    def _build(self) -> ssl.SSLContext:
        return server_context(self.spec)

    def _pick(self, obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.ctx
        if current is not ctx:
            obj.context = current

    def update(self, spec: ServerTlsSpec) -> None:
        """A reload named other files or another min_version: load them now (TlsFileError
        when they cannot be: the reload was validated, so only a race gets here)."""
        if spec == self.spec:
            self.refresh()
            return
        old = self.spec
        self.spec = spec
        try:
            ctx = self._build()
        except TlsFileError:
            self.spec = old
            raise
        self.stamp = file_stamp(spec)
        self.listener.minimum_version = ctx.minimum_version
        self._swap(ctx)
        self.generation += 1


# -- failures --------------------------------------------------------------------------------

_VERIFY_CAUSES = {  # {peer}'s: "the upstream's", "Unleash's"; {key}: where the TLS settings are
    10: ("expired", "{peer}'s certificate has expired"),
    9: ("not_yet_valid", "{peer}'s certificate is not valid yet"),
    18: ("unknown_ca", "{peer}'s certificate is self-signed and not trusted (set {key}.ca_file)"),
    19: ("unknown_ca", "{peer}'s certificate chain ends at a CA that is not trusted (set "
         "{key}.ca_file)"),
    20: ("unknown_ca", "{peer}'s certificate is not signed by a trusted CA (set {key}.ca_file)"),
    21: ("unknown_ca", "{peer}'s certificate is not signed by a trusted CA (set {key}.ca_file)"),
    62: ("name_mismatch", "{peer}'s certificate does not carry the expected name (set "
         "{key}.server_name)"),
    64: ("name_mismatch", "{peer}'s certificate does not carry the expected IP address "
         "(set {key}.server_name)"),
}
_REFUSED = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
            "ACCESS_DENIED", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED",
            "UNSUPPORTED_CERTIFICATE", "ALERT_HANDSHAKE_FAILURE")
_PLAIN = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
          "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL")
_VERSION = ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE")


def tls_cause(exc: BaseException, peer: str = "the upstream", key: str = "tls",
              ) -> tuple[str, str]:
    """(cause, sentence) for a TLS failure towards `peer`, whose settings are under `key`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        known = _VERIFY_CAUSES.get(exc.verify_code)
        if known is not None:
            return known[0], known[1].format(peer=peer, key=key)
        return "verify_failed", f"{peer}'s certificate was refused: {exc.verify_message}"
    reason = str(getattr(exc, "reason", None) or exc).upper().replace(" ", "_")
    if any(r in reason for r in _PLAIN):
        return "plain_http", (f"{peer} does not speak TLS (it answered in plain HTTP?): is "
                              "its url https by mistake?")
    if any(r in reason for r in _REFUSED):
        return "client_cert_refused", (f"{peer} refused the TLS handshake over the client "
                                       "certificate (missing, or not signed by a CA it trusts: "
                                       f"set {key}.cert_file and key_file)")
    if any(r in reason for r in _VERSION):
        return "version", f"no TLS version in common with {peer} ({key}.min_version)"
    if isinstance(exc, ConnectionResetError | EOFError | ssl.SSLEOFError):
        return "closed", f"{peer} closed the connection during the TLS handshake"
    return "handshake", f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"


class TlsFailures:
    """One log line per (upstream, cause) while it lasts, one when TLS to it works again."""

    __slots__ = ("down",)

    def __init__(self) -> None:
        self.down: dict[str, str] = {}  # upstream -> cause last logged

    def failed(self, upstream: str, exc: BaseException) -> str:
        cause, sentence = tls_cause(exc)
        if self.down.get(upstream) != cause:
            self.down[upstream] = cause
            _log.error("TLS to upstream failed", upstream=upstream, cause=cause, reason=sentence,
                       error=str(exc))
        return sentence

    def ok(self, upstream: str) -> None:
        if self.down.pop(upstream, None) is not None:
            _log.info("TLS to upstream works again", upstream=upstream)


class TlsStore:
    """The client contexts of one process's upstream pools (the data plane's and the mirror's
    share them, and their TLS sessions), by upstream name and TLS settings."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, ClientTlsSpec], ClientCredentials] = {}
        self.failures = TlsFailures()

    def client(self, name: str, spec: ClientTlsSpec) -> ClientCredentials | None:
        """The credentials for upstream `name`; None when its files cannot be loaded (logged;
        `validate` checked them, so only a race with a rotation gets here)."""
        key = (name, spec)
        creds = self.clients.get(key)
        if creds is None:
            try:
                creds = self.clients[key] = ClientCredentials(spec, f"upstream {name}")
            except TlsFileError as exc:
                _log.error("TLS files of an upstream cannot be loaded; its requests fail until "
                           "they can", upstream=name, field=exc.field, error=exc.message)
                return None
        return creds

    def keep_only(self, wanted: set[tuple[str, ClientTlsSpec]]) -> None:
        """Forget the credentials no configured upstream uses any more."""
        for key in [k for k in self.clients if k not in wanted]:
            del self.clients[key]

    def refresh(self) -> None:
        for creds in list(self.clients.values()):
            creds.refresh()
