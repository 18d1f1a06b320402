"""The owner's side of direct task submission: leased workers, tasks sent straight to them.

::

    owner (driver or worker)                               node agent
      f.remote() --SubmitTask(direct=True), on tx -------> pins the arguments, expects the
                                                           results, records the task
                 --RequestLease(function, shape) ------->  queued like a task of that shape
                 <-LeaseGranted(worker) -----------------  once resources and a worker fit
      Peers DEALER --ExecuteTask--> worker's direct ROUTER  ipc://SESSION/d-<worker id>.sock
      direct ROUTER <--TaskDone---- worker
                 --TaskDone, in a Batch ---------------->  files the results: the owner holds
                                                           them, so a worker that dies after
                                                           answering loses none
                 --ReturnLease ------------------------->  after lease_idle_ms without work,
                                                           or when the agent asks for it

A task's round trip crosses no third process: the agent decides where work runs (it grants
leases from the same queues as its own tasks) and keeps the object directory, but relays no
task. Once every lease the owner may get is in use, it sends tasks ahead, by how long
its function's tasks have run so far (``_depth``): very short ones many at a time, in one
message (each answered before the next starts); short ones one ahead, so the worker starts
the next at once instead of idling for a round trip; long ones never, so a long task does not hold
another back while a worker is free. A task that blocks in ``get`` sends back the ones
behind it (NotStarted; zray/node/inbox.py). The owner retries
a task whose worker died (``max_retries``) or whose exception its ``retry_exceptions``
accepts, and reports every outcome to the agent.

Locks: ``DirectSubmitter.lock`` is taken before the core's tx lock, never after it. Messages to
workers are queued under it and sent, in order, once it is released (``Outbox``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zray import protocol as p
from zray.ids import task_of
from zray.lineage import Lineage
from zray.node import failures
from zray.peers import Outbox, Peers

# (function id, resource shape, strategy, runtime_env): tasks that may share a lease
ClassKey = tuple[bytes, tuple[tuple[str, float], ...], tuple[tuple[str, Any], ...], str]
# A lease on another node's worker gets this many times as many tasks ahead: each answer
# crosses two agents, and the worker must not idle meanwhile.
_REMOTE_DEPTH = 4


@dataclass(eq=False)
class DirectTask:
    """A task the owner runs on a lease: what it sends, and its retry budget."""

    task_id: bytes
    job_id: bytes
    function_id: bytes
    name: str
    args: bytes
    deps: list[Any]  # Locations of the top-level ref arguments; None: not here yet
    num_returns: int
    retry_filter: bytes
    max_retries: int
    resources: dict[str, float]
    dep_ids: list[bytes]
    strategy: dict[str, Any] = field(default_factory=dict)  # where its leases may be
    placement: dict[str, Any] = field(default_factory=dict)  # its placement group's
    runtime_env: str = ""  # resolved (zray/runtime_env.py): its workers'
    missing: set[bytes] = field(default_factory=set)  # results of ours it waits for
    attempt: int = 0
    cancelled: bool = False
    retries_left: int = field(init=False)
    key: ClassKey = field(init=False)  # its leases: function and resource shape

    def __post_init__(self) -> None:
        self.retries_left = self.max_retries
        self.key = (self.function_id, tuple(sorted(self.resources.items())),
                    tuple(sorted(self.strategy.items())), self.runtime_env)


@dataclass(eq=False)
class Lease:
    lease_id: bytes
    key: ClassKey
    worker: bytes = b""
    gpu_ids: list[int] = field(default_factory=list)
    remote: bool = False  # a worker of another node, reached through two agents
    running: deque[DirectTask] = field(default_factory=deque)  # sent, in order; the first
    idle_since: float = 0.0                                    # one is the one running


def recent_seconds(previous: float | None, seconds: float) -> float:
    """A moving average of how long a function's tasks ran: the owner's guess of the next
    one's, for how many to send ahead."""
    return seconds if previous is None else 0.8 * previous + 0.2 * seconds


def _depth(task_seconds: float) -> int:
    """How many tasks a lease may hold (one running, the rest sent ahead).

    Under 10 ms, two go ahead, not one: a task's next one is sent when its result is back
    here, a round trip of about 0.4 ms, so with one ahead a worker whose queued task is
    shorter than that waits idle (measured: 1,000 tasks of 0-5 ms left each worker idle
    after about 6% of its tasks, 0.5 ms each time)."""
    if task_seconds < 0.0005:
        return 16
    return 3 if task_seconds < 0.01 else 1


class DirectSubmitter:
    """One per process that submits tasks (driver or worker)."""

    def __init__(self, worker_id: bytes, peers: Peers, send_to_agent: Callable[[p.Message], None],
                 report_to_agent: Callable[[p.Message], None],
                 file_results: Callable[[list[Any]], None],
                 locate: Callable[[bytes], Any], total_cpus: float, lease_idle_s: float,
                 lineage: Lineage) -> None:
        self.lock = threading.Lock()
        self._locked = Outbox(peers, self.lock)  # the lock; messages to workers sent after
        self.lineage = lineage  # finished tasks kept to rebuild lost results
        self.rebuilt = 0  # tasks run again to rebuild a lost result
        self._worker_id = worker_id
        self._peers = peers
        self._send_to_agent = send_to_agent
        self._report = report_to_agent  # a task's outcome, deferred into a Batch
        self._file_results = file_results
        self._locate = locate  # an object's location here, or None
        self._waiting: dict[bytes, list[DirectTask]] = {}  # our result -> tasks taking it
        self._total_cpus = total_cpus
        self._lease_idle_s = lease_idle_s
        self._lease_ids = itertools.count(1)
        self.functions: dict[bytes, bytes] = {}  # function id -> blob, to send with tasks
        self._sent_functions: dict[bytes, set[bytes]] = {}  # worker -> function ids it has
        self._queues: dict[ClassKey, deque[DirectTask]] = {}
        self._requested: dict[ClassKey, int] = {}  # lease requests not yet granted, per key
        self._pending_keys: dict[bytes, ClassKey] = {}  # lease id requested -> its key
        self._task_time: dict[ClassKey, float] = {}  # moving average of one task's time
        self.leases: dict[bytes, Lease] = {}  # granted, by lease id
        self.tasks: dict[bytes, DirectTask] = {}  # queued or running, by task id
        self._on_lease: dict[bytes, Lease] = {}  # task id -> the lease it was sent on

    # --- from user threads -----------------------------------------------------------

    def submit(self, task: DirectTask) -> None:
        """Queue the task; one taking results of ours not back yet waits for them here
        (so a chain of tasks never goes through the agent to wait)."""
        self.lineage.submitted(task.task_id, task.num_returns, task.dep_ids)
        with self._locked:
            self.tasks[task.task_id] = task
            for i, object_id in enumerate(task.dep_ids):
                if task.deps[i] is None:
                    location = self._locate(object_id)
                    if location is None:
                        if object_id not in task.missing:  # (f.remote(x, x): wait once)
                            task.missing.add(object_id)
                            self._waiting.setdefault(object_id, []).append(task)
                    else:
                        self._resolve(task, location)
            if not task.missing and task.task_id in self.tasks:
                self._queues.setdefault(task.key, deque()).append(task)
                self._pump(task.key)

    def cancel(self, task_id: bytes, force: bool) -> bool:
        """Cancel a task of this owner's; False if it is not one (or is finished)."""
        with self._locked:
            task = self.tasks.get(task_id)
            if task is None:
                return False
            task.cancelled = True
            lease = self._on_lease.get(task_id)
            if lease is None:  # still queued here, or waiting for arguments: it never runs
                if not task.missing:
                    self._queues[task.key].remove(task)
                self._fail(task, failures.cancelled(task.name))
            elif force and lease.running[0] is task:  # running: its worker is killed;
                behind = list(lease.running)[1:]  # those sent ahead of it run elsewhere
                self._end_lease(lease)
                self._send_to_agent(p.ReturnLease(lease.lease_id, True))
                self._queues[task.key].extendleft(reversed(behind))
                self._fail(task, failures.cancelled(task.name))
                self._pump(task.key)
            else:  # the worker interrupts it, or drops it if it has not started yet
                self._locked.put(lease.worker, p.CancelRunning(task_id), "d")
            return True

    def return_idle(self) -> None:
        """Give back every lease not running a task (the agent asked, or we are about to
        ask it what is free)."""
        with self._locked:
            for lease in [lease for lease in self.leases.values() if not lease.running]:
                self._return(lease)

    # --- from the I/O thread ---------------------------------------------------------

    def on_granted(self, msg: p.LeaseGranted) -> None:
        with self._locked:
            key = self._answered_locked(msg.lease_id)
            if key is None:
                return
            for kind, address in msg.addresses.items():  # (a worker on another node)
                self._peers.route(msg.worker_id, kind, address)
            lease = self.leases[msg.lease_id] = Lease(msg.lease_id, key, msg.worker_id,
                                                      list(msg.gpu_ids), msg.remote)
            lease.idle_since = time.monotonic()
            self._pump(key)

    def on_done(self, answers: list[p.TaskDone], from_agent: bool) -> None:
        """Answers from workers (several at once: each lease then gets its next tasks in one
        message), or passed on by the agent (``from_agent``: results holding refs)."""
        with self._locked:
            keys = {key for key in (self._done_locked(msg, from_agent) for msg in answers)
                    if key is not None}
            for key in keys:
                self._pump(key)

    def _done_locked(self, msg: p.TaskDone, from_agent: bool) -> ClassKey | None:
        task = self.tasks.get(msg.task_id)
        lease = self._on_lease.get(msg.task_id)
        if task is None or lease is None or msg.attempt != task.attempt:
            return None  # stale: an attempt given up on (its worker died, or a forced cancel)
        self._took(task.key, msg.seconds)
        self._off_lease(lease, task, time.monotonic())
        if msg.retryable and task.retries_left > 0 and not task.cancelled:
            task.retries_left -= 1
            task.attempt += 1
            self._queues[task.key].appendleft(task)
        else:
            del self.tasks[task.task_id]
            self.lineage.finished(task, not task.cancelled and not failures.any_error(msg.results))
            self._file_results(msg.results)
            self._results_here(msg.results)
            if msg.retryable:  # the worker left the decision to us: final
                self._report(p.TaskDone(msg.task_id, msg.attempt, msg.results, msg.contained,
                                        False, self._worker_id, msg.seconds, msg.pid,
                                        msg.error, msg.started))
            elif not from_agent:  # the agent learns the outcome from us, who hold it
                self._report(msg)
        return lease.key

    def resize(self, total_cpus: float) -> None:
        """The cluster has this many CPUs now: as many leases may be asked for."""
        with self._locked:
            self._total_cpus = total_cpus
            for key in list(self._queues):
                self._pump(key)

    def on_refused(self, msg: p.LeaseRefused) -> None:
        """No node may grant the lease: every task waiting for one of its kind fails."""
        with self._locked:
            key = self._answered_locked(msg.lease_id)
            if key is None:
                return
            queue = self._queues.get(key, deque())
            while queue:
                self._fail(queue.popleft(), msg.error)

    def on_not_started(self, msg: p.NotStarted) -> None:
        """The worker's running task blocked: these go back to the queue, in order, and
        tasks of their function are no longer sent ahead."""
        with self._locked:
            keys = set()
            for task_id in reversed(msg.task_ids):
                task = self.tasks.get(task_id)
                lease = self._on_lease.get(task_id)
                if task is None or lease is None:
                    continue
                self._off_lease(lease, task, time.monotonic())
                self._queues[task.key].appendleft(task)
                self._task_time[task.key] = 1.0  # it blocks: one at a time from now on
                keys.add(task.key)
            for key in keys:
                self._pump(key)

    def on_lease_lost(self, msg: p.LeaseLost) -> None:
        with self._locked:
            lease = self.leases.get(msg.lease_id)
            if lease is None:
                return
            self._peers.forget(lease.worker)
            self._sent_functions.pop(lease.worker, None)
            running = list(lease.running)
            self._end_lease(lease)
            queue = self._queues[lease.key]
            for task in reversed(running[1:]):  # sent ahead, never started: just requeue
                queue.appendleft(task)
            if running:
                task = running[0]
                if task.cancelled:
                    self._fail(task, failures.cancelled(task.name))
                elif task.retries_left > 0:
                    task.retries_left -= 1
                    task.attempt += 1
                    queue.appendleft(task)
                elif msg.node_died:
                    self._fail(task, failures.node_died(task.name, msg.how, task.max_retries))
                else:
                    self._fail(task, failures.worker_crashed(task.name, msg.pid, msg.how,
                                                             task.max_retries))
            self._pump(lease.key)

    def on_rebuild(self, msg: p.Rebuild) -> None:
        """Results of ours lost with a node are needed (no ``task_id``): run their tasks
        again. Or the agent answers a task run again: these of its arguments are gone
        too, so they are rebuilt first; then it goes."""
        with self._locked:
            if not msg.task_id:
                for object_id in msg.object_ids:
                    self._rebuild(object_id)
                return
            task = self.tasks.get(msg.task_id)
            if task is None or msg.task_id not in task.missing:
                return
            task.missing.discard(msg.task_id)
            for object_id in msg.object_ids:
                self._wait_for(task, object_id)
            for object_id in msg.object_ids:
                self._rebuild(object_id)
            if task.missing or msg.task_id not in self.tasks:
                return
            self._queues.setdefault(task.key, deque()).append(task)
            self._pump(task.key)

    def expire_idle(self, now: float) -> None:
        with self._locked:
            for lease in [lease for lease in self.leases.values()
                          if not lease.running and now - lease.idle_since >= self._lease_idle_s]:
                self._return(lease)

    def describe(self, task_id: bytes) -> dict[str, Any]:
        """What this owner knows of a task, its queues and its leases (for the report of
        a task that never ended)."""
        with self._locked:
            task = self.tasks.get(task_id)
            return {
                "task": None if task is None else {
                    "name": task.name, "attempt": task.attempt,
                    "waits for": [m.hex()[:12] for m in task.missing],
                    "on lease": task_id in self._on_lease},
                "tasks": [(t.name, t.task_id.hex()[:12], t.attempt,
                           [m.hex()[:12] for m in t.missing], t.task_id in self._on_lease)
                          for t in self.tasks.values()],
                "leases": [(lease.lease_id.hex(), lease.worker.hex()[:12], lease.remote,
                            [t.name for t in lease.running]) for lease in self.leases.values()],
                "queued": {key[0].hex()[:8]: len(queue) for key, queue in self._queues.items()},
                "leases asked, not granted": {key[0].hex()[:8]: n
                                              for key, n in self._requested.items() if n},
            }

    # --- under the lock --------------------------------------------------------------

    def _answered_locked(self, lease_id: bytes) -> ClassKey | None:
        """The agent answered a lease request (granted or refused): its kind, or None if
        it was not ours to wait for (any more)."""
        key = self._pending_keys.pop(lease_id, None)
        if key is not None:
            self._requested[key] -= 1
        return key

    def _pump(self, key: ClassKey) -> None:
        """Send queued tasks of ``key`` to its leases with room; ask for more leases."""
        queue = self._queues.get(key)
        if not queue:
            return
        cpus = queue[0].resources.get("CPU", 0.0)
        cap = max(1, int(self._total_cpus / cpus) if cpus > 0 else int(self._total_cpus))
        leases = [lease for lease in self.leases.values() if lease.key == key]
        requested = self._requested.get(key, 0)
        # Send ahead only once no more leases are to come: until then a free worker may
        # still take a task sooner than a busy one would. SPREAD's, once it has all the
        # leases it may hold: they are on other nodes, slower to come, and the first ones
        # would run everything before they are.
        spread = bool(queue[0].strategy.get("spread"))
        sending_ahead = len(leases) + requested >= cap and not (spread and len(leases) < cap)
        depth = _depth(self._task_time.get(key, 1.0)) if sending_ahead else 1
        share = max(1, -(-len(queue) // max(1, len(leases) + requested)))  # spread evenly
        for lease in leases:
            ahead = depth * _REMOTE_DEPTH if lease.remote and depth > 1 else depth
            room = min(ahead - len(lease.running), share)
            if room > 0:
                self._send(lease, [queue.popleft() for _ in range(min(room, len(queue)))])
            if not queue:
                return
        while requested < min(len(queue), cap):
            self._request(key, queue[0])
            requested += 1

    def _rebuild(self, object_id: bytes) -> None:
        """Run the task that made ``object_id`` again, from our lineage, if we may (else
        its error is the object's value, here and at the agent). It waits for the agent
        to say which of its arguments are gone too (its own id in ``missing``)."""
        task_id = task_of(object_id)
        if task_id in self.tasks:  # (on its way again already)
            return
        task, evicted = self.lineage.find(task_id)
        if task is None or task.retries_left <= 0:
            why = "evicted" if evicted else "attempts" if task is not None else ""
            error = failures.cannot_rebuild(object_id, task.name if task else "", why)
            self._send_to_agent(p.Unrebuildable([object_id], error))
            location = (object_id, error, 0, len(error), True)
            self._file_results([location])
            self._results_here([location])
            return
        task.retries_left -= 1
        task.attempt += 1
        task.missing = {task_id}
        self.tasks[task_id] = task
        self.rebuilt += 1
        for dep in task.dep_ids:
            if task_of(dep) in self.tasks:  # (on its way again too)
                self._wait_for(task, dep)
        self._send_to_agent(p.SubmitTask(
            task_id, task.job_id, task.function_id, task.name, b"", task.dep_ids, [],
            task.num_returns, task.resources, task.max_retries, task.retry_filter, b"", {},
            True, b"", b"", True, runtime_env=task.runtime_env))
        for queue in self._queues.values():  # tasks queued here that take it wait again
            for waiting in [t for t in queue if object_id in t.dep_ids]:
                queue.remove(waiting)
                self._wait_for(waiting, object_id)

    def _wait_for(self, task: DirectTask, object_id: bytes) -> None:
        """The task may go only once this argument of it is (back) here."""
        if object_id not in task.missing:
            task.missing.add(object_id)
            self._waiting.setdefault(object_id, []).append(task)
        for i, dep in enumerate(task.dep_ids):
            if dep == object_id:
                task.deps[i] = None

    def _results_here(self, locations: list[Any]) -> None:
        """Our results were filed: tasks waiting for them may go."""
        for location in locations:
            for task in self._waiting.pop(location[0], ()):
                if task.task_id in self.tasks:  # (not failed meanwhile)
                    self._resolve(task, location)
                    if not task.missing and task.task_id in self.tasks:
                        self._queues.setdefault(task.key, deque()).append(task)
                        self._pump(task.key)

    def _resolve(self, task: DirectTask, location: Any) -> None:
        """One of the task's arguments is here; an error fails the task, unrun."""
        object_id, data, _, _, is_error = location
        task.missing.discard(object_id)
        if is_error:
            task.missing.clear()
            self._send_to_agent(p.Subscribe([object_id], True))  # read: handled, not lost
            self._fail(task, data)
            return
        for i, dep in enumerate(task.dep_ids):
            if dep == object_id:
                task.deps[i] = location

    def _took(self, key: ClassKey, seconds: float) -> None:
        self._task_time[key] = recent_seconds(self._task_time.get(key), seconds)

    def _request(self, key: ClassKey, task: DirectTask) -> None:
        lease_id = self._worker_id + next(self._lease_ids).to_bytes(8, "big")
        self._pending_keys[lease_id] = key
        self._requested[key] = self._requested.get(key, 0) + 1
        stored = sorted((loc for loc in task.deps if loc is not None and loc[1] is None),
                        key=lambda loc: loc[3], reverse=True)
        self._send_to_agent(p.RequestLease(lease_id, task.job_id, task.name, task.resources,
                                           task.strategy, [loc[0] for loc in stored[:4]],
                                           task.runtime_env))

    def _send(self, lease: Lease, tasks: list[DirectTask]) -> None:
        have = self._sent_functions.setdefault(lease.worker, set())
        messages: list[p.Message] = []
        for task in tasks:
            blob = None
            if task.function_id not in have:
                blob = self.functions[task.function_id]
                have.add(task.function_id)
            lease.running.append(task)
            self._on_lease[task.task_id] = lease
            messages.append(p.ExecuteTask(
                task.task_id, task.job_id, task.function_id, task.name, task.args, task.deps,
                task.num_returns, task.retry_filter, lease.gpu_ids, blob, task.attempt, b"",
                {}, self._worker_id, task.placement))
        self._locked.put(lease.worker, p.one_or_batch(messages), "t")

    def _off_lease(self, lease: Lease, task: DirectTask, now: float) -> None:
        if task in lease.running:
            lease.running.remove(task)
        self._on_lease.pop(task.task_id, None)
        if not lease.running:
            lease.idle_since = now

    def _end_lease(self, lease: Lease) -> None:
        self.leases.pop(lease.lease_id, None)
        for task in lease.running:
            self._on_lease.pop(task.task_id, None)
        lease.running.clear()

    def _return(self, lease: Lease) -> None:
        self._end_lease(lease)
        self._send_to_agent(p.ReturnLease(lease.lease_id, False))

    def _fail(self, task: DirectTask, error: bytes) -> None:
        """The task ends with ``error`` without (another) run: here and at the agent."""
        self.tasks.pop(task.task_id, None)
        self.lineage.finished(task, False)
        results = failures.as_results(task.task_id, task.num_returns, error)
        self._file_results(results)
        self._results_here(results)
        self._report(failures.unrun_answer(task.task_id, task.attempt, results,
                                           self._worker_id))
