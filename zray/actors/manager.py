"""The agent's actors: creation, mailboxes, restarts, handles, kill and cancel.

The decisions about one actor live in ``Actor`` (zray/actors/mailbox.py, no I/O); this
class applies them with the agent's means: it starts a dedicated worker process per actor,
sends it the creation and then the calls the mailbox releases, and turns process deaths
into restarts or into ``ActorDiedError`` for every call that cannot run.

Callers may send calls straight to the actor's worker (zray/actors/caller.py): the agent
tells a caller the worker's address when it passes it a call, and that it is gone when
the worker dies. The caller's notice of a direct call (SubmitTask ``direct``, naming the
worker) puts it among the actor's running calls. Either way the worker answers the caller,
and the caller reports the answer here (it holds it: a worker that dies right after
answering loses nothing). Results holding refs are the exception: the worker sends those
here, and such a report may overtake the caller's notice (it waits in ``early``).

When the worker goes (death, restart, kill), the calls it had are in doubt: each may have
answered its caller just before. The agent tells each caller the worker is gone
(ActorAddress with no worker); the caller's reports of the answers it has come first, then
CallsReported. Only then are the calls still unanswered run again (``max_task_retries``) or
failed: an answered call never runs twice, and never turns into an error.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from zray import protocol as p
from zray.actors.mailbox import Actor, ActorDirectory, ActorState
from zray.node import failures
from zray.node.early import EarlyReports
from zray.node.scheduler import Task, TaskState

if TYPE_CHECKING:
    from zray.node.agent import Agent

log = logging.getLogger("zray.agent")

_REMEMBERED = 10_000  # dead workers kept for late calls


class ActorManager:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.directory = ActorDirectory()
        self.refused: dict[bytes, str] = {}  # actor id -> why its creation was refused
        self.unschedulable: dict[bytes, str] = {}  # actor id -> why no node may hold it
        self.calls: dict[bytes, Actor] = {}  # task id of a queued or running call -> actor
        self.waits: dict[bytes, list[Task]] = {}  # object id -> creations/calls waiting on it
        self.starting: dict[int, Actor] = {}  # pid of a worker being started -> its actor
        self.waiting_for_resources: list[Actor] = []
        self.early = EarlyReports(agent.objects.pin, agent.objects.unpin)
        self.gone: OrderedDict[bytes, tuple[int, str]] = OrderedDict()  # dead worker: pid, how
        self.in_doubt: dict[bytes, Task] = {}  # task id -> call a lost worker had (see above)

    # --- creation --------------------------------------------------------------------

    def create(self, task: Task, missing: set[bytes]) -> None:
        options = task.spec.actor_options
        if not options.get("namespace"):  # as in Ray: the namespace of the creator's job
            options["namespace"] = self.agent.clients.namespaces.get(task.spec.job_id, "")
        why = options.pop("unschedulable", "") or self._unplaceable(options.get("strategy"))
        if why:  # (its calls fail with ActorUnschedulableError)
            self.unschedulable[task.spec.actor_id] = f"{options['class_name']}: {why}"
            self.agent.release_task_args(task)
            return
        actor = self.directory.create(task)
        if isinstance(actor, str):
            self.refused[task.spec.actor_id] = actor
            self.agent.release_task_args(task)
            return
        actor.holders.add(task.submitter)
        self._wait_for(task, missing)
        if not missing:
            self._place(actor)
        self.agent.gcs.record_actor(actor)

    def _place(self, actor: Actor) -> None:
        """Reserve the actor's resources and start its worker, or wait for resources."""
        self._creation_moves(actor, TaskState.WAITING_DEPS, TaskState.QUEUED)
        resources = actor.creation.spec.resources
        gpu_ids = self.agent.scheduler.reserve(resources)
        if gpu_ids is None:
            if actor not in self.waiting_for_resources:
                self.waiting_for_resources.append(actor)
                if not self.agent.scheduler.could_ever_fit(resources):
                    self.agent.warn_infeasible(actor.creation)
            return
        actor.gpu_ids, actor.reserved = gpu_ids, True
        self._start_worker(actor)

    def _start_worker(self, actor: Actor) -> None:
        self.starting[self.agent.pool.start(actor.creation.spec.runtime_env).pid] = actor

    def place_waiting(self) -> None:
        for actor in list(self.waiting_for_resources):
            if actor.state is ActorState.DEAD:
                self.waiting_for_resources.remove(actor)
            else:
                gpu_ids = self.agent.scheduler.reserve(actor.creation.spec.resources)
                if gpu_ids is not None:
                    self.waiting_for_resources.remove(actor)
                    actor.gpu_ids, actor.reserved = gpu_ids, True
                    self._start_worker(actor)

    def claim_worker(self, client_id: bytes, pid: int) -> bool:
        """A worker registered: if it was started for an actor, send it the creation."""
        actor = self.starting.pop(pid, None)
        if actor is None:
            return False
        if actor.state is ActorState.DEAD:
            self.agent.pool.kill(self.agent.pool.by_pid[pid])
            return True
        self.directory.attach_worker(actor, client_id, pid)
        self._creation_moves(actor, TaskState.QUEUED, TaskState.RUNNING)
        self.agent.send_execute(actor.creation, client_id, actor.gpu_ids)
        return True

    def _creation_moves(self, actor: Actor, old: TaskState, new: TaskState) -> None:
        """The creation task's first run, as the GCS shows it (WAITING_DEPS, QUEUED,
        RUNNING, then FINISHED once the actor is alive, or FAILED if __init__ raised);
        restarts show in the actor's row, not here."""
        if actor.creation.state is old:
            actor.creation.move(new)
            self.agent.gcs.record_task(actor.creation)

    def _unplaceable(self, strategy: dict[str, Any] | None) -> str:
        """Why a private cluster's node may not hold an actor (a hard affinity to another
        node); a cluster's agent decided before (zray/node/member.py)."""
        node = (strategy or {}).get("node")
        if self.agent.member is not None or node in (None, self.agent.node_id.hex()):
            return ""
        if strategy and strategy.get("soft"):
            return ""
        return (f"its NodeAffinitySchedulingStrategy names node {node[:16]}, not a node of "
                "this cluster")

    def refused_reason(self, actor_id: bytes) -> str:
        return self.refused.pop(actor_id, "")

    def lookup(self, name: str, namespace: str) -> dict[str, Any]:
        actor = self.directory.lookup(namespace, name)
        if actor is None or actor.state is ActorState.DEAD:
            return {"error": f"no actor named {name!r} in namespace {namespace!r}"}
        options = actor.options
        return {"actor_id": actor.actor_id.hex(), "class_name": options["class_name"],
                "methods": options["methods"]}

    # --- calls -----------------------------------------------------------------------

    def call(self, task: Task, missing: set[bytes]) -> None:
        if self.early.file(task.spec.task_id, lambda worker, report: self._finished_early(
                task, worker, report)):
            return  # a direct call's report overtook its notice
        actor = self.directory.actors.get(task.spec.actor_id)
        why = self.unschedulable.get(task.spec.actor_id)
        if actor is None and why:
            self.agent.fail_with(task, failures.actor_unschedulable(why))
            return
        if actor is None:
            cause = self.directory.death_cause(task.spec.actor_id)
            self.agent.fail_with(task, failures.actor_died(task.spec.name, cause))
            return
        task.move(TaskState.QUEUED)
        task.retries_left = actor.max_task_retries
        if task.spec.direct:
            task.move(TaskState.RUNNING)  # (its arguments were all at the caller)
            self.calls[task.spec.task_id] = actor
            if actor.state is ActorState.ALIVE and actor.worker == task.spec.sent_to:
                actor.running[task.spec.task_id] = task
                task.pid = actor.worker_pid
                self.agent.gcs.record_task(task)
            else:  # sent to a worker gone since: in doubt until its caller says (after this)
                actor.doubtful += 1
                self.in_doubt[task.spec.task_id] = task
            return
        self._wait_for(task, missing)
        actor.mailbox.append(task)
        self.calls[task.spec.task_id] = actor
        self.dispatch(actor)

    def dispatch(self, actor: Actor) -> None:
        """Send every call the mailbox releases; a call whose argument failed fails too."""
        while started := actor.next_calls(self.agent.config.actor_pipeline_depth):
            for call in started:
                error = self.agent.dep_error(call)
                if error is not None:
                    actor.finished(call.spec.task_id)
                    self._fail_call(call, error)
                    continue
                call.move(TaskState.RUNNING)
                if call.submitter not in actor.callers:  # it may send the next ones itself
                    actor.callers.add(call.submitter)
                    worker = self.agent.clients.get(actor.worker)
                    self.agent.send(call.submitter, p.ActorAddress(
                        actor.actor_id, actor.worker, actor.gpu_ids,
                        worker.addresses_for(self.agent.clients.get(call.submitter))
                        if worker is not None else {}))
                self.agent.send_execute(call, actor.worker, actor.gpu_ids)
            if actor.state is not ActorState.ALIVE:
                break

    def object_ready(self, object_id: bytes) -> None:
        for task in self.waits.pop(object_id, ()):
            task.missing.discard(object_id)
            actor = self.directory.actors.get(task.spec.actor_id)
            if actor is None or task.missing:
                continue
            if task is actor.creation and actor.state is ActorState.PENDING:
                self._place(actor)
            else:
                self.dispatch(actor)

    def task_done(self, client_id: bytes, msg: p.TaskDone) -> bool:
        """An actor's creation, from its worker; a call's answer, from its caller (or from the
        worker when its results hold refs). False if it is not about an actor."""
        worker_actor = self.directory.by_worker.get(client_id)
        if worker_actor is not None and msg.task_id == worker_actor.actor_id:
            self._created(worker_actor, msg)
            self._after_change(worker_actor)
            return True
        actor = self.calls.get(msg.task_id)
        if actor is None:
            if worker_actor is None or msg.owner == client_id:
                return False  # not a call's (a lease's), or a stale or duplicate report
            self.early.keep(client_id, msg)  # from the actor's worker: the caller's notice
            return True                      # is on its way
        call = actor.running.get(msg.task_id)
        doubtful = self.in_doubt.get(msg.task_id)
        if call is not None and call.attempt == msg.attempt:
            actor.finished(msg.task_id)
        elif doubtful is not None and doubtful.attempt == msg.attempt:
            call = self.in_doubt.pop(msg.task_id)
            actor.answered()
        else:
            return True  # a stale attempt's
        self.calls.pop(msg.task_id, None)
        self._finished(call, client_id, msg)
        self._after_change(actor)
        return True

    def _after_change(self, actor: Actor) -> None:
        self.dispatch(actor)
        self._stop_if_unreferenced(actor)

    def _finished(self, call: Task, client_id: bytes, msg: p.TaskDone) -> None:
        call.move(TaskState.FAILED if failures.any_error(msg.results) else TaskState.FINISHED)
        self.agent.finish_task(call, msg.results, msg.contained, msg.error, msg)
        self.agent.relay(client_id, msg)

    def _finished_early(self, call: Task, client_id: bytes, msg: p.TaskDone) -> None:
        call.move(TaskState.QUEUED)
        call.move(TaskState.RUNNING)
        self._finished(call, client_id, msg)

    def _created(self, actor: Actor, msg: p.TaskDone) -> None:
        if msg.results and msg.results[0][4]:  # __init__ raised: the actor is dead for good
            self._creation_moves(actor, TaskState.RUNNING, TaskState.FAILED)
            self._bury(actor, failures.error_text(msg.results[0][1]), kill=True)
            return
        self._creation_moves(actor, TaskState.RUNNING, TaskState.FINISHED)
        actor.move(ActorState.ALIVE)
        self.agent.gcs.record_actor(actor)

    def _fail_call(self, call: Task, error: bytes) -> None:
        self.calls.pop(call.spec.task_id, None)
        call.state = TaskState.FAILED
        self.agent.fail_with(call, error)

    def _wait_for(self, task: Task, missing: set[bytes]) -> None:
        task.missing = set(missing)
        for object_id in missing:
            self.waits.setdefault(object_id, []).append(task)

    # --- failure, kill, lifetime -----------------------------------------------------

    def worker_exited(self, pid: int, how: str) -> bool:
        """A process died: if it hosted an actor, restart it or bury it."""
        actor = self.starting.pop(pid, None) or next(
            (a for a in self.directory.actors.values() if a.worker_pid == pid), None)
        if actor is None:
            return False
        if actor.state is ActorState.DEAD:
            return True
        self.gone[actor.worker] = (pid, how)
        if len(self.gone) > _REMEMBERED:
            self.gone.popitem(last=False)
        if actor.restarts_left <= 0:
            self._bury(actor, f"its worker process (pid={pid}) {how}")
            return True
        actor.restarts_left -= 1
        actor.move(ActorState.RESTARTING)
        for caller in self._lose_worker(actor, pid, how):
            self._settle(caller, actor, set())
        actor.creation.attempt += 1
        self._start_worker(actor)
        self.agent.gcs.record_actor(actor)
        return True

    def kill(self, actor_id: bytes, no_restart: bool, by_itself: bool = False) -> None:
        """``by_itself``: its own worker asked (exit_actor())."""
        actor = self.directory.actors.get(actor_id)
        if actor is None or actor.state is ActorState.DEAD:
            return
        if no_restart:
            self._bury(actor, "it called exit_actor()" if by_itself else
                       "it was killed with zray.kill()", kill=True)
        elif actor.worker_pid:
            self.agent.pool.kill(self.agent.pool.by_pid[actor.worker_pid])

    def stop_placed_in(self, group_hex: str) -> None:
        """A placement group was removed: the actors placed in it die, as in Ray."""
        for actor in list(self.directory.actors.values()):
            if actor.state is not ActorState.DEAD and any(
                    name.endswith(group_hex) for name in actor.creation.spec.resources):
                self._bury(actor, f"its placement group {group_hex[:16]} was removed",
                           kill=True)

    def _bury(self, actor: Actor, cause: str, kill: bool = False) -> None:
        pid = actor.worker_pid
        if actor in self.waiting_for_resources:
            self.waiting_for_resources.remove(actor)
        if actor.reserved:
            self.agent.scheduler.unreserve(actor.creation.spec.resources, actor.gpu_ids)
            actor.reserved = False
        untold = self._lose_worker(actor, pid, "was stopped")
        for call in self.directory.bury(actor, cause):
            self._fail_call(call, failures.actor_died(call.spec.name, cause))
        for caller in untold:
            self._settle(caller, actor, set())
        self.agent.release_task_args(actor.creation)
        if kill and pid in self.agent.pool.by_pid:
            self.agent.pool.kill(self.agent.pool.by_pid[pid])
        self.agent.gcs.record_actor(actor)

    def _lose_worker(self, actor: Actor, pid: int, how: str) -> set[bytes]:
        """Its worker is gone: the calls it had wait in doubt for their callers, who are
        told (and answer CallsReported); returns the callers that cannot be asked."""
        doubtful = actor.lose_worker(pid, how)
        for call in doubtful:
            self.in_doubt[call.spec.task_id] = call
        told = {caller for caller in actor.callers if caller in self.agent.clients}
        self._forget_worker(actor)
        return {call.submitter for call in doubtful} - told

    def calls_reported(self, client_id: bytes, msg: p.CallsReported) -> None:
        """A caller has reported every answer it has from the actor's lost worker."""
        actor = self.directory.actors.get(msg.actor_id) or next(
            (self.calls[k] for k, c in self.in_doubt.items()
             if c.submitter == client_id and c.spec.actor_id == msg.actor_id), None)
        if actor is not None:
            self._settle(client_id, actor, {bytes(t) for t in msg.unsent if type(t) is bytes})

    def _settle(self, caller: bytes, actor: Actor, unsent: set[bytes]) -> None:
        """The caller's calls still in doubt had no answer: they run again or fail."""
        calls = [c for c in self.in_doubt.values()
                 if c.submitter == caller and c.spec.actor_id == actor.actor_id]
        for call in calls:
            del self.in_doubt[call.spec.task_id]
        retry, fail = actor.settle(calls, unsent)
        for call in retry:
            call.move(TaskState.QUEUED)
        pid, how = actor.lost
        for call in fail:  # it may have run, or not: at most once without max_task_retries
            error = (failures.actor_died(call.spec.name, actor.death_cause)
                     if actor.state is ActorState.DEAD
                     else failures.actor_unavailable(call.spec.name, pid, how))
            self._fail_call(call, error)
        self._after_change(actor)

    def _forget_worker(self, actor: Actor) -> None:
        """Its worker is gone: callers send their calls through the agent again."""
        for caller in actor.callers:
            if caller in self.agent.clients:
                self.agent.send(caller, p.ActorAddress(actor.actor_id, b"", []))
        actor.callers.clear()
        self.directory.detach_worker(actor)

    def cancel(self, task_id: bytes) -> bool:
        """Remove a queued call (it fails with TaskCancelledError); one already sent ahead
        to the worker is dropped there if it has not started; running ones go on."""
        actor = self.calls.get(task_id)
        if actor is None:
            return False
        call = next((c for c in actor.mailbox if c.spec.task_id == task_id), None)
        if call is not None:
            actor.mailbox.remove(call)
            self._fail_call(call, failures.cancelled(call.spec.name))
            self.dispatch(actor)
        elif task_id in actor.running and actor.worker:
            self.agent.send(actor.worker, p.CancelRunning(task_id))
        return True

    def holds(self, client_id: bytes, actor_id: bytes, held: bool) -> bool:
        """A process took or dropped a handle; False if ``actor_id`` is not an actor."""
        actor = self.directory.actors.get(actor_id)
        if actor is None:
            return False
        if held:
            actor.holders.add(client_id)
        else:
            actor.holders.discard(client_id)
            self._stop_if_unreferenced(actor)
        return True

    def pin(self, actor_id: bytes, delta: int) -> bool:
        """A handle inside a task's arguments or an object keeps the actor alive."""
        actor = self.directory.actors.get(actor_id)
        if actor is None:
            return False
        actor.pins += delta
        self._stop_if_unreferenced(actor)
        return True

    def client_gone(self, client_id: bytes, job_id: bytes, was_driver: bool) -> None:
        """Its handles are gone; a driver's exit also ends its job's non-detached actors.
        Reports of its direct calls whose notices never came are dropped."""
        self.early.owner_gone(client_id)
        for actor in {self.calls[k] for k, call in self.in_doubt.items()
                      if call.submitter == client_id}:
            self._settle(client_id, actor, set())
        for actor in list(self.directory.actors.values()):
            actor.holders.discard(client_id)
            actor.callers.discard(client_id)
            ends_with_job = (was_driver and actor.creation.spec.job_id == job_id
                             and actor.options.get("lifetime") != "detached")
            if ends_with_job and actor.state is not ActorState.DEAD:
                self._bury(actor, "the driver that created it exited", kill=True)
            else:
                self._stop_if_unreferenced(actor)

    def _stop_if_unreferenced(self, actor: Actor) -> None:
        if actor.idle_and_unreferenced() and actor.pins <= 0:
            self._bury(actor, "every handle to it was dropped", kill=True)
