"""A data plane that does not acknowledge (a worker whose event loop is held for seconds) never
makes a change fail half-done: rollback, weight and reload are saved and audited, and the
answer and the audit entry name the plane. The control plane talks to a stand-in plane here (a
fake, named so) that fails like `WorkerLink` after its timeout; tests/test_chaos.py has the real
thing (a SIGSTOPped worker process) for rollback."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from proxy.config.loader import load_config
from proxy.control.runtime import Runtime


class SilentPlane:
    """A stand-in for a worker that never acknowledges (a fake, named so): it raises what
    `WorkerLink._call` raises when its wait for the ack runs out."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def apply_weights(self, updates: dict) -> None:
        self.sent.append("weights")
        raise TimeoutError("no acknowledgement of weights in 5 s")

    async def install(self, config, text, generation, weights) -> None:
        self.sent.append("install")
        raise TimeoutError("no acknowledgement of install in 10 s")

    def describe(self) -> dict:
        return {"worker": 1, "pid": 4242}


class AnsweringPlane:
    """A stand-in for a worker that acknowledges at once (a fake, named so)."""

    def __init__(self) -> None:
        self.weights: dict = {}
        self.generation = 0

    async def apply_weights(self, updates: dict) -> None:
        self.weights.update(updates)

    async def install(self, config, text, generation, weights) -> None:
        self.generation = generation
        self.weights.update(weights)

    def describe(self) -> dict:
        return {"worker": 0, "pid": 4241}


def routes(tmp_path: Path, weight: float) -> str:
    return textwrap.dedent(f"""
        version: 1
        listen: 127.0.0.1:1
        state_dir: {tmp_path / "state"}
        upstreams:
          monolith: {{url: "http://127.0.0.1:2"}}
          svc: {{url: "http://127.0.0.1:3"}}
        default_upstream: monolith
        routes:
          - name: balance
            match: {{path_prefix: /api/v1/balance}}
            legacy: monolith
            target: svc
            weight: {weight}
            shadow: false
        """)


def write_routes(tmp_path: Path, weight: float) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(routes(tmp_path, weight))
    return path


def runtime(tmp_path: Path) -> tuple[Runtime, AnsweringPlane, SilentPlane]:
    path = write_routes(tmp_path, 10)
    rt = Runtime(str(path), load_config(str(path)))
    good, silent = AnsweringPlane(), SilentPlane()
    rt.planes += [good, silent]  # type: ignore[list-item]
    return rt, good, silent


def audit_entries(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "state" / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


UNCONFIRMED_WEIGHTS = [{"worker": 1, "pid": 4242, "error": "no acknowledgement of weights in 5 s"}]


async def test_rollback_and_weight_are_saved_and_audited_naming_the_silent_plane(
        tmp_path: Path) -> None:
    rt, good, silent = runtime(tmp_path)
    [res] = await rt.rollback(["balance"], actor="sre", reason="target broken")
    assert good.weights["balance"][0] == 0 and silent.sent == ["weights"]
    assert res.durable is True
    assert "NOT CONFIRMED by every data plane: worker 1 (pid 4242)" in res.warning
    assert res.audit["unconfirmed_planes"] == UNCONFIRMED_WEIGHTS
    assert json.loads((tmp_path / "state" / "state.json").read_text())["routes"]["balance"][
        "rolled_back"] is True

    await rt.resume("balance", actor="sre", reason="fixed")
    res = await rt.set_weight("balance", 5, actor="ci", reason="canary")
    assert good.weights["balance"][0] == 500
    assert res.audit["unconfirmed_planes"] == UNCONFIRMED_WEIGHTS and "pid 4242" in res.warning
    assert [e["action"] for e in audit_entries(tmp_path)][-3:] == ["rollback", "resume",
                                                                   "set_weight"]


async def test_a_reload_a_plane_did_not_acknowledge_is_saved_and_audited(tmp_path: Path) -> None:
    """It used to raise out of the reload after the new config was in force on the other
    planes: no audit entry, nothing saved, a 500 to the caller."""
    rt, good, silent = runtime(tmp_path)
    write_routes(tmp_path, 25)
    generation = await rt.reload(actor="gitops", reason="file change")
    assert good.generation == generation and good.weights["balance"][0] == 2500
    # not waited for twice: its socket holds the install, and any weights after it, in order
    assert silent.sent == ["install"]
    [entry] = [e for e in audit_entries(tmp_path) if e["action"] == "reload"]
    # one line per plane: the install's error, not the weights' after it
    assert entry["unconfirmed_planes"] == [
        {"worker": 1, "pid": 4242, "error": "no acknowledgement of install in 10 s"}]
    assert (entry["from"], entry["to"]) == ({"balance": 10.0}, {"balance": 25.0})


async def test_a_plane_that_fails_for_another_reason_still_fails_the_change(
        tmp_path: Path) -> None:
    """Only a missing acknowledgement is reported and carried on: a plane that raises anything
    else (a fault in applying the change) fails the call, as before."""
    rt, _, _ = runtime(tmp_path)

    class BrokenPlane(AnsweringPlane):
        async def apply_weights(self, updates: dict) -> None:
            raise ValueError("route table refused the update")

    rt.planes[1] = BrokenPlane()  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="route table refused"):
        await rt.set_weight("balance", 5, actor="ci", reason="canary")


async def test_a_worker_link_whose_worker_never_answers_keeps_nothing_per_push() -> None:
    """`WorkerLink` on a real socket pair whose far end reads and never acknowledges: each
    push times out with the op named, and leaves no waiting entry behind (a worker stuck for
    hours must not grow the control process by one future per push); a late ack is ignored."""
    import asyncio
    import json as json_
    import socket

    from proxy.control.planes import WorkerLink

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link = WorkerLink(3, reader, writer, on_delta=lambda _: None, process=None)
    try:
        for _ in range(3):
            with pytest.raises(TimeoutError, match=r"no acknowledgement of weights in 0\.05 s"):
                await link._call({"op": "weights", "updates": {}}, timeout=0.05)
        assert link.waiting == {}
        theirs.sendall(json_.dumps({"op": "ack", "id": 1}).encode() + b"\n")  # late
        await asyncio.sleep(0.05)
        assert link.waiting == {} and not link.task.done()
    finally:
        writer.close()
        theirs.close()
        link.task.cancel()


async def test_a_message_bigger_than_a_frozen_workers_socket_still_times_out() -> None:
    """The far end reads nothing (a frozen worker) and the message (a reload's routes.yaml) is
    bigger than the socket holds: the wait for room to write it used to have no time limit, so
    the reload hung holding the lock. Now it is part of the ack's wait; the message stays whole
    in the transport's buffer and arrives when the worker reads."""
    import asyncio
    import json as json_
    import socket

    from proxy.control.planes import WorkerLink

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    link = WorkerLink(0, reader, writer, on_delta=lambda _: None, process=None)
    big = {"op": "install", "text": "#" + "x" * (4 << 20), "generation": 2, "weights": {}}
    try:
        with pytest.raises(TimeoutError, match=r"no acknowledgement of install in 0\.2 s"):
            await asyncio.wait_for(link._call(big, timeout=0.2), 5)
        assert link.waiting == {} and link.unacked["op"] == "install"
        theirs.setblocking(False)
        got = bytearray()
        loop = asyncio.get_running_loop()
        while not got.endswith(b"\n"):  # the worker wakes: the message arrives whole
            got += await asyncio.wait_for(loop.sock_recv(theirs, 1 << 20), 5)
        assert json_.loads(got)["text"] == big["text"]
    finally:
        writer.close()
        theirs.close()
        link.task.cancel()
