"""WebSocket upgrades pass through on routes with `websocket: true` (frames, ping/pong, close
codes) and are never mirrored; elsewhere the Upgrade is stripped and answered as a plain request.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, web

from tests.rawhttp import RawUpstream, parse_responses, raw_request
from tests.support import free_port, routes_yaml


class WsServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.handshakes: list[dict] = []
        self.closed_with: list[int | None] = []
        self.pongs = 0

    async def ws(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append({k.lower(): v for k, v in request.headers.items()})
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.send_str(f"hello from {self.name}")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"bye")
                    break
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
                await ws.ping(b"server-ping")
            elif msg.type == WSMsgType.PONG:
                self.pongs += 1
        self.closed_with.append(ws.close_code)
        return ws

    async def plain(self, request: web.Request) -> web.Response:
        return web.json_response({"served_by": self.name,
                                  "upgrade": request.headers.get("Upgrade")})

    async def start(self) -> WsServer:
        app = web.Application()
        app.router.add_get("/ws/{tail:.*}", self.ws)
        app.router.add_get("/plain/{tail:.*}", self.plain)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _config(legacy: int, target: int, weight: float = 100, shadow: str = "false") -> str:
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          legacy: {{url: "http://127.0.0.1:{legacy}"}}
          target: {{url: "http://127.0.0.1:{target}"}}
        default_upstream: legacy
        routes:
          - name: ws
            match: {{path_prefix: /ws}}
            legacy: legacy
            target: target
            weight: {weight}
            websocket: true
            shadow: {shadow}
          - name: plain
            match: {{path_prefix: /plain}}
            legacy: legacy
            target: target
            weight: {weight}
            shadow: false
        """, port=free_port(), admin=free_port(), legacy=legacy, target=target, weight=weight,
                       shadow=shadow)


async def test_websocket_frames_ping_pong_and_close_code(inproc_proxy):
    legacy = await WsServer("legacy").start()
    target = await WsServer("target").start()
    try:
        proxy = await inproc_proxy(_config(legacy.port, target.port))
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(proxy.url + "/ws/chat", autoping=False,
                                    headers={"X-Request-Id": "ws-1"}) as ws:
                assert (await ws.receive_str(timeout=2)) == "hello from target"
                await ws.send_str("one")
                assert (await ws.receive_str(timeout=2)) == "target:one"
                big = bytes(range(256)) * 4096  # 1 MiB frame
                await ws.send_bytes(big)
                assert (await ws.receive_bytes(timeout=5)) == big[::-1]
                await ws.ping(b"client-ping")
                msg = await ws.receive(timeout=2)
                assert msg.type == WSMsgType.PONG and msg.data == b"client-ping"
                msg = await ws.receive(timeout=2)
                assert msg.type == WSMsgType.PING and msg.data == b"server-ping"
                await ws.pong(msg.data)
                await ws.send_str("close-me")
                msg = await ws.receive(timeout=2)
                assert msg.type == WSMsgType.CLOSE and msg.data == 4001
        assert target.handshakes[0]["x-request-id"] == "ws-1"
        assert target.handshakes[0]["x-forwarded-for"] == "127.0.0.1"
        assert legacy.handshakes == []
        for _ in range(50):
            if target.pongs:
                break
            await asyncio.sleep(0.02)
        assert target.pongs == 1
    finally:
        await legacy.stop()
        await target.stop()


async def test_client_close_code_reaches_upstream_and_weight_zero_goes_legacy(inproc_proxy):
    legacy = await WsServer("legacy").start()
    target = await WsServer("target").start()
    try:
        proxy = await inproc_proxy(_config(legacy.port, target.port, weight=0))
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(proxy.url + "/ws/x")
            assert (await ws.receive_str(timeout=2)) == "hello from legacy"
            await ws.close(code=4321)
        for _ in range(100):
            if legacy.closed_with:
                break
            await asyncio.sleep(0.02)
        assert legacy.closed_with == [4321]
    finally:
        await legacy.stop()
        await target.stop()


async def test_many_concurrent_tunnels(inproc_proxy):
    legacy = await WsServer("legacy").start()
    try:
        proxy = await inproc_proxy(_config(legacy.port, legacy.port))

        async def one(i: int) -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(proxy.url + f"/ws/{i}") as ws:
                await ws.receive_str(timeout=5)
                for j in range(20):
                    await ws.send_str(f"{i}-{j}")
                    assert (await ws.receive_str(timeout=5)) == f"legacy:{i}-{j}"

        await asyncio.gather(*(one(i) for i in range(30)))
    finally:
        await legacy.stop()


async def test_upgrade_on_a_route_without_websocket_is_stripped(inproc_proxy):
    legacy = await WsServer("legacy").start()
    try:
        proxy = await inproc_proxy(_config(legacy.port, legacy.port))
        port = proxy.runtime.config.listen.port
        data, closed = await raw_request(port, b"GET /plain/x HTTP/1.1\r\nHost: a\r\n"
                                               b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                               b"Sec-WebSocket-Version: 13\r\n"
                                               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                               b"\r\n")
        (resp,) = parse_responses(data)
        assert resp.status == 200 and closed
        assert b'"upgrade": null' in resp.body
    finally:
        await legacy.stop()


async def test_refused_upgrade_is_a_plain_response(inproc_proxy):
    up = await RawUpstream(respond=lambda s: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n"
                                             b"\r\nno").start()
    try:
        proxy = await inproc_proxy(_config(up.port, up.port))
        port = proxy.runtime.config.listen.port
        data, closed = await raw_request(port, b"GET /ws/x HTTP/1.1\r\nHost: a\r\n"
                                               b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                               b"Sec-WebSocket-Version: 13\r\n"
                                               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                               b"\r\n")
        (resp,) = parse_responses(data)
        assert resp.status == 403 and resp.body == b"no" and closed
        assert up.seen[0].header("upgrade") == b"websocket"
    finally:
        await up.stop()


async def test_unsolicited_101_is_502(inproc_proxy):
    up = await RawUpstream(respond=lambda s: b"HTTP/1.1 101 Switching Protocols\r\n"
                                             b"Upgrade: evil\r\nConnection: upgrade\r\n\r\n"
                           ).start()
    try:
        proxy = await inproc_proxy(_config(up.port, up.port))
        port = proxy.runtime.config.listen.port
        data, _ = await raw_request(port, b"GET /plain/x HTTP/1.1\r\nHost: a\r\n\r\n")
        (resp,) = parse_responses(data)
        assert resp.status == 502
    finally:
        await up.stop()


async def test_websocket_routes_are_never_mirrored(inproc_proxy):
    legacy = await WsServer("legacy").start()
    target = await WsServer("target").start()
    try:
        proxy = await inproc_proxy(_config(legacy.port, target.port, weight=0,
                                           shadow="{sample: 1.0}"))
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(proxy.url + "/ws/x") as ws:
                assert (await ws.receive_str(timeout=2)) == "hello from legacy"
        await asyncio.sleep(0.3)
        assert target.handshakes == []
    finally:
        await legacy.stop()
        await target.stop()
