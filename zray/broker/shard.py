"""One broker shard: the GCS tables behind a ROUTER socket, made durable by a write-ahead log.

::

    node agent (BrokerLink, DEALER) --TableBatch--> +--------------------+
                                    <--BatchAck---- |  ROUTER  (this     |
    zray inspect (query(), DEALER)  ----Query-----> |  process: Tables   |--append--> WAL
                                    <-QueryReply--- |  + one loop)       |  (SQLite file)
                                                    +--------------------+
    parent process (pidfd, optional): when it dies, the shard exits

Run as ``python -m zray.broker.shard --endpoint ENDPOINT --wal PATH [--parent-pid PID]``;
the config comes from ``ZRAY_*`` environment variables. At start the shard replays its
log into the tables, then binds. Each TableBatch is appended to the log (one committed
transaction), applied to the tables, and only then acknowledged: an ack means the rows
survive the shard's death. A resent batch is applied again, harmlessly (upserts are
idempotent). Malformed frames are logged and dropped. One thread, one loop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from types import FrameType

import zmq

from zray.broker.tables import Row, StoredRow, Tables, check_row
from zray.broker.wal import WriteAheadLog
from zray.config import Config
from zray.exceptions import ZrayError
from zray.protocol import (
    BatchAck,
    Message,
    ProtocolError,
    Query,
    QueryReply,
    Rejected,
    TableBatch,
    bounded_context,
    decode,
    send,
)
from zray.rate_limit import RateLimitedLog

log = logging.getLogger("zray.broker.shard")

# Compaction runs only once the log is this many times longer than the live rows it holds,
# so a shard whose live rows alone exceed wal_compact_rows does not compact on every batch.
_COMPACT_MIN_RATIO = 2


class BrokerShard:
    """The shard's state and its loop; ``run`` until ``stop`` or the parent dies."""

    def __init__(self, endpoint: str, wal_path: str, config: Config, parent_pid: int | None):
        self.endpoint = endpoint
        self.config = config
        self.stopping = False
        self.complaints = RateLimitedLog(log)
        self.wal = WriteAheadLog(wal_path)
        self.tables = Tables(max_task_history=config.max_task_history)
        self.tables.apply(self.wal.replay())
        self.context = bounded_context(config.max_frame_bytes)
        self.socket = self._bind(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.parent_fd = _watch_parent(parent_pid)
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished peer raises, not drops
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ZrayError(
                f"broker shard cannot bind {endpoint}: {exc}; is another shard running there?"
            ) from exc
        return sock

    def run(self) -> None:
        log.info("serving %s with %d rows replayed from %s", self.endpoint, len(self.tables),
                 self.wal.path)
        while not self.stopping:
            events = dict(self.poller.poll(self.config.poll_interval_ms))
            if self.parent_fd is not None and self.parent_fd in events:
                log.info("parent process died; exiting")
                return
            if self.socket in events:
                self._drain()

    def _drain(self) -> None:
        """Handle every message already queued, so one poll serves a burst."""
        while not self.stopping:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            log.warning("dropped a message of %d frames (expected identity, message)",
                        len(frames))
            return
        identity = frames[0]
        try:
            msg = decode(frames[1:])
        except ProtocolError as exc:
            self.complaints.warning("malformed", "dropped a malformed message from %s: %s",
                                    identity.hex(), exc)
            return
        if isinstance(msg, TableBatch):
            self._on_batch(identity, msg)
        elif isinstance(msg, Query):
            self._on_query(identity, msg)
        else:
            self.complaints.warning(type(msg).__name__, "rejected a %s from %s: not a broker "
                                    "message", type(msg).__name__, identity.hex())
            self._send(identity, Rejected(msg.op, "a broker shard takes TableBatch and Query"))

    def _on_batch(self, identity: bytes, batch: TableBatch) -> None:
        rows = _valid_rows(batch)
        try:
            self.wal.append(rows)
        except ZrayError as exc:  # not acknowledged, so the sender resends it later
            log.error("batch %d from node %s not stored: %s", batch.seq, batch.node_id.hex(), exc)
            return
        self.tables.apply(rows)
        self._send(identity, BatchAck(batch.seq))
        self._maybe_compact()

    def _on_query(self, identity: bytes, query: Query) -> None:
        limit = query.limit if query.limit > 0 else None  # 0 asks for every row
        try:
            rows = self.tables.rows(query.table, limit)
        except ValueError as exc:
            log.warning("query from %s: %s", identity.hex(), exc)
            rows = []
        self._send(identity, QueryReply(query.request_id, self._fitting(rows)))

    def _fitting(self, rows: list[StoredRow]) -> list[StoredRow]:
        """The newest of ``rows`` that one reply carries."""
        budget = self.config.message_budget
        start = len(rows)
        while start and budget >= 0:
            start -= 1
            budget -= len(rows[start][1]) + len(rows[start][2] or b"") + 64
        return rows[start + (budget < 0):]

    def _send(self, identity: bytes, msg: Message) -> None:
        try:
            send(self.socket, msg, identity, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer left; it resends if it cares
            log.warning("could not send %s to %s: %s", type(msg).__name__, identity.hex(), exc)

    def _maybe_compact(self) -> None:
        count = self.wal.row_count()
        if count <= self.config.wal_compact_rows or count <= _COMPACT_MIN_RATIO * len(self.tables):
            return
        try:
            self.wal.compact(self.tables.snapshot())
        except ZrayError as exc:  # the old log is intact; try again after the next batch
            log.error("compaction failed: %s", exc)
            return
        log.info("compacted the log from %d to %d rows", count, self.wal.row_count())

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
        self.wal.close()
        if self.endpoint.startswith("ipc://"):  # libzmq leaves the socket file behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint.removeprefix("ipc://"))
        if self.parent_fd is not None:
            os.close(self.parent_fd)


def _valid_rows(batch: TableBatch) -> list[Row]:
    """The batch's well-formed rows; bad ones are logged and skipped, not fatal to the batch.

    Skipping (rather than refusing the batch) keeps one bad row from stalling its sender,
    which would otherwise resend the batch forever.
    """
    rows = []
    for row in batch.rows:
        try:
            rows.append(check_row(row))
        except ValueError as exc:
            log.warning("batch %d from node %s: dropped a bad row: %s",
                        batch.seq, batch.node_id.hex(), exc)
    return rows


def _watch_parent(pid: int | None) -> int | None:
    """A pidfd that becomes readable when ``pid`` exits; exits at once if it is gone."""
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        log.info("parent process %d is already gone; exiting", pid)
        sys.exit(0)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zray.broker.shard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="ipc://PATH or tcp://127.0.0.1:PORT")
    parser.add_argument("--wal", required=True, help="path of the SQLite write-ahead log")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it dies")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[broker] %(levelname)s %(message)s")
    args = _parse_args(argv)
    try:
        shard = BrokerShard(args.endpoint, args.wal, Config.from_env(), args.parent_pid)
    except (ZrayError, ValueError) as exc:
        log.error("%s", exc)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        shard.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        shard.run()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
