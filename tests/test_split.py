"""Weighted split: ratio, stickiness (header and cookie, across processes), monotonic ramps."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import subprocess
import sys

import aiohttp

from proxy.dataplane.split import BUCKETS, StickyHasher, bp_to_weight, choose_target, weight_to_bp
from tests.support import REPO, free_port, routes_yaml

Z999 = 3.2905  # two-sided 99.9% normal quantile


def within_binomial(k: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= Z999 * sd + 0.5


def test_weight_granularity_is_one_hundredth_of_a_percent():
    assert weight_to_bp(0.01) == 1
    assert weight_to_bp(12.34) == 1234
    assert weight_to_bp(100) == BUCKETS
    assert weight_to_bp(-3) == 0 and weight_to_bp(150) == BUCKETS
    assert bp_to_weight(1234) == 12.34


def test_bucket_is_pinned_across_versions_and_processes():
    """Golden values: changing them would move users between sides on upgrade."""
    h = StickyHasher("balance")
    assert [h.bucket(k) for k in (b"user-1", b"user-2", b"alice", b"")] == [3884, 6200, 5243, 5429]
    assert StickyHasher("other").bucket(b"user-1") == 110  # keyed by route name
    code = ("from proxy.dataplane.split import StickyHasher; "
            "print(StickyHasher('balance').bucket(b'user-1'))")
    for seed in ("1", "2", "random"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPO, check=True)
        assert out.stdout.strip() == "3884"


def test_sticky_buckets_are_uniform():
    h = StickyHasher("r")
    n = 20000
    for w in (1, 5, 25, 50):
        k = sum(choose_target(weight_to_bp(w), h, f"u{i}".encode()) for i in range(n))
        assert within_binomial(k, n, w / 100), (w, k)


def test_random_draw_without_key_matches_weight():
    h = StickyHasher("r")
    rng = random.Random(7)
    n = 20000
    k = sum(choose_target(weight_to_bp(12.5), h, None, rng.random) for _ in range(n))
    assert within_binomial(k, n, 0.125)


def test_zero_and_hundred_never_draw():
    h = StickyHasher("r")

    def boom() -> float:
        raise AssertionError("no draw expected")

    assert choose_target(0, h, None, boom) is False
    assert choose_target(BUCKETS, h, None, boom) is True


def test_ramp_is_monotonic_for_every_key():
    h = StickyHasher("balance")
    keys = [f"user-{i}".encode() for i in range(5000)]
    steps = [0, 0.01, 1, 5, 25, 50, 99.99, 100]
    sides = [{k for k in keys if choose_target(weight_to_bp(w), h, k)} for w in steps]
    for lower, higher in itertools.pairwise(sides):
        assert lower <= higher  # up: target keys stay; down: legacy keys stay


def _config(port: int, admin: int, mono: int, svc: int, weight: float,
            sticky: str = "{header: X-User-Id}") -> str:
    return routes_yaml("""
        version: 1
        listen: 127.0.0.1:{port}
        admin: {{listen: "127.0.0.1:{admin}"}}
        state_dir: state
        upstreams:
          monolith: {{url: "http://127.0.0.1:{mono}"}}
          svc: {{url: "http://127.0.0.1:{svc}"}}
        default_upstream: monolith
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: svc
            weight: {weight}
            sticky: {sticky}
            shadow: false
          - name: cart
            match: {{path_prefix: /cart}}
            legacy: monolith
            target: svc
            weight: {weight}
            sticky: {{cookie: session}}
            shadow: false
          - name: random
            match: {{path_prefix: /random}}
            legacy: monolith
            target: svc
            weight: {weight}
            shadow: false
        """, port=port, admin=admin, mono=mono, svc=svc, weight=weight, sticky=sticky)


async def _sides(s: aiohttp.ClientSession, url: str, keys: list[str], how: str) -> dict:
    out = {}
    sem = asyncio.Semaphore(16)

    async def one(k: str) -> None:
        async with sem:
            if how == "header":
                kw = {"headers": {"X-User-Id": k}}
                path = "/api/v1/balance/1"
            else:
                kw = {"headers": {"Cookie": f"theme=dark; session={k}; x=1"}}
                path = "/cart/items"
            async with s.get(url + path, **kw) as r:
                assert r.status == 200
                out[k] = (await r.json())["served_by"]

    await asyncio.gather(*(one(k) for k in keys))
    return out


async def test_split_ratio_without_key_is_binomial(upstreams, inproc_proxy):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await inproc_proxy(_config(free_port(), free_port(), mono.port, svc.port, 30))
    n = 1500
    sem = asyncio.Semaphore(32)
    counts = {"monolith": 0, "svc": 0}

    async def one(s: aiohttp.ClientSession) -> None:
        async with sem, s.get(proxy.url + "/random/x") as r:
            counts[(await r.json())["served_by"]] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(one(s) for _ in range(n)))
    assert counts["monolith"] + counts["svc"] == n
    assert within_binomial(counts["svc"], n, 0.30), counts


async def test_stickiness_by_header_and_cookie_across_two_processes(upstreams, proxy_process):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    p1 = await proxy_process(_config(free_port(), free_port(), mono.port, svc.port, 30),
                             name="a")
    p2 = await proxy_process(_config(free_port(), free_port(), mono.port, svc.port, 30),
                             name="b")
    keys = [f"user-{i}" for i in range(300)]
    async with aiohttp.ClientSession() as s:
        for how in ("header", "cookie"):
            first = await _sides(s, p1.url, keys, how)
            again = await _sides(s, p1.url, keys, how)
            other = await _sides(s, p2.url, keys, how)
            assert first == again == other, how
            on_target = sum(v == "svc" for v in first.values())
            assert within_binomial(on_target, len(keys), 0.30), (how, on_target)
    # Same answer as the pure function: no process-local state decides the side.
    h = StickyHasher("balance")
    expected = {k: "svc" if choose_target(3000, h, k.encode()) else "monolith" for k in keys}
    async with aiohttp.ClientSession() as s:
        assert await _sides(s, p2.url, keys, "header") == expected
    assert await p1.stop() == 0 and await p2.stop() == 0


async def test_ramp_across_reloads_never_moves_keys_backwards(upstreams, inproc_proxy):
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    port, admin = free_port(), free_port()
    proxy = await inproc_proxy(_config(port, admin, mono.port, svc.port, 5))
    keys = [f"user-{i}" for i in range(400)]
    async with aiohttp.ClientSession() as s:
        at5 = await _sides(s, proxy.url, keys, "header")
        proxy.path.write_text(_config(port, admin, mono.port, svc.port, 25))
        await proxy.server.reload("test")
        at25 = await _sides(s, proxy.url, keys, "header")
        proxy.path.write_text(_config(port, admin, mono.port, svc.port, 5))
        await proxy.server.reload("test")
        back = await _sides(s, proxy.url, keys, "header")
    up = [k for k in keys if at5[k] == "svc"]
    assert up and all(at25[k] == "svc" for k in up)  # target at 5% stays target at 25%
    legacy25 = [k for k in keys if at25[k] == "monolith"]
    assert legacy25 and all(back[k] == "monolith" for k in legacy25)  # and the reverse
    assert back == at5
    assert sum(v == "svc" for v in at25.values()) > sum(v == "svc" for v in at5.values())


async def test_a_sticky_cookie_in_any_of_several_cookie_headers_keeps_its_side(upstreams,
                                                                              inproc_proxy):
    """An HTTP/2 front end may pass a browser's cookies on as several Cookie headers (RFC 9113
    8.2.3); the session cookie in the first of them still decides the side (it was read from
    the last header only: those users got a random draw per request). Both headers are
    forwarded as they came."""
    mono = await upstreams("monolith")
    svc = await upstreams("svc")
    proxy = await inproc_proxy(_config(free_port(), free_port(), mono.port, svc.port, 30))
    keys = [f"user-{i}" for i in range(120)]
    async with aiohttp.ClientSession() as s:
        one_header = await _sides(s, proxy.url, keys, "cookie")
        for split in (lambda k: [("Cookie", f"session={k}"), ("Cookie", "theme=dark")],
                      lambda k: [("Cookie", "theme=dark"), ("Cookie", f"x=1; session={k}")]):
            sides = {}
            for k in keys:
                async with s.get(proxy.url + "/cart/items", headers=split(k)) as r:
                    sides[k] = (await r.json())["served_by"]
            assert sides == one_header
    cookies = [x.headers["cookie"] for x in mono.seen + svc.seen]
    assert "x=1; session=user-119" in cookies  # the last header as sent: not merged into one
    assert not [c for c in cookies if "theme=dark; x=1" in c]
