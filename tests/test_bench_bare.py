"""bench/bare_forwarder.py, the reference the CPU goal of issue 29 is measured against, stays a
fair one: an upstream keep-alive connection that the upstream closed while idle leaves its pool.
In `bench.run` the upstream nginx closes idle connections after 75 s, which is less than the
time the other servers take to be measured; the forwarder handed the next requests to the dead
connections and wrk counted one failed connection each (64 errors a run)."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from tests.support import REPO, free_port


async def test_the_bare_forwarder_drops_upstream_connections_closed_while_idle() -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, keepalive_timeout=0.3)  # closes an idle connection soon
    await runner.setup()
    up_port, port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bare_forwarder", "--port", str(port), "--upstream-port",
        str(up_port), cwd=str(REPO), stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(100):  # until it listens
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        # A raw client, as wrk is: aiohttp's would quietly retry on a closed connection.
        for round_ in range(3):  # each time after the upstream closed its idle connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(b"GET /item HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                assert head.startswith(b"HTTP/1.1 200 "), (round_, head)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                assert await reader.readexactly(length) == b'{"ok": true}'
            writer.close()
            await asyncio.sleep(0.8)
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()
