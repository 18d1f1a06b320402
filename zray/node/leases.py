"""The agent's side of leases and direct tasks (the owner's side is zray/leasing.py).

A lease is a pseudo-task in the scheduler's queues: it waits for resources and an idle
worker like a task of its shape, and "runs" from LeaseGranted until the owner returns it or
the worker dies (LeaseLost: the owner retries or fails what ran there). The agent never
sees which task runs on a lease; it learns of each direct task twice, both times off the
critical path and both from its owner, in order on one connection:

- the owner's SubmitTask(direct=True), sent before ``.remote()`` returns: the agent pins the
  arguments and expects the results, so any process may borrow the refs at once;
- the owner's TaskDone once it has the answer (or decided a failure: a crash out of
  retries, a cancel, an exception its retry filter accepted but it stopped retrying): the
  agent files the results and unpins the arguments. The owner, not the worker, reports:
  it holds the answer, so a worker that dies right after answering loses nothing.

Results that hold refs are the exception: the worker sends them to the agent, which files
them and passes them on. Such a report can overtake the owner's notice: it waits in
``early`` until the notice arrives (zray/node/early.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from zray import protocol as p
from zray.exceptions import TaskUnschedulableError
from zray.node import failures
from zray.node.early import EarlyReports
from zray.node.scheduler import Task, TaskState
from zray.objects.serialization import serialize

if TYPE_CHECKING:
    from zray.node.agent import Agent


class LeaseManager:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.scheduler = agent.scheduler
        self.direct: dict[bytes, Task] = {}  # direct tasks not finished, by task id
        self.early = EarlyReports(agent.objects.pin, agent.objects.unpin)
        self._asked_at = 0.0

    # --- leases ----------------------------------------------------------------------

    def request(self, client_id: bytes, msg: p.RequestLease) -> None:
        spec = p.SubmitTask(msg.lease_id, msg.job_id, b"", msg.name, b"", [], [], 0,
                            msg.resources, 0, b"", b"", {}, False, b"", b"",
                            runtime_env=msg.runtime_env)
        lease = Task(spec, client_id, lease=True, pinned=bool(msg.strategy))
        # A worker asks for its running task's children: they go first, so work under way
        # finishes before new work starts (and blocks, and needs yet more workers).
        client = self.agent.clients.get(client_id)
        self.scheduler.submit(lease, set(), first=client is not None and client.kind == "worker")
        if lease.infeasible:
            self.agent.warn_infeasible(lease)

    def grant(self, lease: Task, worker_id: bytes) -> None:
        process = self.agent.clients[worker_id].worker
        if process is not None:  # its output is shown as the lease's function's
            self.agent.clients.running_on[process.pid] = lease
        worker = self.agent.clients[worker_id]
        self.agent.send(lease.submitter, p.LeaseGranted(
            lease.spec.task_id, worker_id, lease.gpu_ids, False,
            worker.addresses_for(self.agent.clients.get(lease.submitter))))

    def refuse(self, client_id: bytes, msg: p.RequestLease, why: str) -> None:
        """No node may ever grant it: its owner fails the tasks waiting for it."""
        error = serialize(TaskUnschedulableError(f"task {msg.name}: {why}")).to_bytes()
        self.agent.send(client_id, p.LeaseRefused(msg.lease_id, error))

    def give_back(self, client_id: bytes, msg: p.ReturnLease) -> None:
        lease = self.scheduler.tasks.get(msg.lease_id)
        if lease is None or not lease.lease or lease.submitter != client_id:
            return
        if lease.state is TaskState.QUEUED:
            self.scheduler.fail(lease)
            return
        client = self.agent.clients.get(lease.worker or b"")
        process = client.worker if client is not None else None
        if msg.kill and process is not None:
            self.agent.pool.kill(process)  # its exit ends the lease (LeaseLost, ignored)
            return
        if process is not None:
            self.agent.flush_output(process)  # (its lines are its task's owner's)
            self.agent.clients.running_on.pop(process.pid, None)
        self.scheduler.task_done(lease, retry=False)

    def worker_lost(self, lease: Task, pid: int, how: str) -> None:
        self.scheduler.task_done(lease, retry=False)
        self.agent.send(lease.submitter, p.LeaseLost(lease.spec.task_id, pid, how))

    def ask_for_idle(self, now: float) -> None:
        """Work waits for resources: owners give back leases they are not using (at most
        once a poll period, not once per event)."""
        if now - self._asked_at < self.agent.config.poll_interval_ms / 1000:
            return
        if not any(queue and not queue[0].infeasible for queue in self.scheduler.queues.values()):
            return
        self._asked_at = now
        for owner in {task.submitter for task in self.scheduler.busy.values() if task.lease}:
            self.agent.send(owner, p.ReturnIdleLeases("work is waiting for resources"))

    # --- direct tasks ----------------------------------------------------------------

    def notice(self, task: Task) -> None:
        """An owner will run this task on a lease; the agent already pinned its arguments."""
        task.move(TaskState.QUEUED)  # (on_submit recorded it)
        self.direct[task.spec.task_id] = task
        self.early.file(task.spec.task_id, self.done)

    def done(self, client_id: bytes, msg: p.TaskDone) -> None:
        """A task's outcome: from its owner, which had the answer (in a Batch, behind its
        notice), or from the worker that ran it when its results hold refs."""
        task = self.direct.get(msg.task_id)
        if task is None:
            if client_id == msg.owner:
                return  # (the owner's own come after its notice)
            owner = self.agent.clients.get(msg.owner)
            if owner is not None and not owner.remote:  # (else nobody here waits for it)
                self.early.keep(client_id, msg)
            elif self.agent.member is not None:  # its owner is on another node, which
                self.agent.member.to_owner(msg.owner, msg)  # the refs inside are lent to
            return
        if msg.attempt < task.attempt:
            return  # a stale attempt
        if msg.retryable:
            self.agent.relay(client_id, msg)
            return  # the owner decides on a retry
        del self.direct[msg.task_id]
        task.attempt = msg.attempt
        task.pid = msg.pid or task.pid
        if msg.node:  # (its results are there: lent to us)
            task.ran_on = msg.node.hex()
            for object_id, data, offset, size, is_error in msg.results:
                if data is None and offset < 0:
                    self.agent.objects.borrowed(object_id, msg.node, task.spec.job_id, size,
                                                is_error, client_id)
        elif self.agent.member is not None:
            task.ran_on = self.agent.member.relay.ran_on(msg.task_id)
        if task.state is TaskState.QUEUED:  # (no TaskStarted: it was short)
            task.move(TaskState.RUNNING, time.time() - msg.seconds)
        task.move(TaskState.FAILED if failures.any_error(msg.results) else TaskState.FINISHED)
        self.agent.finish_task(task, msg.results, msg.contained, msg.error, msg)
        self.agent.relay(client_id, msg)

    def started(self, client_id: bytes, msg: p.TaskStarted) -> None:
        """A leased task has been running a while (its worker says): RUNNING from then."""
        task = self.direct.get(msg.task_id)
        client = self.agent.clients.get(client_id)
        if (task is None or task.state is not TaskState.QUEUED or msg.attempt != task.attempt
                or client is None or client.worker is None):
            return  # done meanwhile (the report overtook it), or not one of ours: stale
        task.move(TaskState.RUNNING, msg.started)
        task.pid = client.worker.pid
        self.agent.gcs.record_task(task)

    # --- an owner leaves -------------------------------------------------------------

    def client_gone(self, client_id: bytes, pid: int) -> None:
        """Its leases go back to the pool; its unfinished direct tasks fail (OwnerDiedError)
        so nobody who borrowed their results waits for ever."""
        for lease in [t for t in self.scheduler.tasks.values()
                      if t.lease and t.submitter == client_id]:
            if lease.state is TaskState.QUEUED:
                self.scheduler.fail(lease)
            else:
                client = self.agent.clients.get(lease.worker or b"")
                if client is not None and client.worker is not None:
                    self.agent.clients.running_on.pop(client.worker.pid, None)
                self.scheduler.task_done(lease, retry=False)
        for task in [t for t in self.direct.values() if t.submitter == client_id]:
            del self.direct[task.spec.task_id]
            task.move(TaskState.FAILED)
            self.agent.fail_with(task, failures.owner_died(task.spec.name, pid))
        self.early.owner_gone(client_id)
