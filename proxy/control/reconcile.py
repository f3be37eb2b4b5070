"""Replay a request set against a route's legacy and target directly (not through the proxy).

Each request goes to legacy, target and, when the route has `compare.noise_upstream`, the noise
twin, at the same time, with the upstreams' own timeouts and the route's `shadow.max_body`
(a longer body is cut and not compared, as in shadow). Only GET and HEAD are sent; a request the
proxy would not route to this route (another route matches first, or its method or headers do
not match) is skipped, so a request file cannot reach parts of legacy the route does not cover.
Requests carry `X-Strangler-Shadow: 1` and `X-Strangler-Reconcile: 1`.

Rate: replayed request number i (from 0) starts no earlier than i / rate seconds after the first;
at most `concurrency` are in flight. Each upstream therefore sees at most `rate` requests/s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from proxy.config.paths import BadPath, canonical_path
from proxy.config.spec import Config, RouteSpec, UpstreamSpec
from proxy.dataplane.table import RouteTable
from shadow.diff import Comparator
from shadow.model import Comparison, Exchange
from shadow.reconcile import Tally
from shadow.requestset import REPLAYED_METHODS, ReplayRequest

__all__ = ["DEFAULT_RATE", "Replayer", "UpstreamFailed"]

DEFAULT_RATE = 10.0
LARGE_BODY = 32 * 1024  # compared in a thread above this, so the progress bar keeps moving
_MARK = (("x-strangler-shadow", "1"), ("x-strangler-reconcile", "1"))


class UpstreamFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # connect | timeout | reset | tls


@dataclass(frozen=True, slots=True)
class _Planned:
    request: ReplayRequest
    target: str  # canonical path + query, as the proxy would forward it


class Replayer:
    def __init__(self, config: Config, route: RouteSpec, *, rate: float = DEFAULT_RATE,
                 concurrency: int = 4, extra_headers: Sequence[tuple[str, str]] = (),
                 progress: Callable[[int, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.route = config, route
        self.rate, self.concurrency = rate, concurrency
        self.extra = tuple(extra_headers)
        self.progress = progress
        self.clock = clock
        compare = route.shadow.compare
        self.comparator = Comparator(compare)
        self.legacy = config.upstreams[route.legacy]
        self.target = config.upstreams[route.target]
        self.noise = config.upstreams[compare.noise_upstream] if compare.noise_upstream else None
        self.max_body = route.shadow.max_body
        self._table = RouteTable(config, {}, 0)
        self._contexts: dict[str, Any] = {}  # https upstreams: one SSL context each

    # -- which requests are sent ------------------------------------------------------------
    def plan(self, requests: Sequence[ReplayRequest], tally: Tally) -> list[_Planned]:
        out: list[_Planned] = []
        for req in requests:
            if req.method not in REPLAYED_METHODS:
                tally.skip("unsafe_method")
                continue
            raw, sep, query = req.path.partition("?")
            try:
                path = canonical_path(raw.encode("utf-8")).decode("utf-8")
            except (BadPath, UnicodeError):
                tally.skip("not_routed")
                continue
            headers = {k.encode("latin-1", "replace"): v.encode("latin-1", "replace")
                       for k, v in req.headers}
            hit = self._table.match(req.method.encode(), path.encode(), headers)
            if hit is None or hit.name != self.route.name:
                tally.skip("not_routed")
                continue
            out.append(_Planned(req, path + sep + query))
        return out

    # -- the replay ---------------------------------------------------------------------------
    async def run(self, requests: Sequence[ReplayRequest], tally: Tally) -> None:
        planned = self.plan(requests, tally)
        total = len(planned)
        done = 0
        if self.progress:
            self.progress(0, total)
        if not planned:
            return
        connector = aiohttp.TCPConnector(limit=self.concurrency * 3, force_close=False)
        queue = iter(enumerate(planned))
        start = self.clock()

        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         skip_auto_headers=("Accept-Encoding",),
                                         headers={"User-Agent": "strangler-reconcile"}) as s:

            async def worker() -> None:
                nonlocal done
                for i, p in queue:  # one shared iterator: each request is taken once
                    wait = start + i / self.rate - self.clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._one(s, p, tally)
                    done += 1
                    if self.progress:
                        self.progress(done, total)

            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, total))))

    async def _one(self, s: aiohttp.ClientSession, p: _Planned, tally: Tally) -> None:
        sides = [self.legacy, self.target] + ([self.noise] if self.noise else [])
        results = await asyncio.gather(*(self._fetch(s, up, p) for up in sides),
                                       return_exceptions=True)
        legacy, target = results[0], results[1]
        for r in (legacy, target):
            if isinstance(r, UpstreamFailed):
                tally.error(r.kind)
                return
            if isinstance(r, BaseException):
                tally.error("reset")
                return
        assert isinstance(legacy, Exchange) and isinstance(target, Exchange)
        noise = results[2] if len(results) > 2 and isinstance(results[2], Exchange) else None
        if len(legacy.body) + len(target.body) > LARGE_BODY:
            primary, noise_cmp = await asyncio.to_thread(self._compare, legacy, target, noise)
        else:
            primary, noise_cmp = self._compare(legacy, target, noise)
        tally.compared_one(p.request, legacy.status, target.status, primary, noise_cmp)

    def _compare(self, legacy: Exchange, target: Exchange,
                 noise: Exchange | None) -> tuple[Comparison, Comparison | None]:
        c = self.comparator
        return c.compare(legacy, target), (c.compare(legacy, noise) if noise else None)

    def _tls(self, up: UpstreamSpec) -> dict:
        """An https upstream's TLS arguments (its CA, client certificate, server name) and a
        literal `host_header`, as the proxy would send them."""
        kw: dict = {}
        if up.host_header not in ("client", "upstream"):
            kw["host"] = up.host_header
        if up.tls is not None:
            if up.name not in self._contexts:
                from proxy.config.tls import client_context

                self._contexts[up.name] = client_context(up.tls)
            kw["ssl"] = self._contexts[up.name]
            if up.tls.server_name:
                kw["server_hostname"] = up.tls.server_name
        return kw

    async def _fetch(self, s: aiohttp.ClientSession, up: UpstreamSpec, p: _Planned) -> Exchange:
        url = URL(f"{up.scheme}://{_host(up.host)}:{up.port}{up.base_path}{p.target}",
                  encoded=True)
        tls = self._tls(up)
        headers = [*p.request.headers, *self.extra, *_MARK]
        if "host" in tls:
            headers.append(("Host", tls.pop("host")))
        timeout = aiohttp.ClientTimeout(total=None, connect=up.connect_timeout,
                                        sock_connect=up.connect_timeout, sock_read=up.timeout)
        try:
            async with s.request(p.request.method, url, headers=headers, timeout=timeout,
                                 allow_redirects=False, **tls) as resp:
                body = bytearray()
                truncated = False
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.max_body:
                        truncated = True
                        del body[self.max_body:]
                        break
                hdrs = tuple((k.lower(), v) for k, v in resp.headers.items())
                return Exchange(resp.status, hdrs, bytes(body), truncated)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamFailed("timeout") from None
        except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch):
            raise UpstreamFailed("tls") from None
        except (aiohttp.ClientConnectorError, ConnectionRefusedError):
            raise UpstreamFailed("connect") from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamFailed("reset") from None


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
