"""The servers of a benchmark run: nginx upstreams, nginx as reverse proxy, the naive aiohttp
proxy, the streaming upstream and strangler, each started pinned and checked before use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

from bench.procs import STRANGLER_MAIN, Proc, Procs, free_port, wait_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SMALL_BODY = json.dumps(
    {"id": 4242, "name": "benchmark", "items": [1, 2, 3], "balance": "1024.50", "ok": True},
    separators=(",", ":"),
)
BIG_SIZE = 64 * 1024


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


# What a new service that disagrees with the monolith answers (the first days of a migration):
# the same shape, other values (and, in the 64 KiB body, every item's amount differs).
DIFFERENT_SMALL_BODY = SMALL_BODY.replace('"1024.50"', '"1024.51"').replace('"ok":true',
                                                                          '"ok":false')


def big_body(different: bool = False) -> bytes:
    """A JSON document of exactly 64 KiB (`different`: other amounts, same size)."""
    head, tail = b'{"items":[', b'],"pad":"'
    step = 9 if different else 7
    items = b",".join(b'{"id":%d,"amount":"%d.00"}' % (i, i * step) for i in range(1500))
    doc = head + items + tail
    pad = BIG_SIZE - len(doc) - 2
    return doc + b"x" * pad + b'"}'


@dataclass
class Upstream:
    proc: Proc
    small_port: int
    big_port: int
    small_tls_port: int = 0  # the same bodies over TLS (`start_upstream(tls=...)`)
    big_tls_port: int = 0

    @property
    def small_tls_url(self) -> str:
        return f"https://127.0.0.1:{self.small_tls_port}"

    @property
    def big_tls_url(self) -> str:
        return f"https://127.0.0.1:{self.big_tls_port}"

    @property
    def small_url(self) -> str:
        return f"http://127.0.0.1:{self.small_port}"

    @property
    def big_url(self) -> str:
        return f"http://127.0.0.1:{self.big_port}"


@dataclass
class Server:
    """Something under load: where to send the small-body and 64 KiB requests."""

    name: str
    proc: Proc | None
    small_url: str
    big_url: str | None


def _render(template: str, out: Path, **values: object) -> Path:
    text = Template((HERE / template).read_text()).substitute(**values)
    out.write_text(text)
    return out


def _nginx(procs: Procs, name: str, conf: Path, ports: list[int], cpus: str | None) -> Proc:
    proc = procs.start(
        name,
        [
            "nginx",
            "-e",
            str(conf.parent / f"{name}.error.log"),
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
        ],
        cpus,
    )
    for port in ports:
        if not wait_port(port, 10, proc.popen):
            raise StartError(f"{name} did not listen on {port}:\n{proc.tail()}")
    return proc


@dataclass
class BenchTls:
    """A private CA and one certificate for `bench.upstream` and 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_tls(workdir: Path) -> BenchTls:
    import trustme  # the [test] extra; `make bench` installs it

    ca = trustme.CA()
    issued = ca.issue_cert("bench.upstream", "127.0.0.1")
    out = BenchTls(workdir / "bench-ca.pem", workdir / "bench-cert.pem", workdir / "bench-key.pem")
    ca.cert_pem.write_to_path(str(out.ca))
    out.cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(out.key))
    for path in (out.ca, out.cert, out.key):
        os.chmod(path, 0o644)  # nginx workers run as nobody
    return out


def start_upstream(procs: Procs, workdir: Path, name: str, cpus: str | None,
                   different: bool = False, tls: BenchTls | None = None) -> Upstream:
    """nginx, 1 worker: the small JSON body on one port, the 64 KiB file on another
    (`different`: the bodies of a new service whose answers differ; `tls`: the same two again
    over TLS on two more ports)."""
    www = workdir / ("www-different" if different else "www")
    www.mkdir(exist_ok=True)
    (www / "big.json").write_bytes(big_body(different))
    small_port, big_port = free_port(), free_port()
    tls_ports = (free_port(), free_port()) if tls else (0, 0)
    tls_servers = ""
    if tls is not None:
        tls_servers = (
            f"    ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key};\n"
            "    ssl_session_cache shared:SSL:1m;\n"
            f"    server {{ listen 127.0.0.1:{tls_ports[0]} ssl; location / {{ return 200 "
            f"'{DIFFERENT_SMALL_BODY if different else SMALL_BODY}'; }} }}\n"
            f"    server {{ listen 127.0.0.1:{tls_ports[1]} ssl; location / {{ root {www}; "
            "try_files /big.json =404; } }")
    conf = _render(
        "upstream_nginx.conf.tmpl",
        workdir / f"{name}.conf",
        dir=workdir,
        name=name,
        small_port=small_port,
        big_port=big_port,
        small_body=DIFFERENT_SMALL_BODY if different else SMALL_BODY,
        www=www,
        tls_servers=tls_servers,
    )
    ports = [small_port, big_port, *(p for p in tls_ports if p)]
    proc = _nginx(procs, name, conf, ports, cpus)
    return Upstream(proc, small_port, big_port, *tls_ports)


def start_nginx_proxy(procs: Procs, workdir: Path, up: Upstream, cpus: str | None) -> Server:
    """nginx reverse proxy, 1 worker, upstream keepalive: two ports, one per body size."""
    name = "nginx-proxy"
    ports = [free_port(), free_port()]
    conf = _render(
        "proxy_nginx.conf.tmpl",
        workdir / f"{name}.conf",
        dir=workdir,
        name=name,
        small_port=ports[0],
        big_port=ports[1],
        small_upstream_port=up.small_port,
        big_upstream_port=up.big_port,
    )
    proc = _nginx(procs, name, conf, ports, cpus)
    return Server("nginx", proc, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")


def start_nginx_tls_proxy(procs: Procs, workdir: Path, up: Upstream, cpus: str | None,
                          tls: BenchTls, mode: str) -> Server:
    """nginx reverse proxy over TLS: `mode` "upstream" (proxy_pass https://, keepalive,
    proxy_ssl_session_reuse on, certificate verified) or "listener" (clients speak TLS)."""
    name = f"nginx-tls-{mode}"
    ports = [free_port(), free_port()]
    upstream = mode == "upstream"
    conf = _render(
        "proxy_nginx_tls.conf.tmpl",
        workdir / f"{name}.conf",
        dir=workdir,
        name=name,
        small_port=ports[0],
        big_port=ports[1],
        small_upstream_port=up.small_tls_port if upstream else up.small_port,
        big_upstream_port=up.big_tls_port if upstream else up.big_port,
        listen_ssl="" if upstream else " ssl",
        scheme="https" if upstream else "http",
        cert=tls.cert,
        key=tls.key,
        ca=tls.ca,
        mode=mode,
    )
    proc = _nginx(procs, name, conf, ports, cpus)
    scheme = "http" if upstream else "https"
    return Server(name, proc, f"{scheme}://127.0.0.1:{ports[0]}",
                  f"{scheme}://127.0.0.1:{ports[1]}")


def start_bare(procs: Procs, up: Upstream, cpus: str | None) -> tuple[Server, Proc]:
    """bench/bare_forwarder.py (the floor: httptools on uvloop, nothing else), one per upstream
    port, both pinned to `cpus`."""
    started = []
    for label, upstream in (("small", up.small_url), ("big", up.big_url)):
        port = free_port()
        proc = procs.start(
            f"bare-{label}",
            [sys.executable, "-m", "bench.bare_forwarder", "--port", str(port),
             "--upstream-port", upstream.rsplit(":", 1)[1]],
            cpus,
            env={"PYTHONPATH": str(REPO)},
        )
        if not wait_port(port, 20, proc.popen):
            raise StartError(f"bare forwarder did not start:\n{proc.tail()}")
        started.append((port, proc))
    (small_port, small), (big_port, big) = started
    return Server("bare", small, f"http://127.0.0.1:{small_port}",
                  f"http://127.0.0.1:{big_port}"), big


def start_aiohttp(procs: Procs, up: Upstream, cpus: str | None) -> tuple[Server, Proc]:
    """Two naive aiohttp proxies (one per upstream port), both pinned to `cpus`."""
    started = []
    for label, upstream in (("small", up.small_url), ("big", up.big_url)):
        port = free_port()
        proc = procs.start(
            f"aiohttp-{label}",
            [
                sys.executable,
                "-m",
                "bench.naive_aiohttp_proxy",
                "--port",
                str(port),
                "--upstream",
                upstream,
            ],
            cpus,
            env={"PYTHONPATH": str(REPO)},
        )
        if not wait_port(port, 20, proc.popen):
            raise StartError(f"naive aiohttp proxy did not start:\n{proc.tail()}")
        started.append((port, proc))
    (small_port, small), (big_port, big) = started
    server = Server(
        "aiohttp", small, f"http://127.0.0.1:{small_port}", f"http://127.0.0.1:{big_port}"
    )
    return server, big


def start_stream_upstream(procs: Procs, cpus: str | None) -> tuple[Proc, str]:
    port = free_port()
    proc = procs.start(
        "stream-upstream",
        [sys.executable, "-m", "bench.stream", "upstream", "--port", str(port)],
        cpus,
        env={"PYTHONPATH": str(REPO)},
    )
    if not wait_port(port, 20, proc.popen):
        raise StartError(f"stream upstream did not start:\n{proc.tail()}")
    return proc, f"http://127.0.0.1:{port}"


# --- strangler ---------------------------------------------------------------------------


def route_name(i: int) -> str:
    return f"r{i:05d}"


def bench_paths(n_routes: int) -> tuple[str, str]:
    """The small-body and 64 KiB paths: they match the last two of `n_routes` routes."""
    return f"/svc/{route_name(n_routes - 2)}/item", f"/svc/{route_name(n_routes - 1)}/item"


def strangler_config(
    *,
    port: int,
    admin_port: int,
    state_dir: Path,
    up: Upstream,
    n_routes: int = 10,
    weight: float = 50,
    shadow_url: str | None = None,
) -> dict:
    """routes.yaml for the bench: `n_routes` routes with distinct path prefixes.

    Every route splits `weight`% to a second upstream name on the same nginx (routing and the
    split decision run on every request; shadow off). With `shadow_url`, the small-body route
    instead sends 100% to legacy and mirrors every request (sample 1.0, no rate limit, no
    proxy-wide budget) to that nginx, whose answers are identical (the best case).
    """
    upstreams = {
        "legacy": {"url": up.small_url},
        "modern": {"url": up.small_url},
        "legacy-big": {"url": up.big_url},
        "modern-big": {"url": up.big_url},
    }
    routes = []
    for i in range(n_routes):
        big = i == n_routes - 1
        route = {
            "name": route_name(i),
            "match": {"path_prefix": f"/svc/{route_name(i)}"},
            "legacy": "legacy-big" if big else "legacy",
            "target": "modern-big" if big else "modern",
            "weight": weight,
            "shadow": {"enabled": False},
        }
        if shadow_url and i == n_routes - 2:
            upstreams["shadow-target"] = {"url": shadow_url}
            route.update(target="shadow-target", weight=0,
                         shadow={"enabled": True, "sample": 1.0, "max_rate": "unlimited"})
        routes.append(route)
    cfg = _base(port, admin_port, state_dir, upstreams, routes)
    if shadow_url:  # every request mirrored: no shadow budget
        cfg["shadow_budget"] = {"max_rate": "unlimited"}
    return cfg


def tls_config(*, port: int, admin_port: int, state_dir: Path, up: Upstream, tls: BenchTls,
               mode: str) -> dict:
    """Two routes (small body, 64 KiB), 100% legacy, shadow off, over TLS on one side:
    "upstream" (https upstreams, the bench CA, server_name bench.upstream, as nginx verifies)
    or "listener" (the proxy serves TLS)."""
    if mode == "upstream":
        spec = {"ca_file": str(tls.ca), "server_name": "bench.upstream"}
        upstreams = {"legacy": {"url": up.small_tls_url, "tls": spec},
                     "legacy-big": {"url": up.big_tls_url, "tls": spec}}
    else:
        upstreams = {"legacy": {"url": up.small_url}, "legacy-big": {"url": up.big_url}}
    upstreams["modern"] = dict(upstreams["legacy"])
    upstreams["modern-big"] = dict(upstreams["legacy-big"])
    routes = [{"name": route_name(i), "match": {"path_prefix": f"/svc/{route_name(i)}"},
               "legacy": legacy, "target": target, "weight": 0, "shadow": {"enabled": False}}
              for i, (legacy, target) in enumerate((("legacy", "modern"),
                                                    ("legacy-big", "modern-big")))]
    cfg = _base(port, admin_port, state_dir, upstreams, routes)
    if mode == "listener":
        cfg["tls"] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
    return cfg


def differing_config(*, port: int, admin_port: int, state_dir: Path, up: Upstream,
                     new: Upstream, shadow: dict | None) -> dict:
    """Two routes (small body, 64 KiB) whose target is a new service that answers differently.
    `shadow=None` is the routes.yaml a user writes first: weight 50 and no shadow block (the
    defaults: sample 1.0, the shadow budget). Otherwise weight 0 and that shadow block."""
    upstreams = {
        "legacy": {"url": up.small_url},
        "new": {"url": new.small_url},
        "legacy-big": {"url": up.big_url},
        "new-big": {"url": new.big_url},
    }
    routes = []
    for i, (legacy, target) in enumerate((("legacy", "new"), ("legacy-big", "new-big"))):
        route: dict = {
            "name": route_name(i),
            "match": {"path_prefix": f"/svc/{route_name(i)}"},
            "legacy": legacy,
            "target": target,
            "weight": 50 if shadow is None else 0,
        }
        if shadow is not None:
            route["shadow"] = shadow
        routes.append(route)
    cfg = _base(port, admin_port, state_dir, upstreams, routes)
    if shadow is not None:
        cfg["shadow_budget"] = {"max_rate": "unlimited"}
    return cfg


def stream_config(*, port: int, admin_port: int, state_dir: Path, upstream_url: str) -> dict:
    """One route to the streaming upstream; bodies up to 2 GiB, 120 s to response headers."""
    upstreams = {
        "stream": {"url": upstream_url, "timeout": "120s"},
        "stream-new": {"url": upstream_url, "timeout": "120s"},
    }
    routes = [
        {
            "name": "stream",
            "match": {"path_prefix": "/stream"},
            "legacy": "stream",
            "target": "stream-new",
            "weight": 0,
            "shadow": {"enabled": False},
        }
    ]
    cfg = _base(port, admin_port, state_dir, upstreams, routes, default="stream")
    cfg["limits"] = {"max_body": "2GiB", "body_idle_timeout": "60s"}
    return cfg


RANDOM_PATHS_LUA = """-- every request a new unmatched path of 12 letters (no digit: no id rule
-- folds them), out of 200,000 made at the start: writing a request costs wrk nothing
-- (made in init: wrk.format adds the Host header only once the thread is set up)
local n, reqs, i = 200000, {}, 0
init = function(args)
  math.randomseed(27)
  for k = 1, n do
    local t = {}
    for j = 1, 12 do t[j] = string.char(96 + math.random(26)) end
    reqs[k] = wrk.format("GET", "/r/" .. table.concat(t))
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
"""


def random_paths_script(workdir: Path) -> Path:
    """The wrk script of the `strangler_random` rows (the inventory's cardinality attack)."""
    path = workdir / "random_paths.lua"
    if not path.exists():
        path.write_text(RANDOM_PATHS_LUA)
    return path


def _base(
    port: int,
    admin_port: int,
    state_dir: Path,
    upstreams: dict,
    routes: list,
    default: str = "legacy",
) -> dict:
    return {
        "version": 1,
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "state_dir": str(state_dir),
        "upstreams": upstreams,
        "default_upstream": default,
        "routes": routes,
    }


def strangler_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "strangler"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", STRANGLER_MAIN]


def _readyz(admin_port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def start_postgres() -> tuple[str, Callable[[], None]]:
    """A throwaway PostgreSQL 15 (scripts/postgres-dev, fsync on as in production): its DSN and
    the function that stops it and removes its directory."""
    import shutil
    import tempfile

    script = REPO / "scripts" / "postgres-dev"
    run_dir = Path(tempfile.mkdtemp(prefix="strangler-bench-pg-"))

    def stop() -> None:
        subprocess.run([str(script), "stop", "--dir", str(run_dir)], check=False,
                       capture_output=True, timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)

    out = subprocess.run([str(script), "start", "--dir", str(run_dir), "--durable"],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        stop()
        raise StartError(f"scripts/postgres-dev start failed: {out.stderr.strip()[-300:]}")
    for line in out.stdout.splitlines():
        if line.startswith("export STRANGLER_DATABASE_URL="):
            return line.split("=", 1)[1].strip("'"), stop
    stop()
    raise StartError("scripts/postgres-dev printed no STRANGLER_DATABASE_URL")


def start_strangler(
    procs: Procs,
    workdir: Path,
    name: str,
    config: dict,
    cpus: str | None,
    workers: int = 1,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
) -> Proc:
    """`strangler serve -c FILE [--workers N]`; ready when admin /readyz answers 200 (or, if
    the admin listener never answers, when the listen port has accepted for 3 s). `env`: more
    environment (STRANGLER_NO_EXTENSIONS=1: the pure-Python data plane)."""
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [*strangler_cmd(), "serve", "-c", str(cfg_path)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    proc = procs.start(name, cmd, cpus, env={"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                                             **(env or {})})
    port = int(config["listen"].rsplit(":", 1)[1])
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    listening_since: float | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(
                f"`{' '.join(cmd[-4:])}` exited with {proc.popen.returncode}:\n{proc.tail()}"
            )
        if _readyz(admin_port) == 200:
            return proc
        if wait_port(port, 0.1):
            listening_since = listening_since or time.monotonic()
            if time.monotonic() - listening_since > 3 and _readyz(admin_port) is None:
                return proc
        time.sleep(0.1)
    procs.stop(proc)
    raise StartError(f"strangler ({name}) not ready after {timeout:.0f}s:\n{proc.tail()}")


def shadow_counters(admin_port: int) -> dict[str, float] | None:
    """Shadow counters from the admin /metrics: compared (per result) and skipped (per reason),
    summed over routes; None if /metrics does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError as exc:
        print(f"warning: no shadow counters from /metrics: {exc}", file=sys.stderr)
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        for metric, label in (
            ("strangler_shadow_comparisons_total{", "result"),
            ("strangler_shadow_skipped_total{", "reason"),
        ):
            if line.startswith(metric):
                labels, _, value = line.rpartition(" ")
                m = re.search(label + r'="([^"]*)"', labels)
                kind = ("compared_" if "comparisons" in metric else "skipped_") + (
                    m.group(1) if m else "?"
                )
                out[kind] = out.get(kind, 0.0) + float(value)
    return out


def check_get(url: str, expect_len: int | None, timeout: float = 5.0) -> str | None:
    """None if GET url answers 200 with the expected body length, else what went wrong
    (https: the bench's own certificate is not checked here; wrk does not check either)."""
    import ssl

    ctx = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            body = r.read()
            if r.status != 200:
                return f"status {r.status}"
    except urllib.error.HTTPError as exc:
        return f"status {exc.code}: {exc.read()[:200]!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if expect_len is not None and len(body) != expect_len:
        return f"body of {len(body)} bytes, expected {expect_len}"
    return None


def chmod_for_nginx_workers(workdir: Path) -> None:
    """nginx workers run as `nobody` when we are root: let them read the temp dir."""
    os.chmod(workdir, 0o755)
