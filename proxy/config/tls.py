"""SSL contexts from the TLS specs, and what is wrong with their files, in words.

One place builds every context the proxy uses: towards https upstreams, Prometheus and the
OTLP collector (`client_context`), and for its own listeners (`server_context`). `validate`,
a reload and the data plane's rotation watcher all build through here, so a file that would
fail at run time fails `validate` first, with the same message (`file_problems`).

Defaults: the system CAs, certificate and host name checked, TLS 1.2 or newer, ALPN http/1.1.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from proxy.config.spec import ClientTlsSpec, ServerTlsSpec

__all__ = ["TlsFileError", "client_context", "file_problems", "file_stamp", "server_context"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_ALPN = ["http/1.1"]


class TlsFileError(Exception):
    """A certificate, key or CA file cannot be used; `field` names the key it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def client_context(spec: ClientTlsSpec, cls: type[ssl.SSLContext] = ssl.SSLContext,
                   ) -> ssl.SSLContext:
    """The context a client side uses; `cls` may be a subclass (session resumption).
    Raises TlsFileError."""
    ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[spec.min_version]
    ctx.set_alpn_protocols(_ALPN)
    if spec.verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if spec.ca_file:
            with _reading("ca_file", spec.ca_file):
                ctx.load_verify_locations(cafile=spec.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if spec.cert_file and spec.key_file:
        _load_pair(ctx, spec.cert_file, spec.key_file)
    return ctx


def server_context(spec: ServerTlsSpec) -> ssl.SSLContext:
    """The context of a listener: its certificate and key, ALPN http/1.1. Raises TlsFileError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[spec.min_version]
    ctx.set_alpn_protocols(_ALPN)
    _load_pair(ctx, spec.cert_file, spec.key_file)
    return ctx


def file_problems(spec: ClientTlsSpec | ServerTlsSpec) -> list[tuple[str, str]]:
    """(field, message) for what keeps `spec`'s files from being used; [] when they load."""
    checks = []
    if isinstance(spec, ServerTlsSpec):
        checks.append(lambda: server_context(spec))
    else:
        if spec.ca_file and spec.verify:
            checks.append(lambda: client_context(replace(spec, cert_file=None, key_file=None)))
        if spec.cert_file and spec.key_file:
            checks.append(lambda: client_context(replace(spec, verify=False)))
    out = []
    for check in checks:
        try:
            check()
        except TlsFileError as exc:
            out.append((exc.field, exc.message))
    return out


def file_stamp(spec: ClientTlsSpec | ServerTlsSpec) -> tuple[Any, ...]:
    """What changes when one of the spec's files is rewritten (cert-manager swaps a symlink,
    Vault agent rewrites in place): (path, mtime_ns, size, inode) of each, None when missing."""
    out: list[Any] = []
    for path in _paths(spec):
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, None))
            continue
        out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _paths(spec: ClientTlsSpec | ServerTlsSpec) -> Iterator[str]:
    if isinstance(spec, ClientTlsSpec) and spec.ca_file:
        yield spec.ca_file
    if spec.cert_file:
        yield spec.cert_file
    if spec.key_file:
        yield spec.key_file


def _load_pair(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    for field, path in (("cert_file", cert_file), ("key_file", key_file)):
        with _reading(field, path):
            with open(path, "rb"):
                pass
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).upper()
        if "KEY_VALUES_MISMATCH" in reason:
            raise TlsFileError("key_file", f"{key_file}: the key does not match the certificate "
                               f"in {cert_file}") from None
        if not _has_certificate(cert_file):
            raise TlsFileError("cert_file", f"{cert_file}: no PEM certificate in it") from None
        raise TlsFileError("key_file", f"{key_file}: no usable PEM private key in it "
                           f"({exc.reason or exc})") from None
    except _Encrypted:
        raise TlsFileError("key_file", f"{key_file}: the key is encrypted with a passphrase; "
                           "give it unencrypted (mounted from a secret)") from None


def _has_certificate(path: str) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted


class _reading:
    """Turns the OS's refusal to read a file into a TlsFileError naming the key."""

    def __init__(self, field: str, path: str) -> None:
        self.field, self.path = field, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, FileNotFoundError):
            raise TlsFileError(self.field, f"{self.path}: no such file") from None
        if isinstance(exc, IsADirectoryError):
            raise TlsFileError(self.field, f"{self.path}: is a directory, not a file") from None
        if isinstance(exc, PermissionError):
            raise TlsFileError(self.field, f"{self.path}: cannot read it (permission denied)") \
                from None
        if isinstance(exc, ssl.SSLError):
            raise TlsFileError(self.field, f"{self.path}: no usable PEM certificate in it "
                               f"({exc.reason or exc})") from None
        if isinstance(exc, OSError):
            raise TlsFileError(self.field, f"{self.path}: cannot read it ({exc.strerror or exc})") \
                from None
        return False
