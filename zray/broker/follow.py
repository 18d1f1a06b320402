"""A live copy of a GCS table, kept by the Clone pattern (ZeroMQ guide, chapter 5).

Each shard publishes, per commit, the rows of each table that changed: ``[table, epoch (8
bytes) + number (8 bytes, big-endian), pickle of [(key, fields_json or None, time)]]``, the
number counting the table's messages in the shard's life (its epoch, new at each start).
Every second each shard also publishes each table's last number with no rows (a
heartbeat), so a follower that lost the last messages sees the gap though nothing changes
after them. A follower that has just subscribed may find a gap at once (its subscription
was still on its way to the shard): it resyncs, as for any gap. A follower,
per shard: subscribes first, then takes a snapshot (a Query, whose reply names the epoch and
the last number published), then applies the messages numbered after it. A number skipped
(it fell behind and the shard dropped messages for it: the shard's memory stays bounded)
or a new epoch (the shard restarted) makes it take a fresh snapshot of that shard.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from zray.broker.layout import GcsAddress
from zray.mesh.auth import secure_client, secure_dealer
from zray.protocol import (
    ProtocolError,
    Query,
    QueryReply,
    decode,
    encode,
    has_input,
    plain_loads,
)

Change = tuple[bytes, str | None, float]  # (key, fields_json or None: deleted, time)


_SNAPSHOT_TIMEOUT_S = 2.0  # a snapshot not answered by then is asked for again


@dataclass
class _Shard:
    index: int
    socket: zmq.Socket  # SUB
    asker: zmq.Socket | None = None  # DEALER for the snapshot's Query, while one is asked
    asked_at: float = 0.0
    epoch: bytes = b""
    number: int = -1  # the last message applied; -1: no snapshot yet
    heard: bool = False  # a message came: our subscription has reached the shard
    rows: dict[bytes, str] = field(default_factory=dict)  # key -> fields_json
    early: list[list[bytes]] = field(default_factory=list)  # messages while it is asked


class Follower:
    """A copy of one table, sans-blocking: poll ``sockets`` in your own loop and hand each
    readable one to ``on_readable``, and call ``tick`` now and then (asks again for a
    snapshot not answered); or call ``poll`` (a loop of its own, for the CLI)."""

    def __init__(self, gcs: GcsAddress, table: str, queue_limit: int = 1000,
                 context: zmq.Context | None = None) -> None:
        """``queue_limit``: messages a shard queues for us before it drops some."""
        self.gcs, self.table = gcs, table
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.queue_limit = queue_limit
        self.resyncs = 0  # snapshots taken after the first ones (gaps, restarts)
        self.snapshots = 0  # all taken: rows() may have changed with none returned
        self.shards: list[_Shard] = []
        self._by_socket: dict[zmq.Socket, _Shard] = {}
        for index, publish in enumerate(gcs.publish):
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, queue_limit)
            sock.setsockopt(zmq.SUBSCRIBE, table.encode())
            secure_client(sock, publish, gcs.credentials)
            sock.connect(publish)
            shard = _Shard(index, sock)
            self.shards.append(shard)
            self._by_socket[sock] = shard
            self._ask(shard)

    @property
    def sockets(self) -> list[zmq.Socket]:
        return list(self._by_socket)

    def rows(self) -> dict[bytes, dict[str, Any]]:
        """The table as this copy has it: key -> fields."""
        return {key: json.loads(fields) for shard in self.shards
                for key, fields in shard.rows.items()}

    def ready(self) -> bool:
        """Whether every shard's snapshot is taken and its messages reach us (after the
        first heartbeat: before it, a change can be missed, and is repaired by a resync)."""
        return all(shard.heard and shard.number >= 0 for shard in self.shards)

    def poll(self, timeout_s: float) -> list[Change]:
        """Apply what the shards published and answered (waiting at most ``timeout_s``
        for the first); the changes applied, in order."""
        self.tick()
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        changes: list[Change] = []
        for sock, _ in poller.poll(int(timeout_s * 1000)):
            changes += self.on_readable(sock)
        return changes

    def tick(self) -> None:
        now = time.monotonic()
        for shard in self.shards:
            if shard.asker is not None and now - shard.asked_at > _SNAPSHOT_TIMEOUT_S:
                self._ask(shard)  # (not up yet, or restarting: ask again)

    def on_readable(self, sock: zmq.Socket) -> list[Change]:
        shard = self._by_socket.get(sock)
        if shard is None:
            return []
        changes: list[Change] = []
        while not sock.closed and has_input(sock):
            frames = sock.recv_multipart()
            if sock is shard.asker:
                changes += self._on_snapshot(shard, frames)
            elif shard.asker is not None:  # kept until the snapshot says where it is
                shard.heard = True
                shard.early.append(frames)
                if len(shard.early) > self.queue_limit:  # (fell behind: ask again)
                    shard.early.clear()
                    self._ask(shard)
            else:
                changes += self._apply(shard, frames)
        return changes

    def close(self) -> None:
        for shard in self.shards:
            shard.socket.close(linger=0)
            if shard.asker is not None:
                shard.asker.close(linger=0)
        if self._own_context:
            self.context.term()

    def _ask(self, shard: _Shard) -> None:
        """Ask the shard for a snapshot (a Query: its rows, the epoch, the last number)."""
        if shard.asker is not None:
            self._by_socket.pop(shard.asker, None)
            shard.asker.close(linger=0)
        shard.asker = secure_dealer(self.context, self.gcs.shards[shard.index],
                                    self.gcs.credentials)
        shard.asker.send_multipart(encode(Query(1, self.table, 0, b"")))
        shard.asked_at = time.monotonic()
        self._by_socket[shard.asker] = shard

    def _on_snapshot(self, shard: _Shard, frames: list[bytes]) -> list[Change]:
        try:
            reply = decode(frames)
        except ProtocolError:
            return []
        if not isinstance(reply, QueryReply) or "epoch" not in reply.stats:
            return []
        assert shard.asker is not None
        self._by_socket.pop(shard.asker, None)
        shard.asker.close(linger=0)
        shard.asker = None
        self.resyncs += shard.number >= 0
        shard.rows = {row[0]: row[1] for row in reply.rows}
        shard.epoch = bytes.fromhex(reply.stats["epoch"])
        shard.number = int(reply.stats["published"])
        self.snapshots += 1
        changes: list[Change] = []  # (what the snapshot holds is no change: see rows())
        early, shard.early = shard.early, []
        for frames_ in early:
            changes += self._apply(shard, frames_)
        return changes

    def _apply(self, shard: _Shard, frames: list[bytes]) -> list[Change]:
        if len(frames) != 3 or len(frames[1]) != 16:
            return []
        shard.heard = True
        epoch, number = frames[1][:8], int.from_bytes(frames[1][8:], "big")
        if shard.asker is not None or (epoch == shard.epoch and number <= shard.number):
            return []  # (a snapshot is on its way; or had it already, or a heartbeat)
        if epoch != shard.epoch or number != shard.number + 1 or not frames[2]:
            self._ask(shard)  # restarted, or a gap (a heartbeat says so when nothing
            return []  # follows the messages we lost)
        shard.number = number
        changes: list[Change] = plain_loads(frames[2])
        for key, fields, _ in changes:
            if fields is None:
                shard.rows.pop(key, None)
            else:
                shard.rows[key] = fields
        return changes
