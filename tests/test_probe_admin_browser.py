"""Issue 22.4: a page of another origin in the operator's browser cannot change anything.

The probe, on a token-less loopback admin listener (the documented default): a `text/plain`
form POST from a page of another origin rolled a route back; `fetch(..., {mode: "no-cors",
headers: {"Content-Type": "text/plain"}})` set another route to 100%; any `Host` was accepted,
so DNS rebinding gave read and write. Now (proxy/api/browser_guard.py) a change needs
`Content-Type: application/json`, a cross-site `Origin` or `Sec-Fetch-Site` is refused, and on
a loopback listener `Host` must be an address, localhost, or one of `admin.allowed_hosts`.

Proved in real headless Chromium (a page on `http://localhost:P`, another site than the admin
at `127.0.0.1`; one on `127.0.0.1:P`, the same site on another port; and a DNS-rebound name
mapped to 127.0.0.1 by `--host-resolver-rules`), and byte by byte with raw sockets. The dashboard
(same origin) and the CLI (no Origin) keep working.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.rawhttp import parse_responses, raw_request
from tests.support import free_port, routes_yaml, run_cli

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
REBOUND = "rebind.test"

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"{extra}}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{up}"}}
      svc: {{url: "http://127.0.0.1:{up}"}}
    default_upstream: monolith
    routes:
      - name: pay
        match: {{path_prefix: /pay}}
        legacy: monolith
        target: svc
        weight: 10
        shadow: false
      - name: cart
        match: {{path_prefix: /cart}}
        legacy: monolith
        target: svc
        weight: 5
        shadow: false
"""


@pytest.fixture
async def admin(upstreams, proxy_process):
    """A `strangler serve` with a token-less admin on 127.0.0.1 (routes pay at 10, cart at 5)."""
    async def make(extra: str = ""):
        up = await upstreams("monolith")
        return await proxy_process(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                               up=up.port, extra=extra))
    return make


async def _routes(p) -> dict[str, tuple[float, str]]:
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/admin/routes") as r:
        body = await r.json()
    return {x["name"]: (x["weight"], x["state"]) for x in body["routes"]}


UNCHANGED = {"pay": (10, "active"), "cart": (5, "active")}


async def _raw(p, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = (f"{method} {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n"
           f"Connection: close\r\n\r\n").encode() + body
    data, _ = await raw_request(p.admin_port, raw)
    (resp,) = parse_responses(data)
    return resp


REASON = b'{"reason": "probe"}'


# -- raw sockets -------------------------------------------------------------------------------

async def test_a_change_must_be_json(admin):
    p = await admin()
    host = {"Host": f"127.0.0.1:{p.admin_port}"}
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                  None):
        headers = {**host, **({"Content-Type": ctype} if ctype else {})}
        resp = await _raw(p, "POST", "/admin/routes/pay/rollback", headers, REASON)
        assert resp.status == 415, ctype
        assert "application/json" in json.loads(resp.body)["error"]
    assert await _routes(p) == UNCHANGED
    resp = await _raw(p, "POST", "/admin/routes/pay/rollback",
                      {**host, "Content-Type": "application/json; charset=utf-8"}, REASON)
    assert resp.status == 200
    # A change without a body needs no content type (POST /admin/reload as curl sends it).
    assert (await _raw(p, "POST", "/admin/reload", host)).status == 200


FOREIGN = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # the same host, another port: another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "{same}", "Sec-Fetch-Site": "cross-site"},
]


async def test_a_change_from_another_origin_is_refused(admin):
    p = await admin()
    same = f"http://127.0.0.1:{p.admin_port}"
    for headers in FOREIGN:
        headers = {k: v.replace("{same}", same) for k, v in headers.items()}
        resp = await _raw(p, "PUT", "/admin/routes/cart/weight",
                          {"Host": f"127.0.0.1:{p.admin_port}",
                           "Content-Type": "application/json", **headers},
                          b'{"weight": 100, "reason": "probe"}')
        assert resp.status == 403, headers
        assert "refused" in json.loads(resp.body)["error"]
    assert await _routes(p) == UNCHANGED


async def test_a_change_from_the_same_origin_is_accepted(admin):
    p = await admin()
    same = f"http://127.0.0.1:{p.admin_port}"
    resp = await _raw(p, "PUT", "/admin/routes/cart/weight",
                      {"Host": f"127.0.0.1:{p.admin_port}", "Content-Type": "application/json",
                       "Origin": same, "Sec-Fetch-Site": "same-origin"},
                      b'{"weight": 20, "reason": "probe"}')
    assert resp.status == 200
    assert (await _routes(p))["cart"] == (20, "active")


HOSTS = [
    ("evil.test:{port}", 403), ("127.0.0.1.nip.io:{port}", 403), ("rebind.test", 403),
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST.:{port}", 200),
    ("[::1]:{port}", 200), ("127.0.0.2:{port}", 200), ("app.localhost:{port}", 200),
]


async def test_host_must_name_the_loopback_listener(admin):
    p = await admin()
    for host, status in HOSTS:
        host = host.format(port=p.admin_port)
        for path in ("/admin/routes", "/metrics", "/"):
            resp = await _raw(p, "GET", path, {"Host": host})
            assert resp.status == status, (path, host)
        resp = await _raw(p, "PUT", "/admin/routes/cart/weight",
                          {"Host": host, "Content-Type": "application/json"},
                          b'{"weight": 5, "reason": "probe"}')
        assert resp.status == status, host
        # Probes are answered whatever the Host.
        assert (await _raw(p, "GET", "/healthz", {"Host": host})).status == 200


async def test_allowed_hosts_extend_the_names(admin):
    p = await admin(extra=', allowed_hosts: ["strangler.internal", "Ops.Example.COM."]')
    for host, status in (("strangler.internal:80", 200), ("ops.example.com", 200),
                         ("evil.test", 403), ("127.0.0.1", 200)):
        assert (await _raw(p, "GET", "/admin/routes", {"Host": host})).status == status, host
    # A page served under an allowed name may change things from there.
    resp = await _raw(p, "POST", "/admin/routes/pay/rollback",
                      {"Host": "strangler.internal", "Origin": "https://strangler.internal",
                       "Content-Type": "application/json"}, REASON)
    assert resp.status == 200


async def test_allowed_hosts_is_checked_in_the_file(tmp_path: Path):
    from proxy.config.loader import ConfigError, load_config

    text = routes_yaml(ROUTES, port=1, admin=2, up=3,
                       extra=', allowed_hosts: ["http://x.example", "a b", "ok.example"]')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "routes.yaml", text)
    problems = [str(x) for x in err.value.problems]
    assert len(problems) == 2 and all("admin.allowed_hosts" in x for x in problems), problems


async def test_the_cli_keeps_working(admin):
    p = await admin()
    env = {"STRANGLER_ADMIN_URL": p.admin}
    code, out, err = await run_cli("set-weight", "cart", "30", "--reason", "cli", env=env)
    assert code == 0, (out, err)
    code, out, err = await run_cli("rollback", "pay", "--reason", "cli", env=env)
    assert code == 0, (out, err)
    assert await _routes(p) == {"pay": (0, "rolled_back"), "cart": (30, "active")}


# -- real Chromium -----------------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" target="sink"
      action="http://127.0.0.1:{admin}/admin/routes/pay/rollback">
  <input name='{{"reason": "csrf", "x": "' value='"}}'>
</form>
<iframe name="sink"></iframe>
<script>
window.results = {{}};
async function attack() {{
  try {{
    await fetch("http://127.0.0.1:{admin}/admin/routes/cart/weight", {{method: "POST",
      mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
      body: JSON.stringify({{weight: 100, reason: "csrf"}})}});
    window.results.fetch = "sent";
  }} catch (e) {{ window.results.fetch = "error " + e; }}
  try {{
    await fetch("http://127.0.0.1:{admin}/admin/routes/cart/weight", {{method: "PUT",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{weight: 100, reason: "csrf-cors"}})}});
    window.results.cors = "sent";
  }} catch (e) {{ window.results.cors = "error " + e; }}
  document.getElementById("f").submit();
  window.results.form = "submitted";
}}
attack();
</script></body></html>"""


@pytest.fixture
async def chromium(tmp_path: Path):
    async_api = pytest.importorskip("playwright.async_api")
    from tests.test_dashboard_browser import CHROMIUM, HAVE_CHROMIUM

    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install-test-deps installs it)")
    async with async_api.async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"])
        try:
            yield ctx
        finally:
            await ctx.close()


async def _attacker_site(host: str, admin_port: int) -> tuple[web.AppRunner, str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ATTACK_PAGE.format(admin=admin_port), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://{host}:{port}/"


@pytest.mark.browser
@pytest.mark.parametrize("site", ["localhost", "127.0.0.1"], ids=["cross_site", "same_site"])
async def test_a_page_of_another_origin_changes_nothing(admin, chromium, site):
    p = await admin()
    runner, url = await _attacker_site(site, p.admin_port)
    try:
        page = await chromium.new_page()
        seen: list[tuple[str, int]] = []
        page.on("response", lambda r: seen.append((r.url, r.status)))
        await page.goto(url)
        await page.wait_for_function("() => window.results && window.results.form", timeout=10000)
        await asyncio.sleep(1.5)  # the form's navigation and the fetches have landed
        assert await _routes(p) == UNCHANGED
        refused = [status for u, status in seen if "/admin/" in u]
        assert refused and set(refused) <= {403, 415}, seen
    finally:
        await runner.cleanup()


@pytest.mark.browser
async def test_dns_rebinding_reads_and_changes_nothing(admin, chromium):
    """The browser believes http://rebind.test:PORT is the attacker's own origin, while the name
    resolves to the admin listener: same-origin requests, with `Host: rebind.test:PORT`."""
    p = await admin()
    page = await chromium.new_page()
    resp = await page.goto(f"http://{REBOUND}:{p.admin_port}/")
    assert resp is not None and resp.status == 403
    result = await page.evaluate("""async () => {
        const read = await fetch("/admin/routes");
        const write = await fetch("/admin/routes/cart/weight", {method: "PUT",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({weight: 100, reason: "rebinding"})});
        return {read: read.status, write: write.status, body: await read.text()};
    }""")
    assert result["read"] == 403 and result["write"] == 403, result
    assert '"routes"' not in result["body"]
    assert await _routes(p) == UNCHANGED


@pytest.mark.browser
async def test_the_dashboard_itself_still_changes_things(admin, chromium):
    """Same origin: the dashboard's own fetches (JSON, Origin = the listener) go through."""
    p = await admin()
    page = await chromium.new_page()
    await page.goto(p.admin + "/")
    result = await page.evaluate("""async () => {
        const r = await fetch("/admin/routes/cart/weight", {method: "PUT",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({weight: 40, reason: "from the dashboard"})});
        return r.status;
    }""")
    assert result == 200
    assert (await _routes(p))["cart"] == (40, "active")


@pytest.mark.parametrize("listen,allowed,host,ok", [
    ("0.0.0.0", (), "strangler-admin.prod.svc:9901", True),  # needs a token; Host unchecked
    ("0.0.0.0", ("admin.example",), "strangler-admin.prod.svc:9901", False),
    ("0.0.0.0", ("admin.example",), "admin.example", True),
    ("0.0.0.0", ("admin.example",), "10.1.2.3:9901", True),
    ("127.0.0.1", (), "admin.example", False),
    ("127.0.0.1", ("*",), "admin.example", True),
    ("localhost", (), "localhost:9901", True),
])
def test_host_rule_by_listener(listen, allowed, host, ok):
    """Like the Jupyter server: Host is checked on a loopback listener (token-less there), and
    on any other only when names are configured."""
    from aiohttp.test_utils import make_mocked_request

    from proxy.api.browser_guard import BrowserGuard, BrowserRefusal

    guard = BrowserGuard(lambda: (listen, allowed))
    request = make_mocked_request("GET", "/admin/routes", headers={"Host": host})
    if ok:
        guard.check(request)
    else:
        with pytest.raises(BrowserRefusal):
            guard.check(request)
