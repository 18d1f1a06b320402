"""The broker shard as a real process on an ipc:// socket: acks, crash and replay, garbage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zray.broker.link import BrokerLink, query
from zray.broker.wal import read_tables
from zray.config import Config
from zray.protocol import (
    PROTOCOL_VERSION,
    BatchAck,
    Query,
    QueryReply,
    Rejected,
    TableBatch,
    decode,
    encode,
)

CONFIG = Config(broker_ack_timeout_s=0.5, poll_interval_ms=10)


class Shard:
    """One broker shard process at a fixed endpoint and log; restartable."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.endpoint = f"ipc://{tmp_path}/broker.sock"
        self.wal = tmp_path / "broker.wal"
        self.stderr_path = tmp_path / "broker.stderr"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        args = ["--endpoint", self.endpoint, "--wal", str(self.wal), *extra]
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zray.broker.shard", *args], env=self.env, stderr=stderr
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.stderr_path.read_text()


@pytest.fixture
def shard_factory(tmp_path: Path) -> Iterator[Callable[..., Shard]]:
    shards: list[Shard] = []

    def make(**env: str) -> Shard:
        shard = Shard(tmp_path, env)
        shards.append(shard)
        return shard

    try:
        yield make
    finally:
        for shard in shards:
            shard.stop()


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def link_factory(context: zmq.Context) -> Iterator[Callable[[str], BrokerLink]]:
    links: list[BrokerLink] = []

    def make(endpoint: str) -> BrokerLink:
        link = BrokerLink(context, endpoint, b"node0001", CONFIG)
        links.append(link)
        return link

    try:
        yield make
    finally:
        for link in links:
            link.close()


def pump_until_acked(link: BrokerLink, timeout_s: float = 20.0) -> None:
    """Run the agent's side of the loop until every recorded row is acknowledged."""
    deadline = time.monotonic() + timeout_s
    while link.unacked_rows():
        assert time.monotonic() < deadline, f"{link.unacked_rows()} rows never acknowledged"
        link.flush(time.monotonic())
        if link.socket.poll(20, zmq.POLLIN):
            link.handle(link.socket.recv_multipart())


def rows_of(endpoint: str, table: str, limit: int | None = None) -> list[tuple[Any, ...]]:
    """(key, fields, blob) of the table's rows, oldest first, asked of the running shard."""
    result = query([endpoint], table, limit, timeout_s=20)
    assert not result.unanswered, result.unanswered
    return [(key, json.loads(fields), blob) for key, fields, blob, _ in result.rows]


def table_keys(endpoint: str, table: str) -> list[bytes]:
    return [row[0] for row in rows_of(endpoint, table)]


@pytest.mark.timeout(60)
def test_acked_rows_survive_sigkill(shard_factory: Callable[..., Shard],
                                    link_factory: Callable[[str], BrokerLink]) -> None:
    shard = shard_factory(ZRAY_BROKER_BATCH_ROWS="7")
    shard.start()
    link = link_factory(shard.endpoint)
    for i in range(100):
        link.record("objects", f"o{i:03}".encode(), {"size": i}, blob=b"x" * i)
    link.record("nodes", b"node0001", {"alive": True})
    link.record("objects", b"o000", None)  # a delete is a row like any other
    pump_until_acked(link)
    shard.kill()
    post_mortem = read_tables(shard.wal, CONFIG.max_task_history)  # as `zray inspect` does
    assert post_mortem.count("objects") == 99 and post_mortem.count("nodes") == 1
    shard.start()
    rows = rows_of(shard.endpoint, "objects")
    assert [key for key, _, _ in rows] == [f"o{i:03}".encode() for i in range(1, 100)]
    assert rows[4] == (b"o005", {"size": 5}, b"xxxxx")
    assert rows_of(shard.endpoint, "nodes") == [(b"node0001", {"alive": True}, None)]
    assert [row[0] for row in rows_of(shard.endpoint, "objects", 2)] == [b"o098", b"o099"]


@pytest.mark.timeout(60)
def test_link_resends_after_broker_comes_back(shard_factory: Callable[..., Shard],
                                              link_factory: Callable[[str], BrokerLink]) -> None:
    shard = shard_factory()
    shard.start()
    link = link_factory(shard.endpoint)
    link.record("jobs", b"j1", {"n": 1})
    pump_until_acked(link)
    assert shard.proc is not None
    shard.proc.send_signal(signal.SIGSTOP)  # alive but deaf: the next batch is never acked
    link.record("jobs", b"j2", {"n": 2})
    link.record("jobs", b"j1", {"n": 3})
    link.flush(time.monotonic())
    assert link.unacked_rows() == 2
    shard.kill()  # whatever it had received unprocessed dies with it
    shard.start()
    pump_until_acked(link)
    assert link.resent_batches >= 1
    assert rows_of(shard.endpoint, "jobs") == [
        (b"j1", {"n": 3}, None),
        (b"j2", {"n": 2}, None),
    ]


@pytest.mark.timeout(60)
def test_link_queues_while_no_broker_runs(shard_factory: Callable[..., Shard],
                                          link_factory: Callable[[str], BrokerLink]) -> None:
    shard = shard_factory()
    link = link_factory(shard.endpoint)  # connect first: the broker is not there yet
    link.record("functions", b"f", {"name": "f"})
    link.flush(time.monotonic())  # must not block
    assert link.unacked_rows() == 1
    shard.start()
    pump_until_acked(link)
    assert table_keys(shard.endpoint, "functions") == [b"f"]


@pytest.mark.timeout(60)
def test_task_history_bound_holds_after_replay_and_compaction(
    shard_factory: Callable[..., Shard], link_factory: Callable[[str], BrokerLink]
) -> None:
    shard = shard_factory(ZRAY_MAX_TASK_HISTORY="5", ZRAY_WAL_COMPACT_ROWS="8",
                          ZRAY_BROKER_BATCH_ROWS="3")
    shard.start()
    link = link_factory(shard.endpoint)
    for i in range(30):
        link.record("tasks", f"t{i:02}".encode(), {"state": "FINISHED"})
    pump_until_acked(link)
    expected = [f"t{i:02}".encode() for i in range(25, 30)]
    assert table_keys(shard.endpoint, "tasks") == expected
    shard.kill()
    shard.start()
    assert table_keys(shard.endpoint, "tasks") == expected
    assert "compacted the log" in shard.log()


@pytest.mark.timeout(60)
def test_garbage_does_not_crash_it(shard_factory: Callable[..., Shard],
                                   context: zmq.Context) -> None:
    shard = shard_factory()
    shard.start()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(shard.endpoint)
    header = bytes((PROTOCOL_VERSION, TableBatch.op))
    bad_rows = [("nope", b"k", "{}", None), "junk", ("jobs", b"ok", "{}", None)]
    garbage = [
        [b"garbage"],
        [b"\xff\xff", b"x"],
        [header + b"not a pickle"],
        [header + b"cos\nsystem\n(S'true'\ntR."],  # names a global: refused unread
        [header, b"not a pickle"],  # header and body in two frames
        [b"a", b"b", b"c"],
        encode(TableBatch(1, b"n", bad_rows)),
        encode(QueryReply(1, [], {})),  # well formed but not for the broker
        encode(Query(7, "no_such_table", 0, b"")),
    ]
    for frames in garbage:
        raw.send_multipart(frames)
    # The message not for the broker is rejected; the batch with bad rows is stored for its
    # good row and acknowledged (before the query that came after it is answered).
    replies = []
    for _ in range(3):
        assert raw.poll(20_000, zmq.POLLIN), "the broker never answered"
        replies.append(decode(raw.recv_multipart()))
    raw.close()
    assert replies[1] == BatchAck(1)
    assert isinstance(replies[2], QueryReply) and (replies[2].request_id, replies[2].rows) == (
        7, [])
    assert isinstance(replies[0], Rejected) and replies[0].of == QueryReply.op
    assert shard.proc is not None and shard.proc.poll() is None
    assert table_keys(shard.endpoint, "jobs") == [b"ok"]
    assert "dropped" in shard.log()


@pytest.mark.timeout(60)
def test_exits_with_its_parent(shard_factory: Callable[..., Shard]) -> None:
    shard = shard_factory()
    parent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        shard.start("--parent-pid", str(parent.pid))
        assert table_keys(shard.endpoint, "nodes") == []  # it is up
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        parent.wait(timeout=10)
    assert shard.proc is not None
    assert shard.proc.wait(timeout=20) == 0
    assert "parent process died" in shard.log()


@pytest.mark.timeout(60)
def test_sigterm_is_a_clean_exit(shard_factory: Callable[..., Shard]) -> None:
    shard = shard_factory()
    shard.start()
    assert table_keys(shard.endpoint, "actors") == []
    assert shard.proc is not None
    shard.proc.send_signal(signal.SIGTERM)
    assert shard.proc.wait(timeout=20) == 0
    assert not Path(shard.endpoint.removeprefix("ipc://")).exists()


@pytest.mark.timeout(60)
def test_task_rows_past_the_history_are_dropped_unsent_and_nothing_kept_is_lost(
        shard_factory: Callable[..., Shard], context: zmq.Context) -> None:
    """Rows recorded faster than the broker stores them: the link keeps at most
    max_task_history task rows queued (the broker would drop the older ones anyway)."""
    shard = shard_factory(ZRAY_MAX_TASK_HISTORY="100")
    shard.start()
    link = BrokerLink(context, shard.endpoint, b"node0001",
                      Config(broker_ack_timeout_s=0.5, poll_interval_ms=10, max_task_history=100))
    try:
        link.record("actors", b"a1", {"state": "ALIVE"})
        for i in range(250):
            link.record("tasks", i.to_bytes(4, "big"), {"n": i})
        link.record("tasks", (3).to_bytes(4, "big"), {"n": 3})  # dropped, then queued anew
        assert link.queued_rows() == 101 and link.dropped_rows == 151
        pump_until_acked(link)
        kept = [fields["n"] for _, fields, _ in rows_of(shard.endpoint, "tasks")]
        assert kept == list(range(151, 250)) + [3]
        assert rows_of(shard.endpoint, "actors") == [(b"a1", {"state": "ALIVE"}, None)]
    finally:
        link.close()
