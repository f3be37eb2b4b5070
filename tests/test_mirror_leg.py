"""A mirror's leg made the fast way (`mirror._new_leg`: compiled, without `_Leg.__init__`) starts
in the same state as one made by `_Leg(...)`: a field added to `__init__` with a start other
than zero or None must be added there too, or compiled mirrors would start from None."""

from __future__ import annotations

from bench.hotpath import build
from proxy.dataplane.mirror import _Job, _Leg, _new_leg, _shadow_head
from tests.test_dataplane_build import ROOT, _attributes


async def test_a_leg_made_without_init_starts_as_one_made_with_it() -> None:
    _, plane = build(10, access_log=False, shadow=True)  # a real Mirror and its pools
    mirror = plane.shadow
    pool, pipe = mirror._pools_for("shadow-target")
    slots = _attributes((ROOT / "proxy" / "dataplane" / "mirror.py").read_text(), "_Leg")
    slots |= _attributes((ROOT / "proxy" / "dataplane" / "pipeline.py").read_text(),
                         "PipelineLeg")
    job = _Job()
    for args in ((mirror, job, pool, b"GET / HTTP/1.1\r\n\r\n", 4096, pipe),
                 (mirror, job, pool, b"HEAD / HTTP/1.1\r\n\r\n", 10, None)):
        fast, slow = _new_leg(*args), _Leg(*args)
        state = {name: getattr(slow, name) for name in slots}
        assert {name: getattr(fast, name) for name in slots} == state
        assert fast.headers is not slow.headers and fast.chunks is not slow.chunks  # fresh
        assert state["head"] == args[3] and state["pipe"] is args[5]


def test_the_primary_head_reused_for_a_mirror_ends_with_the_shadow_header() -> None:
    head = b"GET /a?b=1 HTTP/1.1\r\nhost: legacy\r\nx-request-id: r1\r\n\r\n"
    assert _shadow_head(head) == (b"GET /a?b=1 HTTP/1.1\r\nhost: legacy\r\nx-request-id: r1\r\n"
                                  b"x-strangler-shadow: 1\r\n\r\n")
    assert _shadow_head(b"GET / HTTP/1.1\r\n\r\n") == (
        b"GET / HTTP/1.1\r\nx-strangler-shadow: 1\r\n\r\n")

