"""A worker's task intake and its direct replies, on the worker's main thread.

::

    owners --ExecuteTask, or a Batch of them--> lane SESSION/lt-<worker id>.sock (this node's,
                                                zray/lane.py), else ROUTER ipc://SESSION/t-<id>.sock
    agent  --ExecuteTask--> rx (the I/O thread) --> queue + a byte on a pipe
    main thread: next() --> run --> hand_in(): TaskDone straight to the owner

An owner may send a lease several short tasks at once (zray/leasing.py). They run in
order; if one blocks in ``get``, every task not started yet goes back to its owner
(NotStarted) so it can run elsewhere: a task never waits behind one that waits for it.

A task's answer is sent before the next task starts, never held for company: the next
task may crash the process, and an answer held in it would be lost with it, so the owner
would run a finished task again and blame it for the crash.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import zmq

from zray import protocol as p
from zray.lane import LaneListener, LaneReader, lane_path
from zray.node.launcher import direct_endpoint
from zray.objects.local import Signal
from zray.protocol import has_input
from zray.rate_limit import RateLimitedLog

if TYPE_CHECKING:
    from zray.core import CoreClient

log = logging.getLogger("zray")

_BLOCKED_CHECK_S = 0.01  # how often a blocked task's worker sends back tasks that came in


class TaskInbox:
    def __init__(self, client: CoreClient, context: zmq.Context, agent_endpoint: str) -> None:
        self._client = client
        self._client_context = context
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.bind(direct_endpoint(agent_endpoint, client.worker_id, "t"))
        self._from_agent: queue.SimpleQueue[p.ExecuteTask | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._lane = LaneListener(lane_path(agent_endpoint, client.worker_id, "t"),
                                  client.config.max_frame_bytes)
        self._poller.register(self._lane.fileno(), zmq.POLLIN)
        self._lanes: dict[int, LaneReader] = {}  # by fd
        self._pending: deque[p.ExecuteTask] = deque()  # sent on a lease, not started
        self._sockets = [self.socket]  # (and, in a cluster, one on TCP: tcp_socket)
        self._complaints = RateLimitedLog(log)

    # --- from the I/O thread ---------------------------------------------------------

    def from_agent(self, task: p.ExecuteTask | None) -> None:
        """A task the agent sent (None: the agent is gone, stop)."""
        self._from_agent.put(task)
        os.write(self._wake_w, b"x")

    # --- the main thread -------------------------------------------------------------

    def next(self) -> p.ExecuteTask | None:
        """The next task to run; while none is here, deferred reports go out."""
        while True:
            if not self._from_agent.empty():
                from_agent = self._from_agent.get_nowait()
                if from_agent is None:  # stop
                    return None
                return from_agent
            if self._pending:  # (a batch received gives many tasks: no poll per task)
                return self._pending.popleft()
            events = dict(self._poller.poll(self._client.tx.deferred_timeout_ms()))
            if not events:
                self._client.tx.flush(time.monotonic())
                continue
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            self._receive(events)

    def wait_blocked(self, event: Signal, timeout: float | None) -> bool:
        """Wait for ``event`` while the running task is blocked: tasks queued behind it go
        back to their owners, now and as they arrive."""
        self._client.tx.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._bounce()
            left = _BLOCKED_CHECK_S if deadline is None else min(
                _BLOCKED_CHECK_S, deadline - time.monotonic())
            if event.wait(max(0.0, left)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def tcp_socket(self) -> zmq.Socket:
        """A second task socket, for owners on other nodes (the caller binds it on TCP,
        once)."""
        sock = self._client_context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        self._sockets.append(sock)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._lane.close()
        for reader in self._lanes.values():
            reader.close()

    def _receive(self, events: dict[Any, int] | None = None) -> None:
        """Take the tasks waiting where ``events`` (a poll's) say, or anywhere (None)."""
        for sock in self._sockets:
            if events is None or sock in events:
                while has_input(sock):
                    frames = sock.recv_multipart(copy=False)
                    msg = self._take(p.received(frames[1:]), sock is not self.socket)
                    if msg is not None:
                        p.send_rejected(sock, frames[0].bytes, msg,
                                        "a task socket takes ExecuteTask")
        ready = [fd for fd in self._lanes if events is None or fd in events]
        if events is None or self._lane.fileno() in events:  # (new lanes: read at once)
            for reader in self._lane.accept():
                self._lanes[reader.fileno()] = reader
                self._poller.register(reader.fileno(), zmq.POLLIN)
                ready.append(reader.fileno())
        for fd in ready:
            reader = self._lanes[fd]
            messages, still_open = reader.read()
            for frames in messages:
                self._take(frames, False)
            if not still_open:
                self._poller.unregister(fd)
                reader.close()
                del self._lanes[fd]

    def _take(self, frames: list[Any], over_tcp: bool) -> p.Message | None:
        """Take one message of tasks; returns one to reject."""
        try:
            msg = p.decode(frames)
            tasks = p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]
        except p.ProtocolError as exc:
            self._complaints.warning("malformed", "dropped a malformed task message: %s", exc)
            return None
        if isinstance(msg, p.Introduce) and over_tcp:
            self._client.introduced(msg)  # (an owner on another node: its first message)
        elif not isinstance(msg, (p.ExecuteTask, p.Batch)):  # (anyone may write here)
            self._complaints.warning("other", "rejected a %s on the task socket",
                                     type(msg).__name__)
            return msg
        else:
            self._pending.extend(t for t in tasks if isinstance(t, p.ExecuteTask))
        return None

    def _bounce(self) -> None:
        self._receive()
        by_owner: dict[bytes, list[bytes]] = {}
        keep: deque[p.ExecuteTask] = deque()  # what the agent sent: an actor's calls stay,
        # in its mailbox's order
        while self._pending:
            task = self._pending.popleft()
            if task.owner and not task.actor_id:
                by_owner.setdefault(task.owner, []).append(task.task_id)
            else:
                keep.append(task)
        self._pending = keep
        for owner, task_ids in by_owner.items():
            self._client.peers.send(owner, p.NotStarted(task_ids))
