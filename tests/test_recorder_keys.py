"""What Recorder.take and EndpointCounter.take return for the counts of the request path
(issue 29 changes how they are kept, per request, more than once): the same as counting each
request in the flat form, for any step id (a Unix time, a small counter, a huge or negative
one), status and latency."""

from __future__ import annotations

import math
import random

from proxy.dataplane.inventory import EndpointCounter
from proxy.dataplane.recorder import Recorder
from shadow.stats import DIFFERENCE, LATENCY


def _reference(calls: list[tuple]) -> tuple[dict, dict]:
    """The flat form: (route, step, backend, code) -> count; (route, step, backend) ->
    ({bucket: count}, sum of seconds)."""
    requests: dict = {}
    latency: dict = {}
    for route, step, backend, code, seconds in calls:
        key = (route, step, backend, code)
        requests[key] = requests.get(key, 0) + 1
        i = LATENCY.index(seconds)
        h = latency.setdefault((route, step, backend), [{}, 0.0])
        h[0][i] = h[0].get(i, 0) + 1
        h[1] += seconds
    return requests, latency


def test_recorder_take_matches_the_flat_tuple_keys() -> None:
    rng = random.Random(7)
    steps = [0, 1, 1_765_000_000, (1 << 42) - 1, 1 << 42, 1 << 60, -3]
    codes = [200, 204, 404, 499, 502, 599, 999, 1023, 1024, 4096]
    calls = [(rng.choice(["checkout", "balances", "_default"]), rng.choice(steps),
              rng.choice(["legacy", "target", "proxy"]), rng.choice(codes),
              rng.choice([0.0, 1e-6, 5e-5, 0.0123, 3.5, 61.0, 1e4]))
             for _ in range(3_000)]
    rec = Recorder()
    for c in calls:
        rec.request(*c)
    delta = rec.take()
    requests, latency = _reference(calls)
    assert delta.requests == requests
    assert delta.latency.keys() == latency.keys()
    for key, (buckets, total) in latency.items():
        got = delta.latency[key]
        assert got[0] == buckets, key
        assert math.isclose(got[1], total, rel_tol=1e-9), key
    assert rec.active == [] and rec.take().empty()


def test_recorder_steps_far_apart_are_kept_apart() -> None:
    # no step aliases another, whatever the form of the key
    rec = Recorder()
    rec.request("r", 1 << 42, "target", 200, 0.01)
    rec.request("r", 0, "target", 200, 0.01)
    rec.request("r", 1, "target", 200, 0.01)
    assert rec.take().requests == {("r", 1 << 42, "target", 200): 1,
                                   ("r", 0, "target", 200): 1, ("r", 1, "target", 200): 1}


def test_a_slot_kept_past_a_take_or_a_step_change_counts_under_its_own_key() -> None:
    """What Exchange.finish does: a route keeps its backend's slot between batches, the
    recorder forgets the slots of a batch that counted nothing, and a step change takes a new
    slot. Nothing is counted twice, nothing under the wrong step; two slots of one key (the
    route's and a new one from `request`) add up."""
    rec = Recorder()
    kept = rec.slot("r", 1, "target")
    kept.add(200, 0.01)
    first = rec.take()
    assert first.requests == {("r", 1, "target", 200): 1}
    assert rec.take().empty() and rec.slots == {}  # let go after an empty batch
    kept.add(200, 0.02)  # the route's slot, no longer the recorder's
    rec.request("r", 1, "target", 200, 0.03)  # a new slot of the same key
    rec.slot("r", 2, "target").add(503, 0.5)  # the next step
    delta = rec.take()
    assert delta.requests == {("r", 1, "target", 200): 2, ("r", 2, "target", 503): 1}
    buckets, total = delta.latency[("r", 1, "target")]
    assert sum(buckets.values()) == 2 and math.isclose(total, 0.05)
    assert rec.take().empty()


def test_inventory_take_counts_each_route_backend_and_status() -> None:
    """Rows per (endpoint, route, backend): their counts and errors add up to what was
    counted, long paths (kept by template) and paths folded into `* other` included."""
    rng = random.Random(3)
    inv = EndpointCounter()
    expected: dict = {}
    methods: dict = {}
    for _ in range(2_000):
        method = rng.choice([b"GET", b"POST", b"DELETE"])
        path = b"/accounts/%d/balance" % rng.randrange(5) if rng.random() < 0.5 else \
            rng.choice([b"/health", b"/x/" + b"a" * 3000])
        route, backend = rng.choice(["accounts", "_default"]), rng.choice(["legacy", "target"])
        status = rng.choice([200, 404, 503])
        inv.count(method, path, route, backend, status, rng.choice([1e-5, 0.02, 2.0]))
        n, errors = expected.get((route, backend), (0, 0))
        expected[(route, backend)] = (n + 1, errors + (status >= 500))
        methods[method.decode()] = methods.get(method.decode(), 0) + 1
    got: dict = {}
    got_methods: dict = {}
    for method, _template, route, backend, n, errors, buckets in inv.take():
        m, e = got.get((route, backend), (0, 0))
        got[(route, backend)] = (m + n, e + errors)
        got_methods[method] = got_methods.get(method, 0) + n
        assert sum(c for _, c in buckets) == n
    assert got == expected
    other = got_methods.pop("*", 0)
    assert all(got_methods[m] <= methods[m] for m in got_methods)
    assert sum(got_methods.values()) + other == 2_000
    assert inv.hits == {}


def test_inventory_slots_count_each_method_status_and_latency_of_a_path() -> None:
    """What Exchange.finish does with the inventory: a route keeps its backend's slot past a
    take; a path's first (method, status) is counted per latency bucket, any other apart; a
    long path by its template. Each row's counts are exact."""
    inv = EndpointCounter()
    kept = inv.slot("accounts", "target")
    kept.count(b"GET", b"/accounts/1", 200, 1e-5)  # bucket 0
    kept.count(b"GET", b"/accounts/1", 200, 0.02)
    kept.count(b"GET", b"/accounts/1", 200, 0.02)
    kept.count(b"POST", b"/accounts/1", 200, 0.02)  # another method: apart
    kept.count(b"GET", b"/accounts/1", 503, 2.0)  # another status: apart
    kept.count(b"GET", b"/x/" + b"7" * 3000, 200, 0.02)  # by its template
    rows = {(m, t, r, b): (n, e, dict(buckets)) for m, t, r, b, n, e, buckets in inv.take()}
    assert rows[("GET", "/accounts/{id}", "accounts", "target")][:2] == (4, 1)
    assert sum(rows[("GET", "/accounts/{id}", "accounts", "target")][2].values()) == 4
    assert rows[("POST", "/accounts/{id}", "accounts", "target")][:2] == (1, 0)
    assert rows[("GET", "/x/{id}", "accounts", "target")][:2] == (1, 0)
    assert inv.take() == [] and inv.slots == {}  # let go after an empty batch
    kept.count(b"GET", b"/accounts/2", 200, 0.02)  # the route's slot, no longer the counter's
    inv.count(b"GET", b"/accounts/3", "accounts", "target", 200, 0.02)  # a new one, same key
    (row,) = inv.take()
    assert row[:6] == ["GET", "/accounts/{id}", "accounts", "target", 2, 0]


def test_paired_latency_is_counted_in_the_difference_grid_bucket() -> None:
    """A mirror's paired latency (target minus legacy, signed seconds) lands in
    `DIFFERENCE.index`'s bucket, which the gate and /metrics read, for any difference: on and
    around every bucket edge, both signs, zero, and past the grid's ends. The recorder computes
    the index itself (compiled, in C): a bucket off by one would shift every paired quantile."""
    values = [0.0, 1e-9, 60.0, 1e3, 1e9]
    for edge in DIFFERENCE.bounds:
        values += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf), edge * 1.5]
    rng = random.Random(11)
    values += [10 ** rng.uniform(-7, 2) for _ in range(2_000)]
    values += [-v for v in values]
    rec = Recorder()
    expected: dict = {}
    for v in values:
        rec.paired_latency("payments", 7, v)
        i = DIFFERENCE.index(v)
        expected[i] = expected.get(i, 0) + 1
    counts, up, down = rec.take().paired[("payments", 7)]
    assert counts == expected
    assert math.isclose(up, sum(v for v in values if v > 0))
    assert math.isclose(down, -sum(v for v in values if v <= 0))


def test_shadow_slots_count_what_the_keyed_calls_count() -> None:
    """A mirror counts its matches and paired latencies in the recorder's ShadowSlot of its
    route and step (held on the route between takes). Each take must hold exactly what
    `shadow_result(.., "match")` and `paired_latency` would have put in the delta: for a slot
    held past a take in which it counted nothing, and for two slots of one key."""
    rng = random.Random(5)
    keyed, slotted = Recorder(), Recorder()
    held: dict = {}
    for batch in range(4):
        for _ in range(500):
            route, step = rng.choice(["pay", "kyc"]), rng.choice([1, 1_765_000_000])
            if batch == 2 and route == "kyc":
                continue  # kyc's slots idle for a batch: let go by the recorder, still held
            slot = held.get((route, step))
            if slot is None or rng.random() < 0.01:  # now and then a fresh one, same key
                slot = held[(route, step)] = slotted.shadow_slot(route, step)
            if rng.random() < 0.7:
                keyed.shadow_result(route, step, "match")
                slot.match()
            d = rng.choice([0.0, -1e-7, 3e-4, -0.02, 1.5, 1e4])
            keyed.paired_latency(route, step, d)
            slot.pair(d)
        want, got = keyed.take(), slotted.take()
        assert got.shadow == want.shadow
        assert got.paired.keys() == want.paired.keys()
        for key, (counts, up, down) in want.paired.items():
            assert got.paired[key][0] == counts
            assert math.isclose(got.paired[key][1], up) and math.isclose(got.paired[key][2], down)
    assert slotted.take().empty()

