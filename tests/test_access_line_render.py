"""The access line of a finished exchange, rendered two ways: `Exchange.access_line` (compiled:
written by C into a buffer; pure: a bytes %-format) and the general renderer the other entries
use (`AccessLog.render_exchange`). Every field must come out the same, bytes for bytes, so the
compiled data plane logs exactly what the pure one does."""

from __future__ import annotations

import io
import json
import random

import pytest

from proxy.config.spec import UpstreamSpec
from proxy.dataplane.access_log import AccessLog
from proxy.dataplane.exchange import Exchange
from proxy.dataplane.recorder import Recorder
from proxy.dataplane.server import ClientConnection, DataPlane
from proxy.dataplane.upstream import UpstreamPool


def _exchange(rng: random.Random, agent: bytes | None, path: bytes,
              conn: ClientConnection | None = None) -> Exchange:
    plane = DataPlane(Recorder()) if conn is None else conn.plane
    if conn is None:
        conn = ClientConnection(plane)
        conn.peer = "203.0.113.9"
    ex = Exchange()
    ex.conn = conn
    ex.plane = plane
    ex.pool = UpstreamPool(UpstreamSpec(name="monolith", url="http://127.0.0.1:9",
                                        host="127.0.0.1", port=9))
    ex.rid = b"%024x" % rng.getrandbits(96)
    ex.route = None
    ex.backend = rng.choice(("legacy", "target"))
    ex.method = rng.choice((b"GET", b"POST", b"DELETE"))
    ex.path = path
    ex.query = None
    ex.status = rng.choice((200, 204, 404, 499, 502, 504))
    ex.t0 = rng.uniform(1.0, 1e6)
    took = rng.choice((0.0, 1e-7, 0.0004999, rng.uniform(0, 0.01), rng.uniform(0, 120)))
    ex.t_end = ex.t0 + took
    ex.t_head = rng.choice((0.0, ex.t0 + took * rng.random()))
    ex.req_body_size = rng.choice((0, 1, 999, 10**6, 2**40))
    ex.resp_size = rng.choice((0, 7, 65536, 10**9))
    ex.user_agent = agent
    ex.target_failed = rng.random() < 0.2
    return ex


AGENTS = [None, b"curl/8.5.0", b'quote " and \\ backslash', b"caf\xe9 \x01 control",
          b"%d %s %% printf-like", b"x" * 3000]
PATHS = [b"/", b"/api/v1/balance/7", b'/with"quote', b"/caf\xc3\xa9/unicode",
         b"/%25d/percent", b"/" + b"p" * 5000]


@pytest.mark.parametrize("process", ["worker-1", "w%d%%s \u00e9"])
def test_the_exchange_line_is_the_general_renderers_line(process: str) -> None:
    log = AccessLog(stream=io.StringIO(), process=process)
    rng = random.Random(7)
    seen = 0
    shared = ClientConnection(DataPlane(Recorder()))  # one connection, its agent changing
    shared.peer = "198.51.100.7"
    for i in range(3000):
        agent = AGENTS[i % len(AGENTS)] if i % 3 else bytes(AGENTS[i % len(AGENTS)] or b"x")
        ex = _exchange(rng, agent, PATHS[i // len(AGENTS) % len(PATHS)],
                       shared if i % 2 else None)
        line = ex.access_line(log)
        assert line == log.render_exchange(ex), (ex.t_end - ex.t0, ex.t_head - ex.t0)
        fields = json.loads(line)
        assert fields["request_id"] == ex.rid.decode()
        assert fields["path"] == ex.path.decode("latin-1")
        assert fields["bytes_in"] == ex.req_body_size and fields["bytes_out"] == ex.resp_size
        assert fields["status"] == ex.status
        assert fields["duration_ms"] == round((ex.t_end - ex.t0) * 1000, 3)
        assert (fields["upstream_ms"] is None) == (not ex.t_head)
        assert fields["process"] == process
        seen += 1
    assert seen == 3000


def test_a_batch_of_exchanges_tuples_and_lines_is_written_in_order() -> None:
    """The log's own batch (`render_lines`, compiled with the data plane): exchanges, data plane
    tuples and rendered lines, mixed, come out in the order they were logged, each as its
    renderer makes it (here into a stream without a file descriptor, written as str)."""
    stream = io.StringIO()
    log = AccessLog(stream=stream)
    rng = random.Random(11)
    expected = []
    for i in range(300):
        kind = i % 3
        if kind == 0:
            ex = _exchange(rng, AGENTS[i % len(AGENTS)], PATHS[i % len(PATHS)])
            log.exchange(ex)
            expected.append(("exchange", ex))
        elif kind == 1:
            log.request(f"id-{i}", "balance", "legacy", "monolith", b"GET", b"/b/%d" % i, 200,
                        0.002, False)
            expected.append(("tuple", f"id-{i}"))
        else:
            log({"request_id": f"dict-{i}", "status": 201})
            expected.append(("dict", f"dict-{i}"))
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 300
    for line, (kind, what) in zip(lines, expected, strict=True):
        fields = json.loads(line)
        if kind == "exchange":
            assert line.encode() + b"\n" == what.access_line(log)
        else:
            assert fields["request_id"] == what
