"""The local scheduler's decisions: which task runs on which worker, and when. No I/O.

Events come in as method calls (a task submitted, an object ready, a worker idle, blocked or
gone, a task done); ``schedule()`` returns the dispatches to make and how many workers to
start. Task lifecycle (an illegal move raises and changes nothing)::

    WAITING_DEPS --deps ready--> QUEUED --dispatch--> RUNNING --done--> FINISHED
         |                         ^                     |
         +--dep failed--> FAILED   +------retry----------+--out of retries / error--> FAILED
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from zray import protocol as p
from zray.ids import TASK_ID_BYTES
from zray.runtime_env import key_of

EPSILON = 1e-9


class TaskState(enum.Enum):
    WAITING_DEPS = "WAITING_DEPS"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


TRANSITIONS: dict[TaskState, set[TaskState]] = {
    TaskState.WAITING_DEPS: {TaskState.QUEUED, TaskState.FAILED},
    TaskState.QUEUED: {TaskState.RUNNING, TaskState.FAILED},
    TaskState.RUNNING: {TaskState.QUEUED, TaskState.FINISHED, TaskState.FAILED},
    TaskState.FINISHED: set(),
    TaskState.FAILED: set(),
}


@dataclass(slots=True)
class Task:
    spec: p.SubmitTask
    submitter: bytes
    state: TaskState = TaskState.WAITING_DEPS
    missing: set[bytes] = field(default_factory=set)
    attempt: int = 0
    retries_left: int = 0
    worker: bytes | None = None
    gpu_ids: list[int] = field(default_factory=list)
    blocked: bool = False
    infeasible: bool = False
    cancelled: bool = False
    lease: bool = False  # a worker leased to ``submitter`` (zray/node/leases.py), not a task
    pinned: bool = False  # a lease whose strategy placed it here: it never spills
    env_key: str = field(init=False)  # its runtime_env's: the workers it may run on
    submitted: float = 0.0  # wall clock (set at creation)
    # state -> µs after ``submitted`` it was last entered (ints: the GCS row is encoded for
    # every task, floats cost more)
    times: dict[str, int] = field(init=False)
    pid: int = 0  # the worker process it ran in last (for the GCS)
    ran_on: str = ""  # the node it ran on, if not this one (a lease on a peer's worker)
    error: str = ""  # what it raised, "Type: message" (the GCS row)
    # How its GCS row is laid out (zray/node/gcs_client.py), once the GCS has been told of
    # it, and the start of the row, which never changes
    row: Callable[[], str] | None = None
    row_head: str = ""

    def __post_init__(self) -> None:
        self.env_key = key_of(self.spec.runtime_env) if self.spec.runtime_env else ""
        self.submitted = time.time()
        self.times = {self.state.value: 0}

    def move(self, state: TaskState, at: float | None = None) -> None:
        """Enter ``state`` now, or at wall-clock time ``at``."""
        if state not in TRANSITIONS[self.state]:
            raise ValueError(f"task {self.spec.name} {self.spec.task_id.hex()[:12]}: "
                             f"{self.state.name} -> {state.name} is not allowed")
        self.state = state
        self.retime(state, time.time() if at is None else at)

    def retime(self, state: TaskState, at: float) -> None:
        """It entered ``state`` at wall-clock time ``at`` (in µs after it was submitted)."""
        self.times[state.value] = round((at - self.submitted) * 1_000_000)


@dataclass(frozen=True)
class Dispatch:
    task: Task
    worker: bytes


@dataclass
class Plan:
    """What ``schedule()`` decided: tasks to send to workers, workers to start (the
    runtime_env of each, "" for none) and idle workers to stop, making room for work of
    another runtime_env."""

    dispatches: list[Dispatch] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    stop: list[bytes] = field(default_factory=list)


class Scheduler:
    def __init__(self, resources: dict[str, float]) -> None:
        self.total = dict(resources)
        self.available = dict(resources)
        self.gpu_free = [1.0] * int(resources.get("GPU", 0))
        self.tasks: dict[bytes, Task] = {}
        # Queued tasks by resource shape ("scheduling class", as in Ray): scheduling looks at
        # the head of each class, so its cost grows with the number of shapes, not of tasks.
        # (Tasks of a runtime_env queue apart: they need workers of theirs.)
        self.queues: dict[tuple[str, tuple[tuple[str, float], ...]], deque[Task]] = {}
        self.waiting_on: dict[bytes, set[bytes]] = {}  # object id -> task ids waiting for it
        self.idle: list[bytes] = []
        self.busy: dict[bytes, Task] = {}
        # A worker runs only work of its runtime_env (zray/runtime_env.py): each one's key,
        # for workers of an env (none for the rest), and how many are starting, by key.
        self.env_of: dict[bytes, str] = {}
        self.starting_for: dict[str, int] = {}
        self.starting = 0
        self.blocked = 0

    # --- events ----------------------------------------------------------------------

    def submit(self, task: Task, missing: set[bytes], first: bool = False) -> None:
        """``first``: ahead of its class's queue (work a running task waits for)."""
        self.tasks[task.spec.task_id] = task
        task.retries_left = task.spec.max_retries
        task.infeasible = not self._fits(task.spec.resources, self.total)
        task.missing = missing
        for object_id in missing:
            self.waiting_on.setdefault(object_id, set()).add(task.spec.task_id)
        if not missing:
            self._enqueue(task, first)

    def object_ready(self, object_id: bytes) -> list[Task]:
        """Tasks now ready to queue are queued; returns them."""
        released = []
        for task_id in self.waiting_on.pop(object_id, ()):
            task = self.tasks.get(task_id)
            if task is None or task.state is not TaskState.WAITING_DEPS:
                continue
            task.missing.discard(object_id)
            if not task.missing:
                self._enqueue(task)
                released.append(task)
        return released

    def worker_starting(self, env_key: str = "") -> None:
        """A worker was started outside ``schedule()``'s plan (at boot, or a replacement)."""
        self.starting += 1
        self.starting_for[env_key] = self.starting_for.get(env_key, 0) + 1

    def worker_started(self, worker: bytes, env_key: str = "") -> None:
        self._not_starting(env_key)
        self.idle.append(worker)
        if env_key:
            self.env_of[worker] = env_key

    def worker_failed_to_start(self, env_key: str = "") -> None:
        self._not_starting(env_key)

    def _not_starting(self, env_key: str) -> None:
        """One worker of that runtime_env is no longer starting (up, or gone)."""
        self.starting = max(0, self.starting - 1)
        self.starting_for[env_key] = max(0, self.starting_for.get(env_key, 0) - 1)

    def task_done(self, task: Task, retry: bool, failed: bool = False) -> None:
        """The task's worker is free again; with ``retry`` the task goes back in the queue
        (FAILED if it has no retries left); ``failed``: it ended with an error."""
        if task.state is not TaskState.RUNNING:
            raise ValueError(f"task {task.spec.name}: task_done while {task.state.name}")
        self._release(task)
        if retry and task.retries_left > 0:
            task.retries_left -= 1
            task.attempt += 1
            task.move(TaskState.QUEUED)
            self._queue_of(task).appendleft(task)
        else:
            task.move(TaskState.FAILED if retry or failed else TaskState.FINISHED)
            self.tasks.pop(task.spec.task_id, None)

    def fail(self, task: Task) -> None:
        """A task that never ran fails (e.g. an argument is an error)."""
        task.move(TaskState.FAILED)
        self.withdraw(task)

    def withdraw(self, task: Task) -> None:
        """A queued task leaves this node (it goes to another): forgotten here."""
        self.tasks.pop(task.spec.task_id, None)
        queue = self._queue_of(task)
        if task in queue:
            queue.remove(task)

    def worker_gone(self, worker: bytes) -> Task | None:
        """The worker process died; returns the task it was running (then call task_done)."""
        if worker in self.idle:
            self.idle.remove(worker)
        self.env_of.pop(worker, None)
        task = self.busy.pop(worker, None)
        if task is not None:
            task.worker = None  # so task_done does not hand the dead worker back as idle
        return task

    def set_blocked(self, task_id: bytes, blocked: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.RUNNING or task.blocked == blocked:
            return
        task.blocked = blocked
        self.blocked += 1 if blocked else -1
        cpus = task.spec.resources.get("CPU", 0.0)
        self.available["CPU"] = self.available.get("CPU", 0.0) + (cpus if blocked else -cpus)

    def why_pending(self, task: Task) -> str:
        """Why a task does not run yet, in words ("" if it runs, or is not known here). A
        task sent on a lease waits at its owner: for the lease its owner asked for."""
        if self.tasks.get(task.spec.task_id) is not task:
            lease = next((t for t in self.tasks.values() if t.lease and t.state is
                          TaskState.QUEUED and t.submitter == task.submitter
                          and t.spec.resources == task.spec.resources), None)
            if task.state is not TaskState.QUEUED:
                return ""
            if lease is None:
                return "queued at its owner, for a worker it leases (all busy)"
            task = lease
        if task.state is TaskState.WAITING_DEPS and task.missing:
            first = min(task.missing)
            more = f" (and {len(task.missing) - 1} more)" if len(task.missing) > 1 else ""
            return (f"waits for argument object {first.hex()}{more}, made by task "
                    f"{first[:TASK_ID_BYTES].hex()}")
        if task.state is not TaskState.QUEUED:
            return ""
        needs = {k: v for k, v in sorted(task.spec.resources.items()) if v > 0}
        if task.infeasible:
            lacking = ", ".join(f"{k} (has {self.total.get(k, 0):g})" for k, v in needs.items()
                                if self.total.get(k, 0.0) < v)
            return f"needs {_amounts(needs)}; no node has enough {lacking}"
        for name, amount in needs.items():
            if self.available.get(name, 0.0) < amount:
                users = [t for t in self.busy.values() if t.spec.resources.get(name, 0) > 0]
                names = ", ".join(sorted({t.spec.name for t in users})[:3])
                return (f"needs {_amounts(needs)}; {name} is in use "
                        f"({self.total[name] - self.available.get(name, 0.0):g} of "
                        f"{self.total[name]:g}) by {len(users)} running tasks: {names}")
        return "waits for a worker to start"

    # --- decisions -------------------------------------------------------------------

    def schedule(self) -> Plan:
        """What to do now: dispatches to make, workers to start and to stop."""
        plan = Plan()
        # runtime_env key -> (tasks that could run now but for a worker, that env's wire)
        runnable_without_worker: dict[str, tuple[int, str]] = {}
        for queue in self.queues.values():
            while queue and not queue[0].infeasible:
                task = queue[0]
                if not self._fits(task.spec.resources, self.available):
                    break
                worker = self._idle_worker(task.env_key)
                if worker is None:
                    waiting, _ = runnable_without_worker.get(task.env_key, (0, ""))
                    runnable_without_worker[task.env_key] = (waiting + len(queue),
                                                             task.spec.runtime_env)
                    break
                gpu_ids = self._take_gpus(task.spec.resources.get("GPU", 0.0))
                if gpu_ids is None:
                    break
                queue.popleft()
                self.idle.remove(worker)
                plan.dispatches.append(self._start(task, worker, gpu_ids))
        room = self._worker_limit() + self.blocked - \
            (len(self.idle) + len(self.busy) + self.starting)
        for env_key, (waiting, wire) in runnable_without_worker.items():
            wanted = waiting - self.starting_for.get(env_key, 0)
            if wanted > room:  # idle workers of other envs make room
                for worker in [w for w in self.idle
                               if self.env_of.get(w, "") != env_key][:wanted - room]:
                    self.retire(worker)
                    plan.stop.append(worker)
                    room += 1
            count = max(0, min(wanted, room))
            plan.start += [wire] * count
            room -= count
            self.starting += count
            self.starting_for[env_key] = self.starting_for.get(env_key, 0) + count
        return plan

    def _idle_worker(self, env_key: str) -> bytes | None:
        """An idle worker of that runtime_env (the most recently idle: its caches are warm)."""
        if not self.env_of:
            return self.idle[-1] if self.idle and not env_key else None
        for worker in reversed(self.idle):
            if self.env_of.get(worker, "") == env_key:
                return worker
        return None

    def _worker_limit(self) -> int:
        """How many workers may run tasks at once: one per CPU, or more if tasks that take a
        fraction of a CPU are queued or running (four of 0.5 CPU on two CPUs run at once)."""
        smallest = 1.0
        for (_, shape), queue in self.queues.items():
            if queue:
                smallest = min(smallest, _worker_share(dict(shape).get("CPU", 0.0)))
        for task in self.busy.values():
            smallest = min(smallest, _worker_share(task.spec.resources.get("CPU", 0.0)))
        return max(1, int(self.total.get("CPU", 1) / smallest + EPSILON))

    def _start(self, task: Task, worker: bytes, gpu_ids: list[int]) -> Dispatch:
        self._acquire(task.spec.resources)
        task.move(TaskState.RUNNING)
        task.worker, task.gpu_ids = worker, gpu_ids
        self.busy[worker] = task
        return Dispatch(task, worker)

    def queued(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def reserve(self, demand: dict[str, float]) -> list[int] | None:
        """Hold resources outside the task queue (an actor's, for its lifetime): the GPU
        ids it got, or None if they are not free now."""
        if not self._fits(demand, self.available):
            return None
        gpu_ids = self._take_gpus(demand.get("GPU", 0.0))
        if gpu_ids is None:
            return None
        self._acquire(demand)
        return gpu_ids

    def unreserve(self, demand: dict[str, float], gpu_ids: list[int]) -> None:
        for name, amount in demand.items():
            if name in self.total:  # (not a removed placement group's)
                self.available[name] = self.available.get(name, 0.0) + amount
        self._return_gpus(gpu_ids, demand.get("GPU", 0.0))

    def add_resources(self, resources: dict[str, float]) -> None:
        """New resources (a placement group's bundles): tasks waiting for them may run."""
        for name, amount in resources.items():
            self.total[name] = self.total.get(name, 0.0) + amount
            self.available[name] = self.available.get(name, 0.0) + amount
        self._recheck_feasible()

    def remove_resources(self, resources: dict[str, float]) -> None:
        """Resources that are gone (a placement group removed), in use or not."""
        for name in resources:
            self.total.pop(name, None)
            self.available.pop(name, None)
        self._recheck_feasible()

    def _recheck_feasible(self) -> None:
        for task in self.tasks.values():
            task.infeasible = not self._fits(task.spec.resources, self.total)

    def could_ever_fit(self, demand: dict[str, float]) -> bool:
        return self._fits(demand, self.total)

    def retire(self, worker: bytes) -> bool:
        """Take an idle worker out of service (it is about to be stopped)."""
        if worker not in self.idle:
            return False
        self.idle.remove(worker)
        self.env_of.pop(worker, None)
        return True

    def pool_size_target(self) -> int:
        return max(1, int(self.total.get("CPU", 1)))

    # --- resources -------------------------------------------------------------------

    def _enqueue(self, task: Task, first: bool = False) -> None:
        task.move(TaskState.QUEUED)
        if first:
            self._queue_of(task).appendleft(task)
        else:
            self._queue_of(task).append(task)

    def _queue_of(self, task: Task) -> deque[Task]:
        shape = (task.env_key, tuple(sorted(task.spec.resources.items())))
        queue = self.queues.get(shape)
        if queue is None:
            queue = self.queues[shape] = deque()
        return queue

    @staticmethod
    def _fits(demand: dict[str, float], have: dict[str, float]) -> bool:
        return all(amount <= have.get(name, 0.0) + EPSILON
                   for name, amount in demand.items() if amount > 0)

    def _acquire(self, demand: dict[str, float]) -> None:
        for name, amount in demand.items():
            self.available[name] = self.available.get(name, 0.0) - amount

    def _release(self, task: Task) -> None:
        demand = dict(task.spec.resources)
        if task.blocked:
            demand["CPU"] = 0.0  # already lent out while it was blocked
            task.blocked = False
            self.blocked -= 1
        for name, amount in demand.items():
            if name in self.total:  # (not a removed placement group's)
                self.available[name] = self.available.get(name, 0.0) + amount
        self._return_gpus(task.gpu_ids, task.spec.resources.get("GPU", 0.0))
        task.gpu_ids = []
        if task.worker is not None:
            self.busy.pop(task.worker, None)
            self.idle.append(task.worker)
        task.worker = None

    def _take_gpus(self, amount: float) -> list[int] | None:
        if amount <= 0:
            return []
        if amount < 1:
            for i, free in enumerate(self.gpu_free):
                if free + EPSILON >= amount:
                    self.gpu_free[i] -= amount
                    return [i]
            return None
        whole = [i for i, free in enumerate(self.gpu_free) if free >= 1 - EPSILON][: int(amount)]
        if len(whole) < int(amount):
            return None
        for i in whole:
            self.gpu_free[i] = 0.0
        return whole

    def _return_gpus(self, gpu_ids: list[int], amount: float) -> None:
        for i in gpu_ids:
            self.gpu_free[i] = min(1.0, self.gpu_free[i] + (amount if amount < 1 else 1.0))


def _worker_share(cpus: float) -> float:
    """The share of a worker slot a task taking ``cpus`` CPUs uses: 1 unless a fraction."""
    return cpus if EPSILON < cpus < 1 else 1.0


def _amounts(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}={v:g}" for k, v in resources.items()) + "}"
