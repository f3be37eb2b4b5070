"""Issue 22.2: secrets in compressed answers and mirrored request bodies never reach the store.

Both upstreams answer JSON gzip-, brotli-, zstd- or deflate-encoded (and once gzip with a bad
checksum: the bytes inflate to the plaintext, then fail); mirrored POSTs carry gzip bodies. After
`strangler serve` stops, no file of state_dir holds a secret, not even once every stored body
is base64-decoded and decompressed the way an attacker would, and the store is 0600.
"""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import stat
import zlib

import aiohttp
import brotli
import pytest
import zstandard
from aiohttp import web

from tests.support import free_port, routes_yaml

PASSWORD = "hunter2-Sup3rSecret"
CARD = "4111111111111111"
IBAN = "DE44500105175407324931"
SECRETS = (PASSWORD, CARD, IBAN)

ROUTES = """
    version: 1
    listen: 127.0.0.1:{port}
    admin: {{listen: "127.0.0.1:{admin}"}}
    state_dir: state
    upstreams:
      monolith: {{url: "http://127.0.0.1:{mono}"}}
      svc: {{url: "http://127.0.0.1:{svc}"}}
    default_upstream: monolith
    shadow_budget: {{max_rate: unlimited}}
    routes:
      - name: pay
        match: {{path_prefix: /pay}}
        legacy: monolith
        target: svc
        weight: 0
        shadow:
          sample: 1.0
          max_rate: unlimited
          methods: [GET, POST]
          allow_unsafe: true
          compare:
            redact: ["$..password", "$.card_number", "$..iban"]
"""


def _bad_crc(data: bytes) -> bytes:
    gz = bytearray(gzip.compress(data))
    gz[-8] ^= 0xFF  # the CRC32 of the trailer: inflates fully, then fails the check
    return bytes(gz)


ENCODERS = {
    "gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "deflate": zlib.compress,
    "badcrc": _bad_crc,
}


def _answer(side: str):
    async def handler(request: web.Request) -> web.Response:
        enc = request.query.get("enc", "gzip")
        doc = {"balance": 100 if side == "legacy" else 101, "password": PASSWORD,
               "card_number": CARD, "owner": {"iban": IBAN, "name": "Ada"},
               f"{side}_{enc}_{request.method}": True}  # samples of its own per encoding
        if request.method == "POST":
            await request.read()
        body = ENCODERS[enc](json.dumps(doc).encode())
        return web.Response(body=body, headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip" if enc == "badcrc" else enc})

    return handler


def _inflate_every_way(raw: bytes) -> list[bytes]:
    """What an attacker with the file would try on a stored body."""
    out = [raw]
    for attempt in (lambda b: zlib.decompressobj(47).decompress(b),
                    lambda b: zlib.decompressobj(-15).decompress(b),
                    brotli.decompress,
                    lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)):
        try:
            out.append(attempt(raw))
        except Exception:
            pass
    return out


def _stored_bodies(db) -> list[bytes]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [json.loads(d) for (d,) in conn.execute("SELECT data FROM samples")]
    finally:
        conn.close()
    bodies = []
    for r in rows:
        for part in (r["request"], r["legacy"], r["target"]):
            b = part["body"]
            bodies.append(base64.b64decode(b["base64"]) if "base64" in b
                          else b.get("text", "").encode())
    return bodies


@pytest.mark.slow
async def test_compressed_secrets_are_decoded_redacted_and_the_store_is_private(
        upstreams, proxy_process):
    mono = await upstreams("monolith", handler=_answer("legacy"))
    svc = await upstreams("svc", handler=_answer("target"))
    proxy = await proxy_process(routes_yaml(ROUTES, port=free_port(), admin=free_port(),
                                            mono=mono.port, svc=svc.port))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for enc in ENCODERS:
            for i in range(8):
                async with s.get(f"{proxy.url}/pay/{i}?enc={enc}") as r:
                    assert r.status == 200
        posted = gzip.compress(json.dumps({"password": PASSWORD, "iban": IBAN,
                                           "amount": 5}).encode())
        for i in range(4):
            async with s.post(f"{proxy.url}/pay/charge/{i}", data=posted, headers={
                    "Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
                assert r.status == 200
        async with s.get(proxy.admin + "/admin/routes/pay/diffs?limit=50") as r:
            view = await r.text()
    live = proxy.dir / "state" / "diffs.sqlite3"
    for suffix in ("", "-wal", "-shm"):  # while the store is open, its WAL files exist too
        side = live.with_name(live.name + suffix)
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
    assert await proxy.stop() == 0
    for secret in SECRETS:
        assert secret not in view
    state = proxy.dir / "state"
    db = state / "diffs.sqlite3"
    bodies = _stored_bodies(db)
    decoded = [b for b in bodies if b.startswith(b"{")]
    # the bodies are stored decoded and redacted: readable JSON with the secrets replaced
    assert any(b'"card_number":"[REDACTED]"' in b and b'"legacy_br_GET"' in b for b in decoded)
    assert any(b'"legacy_gzip_GET"' in b for b in decoded)
    assert any(b'"legacy_zstd_GET"' in b for b in decoded)
    assert any(b'"password":"[REDACTED]"' in b and b'"amount":5' in b for b in decoded), \
        "the mirrored gzip request body is stored decoded and redacted"
    # the gzip body with a bad checksum is withheld with its size, never stored raw
    assert any(b.startswith(b"[body withheld: ") and b"gzip, not decodable" in b
               for b in bodies)
    for body in bodies:
        for plain in _inflate_every_way(body):
            for secret in SECRETS:
                assert secret.encode() not in plain, (secret, body[:200])
    files = [p for p in state.rglob("*") if p.is_file()]
    assert db in files
    for p in [*files, proxy.stdout_path, proxy.stderr_path]:
        raw = p.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in raw, p
    for p in files:
        if p.name.startswith("diffs.sqlite3"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
