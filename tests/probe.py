"""Shared pieces of the adversarial-probe regression tests (issue 22, tests/test_probe_*.py).

Each probe runs a real `strangler serve` (the `proxy_process` fixture) in front of raw-socket
upstreams (`tests.rawhttp.RawUpstream`) or aiohttp ones, and talks to it with raw sockets.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, routes_yaml


def probe_config(legacy: int, target: int, *, weight: float = 0, route: str = "",
                 upstream: str = "timeout: 2s, connect_timeout: 500ms", limits: str = "",
                 admin: str = "", top: str = "") -> str:
    """One route `api` (`/api`, legacy -> target); `route`, `limits`, `admin` and `top` are
    extra YAML lines (route keys indented by 8 spaces, the others flow mappings' insides)."""
    text = routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"{admin_extra}}}
        state_dir: state
        upstreams:
          legacy: {{url: "http://127.0.0.1:{legacy}", {up}}}
          target: {{url: "http://127.0.0.1:{target}", {up}}}
        default_upstream: legacy
        limits: {{{limits}}}
        """, port=free_port(), admin=free_port(), legacy=legacy, target=target, up=upstream,
                       limits=limits, admin_extra=(", " + admin) if admin else "")
    text += top
    text += routes_yaml("""
        routes:
          - name: api
            match: {{path_prefix: /api}}
            legacy: legacy
            target: target
            weight: {weight}
            shadow: false
        """, weight=weight)
    if route:
        text += "".join(f"    {line}\n" for line in route.strip("\n").splitlines())
    return text


async def scrape(admin: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series (exactly these labels), 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
