"""A newcomer's small surprises, each fixed (issue 26.5): `validate` refuses two listeners on one
address; `methods: [GET]` takes HEAD too; an upstream nothing uses is warned about. (The
dashboard's sign-in form and read-only buttons: tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy.config.loader import ConfigError, load_config
from proxy.dataplane.table import RouteTable
from tests.support import TWO_UPSTREAMS, InProcessProxy, Upstream, free_port, routes_yaml, run_cli

BASE = """\
version: 1
listen: "{listen}"
admin:
  listen: "{admin}"
upstreams:
  mono: {{url: "http://127.0.0.1:9"}}
  new: {{url: "http://127.0.0.1:10"}}
default_upstream: mono
routes:
  - {{name: r, match: {{path_prefix: /api, methods: [GET]}}, legacy: mono, target: new}}
"""


@pytest.mark.parametrize(("listen", "admin"), [
    ("127.0.0.1:8080", "127.0.0.1:8080"),
    ("0.0.0.0:8080", "127.0.0.1:8080"),  # the wildcard takes 8080 on every address
    ("[::]:8080", "127.0.0.1:8080"),
    ("localhost:8080", "127.0.0.1:8080"),
])
def test_validate_refuses_the_admin_listener_on_the_proxy_address(listen: str, admin: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("routes.yaml", BASE.format(listen=listen, admin=admin))
    (problem,) = err.value.problems
    assert (problem.line, problem.path) == (4, "admin.listen")  # file:line of admin.listen
    assert "same port" in problem.message


@pytest.mark.parametrize(("listen", "admin"), [
    ("0.0.0.0:8080", "127.0.0.1:9901"),
    ("127.0.0.1:8080", "127.0.0.2:8080"),  # two addresses, one port each: both bind
    ("[::1]:8080", "127.0.0.1:8080"),
    ("127.0.0.1:0", "127.0.0.1:0"),  # port 0: a fresh port each
])
def test_different_addresses_are_fine(listen: str, admin: str) -> None:
    load_config("routes.yaml", BASE.format(listen=listen, admin=admin))


async def test_validate_cli_names_the_line_and_serve_would_have_died(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "routes.yaml"
    path.write_text(BASE.format(listen=f"127.0.0.1:{port}", admin=f"127.0.0.1:{port}"))
    code, _, err = await run_cli("validate", "-c", str(path))
    assert code == 2
    assert err.startswith(f"{path}:4: admin.listen: admin.listen 127.0.0.1:{port} and listen")


def test_get_route_takes_head_too_and_an_earlier_get_route_covers_a_later_head_one() -> None:
    config = load_config("routes.yaml", BASE.format(listen="0.0.0.0:8080",
                                                    admin="127.0.0.1:9901"))
    table = RouteTable(config, {}, 1)
    for method, expected in ((b"GET", "r"), (b"HEAD", "r"), (b"POST", None)):
        route = table.match(method, b"/api/x", {})
        assert (route.name if route else None) == expected, method
    shadowed = BASE.format(listen="0.0.0.0:8080", admin="127.0.0.1:9901") + \
        "  - {name: h, match: {path_prefix: /api/x, methods: [HEAD]}, legacy: mono, target: new}\n"
    with pytest.raises(ConfigError, match="route 'h' can never match: route 'r'"):
        load_config("routes.yaml", shadowed)


async def test_head_request_goes_where_the_get_route_sends_get(tmp_path: Path) -> None:
    mono, svc = await Upstream("monolith").start(), await Upstream("svc").start()
    text = routes_yaml(TWO_UPSTREAMS + textwrap.indent(textwrap.dedent("""
        routes:
          - {{name: r, match: {{path_prefix: /api, methods: [GET]}}, legacy: monolith,
             target: svc, weight: 100, shadow: false}}
        """), "    "), port=free_port(), admin=free_port(), mono=mono.port, svc=svc.port)
    proxy = await InProcessProxy(tmp_path, text).start()
    try:
        async with aiohttp.ClientSession() as s:
            for method in ("GET", "HEAD"):
                async with s.request(method, f"{proxy.url}/api/x") as resp:
                    assert resp.status == 200
        assert [seen.method for seen in svc.seen] == ["GET", "HEAD"]
        assert mono.seen == []
    finally:
        await proxy.stop()
        await asyncio.gather(mono.stop(), svc.stop())


async def test_unused_upstream_is_a_warning_in_validate_and_at_serve(tmp_path: Path) -> None:
    text = BASE.format(listen="127.0.0.1:0", admin="127.0.0.1:0") + \
        "  # spare is not used\n"
    text = text.replace('  new: {url: "http://127.0.0.1:10"}\n',
                        '  new: {url: "http://127.0.0.1:10"}\n  spare: {url: "http://127.0.0.1:11"}\n')
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    code, out, err = await run_cli("validate", "-c", str(path))
    assert code == 0 and "OK" in out
    assert err.strip() == (f"{path}:8: upstreams.spare: warning: not used by any route (legacy, "
                           "target or noise_upstream) nor by default_upstream")

    from proxy.serve.app import warn_config

    with capture_logs() as logs:
        warn_config(load_config(str(path)))  # what serve logs at start, before it binds
    assert [(e["event"], e["upstream"], e["line"]) for e in logs] == [
        ("config.unused_upstream", "spare", 8)]
