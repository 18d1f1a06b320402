"""The bound on frame size (issue 11, item 10).

One cluster with ``max_frame_bytes`` of 1 MiB (and arguments on a lease of at most 256 KiB,
as the bound requires): what a legitimate program sends is split or moved into the store
so no frame is over it, and what cannot be is refused at the call with an error naming it;
a peer sending 100 MB frames to any socket the cluster binds is cut off before a frame is
read, so no process grows, dies or stops answering.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
import zmq
from conftest import gcs_shards
from test_fuzz import children, round_trip_works, session, wait_for_workers, worker_sockets

import zray
from zray import protocol as p
from zray.exceptions import TaskError

pytestmark = pytest.mark.timeout(120)

FRAME = 1 << 20
BIG_FRAME = 100_000_000


@pytest.fixture(scope="module")
def bounded() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ZRAY_MAX_FRAME_BYTES", str(FRAME))
        env.setenv("ZRAY_DIRECT_ARG_MAX_BYTES", str(FRAME // 4))
        zray.init(num_cpus=2, object_store_memory=256 * 2**20)
    try:
        yield
    finally:
        zray.shutdown()


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_frames_over_the_bound_are_cut_off_at_every_socket(bounded: None) -> None:
    """Ten 100 MB frames to the agent, the broker shard, each worker's task and direct
    sockets and the driver's direct socket: nothing is read, no process grows or changes,
    and the cluster still works. (First in the module: two workers, none idle to exit.)"""
    assert zray.get([echo.remote(i) for i in range(4)], timeout=30) == list(range(4))
    wait_for_workers(2)
    cluster = zray.api._cluster
    assert cluster is not None
    watched = {cluster.agent.pid, os.getpid()}
    watched |= {proc.pid for proc in gcs_shards()}
    watched |= {proc.pid for proc in children("zray.node.worker")}
    assert len(watched) == 5, watched
    frame = b"\x02\x04" + bytes(BIG_FRAME)  # a SubmitTask header, then 100 MB
    rss_before = {pid: _rss(pid) for pid in watched}  # (this process's with the frame)
    targets = [f"ipc://{session()}/agent.sock", f"ipc://{session()}/broker-0.sock"]
    targets += [f"ipc://{path}" for path in worker_sockets()]
    assert len(targets) == 7, targets
    context = zmq.Context()
    try:
        sockets = []
        for endpoint in targets:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            sock.setsockopt(zmq.IDENTITY, bytes(8) + b"r")  # (the agent answers id + "r")
            sock.connect(endpoint)
            sockets.append(sock)
            for _ in range(10):
                sock.send(frame, copy=False)
            # Then a small wrong message, answered once it is read: on one DEALER it goes
            # after the big frames (each on a connection of its own, each cut off). The
            # agent answers only a Register (this one it refuses: the pid is the driver's).
            wrong = (p.Register(bytes(8), os.getpid(), "driver", b"", False, "")
                     if endpoint == targets[0] else p.Blocked(bytes(16)))
            sock.send_multipart(p.encode(wrong))
        for endpoint, sock in zip(targets, sockets, strict=True):
            assert sock.poll(15_000), f"{endpoint} never answered after the big frames"
            sock.close(linger=0)
    finally:
        context.term()
    assert round_trip_works() == ""
    now = {proc.pid for proc in gcs_shards() + children("zray.node.worker")}
    assert cluster.agent.poll() is None and now | {cluster.agent.pid, os.getpid()} == watched
    grown = {pid: _rss(pid) - rss_before[pid] for pid in watched}
    assert all(growth < 50 * 2**20 for growth in grown.values()), grown


@zray.remote
def echo(value: Any) -> Any:
    return value


@zray.remote
def total(*values: bytes) -> int:
    return sum(len(v) for v in values)


@zray.remote
def read_all(refs: list[Any]) -> list[int]:
    return [len(value) for value in zray.get(refs)]


@zray.remote(num_returns=40)
def forty() -> tuple[bytes, ...]:
    return tuple(bytes([i]) * 90_000 for i in range(40))


@zray.remote
class Echo:
    def echo(self, value: bytes) -> bytes:
        return value


class HeavyError(Exception):
    pass


@zray.remote(max_retries=0)
def raise_heavy() -> None:
    raise HeavyError("y" * 2_000_000)


@zray.remote
def print_unended() -> int:
    print("x" * 3_000_000, end="")
    return 1


def test_legitimate_traffic_is_split_under_the_bound(bounded: None) -> None:
    """Every message here would be over 1 MiB as one frame: batches of 60 KB tasks and of
    their reports, corked actor calls, 300 objects of 90 KB delivered at once, a task's
    forty 90 KB results, a reduce over a hundred 90 KB results."""
    values = [bytes([i % 256]) * 60_000 for i in range(200)]
    assert zray.get([echo.remote(v) for v in values], timeout=60) == values
    actor = Echo.remote()
    assert zray.get([actor.echo.remote(v) for v in values], timeout=60) == values
    made = [echo.remote(bytes([i % 256]) * 90_000) for i in range(300)]
    assert zray.get(read_all.remote(made), timeout=60) == [90_000] * 300
    results = forty.remote()
    assert [len(set(v)) == 1 and len(v) for v in zray.get(results, timeout=60)] == [90_000] * 40
    assert zray.get(total.remote(*made[:100]), timeout=60) == 9_000_000
    assert zray.get(total.remote(*[echo.remote(b"z" * 90_000) for _ in range(100)]),
                    timeout=60) == 9_000_000
    zray.kill(actor)


def test_an_error_too_big_for_a_message_keeps_its_text(bounded: None) -> None:
    with pytest.raises(TaskError) as info:
        zray.get(raise_heavy.remote(), timeout=60)
    text = str(info.value)
    assert "HeavyError" in text and "characters left out" in text and len(text) < FRAME


def test_an_endless_line_is_forwarded_in_pieces(bounded: None, capfd: Any) -> None:
    assert zray.get(print_unended.remote(), timeout=60) == 1
    deadline = time.monotonic() + 20
    printed = 0
    while printed < 3_000_000 and time.monotonic() < deadline:
        time.sleep(0.2)
        out, _ = capfd.readouterr()
        printed += out.count("x")
    assert printed == 3_000_000


def test_what_cannot_fit_is_refused_at_the_call_naming_it(bounded: None) -> None:
    big = np.ones(FRAME // 8 + 1000)

    @zray.remote
    def captures_big() -> float:
        return float(big.sum())

    with pytest.raises(ValueError, match=r"captures_big is too large.*zray.put"):
        captures_big.remote()
    refs = [zray.put(i) for i in range(FRAME // 48 + 1)]
    with pytest.raises(ValueError, match=r"arguments of echo\(\) holding 21,846 ObjectRefs"):
        echo.remote(refs)
    with pytest.raises(ValueError, match="a value holding 21,846 ObjectRefs"):
        zray.put(refs)
    assert zray.get(echo.remote(refs[:1000]), timeout=60) == refs[:1000]
    del refs
    assert round_trip_works() == ""
