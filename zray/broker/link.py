"""How a node agent talks to its broker shard, and a blocking query for the CLI.

``BrokerLink`` is sans-blocking: ``record`` only queues a row; ``flush`` (called from the
agent's loop) sends queued rows as TableBatch messages and resends what was not
acknowledged in time; ``handle`` takes the broker's BatchAck. The agent polls ``socket``
in its own zmq.Poller.

Reliability is the ZeroMQ guide's Lazy Pirate, adapted to a window of batches: if the
oldest unacknowledged batch is older than ``broker_ack_timeout_s``, every batch still in
the window is resent, in seq order, acknowledged or not. Resending the whole window is what
keeps the broker's final state right: had only the lost batch been resent, it would land
after newer batches and put back older values of the keys they updated. A batch leaves the
window once it and every batch before it are acknowledged. The socket is not closed and
reopened on a timeout (as lpclient does): a DEALER reconnects by itself when the broker
comes back, duplicates are harmless, and keeping the socket keeps the agent's poller valid.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zray.broker.tables import BOUNDED_TABLE, Row, StoredRow, merge_newest, shard_of
from zray.config import Config
from zray.exceptions import ZrayError
from zray.mesh.auth import Credentials, secure_client
from zray.protocol import BatchAck, ProtocolError, Query, QueryReply, TableBatch, decode, encode

__all__ = ["BrokerLink", "QueryResult", "query"]

log = logging.getLogger("zray.broker.link")

# At most this many batches are in flight; more rows wait in the queue. This bounds what a
# resend puts on the wire after the broker was away.
MAX_INFLIGHT_BATCHES = 64
_RESEND_GAP_S = 0.1


# A row's fields, or how to get them: a dict, or a function returning one or the fields
# already as JSON text (a row recorded for every task lays itself out faster).
Fields = dict[str, Any] | Callable[[], dict[str, Any] | str]

# Rows are plain dicts of str/int/float: no cycle check, no escaping needed (one encoder,
# built once; this runs for every row the agent records).
_to_json = json.JSONEncoder(check_circular=False, ensure_ascii=False,
                            separators=(",", ":")).encode


@dataclass
class _InFlight:
    frames: list[bytes]  # the encoded TableBatch, kept for resends
    rows: int
    sent_at: float


class BrokerLink:
    """A node agent's DEALER connection to one broker shard."""

    def __init__(self, context: zmq.Context, endpoint: str, node_id: bytes, config: Config,
                 max_queued_tasks: int | None = None, credentials: Credentials | None = None):
        self.endpoint = endpoint
        self.node_id = node_id
        self.config = config
        self.max_queued_tasks = max_queued_tasks or config.max_task_history
        self.socket: zmq.Socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        _connect(self.socket, endpoint, credentials)
        self.resent_batches = 0  # for inspect and tests: how often Lazy Pirate fired
        self.acknowledged = False  # the shard has acknowledged a batch: it is up
        # Rows not sent yet, by (table, key): a key updated again before the next flush is
        # sent once, with its latest fields (a short task's submit, start and finish).
        self._queued: dict[tuple[str, bytes], tuple[Fields | str | None, bytes | None]] = {}
        self._queued_bounded = 0  # rows of BOUNDED_TABLE among them
        self.dropped_rows = 0  # task rows dropped unsent (see record)
        self._window: collections.OrderedDict[int, _InFlight] = collections.OrderedDict()
        self._resent_at = -1e9
        self._seq = itertools.count(1)

    def record(
        self, table: str, key: bytes, fields: Fields | None, blob: bytes | None = None
    ) -> None:
        """Queue an upsert (or, with ``fields`` None, a delete); no I/O. ``fields`` may be
        a function returning them, called only if the row is sent.

        Task rows beyond ``max_queued_tasks`` queued are dropped, oldest first, and counted:
        the shard keeps only that many tasks, so it would drop them on arrival anyway. This
        bounds the queue when rows come faster than the shard stores them, or while it is
        down."""
        if self._queued.pop((table, key), None) is None and table == BOUNDED_TABLE:
            self._queued_bounded += 1
        self._queued[(table, key)] = (fields, blob)  # re-queued at the end: newest last
        if self._queued_bounded > self.max_queued_tasks:
            oldest = next(k for k in self._queued if k[0] == BOUNDED_TABLE)
            del self._queued[oldest]
            self._queued_bounded -= 1
            self.dropped_rows += 1

    def flush(self, now: float) -> None:
        """Resend a stale window, then send queued rows; ``now`` is time.monotonic()."""
        self._resend_if_stale(now)
        batch_rows = max(1, self.config.broker_batch_rows)
        while self._queued and len(self._window) < MAX_INFLIGHT_BATCHES:
            rows = self._take(batch_rows)
            seq = next(self._seq)
            entry = _InFlight(encode(TableBatch(seq, self.node_id, rows)), len(rows), now)
            self._window[seq] = entry
            self._send(entry)

    def _take(self, count: int) -> list[Row]:
        """The oldest ``count`` queued rows, encoded now (only the latest version of each),
        fewer if they add up to more than a message carries (functions' code is big)."""
        rows: list[Row] = []
        size = 0
        for (table, key) in list(itertools.islice(self._queued, count)):
            fields, blob = self._queued[(table, key)]
            if callable(fields):
                fields = fields()
            text = fields if fields is None or type(fields) is str else _to_json(fields)
            size += len(text or "") + (len(blob) if blob else 0) + 64
            if rows and size > self.config.message_budget:
                self._queued[(table, key)] = (fields, blob)  # next batch (still oldest)
                break
            del self._queued[(table, key)]
            self._queued_bounded -= table == BOUNDED_TABLE
            rows.append((table, key, text, blob))
        return rows

    def queued_rows(self) -> int:
        return len(self._queued)

    def handle(self, frames: list[bytes]) -> None:
        """Take a message from ``socket``: a BatchAck settles its batch and every one before
        it (the shard stores a node's batches in order); an ack of a batch already settled
        says the shard is missing the next (it restarted): resend from there at once."""
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the broker at %s: %s", self.endpoint, exc)
            return
        if not isinstance(msg, BatchAck):
            log.warning("dropped a %s from the broker at %s", type(msg).__name__, self.endpoint)
            return
        self.acknowledged = True
        oldest = next(iter(self._window), None)
        if oldest is not None and msg.seq == oldest - 1:  # a repeated ack: the shard lost
            self._resend(time.monotonic(), f"asked for batch {oldest} again")  # the rest
            return
        while self._window and next(iter(self._window)) <= msg.seq:
            self._window.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "queued": len(self._queued),
                "in_flight": len(self._window),
                "resent_batches": self.resent_batches, "dropped_task_rows": self.dropped_rows,
                "acknowledged": self.acknowledged}

    def unacked_rows(self) -> int:
        """Rows recorded but not yet acknowledged (queued or in flight)."""
        in_flight = sum(entry.rows for entry in self._window.values())
        return len(self._queued) + in_flight

    def close(self) -> None:
        self.socket.close(linger=0)

    def _resend_if_stale(self, now: float) -> None:
        oldest = next(iter(self._window.values()), None)
        if oldest is None or now - oldest.sent_at < self.config.broker_ack_timeout_s:
            return
        self._resend(now, f"did not acknowledge in {self.config.broker_ack_timeout_s:.1f}s")

    def _resend(self, now: float, why: str) -> None:
        """Send the whole window again, in order; not again within a short while (each
        batch the shard dropped after a gap asks for it)."""
        if now - self._resent_at < _RESEND_GAP_S:
            return
        self._resent_at = now
        log.info("broker at %s %s; resending %d batches", self.endpoint, why,
                 len(self._window))
        for entry in self._window.values():
            entry.sent_at = now
            self._send(entry)
        self.resent_batches += len(self._window)

    def _send(self, entry: _InFlight) -> None:
        try:
            self.socket.send_multipart(entry.frames, zmq.NOBLOCK)
        except zmq.Again:  # cannot happen with HWM 0, but never block: the resend covers it
            log.warning("broker at %s: send would block; will resend", self.endpoint)


@dataclass
class QueryResult:
    rows: list[StoredRow]  # (key, fields_json, blob, time first stored), oldest first
    dropped_tasks: int  # older tasks the shards did not keep (their history bound)
    bad_rows: int  # rows the shards' logs held that did not check
    unanswered: list[str]  # "shard i at ENDPOINT: why", for each shard that did not answer
    stats: dict[int, dict[str, Any]]  # each answering shard's own (QueryReply.stats)


def query(endpoints: list[str], table: str, limit: int | None = None, key: bytes = b"",
          timeout_s: float = 5.0, credentials: Credentials | None = None) -> QueryResult:
    """Ask the running shards of a GCS (``endpoints``, in shard order) for the rows of
    ``table``: all of them merged oldest first, or the newest ``limit`` overall; with
    ``key``, only the shard that holds it. A shard that does not answer is named in
    ``unanswered``; the others' rows still come back."""
    asked = ([shard_of(key, len(endpoints))] if key else list(range(len(endpoints))))
    context = zmq.Context()
    sockets: dict[int, zmq.Socket] = {}
    replies: dict[int, QueryReply] = {}
    unanswered: list[str] = []
    try:
        for index in asked:
            sock = sockets[index] = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            _connect(sock, endpoints[index], credentials)
            sock.send_multipart(encode(Query(1, table, limit or 0, key)))
        deadline = time.monotonic() + timeout_s
        for index, sock in sockets.items():
            try:
                replies[index] = _await_reply(sock, endpoints[index],
                                              max(0.0, deadline - time.monotonic()))
            except ZrayError as exc:
                unanswered.append(f"shard {index}: {exc}")
    finally:
        for sock in sockets.values():
            sock.close(linger=0)
        context.term()
    try:
        rows = merge_newest([[_stored_row(row) for row in reply.rows]
                             for reply in replies.values()], limit)
    except (ValueError, TypeError) as exc:
        raise ZrayError(f"a broker shard sent malformed {table} rows: {exc}") from exc
    stats = [reply.stats for reply in replies.values()]
    return QueryResult(rows, sum(int(s.get("dropped_tasks", 0)) for s in stats),
                       sum(int(s.get("bad_rows", 0)) for s in stats), unanswered,
                       {index: reply.stats for index, reply in replies.items()})


def _stored_row(row: Any) -> StoredRow:
    if not (type(row) is tuple and len(row) == 4 and type(row[0]) is bytes
            and type(row[1]) is str and type(row[3]) is float):
        raise ValueError(f"not a (key, fields_json, blob, time) row: {row!r:.80}")
    return row


def _await_reply(sock: zmq.Socket, endpoint: str, timeout_s: float) -> QueryReply:
    if sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        try:
            reply = decode(sock.recv_multipart())
        except ProtocolError as exc:
            raise ZrayError(f"broker at {endpoint} sent a malformed reply: {exc}") from exc
        if isinstance(reply, QueryReply):
            return reply
        raise ZrayError(f"broker at {endpoint} answered a query with {type(reply).__name__}")
    raise ZrayError(
        f"broker at {endpoint} did not answer within {timeout_s:.1f}s; is it running? "
        "(a stopped cluster's tables can still be read from its write-ahead logs)"
    )


def _connect(sock: zmq.Socket, endpoint: str, credentials: Credentials | None) -> None:
    try:
        secure_client(sock, endpoint, credentials)
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ZrayError(f"cannot connect to the broker at {endpoint}: {exc}") from exc
