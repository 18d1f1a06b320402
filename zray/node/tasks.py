"""The agent's plain tasks: submission, dispatch to pooled workers, results, retries, cancel.

Decisions come from the ``Scheduler`` (no I/O); this class applies them with the agent's
means: ExecuteTask to an idle worker, results into the object table, a dead worker's task
retried or failed with WorkerCrashedError, a cancelled one dequeued, interrupted or killed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from zray import protocol as p
from zray.node import failures
from zray.node.scheduler import Task, TaskState

if TYPE_CHECKING:
    from zray.node.agent import Agent

log = logging.getLogger("zray.agent")


class TaskManager:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.scheduler = agent.scheduler
        self._idle_at_last_check: set[bytes] = set()
        self._last_check = 0.0

    def submit(self, task: Task, missing: set[bytes]) -> None:
        self.scheduler.submit(task, missing)
        if not missing:
            self.check_args(task)
        if task.infeasible:
            self.agent.warn_infeasible(task)

    def check_args(self, task: Task) -> None:
        """A task whose argument is an error fails with that error, without running."""
        error = self.agent.dep_error(task)
        if error is not None:
            self.scheduler.fail(task)
            self.agent.fail_with(task, error)

    def object_ready(self, object_id: bytes) -> None:
        for task in self.scheduler.object_ready(object_id):
            self.check_args(task)

    def dispatch(self) -> None:
        plan = self.scheduler.schedule()
        for dispatch in plan.dispatches:
            if dispatch.task.lease:
                self.agent.leases.grant(dispatch.task, dispatch.worker)
            else:
                self.agent.send_execute(dispatch.task, dispatch.worker, dispatch.task.gpu_ids)
        for worker in plan.stop:  # (idle, of another runtime_env: retired already)
            self._stop(worker)
        for runtime_env in plan.start:
            self.agent.pool.start(runtime_env)

    def reap_idle(self, now: float) -> None:
        """Stop workers beyond num_cpus that stayed idle for a whole check period: the
        pool grows while tasks block in get, and shrinks back once they are done."""
        if now - self._last_check < self.agent.config.idle_worker_timeout_s:
            return
        self._last_check = now
        surplus = self.scheduler.starting + len(self.scheduler.idle) + len(self.scheduler.busy) \
            - self.scheduler.pool_size_target()
        still_idle = [w for w in self.scheduler.idle if w in self._idle_at_last_check]
        for worker in still_idle[:max(0, surplus)]:
            if self.scheduler.retire(worker):
                self._stop(worker)
        self._idle_at_last_check = set(self.scheduler.idle)

    def _stop(self, worker: bytes) -> None:
        """Stop a worker the scheduler retired (its exit is handled as any worker's)."""
        client = self.agent.clients.get(worker)
        if client is not None and client.worker is not None:
            client.worker.proc.terminate()

    def done(self, client_id: bytes, msg: p.TaskDone) -> None:
        task = self.scheduler.tasks.get(msg.task_id)
        if task is None or task.attempt != msg.attempt or task.worker != client_id:
            return  # a stale report from an attempt that was already given up on
        self.scheduler.task_done(task, retry=msg.retryable and not task.cancelled,
                                 failed=failures.any_error(msg.results))
        if task.state is TaskState.QUEUED:  # to be retried
            self.agent.gcs.record_task(task)
        else:
            self.agent.finish_task(task, msg.results, msg.contained, msg.error, msg)  # records it

    def worker_exited(self, worker_id: bytes | None, pid: int, how: str, env_key: str) -> None:
        """A pooled worker died: retry its task, or fail it, and keep the pool full."""
        task = self.scheduler.worker_gone(worker_id) if worker_id else None
        if worker_id is None:
            self.scheduler.worker_failed_to_start(env_key)
        if task is not None and task.lease:
            self.agent.leases.worker_lost(task, pid, how)
        elif task is not None:
            log.info("worker pid=%d running %s %s", pid, task.spec.name, how)
            self.scheduler.task_done(task, retry=not task.cancelled)
            if task.cancelled:
                self.agent.fail_with(task, failures.cancelled(task.spec.name))
            elif task.state is TaskState.FAILED:
                self.agent.fail_with(task, failures.worker_crashed(
                    task.spec.name, pid, how, task.spec.max_retries))
            else:  # queued again for a retry (fail_with records the others)
                self.agent.gcs.record_task(task)

    def cancel(self, task_id: bytes, force: bool) -> None:
        """Queued: fail it now. Running: interrupt it, or with ``force`` kill its worker."""
        task = self.scheduler.tasks.get(task_id)
        if task is None:
            return  # finished already (or unknown): nothing to do, as in Ray
        task.cancelled = True
        if task.state is TaskState.RUNNING:
            if force:
                process = self.agent.clients[task.worker or b""].worker
                if process is not None:
                    self.agent.pool.kill(process)
            else:
                self.agent.send(task.worker or b"", p.CancelRunning(task_id))
        else:
            self.scheduler.fail(task)
            self.agent.fail_with(task, failures.cancelled(task.spec.name))

