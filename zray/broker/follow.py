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
from dataclasses import dataclass, field
from typing import Any

import zmq

from zray.broker.layout import GcsAddress
from zray.broker.link import query
from zray.exceptions import ZrayError
from zray.mesh.auth import secure_client
from zray.protocol import plain_loads

Change = tuple[bytes, str | None, float]  # (key, fields_json or None: deleted, time)


@dataclass
class _Shard:
    index: int
    socket: zmq.Socket
    epoch: bytes = b""
    number: int = -1  # the last message applied; -1: no snapshot yet
    heard: bool = False  # a message came: our subscription has reached the shard
    rows: dict[bytes, str] = field(default_factory=dict)  # key -> fields_json


class Follower:
    def __init__(self, gcs: GcsAddress, table: str, queue_limit: int = 1000) -> None:
        """``queue_limit``: messages a shard queues for us before it drops some."""
        self.gcs, self.table = gcs, table
        self.context = zmq.Context()
        self.resyncs = 0  # snapshots taken after the first ones (gaps, restarts)
        self.poller = zmq.Poller()
        self.shards: list[_Shard] = []
        for index, publish in enumerate(gcs.publish):
            sock = self.context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, queue_limit)
            sock.setsockopt(zmq.SUBSCRIBE, table.encode())
            secure_client(sock, publish, gcs.credentials)
            sock.connect(publish)
            self.shards.append(_Shard(index, sock))
            self.poller.register(sock, zmq.POLLIN)

    def rows(self) -> dict[bytes, dict[str, Any]]:
        """The table as this copy has it: key -> fields."""
        return {key: json.loads(fields) for shard in self.shards
                for key, fields in shard.rows.items()}

    def ready(self) -> bool:
        """Whether every shard's snapshot is taken and its messages reach us (after the
        first heartbeat: before it, a change can be missed, and is repaired by a resync)."""
        return all(shard.heard and shard.number >= 0 for shard in self.shards)

    def poll(self, timeout_s: float) -> list[Change]:
        """Apply what the shards published (waiting at most ``timeout_s`` for the first);
        the changes applied, in order. Shards without a snapshot yet get one first."""
        changes: list[Change] = []
        for shard in self.shards:
            if shard.number < 0:
                self._snapshot(shard)
        for sock, _ in self.poller.poll(int(timeout_s * 1000)):
            shard = next(s for s in self.shards if s.socket is sock)
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                changes += self._apply(shard, sock.recv_multipart())
        return changes

    def close(self) -> None:
        for shard in self.shards:
            shard.socket.close(linger=0)
        self.context.term()

    def _apply(self, shard: _Shard, frames: list[bytes]) -> list[Change]:
        if len(frames) != 3 or len(frames[1]) != 16:
            return []
        shard.heard = True
        epoch, number = frames[1][:8], int.from_bytes(frames[1][8:], "big")
        if shard.number < 0 or (epoch == shard.epoch and number <= shard.number):
            return []  # no snapshot yet (it is taken next), or had already (a heartbeat)
        if epoch != shard.epoch or number != shard.number + 1 or not frames[2]:
            self._snapshot(shard, resync=True)  # restarted, or a gap (a heartbeat says so
            return []  # when nothing follows the messages we lost)
        shard.number = number
        changes: list[Change] = plain_loads(frames[2])
        for key, fields, _ in changes:
            if fields is None:
                shard.rows.pop(key, None)
            else:
                shard.rows[key] = fields
        return changes

    def _snapshot(self, shard: _Shard, resync: bool = False) -> None:
        """The shard's rows now, and the number of the last message they include."""
        try:
            reply = query([self.gcs.shards[shard.index]], self.table, timeout_s=2.0,
                          credentials=self.gcs.credentials)
        except ZrayError:
            return  # (not up: try again at the next poll)
        stats = reply.stats.get(0)
        if reply.unanswered or not stats or "epoch" not in stats:
            return
        shard.rows = {row[0]: row[1] for row in reply.rows}
        shard.epoch = bytes.fromhex(stats["epoch"])
        shard.number = int(stats["published"])
        self.resyncs += resync
