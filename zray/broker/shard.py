"""One broker shard: its keys of the GCS tables behind a ROUTER socket, made durable by a
write-ahead log.

::

    node agent (BrokerLink, DEALER) --TableBatch--> +--------------------+
                                    <--BatchAck---- |  ROUTER  (this     |
    zray inspect (query(), DEALER)  ----Query-----> |  process: Tables   |--append--> WAL
                                    <-QueryReply--- |  + one loop)       |  (SQLite file)
                                                    +--------------------+
    supervisor (zray/broker/supervisor.py) forks it, restarts it when it dies; when the
    supervisor dies, the shard exits

Shard ``index`` of ``shards`` holds the keys with ``shard_of(key, shards) == index`` (rows
for other keys are refused) and the newest ``max_task_history / shards`` tasks. At start it
replays its log into the tables, then binds. The TableBatches of one pass of its loop are
appended to the log in one transaction (a group commit), applied to the tables, and only
then acknowledged: an ack means the rows survive the shard's death. Each node's batches are
stored in their order only (TableBatch: go-back-N), so a batch resent after a restart is
never applied twice or out of order. Malformed frames are logged and dropped. One thread,
one loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import signal
import sys
import time
from types import FrameType

import zmq

from zray.broker.liveness import Liveness
from zray.broker.tables import TABLES, Row, StoredRow, Tables, check_row, shard_of
from zray.broker.wal import MemoryLog, WriteAheadLog
from zray.config import Config
from zray.exceptions import ZrayError
from zray.mesh.auth import Credentials, Gatekeeper, secure_server
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
_OURS = b"gcs"  # the sender of the rows a shard writes itself (nodes' deaths), in its log
_BEAT_S = 1.0  # how often each table's last message number is published again


class BrokerShard:
    """The shard's state and its loop; ``run`` until ``stop`` or the parent dies."""

    def __init__(self, endpoint: str, wal_path: str, config: Config, parent_pid: int | None,
                 index: int = 0, shards: int = 1, publish: str | None = None,
                 credentials: Credentials | None = None):
        """``credentials``: those of the cluster's token, which a TCP shard asks of every
        peer (zray/mesh/auth.py); a ``tcp://HOST:*`` endpoint takes a free port."""
        self.config = config
        self.index, self.shards = index, shards
        self.stopping = False
        self.complaints = RateLimitedLog(log)
        self.wal = WriteAheadLog(wal_path) if config.gcs_log else MemoryLog(wal_path)
        self.rows_stored = 0  # since this process started
        self.tables = Tables(max_task_history=max(1, config.max_task_history // shards))
        self.bad_rows = self.wal.replay(self.tables)
        self.liveness = Liveness(config.node_timeout_s)  # (zray/broker/liveness.py)
        self.liveness.replayed(self.tables, time.monotonic())
        self._stored = dict(self.wal.applied)  # node -> last batch seq, pending ones too
        self._pending: list[tuple[bytes, TableBatch, list[Row]]] = []
        self.context = bounded_context(config.max_frame_bytes)
        self.credentials = credentials
        self.gatekeeper = Gatekeeper(self.context, credentials) if credentials else None
        self.socket = self._bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # Rows as they change, for subscribers (the Clone pattern, zray/broker/follow.py):
        # a message per table per commit, numbered per table in this process's life
        # (``epoch``).
        self.publisher = self._bind_publisher(publish) if publish else None
        self.publish = (self.publisher.getsockopt_string(zmq.LAST_ENDPOINT)
                        if self.publisher else None)
        if self.gatekeeper is not None:
            self.gatekeeper.start()
        self.epoch = os.urandom(8)
        self.published: dict[str, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.parent_fd = _watch_parent(parent_pid)
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)
        self._wake_r = -1

    def wake_on_signals(self) -> None:
        """A signal (SIGTERM: stop) wakes the loop at once (from the main thread only)."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.poller.register(self._wake_r, zmq.POLLIN)

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished peer raises, not drops
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        self._secure(sock, endpoint)
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
        beat = time.monotonic()
        while not self.stopping:
            events = dict(self.poller.poll(int(_BEAT_S * 1000)))
            if time.monotonic() - beat >= _BEAT_S:
                beat = time.monotonic()
                self._heartbeat()
                self._declare_dead()
            if self._wake_r in events:
                os.read(self._wake_r, 512)  # a signal; its handler has run
            if self.parent_fd is not None and self.parent_fd in events:
                log.info("parent process died; exiting")
                return
            if self.socket in events:
                self._drain()

    def _drain(self) -> None:
        """Handle every message already queued, so one poll serves a burst; then store the
        batches it brought in one transaction, and acknowledge them."""
        while not self.stopping:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(frames)
        self._commit()

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
        last = self._stored.get(batch.node_id, 0)
        if batch.seq <= last:  # stored before (a resend): acknowledged again, not applied
            self._send(identity, BatchAck(batch.seq))
        elif batch.seq == last + 1:
            self._stored[batch.node_id] = batch.seq
            self._pending.append((identity, batch, self._own_rows(batch)))
        else:  # an earlier batch was lost (this shard restarted): dropped; the ack of the
            # last one stored (committed) asks the sender to resend from the gap
            self._send(identity, BatchAck(self.wal.applied.get(batch.node_id, 0)))

    def _commit(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        at = time.time()
        try:
            self.wal.append([(rows, at, batch.node_id, batch.seq) for _, batch, rows in pending])
        except ZrayError as exc:  # not acknowledged, so the senders resend them later
            log.error("%d batches not stored: %s", len(pending), exc)
            self._stored = dict(self.wal.applied)
            return
        now = time.monotonic()
        for identity, batch, rows in pending:
            self.rows_stored += len(rows)
            self.tables.apply(rows, at)
            self.liveness.stored(rows, now)
            self._publish(rows, at)
            self._send(identity, BatchAck(batch.seq))
        self._maybe_compact()

    def _declare_dead(self) -> None:
        """Nodes silent past node_timeout_s get their DEAD row, stored as ours."""
        rows = self.liveness.expired(self.tables, time.monotonic())
        if not rows:
            return
        seq = self.wal.applied.get(_OURS, 0) + 1
        at = time.time()
        try:
            self.wal.append([(rows, at, _OURS, seq)])
        except ZrayError as exc:  # (the next beat declares them again)
            log.error("could not store %d nodes' deaths: %s", len(rows), exc)
            self.liveness.not_declared(rows, time.monotonic())
            return
        for _, key, fields, _ in rows:
            log.warning("node %s declared dead: %s", key.hex()[:12],
                        json.loads(fields or "{}").get("death"))
        self.tables.apply(rows, at)
        self._publish(rows, at)

    def _bind_publisher(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        # A subscriber that falls this far behind loses messages (it sees the gap in their
        # numbers and takes a fresh snapshot): the shard's memory stays bounded.
        sock.setsockopt(zmq.SNDHWM, self.config.gcs_publish_queue)
        self._secure(sock, endpoint)
        sock.bind(endpoint)
        return sock

    def _secure(self, sock: zmq.Socket, endpoint: str) -> None:
        if endpoint.startswith("tcp://"):
            if self.credentials is None or self.gatekeeper is None:
                raise ZrayError(f"a shard binds {endpoint} only with the cluster's token")
            host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
            secure_server(sock, host, self.credentials)
            self.gatekeeper.watch(sock)

    def _publish(self, rows: list[Row], at: float) -> None:
        if self.publisher is None:
            return
        by_table: dict[str, list[tuple[bytes, str | None, float]]] = {}
        for table, key, fields, _ in rows:
            by_table.setdefault(table, []).append((key, fields, at))
        for table, changed in by_table.items():
            number = self.published[table] = self.published.get(table, 0) + 1
            self.publisher.send_multipart(
                [table.encode(), self.epoch + number.to_bytes(8, "big"),
                 pickle.dumps(changed, protocol=5)], zmq.NOBLOCK)

    def _heartbeat(self) -> None:
        """Each table's last number, with no rows: a subscriber that lost the last messages
        (and would hear nothing more while nothing changes) sees the gap, and a new one
        learns that its subscription has arrived."""
        if self.publisher is not None:
            for table in TABLES:
                number = self.published.get(table, 0)
                self.publisher.send_multipart(
                    [table.encode(), self.epoch + number.to_bytes(8, "big"), b""], zmq.NOBLOCK)

    def _own_rows(self, batch: TableBatch) -> list[Row]:
        """The batch's well-formed rows of this shard's keys (not bringing a dead node
        back); others are logged, skipped."""
        rows = []
        for row in _valid_rows(batch):
            if shard_of(row[1], self.shards) == self.index:
                rows.append(row)
            else:
                self.complaints.warning("not-mine", "batch %d from node %s: dropped a row of "
                                        "key %s, which belongs to shard %d", batch.seq,
                                        batch.node_id.hex(), row[1].hex(),
                                        shard_of(row[1], self.shards))
        return self.liveness.admit(rows, self.tables, batch.node_id)

    def _on_query(self, identity: bytes, query: Query) -> None:
        self._commit()  # what came before it is stored (and acknowledged) first
        limit = query.limit if query.limit > 0 else None  # 0 asks for every row
        try:
            rows = ([row for row in [self.tables.get(query.table, query.key)] if row]
                    if query.key else self.tables.rows(query.table, limit))
        except ValueError as exc:
            log.warning("query from %s: %s", identity.hex(), exc)
            rows = []
        stats = {"dropped_tasks": self.tables.dropped_tasks, "bad_rows": self.bad_rows,
                 "rows_stored": self.rows_stored, "tasks": self.tables.count("tasks"),
                 "epoch": self.epoch.hex(), "published": self.published.get(query.table, 0)}
        self._send(identity, QueryReply(query.request_id, self._fitting(rows), stats))

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
            self.wal.compact(self.tables.snapshot(), self.tables.dropped_tasks)
        except ZrayError as exc:  # the old log is intact; try again after the next batch
            log.error("compaction failed: %s", exc)
            return
        log.info("compacted the log from %d to %d rows", count, self.wal.row_count())

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.publisher is not None:
            self.publisher.close(linger=0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.context.term()
        self.wal.close()
        for endpoint in (self.endpoint, self.publish):
            if endpoint and endpoint.startswith("ipc://"):  # libzmq leaves the file behind
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(endpoint.removeprefix("ipc://"))
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
    parser.add_argument("--index", type=int, default=0, help="this shard's number, from 0")
    parser.add_argument("--shards", type=int, default=1, help="the GCS's number of shards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return serve(args.endpoint, args.wal, Config.from_env(), args.parent_pid, args.index,
                 args.shards)


def serve(endpoint: str, wal: str, config: Config, parent_pid: int | None, index: int = 0,
          shards: int = 1, ready_fd: int | None = None, publish: str | None = None,
          credentials: Credentials | None = None) -> int:
    """Run a shard until SIGTERM or its parent's death; its exit code. ``ready_fd``: a
    pipe to write to once the log is replayed and the sockets bound: the JSON list of the
    endpoints bound (a free port taken for ``tcp://HOST:*``)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format=f"[broker-{index}] %(levelname)s %(message)s")
    try:
        shard = BrokerShard(endpoint, wal, config, parent_pid, index, shards, publish,
                            credentials)
    except (ZrayError, ValueError, zmq.ZMQError) as exc:
        log.error("%s", exc)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        shard.stopping = True

    signal.signal(signal.SIGTERM, stop)
    shard.wake_on_signals()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # (under a supervisor it is:
        signal.signal(signal.SIGINT, stop)  # Ctrl-C goes to the driver, which stops us)
    if ready_fd is not None:
        os.write(ready_fd, json.dumps([shard.endpoint, shard.publish]).encode())
        os.close(ready_fd)
    try:
        shard.run()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
