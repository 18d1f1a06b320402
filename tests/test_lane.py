"""The local lane (zray/lane.py): messages between two processes of a node on a Unix socket,
on real sockets: framing, a receiver that does not read, one that went away, and the lanes a
task's round trip takes."""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import numpy as np
import pytest

import zray
from zray import protocol as p
from zray.core import current
from zray.lane import LaneListener, LaneReader, LaneWriter, lane_path
from zray.peers import Peers

pytestmark = pytest.mark.timeout(60)


def pair(tmp_path: Any) -> tuple[LaneListener, LaneWriter, LaneReader]:
    listener = LaneListener(str(tmp_path / "lane.sock"), 64 << 20)
    writer = LaneWriter(listener.path)
    readers = listener.accept()
    assert len(readers) == 1
    return listener, writer, readers[0]


def drain(reader: LaneReader, writer: LaneWriter, count: int) -> list[list[Any]]:
    """Read ``count`` messages, letting the writer flush its backlog meanwhile."""
    got: list[list[Any]] = []
    deadline = time.monotonic() + 30
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages came"
        writer.flush()
        select.select([reader], [], [], 0.01)
        messages, still_open = reader.read()
        assert still_open
        got.extend(messages)
    return got


def test_messages_of_every_size_arrive_whole_and_in_order(tmp_path):
    listener, writer, reader = pair(tmp_path)
    rng = np.random.default_rng(0)
    sizes = [0, 1, 2, 100, 65535, 65536, 300_000, 3 * 2**20, 7, 262_144, 262_136]
    sent = []
    for i, size in enumerate(sizes * 3):
        frames = [bytes([i]), rng.bytes(size), b"tail%d" % i]
        writer.send(frames)
        sent.append(frames)
    got = drain(reader, writer, len(sent))
    assert [[bytes(frame) for frame in message] for message in got] == sent
    large = [frame for message in got for frame in message if len(frame) > 2**20]
    assert large and all(isinstance(frame, memoryview) and frame.readonly for frame in large)
    assert not reader.read()[0] and not writer.backlogged()
    writer.close()
    assert reader.read() == ([], False)  # the sender closed: the reader sees it
    reader.close()
    listener.close()
    assert not os.path.exists(listener.path)


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path):
    listener, writer, reader = pair(tmp_path)
    chunk = np.arange(2**20 // 8, dtype=np.float64)
    start = time.monotonic()
    results = [writer.send([b"h", memoryview(chunk).cast("B")]) for _ in range(64)]  # 64 MiB
    assert time.monotonic() - start < 5
    assert not all(results) and writer.backlogged()  # more than the socket takes
    chunk[:] = -1  # the sender's buffer is reused: what waits was copied
    got = drain(reader, writer, 64)
    expected = np.arange(2**20 // 8, dtype=np.float64).tobytes()
    assert all(bytes(message[1]) == expected for message in got)
    writer.close()
    reader.close()
    listener.close()


def test_sending_to_a_receiver_that_exited_drops_the_message_without_raising(tmp_path):
    listener, writer, reader = pair(tmp_path)
    reader.close()
    listener.close()
    for _ in range(3):
        writer.send([b"x" * 1000])
    assert writer.broken and not writer.backlogged()
    writer.close()
    with pytest.raises(OSError):
        LaneWriter(listener.path)  # nothing listens there now


def test_a_message_claiming_frames_over_the_bound_cuts_its_sender_off_unread(tmp_path):
    listener, writer, reader = pair(tmp_path)
    writer._sock.sendall(struct.pack("<III", 1, 2**32 - 1, 2**32 - 1))  # "a 4 GiB frame"
    select.select([reader], [], [], 5)
    assert reader.read() == ([], False)  # (nothing allocated for it)
    for lane in (writer, reader, listener):
        lane.close()


def test_peers_use_the_lane_where_one_listens_else_zmq(tmp_path):
    import zmq

    context = zmq.Context()
    agent_endpoint = f"ipc://{tmp_path}/agent.sock"
    here, elsewhere = b"H" * 8, b"E" * 8
    listener = LaneListener(lane_path(agent_endpoint, here, "t"), 64 << 20)
    peers = Peers(context, b"me" * 4, agent_endpoint, lanes=True)
    try:
        peers.send(here, p.Blocked(b"x"), kind="t")
        peers.send(elsewhere, p.Blocked(b"y"), kind="t")  # (a relay's proxy: no lane)
        assert isinstance(peers._sockets[here, "t"], LaneWriter)
        assert isinstance(peers._sockets[elsewhere, "t"], zmq.Socket)
        (reader,) = listener.accept()
        select.select([reader], [], [], 5)
        messages, _ = reader.read()
        assert [p.decode(frames) for frames in messages] == [p.Blocked(b"x")]
        reader.close()
    finally:
        peers.close()
        listener.close()
        context.term()


@zray.remote
def echo(x: Any) -> Any:
    return x


@zray.remote
class Keeper:
    def call(self, x: Any) -> Any:
        return x


def test_a_round_trip_goes_on_lanes_and_a_killed_worker_is_retried(cluster):
    client = current()
    assert client is not None
    assert zray.get([echo.remote(i) for i in range(50)]) == list(range(50))
    keeper = Keeper.remote()  # type: ignore[attr-defined]
    assert [zray.get(keeper.call.remote(i)) for i in range(5)] == list(range(5))
    lanes = {peer for (peer, kind), sock in client.peers._sockets.items()
             if kind == "t" and isinstance(sock, LaneWriter)}
    assert client.actor_calls.worker_of(keeper._actor_id) in lanes, "calls took no lane"
    assert len(lanes) >= 2, "tasks took no lane"
    session = os.path.dirname(client.peers._agent_endpoint.removeprefix("ipc://"))
    assert os.path.exists(lane_path(client.peers._agent_endpoint, client.worker_id, "d"))
    assert any(name.startswith("lt-") for name in os.listdir(session))

    @zray.remote(max_retries=1)
    def die_once(marker: str) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # its lane to the owner breaks; the retry runs elsewhere
        return os.getpid()

    marker = os.path.join(session, "died-once")
    assert zray.get(die_once.remote(marker), timeout=30) > 0
    big = np.arange(3 * 2**20 // 8, dtype=np.float64)  # arguments too large for one write
    assert [float(v.sum()) for v in zray.get([echo.remote(big) for _ in range(8)])] == \
        [float(big.sum())] * 8
