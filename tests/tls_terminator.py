"""nginx as the TLS terminator in front of a real Unleash (which serves plain HTTP only: its
server has no https of its own), for the `unleash` tier's TLS tests.

`TlsTerminator(dir, backend_port, cert_file, key_file, client_ca=None).start()` listens on
127.0.0.1 with TLS and `proxy_pass http://` to the backend; with `client_ca` it requires a client
certificate signed by that CA (`ssl_verify_client on`). Its access log records, per request, the
status and the client certificate's subject, so a test sees which certificate a request used.
`reload()` makes nginx re-read its certificate files (SIGHUP to the master we started).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support import free_port

CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format tls '$status "$ssl_client_s_dn" $ssl_protocol "$request"';
    access_log {dir}/access.log tls;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_body_buffer_size 1m;     # no temp files: workers may run as nobody
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
{client_auth}
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
CLIENT_AUTH = """\
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
"""


class TlsTerminator:
    """nginx, TLS in front and plain HTTP behind (see the module docstring)."""

    def __init__(self, dir: Path, backend_port: int, cert_file: str, key_file: str,
                 client_ca: str | None = None) -> None:
        self.dir = Path(dir)
        self.port = free_port()
        self.backend_port = backend_port
        self.cert_file, self.key_file, self.client_ca = cert_file, key_file, client_ca
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Unleash's API behind this terminator."""
        return f"https://127.0.0.1:{self.port}/api"

    def _write_conf(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        client_auth = CLIENT_AUTH.format(client_ca=self.client_ca) if self.client_ca else ""
        conf.write_text(CONF.format(dir=self.dir, port=self.port, cert_file=self.cert_file,
                                    key_file=self.key_file, backend_port=self.backend_port,
                                    client_auth=client_auth))
        return conf

    def start(self) -> TlsTerminator:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self._write_conf()
        self.proc = subprocess.Popen(
            [nginx, "-e", str(self.dir / "error.log"), "-p", str(self.dir), "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.dir / 'stderr.log').read_text()}"
                                   f"{(self.dir / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 10 s")

    def reload(self, **changes: str | None) -> None:
        """Re-read the configuration and certificate files (the master re-forks its worker)."""
        for key, value in changes.items():
            setattr(self, key, value)
        self._write_conf()
        assert self.proc is not None
        before = self._workers()
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the new worker is up when the old one is gone
            now = self._workers()
            if now and not (now & before):
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not reload within 10 s")

    def _workers(self) -> set[int]:
        assert self.proc is not None
        out = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                out.add(int(entry.name))
        return out

    def access(self) -> list[str]:
        """The access log's lines: `STATUS "CLIENT-CERT-SUBJECT" PROTOCOL "REQUEST"`."""
        try:
            return (self.dir / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
