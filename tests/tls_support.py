"""Real TLS for tests: a private CA made in the test (trustme), certificate files on disk, TLS
upstreams on 127.0.0.1 (aiohttp, and a threaded `http.server` that sends TLS alerts the way most
servers do), and an https client that trusts the test's CA.
"""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from tests.support import Seen, Upstream, free_port


@dataclass
class Pki:
    """A private CA whose certificates are written as PEM files under `dir`."""

    dir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    name: str = "ca"

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = str(self.dir / f"{self.name}.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def issue(self, stem: str, *names: str, expired: bool = False) -> tuple[str, str]:
        """(cert_file, key_file) for `names` (host names or IPs); `expired`: ended in 2020."""
        kw: dict[str, Any] = {}
        if expired:
            kw = {"not_before": datetime.datetime(2019, 1, 1),
                  "not_after": datetime.datetime(2020, 1, 1)}
        cert = self.ca.issue_cert(*names, common_name=names[0], **kw)
        cert_file, key_file = self.dir / f"{stem}.pem", self.dir / f"{stem}-key.pem"
        write_atomically(cert_file, b"".join(b.bytes() for b in cert.cert_chain_pems))
        write_atomically(key_file, cert.private_key_pem.bytes())
        return str(cert_file), str(key_file)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def write_atomically(path: Path, data: bytes) -> None:
    """Rewrite a file the way secret mounts and rotation tools do: new file, then rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def server_context(cert_file: str, key_file: str, client_ca: str | None = None,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass
class TlsUpstream(Upstream):
    """`Upstream` over TLS; `handshakes` records, per request, whether its connection resumed
    a TLS session, and `peers` the client certificate's common name (mTLS)."""

    context: ssl.SSLContext | None = None
    resumed: list[bool] = field(default_factory=list)
    peers: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        if obj is not None:
            self.resumed.append(obj.session_reused)
            peer = obj.getpeercert()
            self.peers.append(_common_name(peer) if peer else None)
        return await super()._handle(request)

    async def start(self) -> TlsUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        if not self.port:
            self.port = free_port()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.context,
                           reuse_address=True)
        await site.start()
        return self


def _common_name(cert: dict) -> str | None:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class ThreadedTlsServer:
    """A blocking TLS HTTP server in a thread (`http.server`): unlike asyncio servers it sends
    the TLS alert when it refuses a client certificate, as nginx, Go or Envoy do."""

    def __init__(self, context: ssl.SSLContext, name: str = "mtls") -> None:
        self.seen: list[Seen] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.seen.append(Seen("GET", self.path, dict(self.headers.items()), b""))
                peer = self.connection.getpeercert()
                body = json.dumps({"served_by": name, "peer": _common_name(peer) if peer
                                   else None}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> Any:
                sock, addr = self.socket.accept()
                return context.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False), addr

            def finish_request(self, request: Any, client_address: Any) -> None:
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return  # the alert went out with the failed handshake
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ThreadedTlsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
