"""Objects moving between nodes' stores: pulled, in chunks, by the node that needs them.

A node that needs an object another node lent it (its ObjectTable entry is REMOTE: a
task's argument, a result made there, a ref inside a copy) asks that node, its ``home``,
for the bytes: PullObject(offset, size), a chunk at a time, at most ``ahead`` chunks in
flight, each written into a block of its own store as it arrives; the last one makes the
copy READY (and cached: it serves the next reader here too). One pull per object per node,
whatever number of readers wait for it. The home serves from its store, or sends the
puller on to the node it borrowed the object from if it has no copy itself, or waits if
its object is still being made (or on its way to it)::

    puller --Relayed("objects") + PullObject(id, 0, chunk)--> home's door
    puller <--ObjectChunk(id, 0, total, bytes, contained)--  (the refs it holds: lent)
    puller --PullObject(id, chunk, chunk) ... up to `ahead` at once-->
    puller <--ObjectChunk ... until `total` bytes are here

The wire and the tables are the caller's: ``send(node, msg)`` to a node's door,
``answer(identity, msg)`` back to whoever asked on ours. No other I/O.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from zray import protocol as p
from zray.node import failures
from zray.node.object_table import ObjectTable, ObjState

CHUNK_BYTES = 8 << 20
RETRY_S = 0.1  # before a pull sent on to a node gone asks its home again
AHEAD = 4  # chunks in flight per pull: 32 MiB, enough to keep a TCP link busy


@dataclass
class _Pull:
    home: bytes
    total: int = -1  # known from the first chunk
    block: int = -1  # this node's store offset, once allocated
    asked: int = 0  # bytes asked for so far
    received: int = 0
    contained: list[bytes] | None = None
    is_error: bool = False


class Transfers:
    def __init__(self, table: ObjectTable, view: Callable[[], memoryview],
                 send: Callable[[bytes, p.Message], bool],
                 answer: Callable[[bytes, p.Message], None], inline_max: int,
                 make_room: Callable[[int, Callable[[], None]], bool],
                 read_spilled: Callable[[bytes, int, int], bytes],
                 chunk_bytes: int = CHUNK_BYTES, ahead: int = AHEAD) -> None:
        """``view()``: this node's store, writable; ``send(node, msg)``: to a node (False:
        it is gone);
        ``answer(identity, msg)``: to a node that asked us; ``inline_max``: a copy at most
        so big is kept inline, as a small value made here would be."""
        self.table, self.view, self.send, self.answer = table, view, send, answer
        self.inline_max = inline_max
        # A full store sends objects to disk (zray/node/spilling.py): ``make_room(size,
        # retry)``, and ``read_spilled(id, start, size)`` to serve one from its file.
        self.make_room, self.read_spilled = make_room, read_spilled
        self.chunk, self.ahead = chunk_bytes, ahead
        self.pulls: dict[bytes, _Pull] = {}
        self.waiting_room: list[bytes] = []  # pulls whose block did not fit yet
        self.parked: dict[bytes, list[tuple[bytes, p.PullObject]]] = {}  # asked, not ready
        self.counts: Counter[str] = Counter()  # zray status: bytes and objects each way
        self.retry_at: dict[bytes, float] = {}  # pulls to ask their home again -> when

    # --- pulling ----------------------------------------------------------------------

    def start(self) -> None:
        """Pull what the table wants (``to_pull``), once each."""
        for object_id in self.table.to_pull:
            entry = self.table.get(object_id)
            if entry is None or entry.state is not ObjState.REMOTE or object_id in self.pulls:
                continue
            self.table.pin(object_id)  # (nothing gives it back while it is on its way)
            self.pulls[object_id] = _Pull(entry.home)
            self.counts["pulls started"] += 1
            if not self.send(entry.home, p.PullObject(object_id, 0, self.chunk)):
                self._lost(object_id, entry.home)
        self.table.to_pull.clear()

    def node_gone(self, node: bytes) -> None:
        """A node left (the table saw it first): what we were pulling from it is pulled
        again from a node that lent it to us, waits to be rebuilt (a result of a task of
        ours: the table made it PENDING), or is lost; what it asked, dropped."""
        for object_id in [i for i, pull in self.pulls.items() if pull.home == node]:
            entry = self.table.get(object_id)
            if entry is not None and entry.state is ObjState.PENDING:
                del self.pulls[object_id]
                self.table.unpin(object_id)
            elif entry is not None and entry.home and entry.home not in self.table.gone:
                self.table.restart_copy(object_id)
                self.pulls[object_id] = _Pull(entry.home)
                if not self.send(entry.home, p.PullObject(object_id, 0, self.chunk)):
                    self._lost(object_id, entry.home)
            else:
                self._lost(object_id, node)
        for object_id, asked in list(self.parked.items()):
            self.parked[object_id] = [(who, msg) for who, msg in asked if who != node]

    def _lost(self, object_id: bytes, node: bytes) -> None:
        self.counts["pulls failed"] += 1
        self._finish(object_id, failures.lost_with_node(object_id, node), True, [])

    def tick(self) -> None:
        """Ask again the pulls whose home sent them on to a node that had gone."""
        now = time.monotonic()
        for object_id in [i for i, at in self.retry_at.items() if at <= now]:
            del self.retry_at[object_id]
            pull = self.pulls.get(object_id)
            if pull is not None and not self.send(pull.home, p.PullObject(object_id, 0,
                                                                          self.chunk)):
                self._lost(object_id, pull.home)

    def retry_waiting(self) -> None:
        """Pulls that found the store full try again (from their first chunk)."""
        waiting, self.waiting_room = self.waiting_room, []
        for object_id in waiting:
            pull = self.pulls.get(object_id)
            if pull is not None:
                self.send(pull.home, p.PullObject(object_id, 0, self.chunk))

    def on_chunk(self, node: bytes, msg: p.ObjectChunk) -> None:
        pull = self.pulls.get(msg.object_id)
        if pull is None or node != pull.home:
            return
        if msg.redirect and msg.redirect != pull.home:  # (it has no copy: where it has one)
            if self.send(msg.redirect, p.PullObject(msg.object_id, 0, self.chunk)):
                pull.home = msg.redirect
            else:  # A node gone: the one that sent us there has not seen it go yet. Once
                # it has, it rebuilds the object or sends us on to a copy that lives.
                self.retry_at[msg.object_id] = time.monotonic() + RETRY_S
            return
        if msg.error:
            self.counts["pulls failed"] += 1
            self._finish(msg.object_id, failures.object_lost(msg.object_id, "a transfer"),
                         True, [])
            return
        self.counts["bytes received"] += len(msg.data)
        if msg.offset == 0 and pull.total < 0:
            if not self._first_chunk(msg, pull):
                return
        elif pull.block < 0 or pull.total < 0:
            return  # (a chunk for a pull that restarted: asked again from the start)
        if pull.block >= 0:
            start = pull.block + msg.offset
            self.view()[start:start + len(msg.data)] = msg.data
        pull.received += len(msg.data)
        if pull.received >= pull.total:
            self.counts["objects received"] += 1
            data = msg.data if pull.block < 0 else None
            self._finish(msg.object_id, data, pull.is_error, pull.contained or [])
        else:
            self._ask_more(msg.object_id, pull)

    def _first_chunk(self, msg: p.ObjectChunk, pull: _Pull) -> bool:
        """Size the copy by the first chunk: a block for it (unless it came whole), and
        the refs it holds, lent with it."""
        if msg.total > self.inline_max:
            block = self.table.start_copy(msg.object_id, msg.total)
            if block is None:
                self.waiting_room.append(msg.object_id)
                self.make_room(msg.total, self.retry_waiting)
                self.counts["bytes received"] -= len(msg.data)  # (asked again)
                return False
            pull.block = block
        pull.total, pull.is_error = msg.total, msg.is_error
        pull.contained = list(msg.contained)
        entry = self.table.get(msg.object_id)
        job_id = entry.job_id if entry is not None else b""
        for ref in pull.contained:
            self.table.borrowed(ref, pull.home, job_id, 0)
        pull.asked = len(msg.data)
        return True

    def _ask_more(self, object_id: bytes, pull: _Pull) -> None:
        """Keep ``ahead`` chunks in flight (a node that left is seen by ``node_gone``)."""
        in_flight = pull.asked - pull.received
        while pull.asked < pull.total and in_flight < self.ahead * self.chunk:
            size = min(self.chunk, pull.total - pull.asked)
            self.send(pull.home, p.PullObject(object_id, pull.asked, size))
            pull.asked += size
            in_flight += size

    def _finish(self, object_id: bytes, data: bytes | None, is_error: bool,
                contained: list[bytes]) -> None:
        del self.pulls[object_id]
        self.table.copied(object_id, data, is_error, contained)
        self.table.unpin(object_id)

    # --- serving ----------------------------------------------------------------------

    def on_pull(self, identity: bytes, msg: p.PullObject) -> None:
        """A node asks for a chunk of one of our objects (``identity``: its node id)."""
        entry = self.table.get(msg.object_id)
        if entry is None:
            self.answer(identity, p.ObjectChunk(msg.object_id, msg.offset, 0, b"", False, [],
                                                "no such object here", b""))
            return
        if entry.state is ObjState.REMOTE and entry.home != identity:
            self.answer(identity, p.ObjectChunk(msg.object_id, 0, 0, b"", False, [], "",
                                                entry.home))
            return
        if entry.state is not ObjState.READY:  # (on its way here, or being made, here or
            self.parked.setdefault(msg.object_id, []).append((identity, msg))  # elsewhere,
            self.table.rebuild_if_lost(msg.object_id)  # or lost: rebuilt now)
            return
        size = min(msg.size, entry.size - msg.offset)
        if entry.data is not None:
            data = entry.data[msg.offset:msg.offset + msg.size]
        elif entry.on_disk:
            data = self.read_spilled(msg.object_id, msg.offset, size)
        else:
            start = entry.offset + msg.offset
            data = bytes(self.view()[start:start + size])
        contained: list[bytes] = []
        if msg.offset == 0:  # (a new copy there: what it holds is lent with it)
            contained = entry.contained
            for ref in contained:
                self.table.lend(ref, identity)
            self.table.copied_to(msg.object_id, identity)
            self.counts["objects sent"] += 1
        self.counts["bytes sent"] += len(data)
        self.answer(identity, p.ObjectChunk(msg.object_id, msg.offset, entry.size, data,
                                            entry.is_error, contained, "", b""))

    def object_ready(self, object_id: bytes) -> None:
        """Serve who asked for it while it was not ready here (or send them on, if it
        turned out to be made elsewhere)."""
        for identity, msg in self.parked.pop(object_id, []):
            self.on_pull(identity, msg)

    def status(self) -> dict[str, int]:
        return {**{k.replace(" ", "_"): v for k, v in sorted(self.counts.items())},
                "pulling": len(self.pulls)}
