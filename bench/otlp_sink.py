"""`python -m bench.otlp_sink PORT`: an OTLP/HTTP endpoint for the tracing rows of the bench.

It answers every `POST /v1/traces` with 200 after reading the body, and counts requests and
bytes (printed at exit): the proxy's export is measured, not a collector's work. Not a
collector (none can be installed here); the tests decode real OTLP in tests/test_tracing.py.
"""

from __future__ import annotations

import sys

from aiohttp import web

COUNTS = {"requests": 0, "bytes": 0}


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    COUNTS["requests"] += 1
    COUNTS["bytes"] += len(body)
    return web.Response(status=200, content_type="application/x-protobuf")


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    try:
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                    print=None)
    finally:
        print(COUNTS, flush=True)


if __name__ == "__main__":
    main()
