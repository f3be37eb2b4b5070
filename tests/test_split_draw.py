"""The data plane's draw for a weighted split and for trace sampling (basics.draw): uniform on
[0, 1), its own sequence in every process, a C call when compiled; and a `rand` given to the
data plane (a test's, a seeded one) is still the one that decides."""

from __future__ import annotations

import json
import os
import random

import pytest

import proxy.dataplane as dataplane
from proxy.dataplane import basics
from proxy.dataplane.recorder import Recorder
from proxy.dataplane.server import DataPlane

COMPILED = dataplane.ACTIVE != "pure Python"


def test_draws_are_uniform_on_0_1() -> None:
    n, bins = 200_000, 20
    counts = [0] * bins
    for _ in range(n):
        x = basics.draw()
        assert 0.0 <= x < 1.0
        counts[int(x * bins)] += 1
    expected = n / bins
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 60, (chi2, counts)  # 19 degrees of freedom: p < 1e-6 above ~60
    # 53 random bits, not a few: a split at one basis point sees draws below 0.0001
    assert len({basics.draw() for _ in range(10_000)}) == 10_000


def test_every_process_draws_its_own_sequence() -> None:
    """A worker forked from another (and each spawned one, which imports afresh) does not
    repeat its parent's draws: two processes splitting in lockstep would send the same
    requests' share to the target at the same moments."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draws, to the parent
        os.close(read)
        os.write(write, json.dumps([basics.draw() for _ in range(8)]).encode())
        os._exit(0)
    os.close(write)
    mine = [basics.draw() for _ in range(8)]
    with os.fdopen(read) as f:
        theirs = json.loads(f.read())
    os.waitpid(pid, 0)
    assert not set(mine) & set(theirs)


def test_the_default_draw_is_the_c_one_when_compiled_and_a_given_one_is_kept() -> None:
    plane = DataPlane(Recorder())
    assert plane.c_rand is COMPILED
    seeded = random.Random(3).random
    plane = DataPlane(Recorder(), rand=seeded)
    assert plane.c_rand is False and plane.rand is seeded


@pytest.mark.skipif(not COMPILED, reason="the compiled data plane's draw")
def test_the_compiled_draw_is_not_random_random() -> None:
    """Compiled, the draw is basics' own generator (the .py files use random.random): seeding
    random does not make it repeat."""
    random.seed(5)
    a = [basics.draw() for _ in range(4)]
    random.seed(5)
    b = [basics.draw() for _ in range(4)]
    assert a != b
