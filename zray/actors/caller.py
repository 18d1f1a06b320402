"""The caller's side of actor calls: straight to the actor's worker when it can, in order.

::

    caller                                           node agent (the actor's mailbox)
      h.m.remote() --SubmitTask(direct, sent_to=W) --> records the call as running on W,
                     deferred into a Batch on tx       pins its arguments, expects results
                   --ExecuteTask--> W's task socket (the actor's worker)
      direct ROUTER <--TaskDone---- W
                   --TaskDone, in a Batch -----------> files the answer (we hold it)

The agent tells a caller where an actor's worker is (ActorAddress) when it first passes
it one of its calls, and tells it again, with no worker, when that worker dies. Until
then, and for calls the caller cannot send itself (an argument not here yet, or refs
nested in the arguments), calls go through the agent's mailbox.

While calls of the line are in flight, further direct calls wait here (``corked``) and go
together, in one message, when an answer comes back, when the caller waits, or after the
batch window: a burst of calls costs the caller one send and the worker one wake-up per
batch, not per call (each is still answered on its own), and a lone call goes at once.

A caller's calls run in the order it made them, as in Ray. One caller's direct calls
travel one socket, which keeps their order, and the worker starts them in arrival order;
but the two paths do not keep order between them. So a caller changes path only once
nothing is in flight on the other one: a call that could overtake waits here (``held``),
with its arguments held, until the other path has drained.

What becomes of calls in flight when the worker dies is the agent's decision, as for calls
it sent itself: it knows them from the notices, and once we have told it which we have
answers for (our reports, then CallsReported), it retries the others in the restarted
actor while ``max_task_retries`` allows, or fails them.

Locks: ``ActorCaller.lock`` is taken before the core's tx lock, never after it. Calls to
workers are queued under it and sent, in order, once it is released (zray/peers.py Outbox).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from zray import protocol as p
from zray.ids import return_object_id
from zray.peers import Outbox, Peers
from zray.sender import AgentSender


@dataclass(eq=False)
class _Call:
    notice: p.SubmitTask  # as sent through the agent
    deps: list[Any] | None  # its arguments' Locations here; None: only the agent can send it
    keep: Any  # the refs among its arguments: held until the agent has the notice
    cancelled: bool = False


@dataclass(eq=False)
class _Line:
    """One caller's calls to one actor."""

    worker: bytes = b""  # the actor's worker, while it is known to be alive
    gpu_ids: list[int] = field(default_factory=list)
    via_agent: set[bytes] = field(default_factory=set)  # in flight, by task id
    direct: set[bytes] = field(default_factory=set)
    held: deque[_Call] = field(default_factory=deque)
    corked: list[p.Message] = field(default_factory=list)  # direct, not sent yet
    corked_at: float = 0.0

    def idle(self) -> bool:
        return not (self.worker or self.via_agent or self.direct or self.held)


class ActorCaller:
    """One per process that calls actors (driver or worker)."""

    def __init__(self, worker_id: bytes, peers: Peers, tx: AgentSender, window_s: float) -> None:
        self.lock = threading.Lock()
        self._locked = Outbox(peers, self.lock)  # the lock; calls to workers sent after
        self._worker_id = worker_id
        self._peers = peers
        self._tx = tx
        self._window_s = window_s
        self._lines: dict[bytes, _Line] = {}  # by actor id
        self._in_flight: dict[bytes, bytes] = {}  # task id -> actor id, until answered
        self._corked: set[bytes] = set()  # actor ids of lines with corked calls

    # --- from user threads -----------------------------------------------------------

    def call(self, notice: p.SubmitTask, deps: list[Any] | None, keep: Any) -> None:
        with self._locked:
            line = self._lines.setdefault(notice.actor_id, _Line())
            self._in_flight[notice.task_id] = notice.actor_id
            line.held.append(_Call(notice, deps, keep))
            self._pump(line)

    def forget_locations(self, object_ids: set[bytes]) -> None:
        """These objects left their blocks (CoreClient._release_blocks): held calls that
        would send their old places go through the agent instead."""
        with self._locked:
            for line in self._lines.values():
                for call in line.held:
                    if call.deps is not None and any(
                            loc is not None and loc[0] in object_ids for loc in call.deps):
                        call.deps = None

    def cancel(self, task_id: bytes) -> bool:
        """Cancel a call still held here: it goes to the agent at once, with the cancel
        right behind it, so it never runs (order does not matter for it). False if the
        call is not held here (the agent cancels it, wherever it is)."""
        with self._locked:
            line = self._lines.get(self._in_flight.get(task_id, b""))
            call = next((c for c in line.held if c.notice.task_id == task_id), None) \
                if line is not None else None
            if line is None or call is None:
                return False
            line.held.remove(call)
            call.cancelled = True
            self._send_via_agent(line, call)
            self._pump(line)
            return True

    # --- from the I/O thread ---------------------------------------------------------

    def answered(self, task_id: bytes) -> bool:
        """The call's results are here (from the actor, or failed by the agent); False if
        ``task_id`` is not a call of ours in flight."""
        actor_id = self._in_flight.pop(task_id, None)
        if actor_id is None:  # most results are not actor calls'
            return False
        line = self._lines[actor_id]
        line.via_agent.discard(task_id)
        line.direct.discard(task_id)
        # Without the lock when nothing waits (the common case: the submitting thread
        # would contend for it). call() adds to held before it looks at the sets, and
        # this looks at held after changing them, so a call held meanwhile is seen.
        if line.held or line.corked or not line.worker:
            with self._locked:
                self._uncork(actor_id, line)
                self._pump(line)
                if line.idle() and self._lines.get(actor_id) is line:
                    del self._lines[actor_id]
        return True

    def corked(self) -> bool:
        """Whether calls wait here to go together (``flush`` sends them when due)."""
        return bool(self._corked)

    def flush(self, now: float | None = None) -> None:
        """Send corked calls: all (``now`` None: the caller waits), or those older than
        the batch window."""
        if not self._corked:
            return
        with self._locked:
            for actor_id in list(self._corked):
                line = self._lines[actor_id]
                if now is None or now - line.corked_at >= self._window_s:
                    self._uncork(actor_id, line)

    def moved(self, msg: p.ActorAddress) -> None:
        """The agent says where the actor's worker is now. b"": it is gone (dead or
        restarting), and the agent waits to hear which calls it had we got answers for:
        their reports went before this (answers are taken before the agent's messages,
        CoreClient._io_loop), and the calls we never sent it are named."""
        for kind, address in msg.addresses.items():  # (an actor on another node)
            self._peers.route(msg.worker_id, kind, address)
        unsent = self._move(msg.actor_id, msg.worker_id, list(msg.gpu_ids))
        if not msg.worker_id:
            self._tx.send(p.CallsReported(msg.actor_id, unsent))

    def forget(self, actor_id: bytes) -> None:
        """zray.kill() from this process: later calls go through the agent, behind the
        kill, instead of racing it straight to the worker."""
        self._move(actor_id, b"", [])

    def _move(self, actor_id: bytes, worker: bytes, gpu_ids: list[int]) -> list[bytes]:
        """Calls go to ``worker`` from now on; returns the corked calls dropped, never sent
        to the worker that went (the agent has their notices, and runs them)."""
        unsent: list[bytes] = []
        with self._locked:
            line = self._lines.get(actor_id)
            if line is None:
                if not worker:
                    return unsent
                line = self._lines[actor_id] = _Line()
            if line.worker and not worker:  # gone: drop what is queued for it
                self._peers.forget(line.worker)
                unsent = [call.task_id for call in line.corked
                          if isinstance(call, p.ExecuteTask)]
                line.corked.clear()
                self._corked.discard(actor_id)
            line.worker, line.gpu_ids = worker, gpu_ids
            self._pump(line)
            if line.idle():
                del self._lines[actor_id]
        return unsent

    def worker_of(self, actor_id: bytes) -> bytes:
        """The worker our calls to this actor go to straight, b"" while through the agent."""
        line = self._lines.get(actor_id)
        return line.worker if line is not None else b""

    # --- under the lock --------------------------------------------------------------

    def _pump(self, line: _Line) -> None:
        """Send held calls from the head, each on its path once the other one is empty."""
        while line.held:
            call = line.held[0]
            if call.deps is not None and line.worker:
                if line.via_agent:
                    return
                self._send_direct(line, call)
            else:
                if line.direct:
                    return
                self._send_via_agent(line, call)
            line.held.popleft()

    def _send_direct(self, line: _Line, call: _Call) -> None:
        n = call.notice
        assert call.deps is not None
        line.direct.add(n.task_id)
        # The notice keeps the arguments: if the worker dies, the agent runs the call again
        # in the restarted actor.
        self._tx.defer(p.SubmitTask(
            n.task_id, n.job_id, b"", n.name, n.args, n.deps, n.contained, n.num_returns,
            n.resources, n.max_retries, n.retry_filter, n.actor_id, {}, True, line.worker,
            n.parent, placement=n.placement),
            soon=False, awaited=False)
        execute = p.ExecuteTask(n.task_id, n.job_id, b"", n.name, n.args, call.deps,
                                n.num_returns, n.retry_filter, line.gpu_ids, None, 0,
                                n.actor_id, {}, self._worker_id)
        if len(line.direct) == 1:  # nothing else in flight: at once
            self._locked.put(line.worker, execute, "t")
            return
        if not line.corked:
            line.corked_at = time.monotonic()
            self._corked.add(n.actor_id)
        line.corked.append(execute)

    def _uncork(self, actor_id: bytes, line: _Line) -> None:
        if line.corked:
            self._locked.put(line.worker, p.one_or_batch(line.corked), "t")
            line.corked = []
        self._corked.discard(actor_id)

    def _send_via_agent(self, line: _Line, call: _Call) -> None:
        line.via_agent.add(call.notice.task_id)
        self._tx.defer(call.notice, soon=False)  # (flushed when the caller waits)
        if call.cancelled:
            self._tx.send(p.CancelTask(return_object_id(call.notice.task_id, 0), False))
