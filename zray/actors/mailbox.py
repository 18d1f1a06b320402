"""Actors in the node agent: their lifecycle and their mailboxes. No I/O.

A mailbox holds an actor's calls in the order they reached the agent, which keeps each
caller's order (a caller's messages travel one socket, in order). Callers may also send
calls straight to the actor's worker (zray/actors/caller.py): the agent hears of those
afterwards and counts them as running there. Calls leave the mailbox
from the head only: a call whose arguments are still being computed holds back every call
behind it, so no caller's later call overtakes an earlier one. With ``max_concurrency`` 1
(the default) one call runs at a time, so methods run serially and each sees the state the
one before it left; with N, up to N run at once, started in mailbox order. Released calls
may be sent ahead to the worker (a pipeline): it starts them in the order received and
never runs more than ``max_concurrency`` at once, so sending ahead saves round trips
without changing the order.

When the worker goes, the calls it had are in doubt (``lose_worker``): each may have
answered its caller just before. Nothing is released until each is settled: answered (its
caller reported it), or run again or failed (``settle``).

Lifecycle (an illegal move raises and changes nothing)::

    PENDING --worker up, __init__ ok--> ALIVE --process died, restarts left--> RESTARTING
       |                                  |                                        |
       +--__init__ raised / killed--------+--killed / no restarts left--> DEAD <---+
    RESTARTING --__init__ ok again--> ALIVE
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from zray.node.scheduler import Task

MAX_TOMBSTONES = 10_000


class ActorState(enum.Enum):
    PENDING = "PENDING"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


ACTOR_TRANSITIONS: dict[ActorState, set[ActorState]] = {
    ActorState.PENDING: {ActorState.ALIVE, ActorState.DEAD, ActorState.RESTARTING},
    ActorState.ALIVE: {ActorState.RESTARTING, ActorState.DEAD},
    ActorState.RESTARTING: {ActorState.ALIVE, ActorState.DEAD, ActorState.RESTARTING},
    ActorState.DEAD: set(),
}


@dataclass
class Actor:
    creation: Task  # the creation "task": class, __init__ arguments, options
    state: ActorState = ActorState.PENDING
    worker: bytes = b""  # the client id of its dedicated worker, once registered
    worker_pid: int = 0
    mailbox: deque[Task] = field(default_factory=deque)
    running: dict[bytes, Task] = field(default_factory=dict)
    restarts_left: int = 0
    holders: set[bytes] = field(default_factory=set)
    death_cause: str = ""
    gpu_ids: list[int] = field(default_factory=list)
    reserved: bool = False  # holds its resources (num_cpus, num_gpus, resources)
    pins: int = 0  # handles inside live objects or queued tasks' arguments
    callers: set[bytes] = field(default_factory=set)  # told where its worker is
    doubtful: int = 0  # calls of a lost worker not settled yet (see lose_worker)
    lost: tuple[int, str] = (0, "")  # the last lost worker: pid, how it ended
    label: str = ""  # its instance's repr(), if its class defines one (its output's label)

    @property
    def actor_id(self) -> bytes:
        return self.creation.spec.actor_id

    @property
    def options(self) -> dict:
        return self.creation.spec.actor_options

    @property
    def max_concurrency(self) -> int:
        return int(self.options.get("max_concurrency", 1))

    @property
    def max_task_retries(self) -> int:
        return int(self.options.get("max_task_retries", 0))

    @property
    def pinned(self) -> bool:
        """Named and detached actors live on without handles, until killed."""
        return bool(self.options.get("name")) or self.options.get("lifetime") == "detached"

    def move(self, state: ActorState) -> None:
        if state not in ACTOR_TRANSITIONS[self.state]:
            raise ValueError(f"actor {self.actor_id.hex()[:12]}: {self.state.name} -> "
                             f"{state.name} is not allowed")
        self.state = state

    def next_calls(self, pipeline_depth: int = 0) -> list[Task]:
        """Calls to send now: from the head, while the worker has room (its running slots
        plus ``pipeline_depth`` waiting there) and their arguments exist."""
        started = []
        window = self.max_concurrency + pipeline_depth
        while (self.state is ActorState.ALIVE and not self.doubtful and self.mailbox
               and len(self.running) < window):
            head = self.mailbox[0]
            if head.missing:
                break
            self.mailbox.popleft()
            self.running[head.spec.task_id] = head
            started.append(head)
        return started

    def finished(self, task_id: bytes) -> Task | None:
        return self.running.pop(task_id, None)

    def lose_worker(self, pid: int, how: str) -> list[Task]:
        """The worker is gone: the calls it had are in doubt (each may have answered its
        caller before it went) until settled, and no call is released meanwhile."""
        calls = list(self.running.values())
        self.running.clear()
        self.doubtful += len(calls)
        self.lost = (pid, how)
        return calls

    def answered(self) -> None:
        """A call in doubt had its answer after all (its caller reported it)."""
        self.doubtful -= 1

    def settle(self, unanswered: list[Task], unsent: set[bytes]) -> tuple[list[Task], list[Task]]:
        """Calls in doubt whose caller had no answer: (calls to run again, calls that fail).

        A call its caller never sent goes again as it is; one that was sent runs again while
        its ``max_task_retries`` allow, else fails (it may or may not have run). They go back
        to the front of the mailbox, in order, before the calls that never started. A dead
        actor's all fail."""
        self.doubtful -= len(unanswered)
        if self.state is ActorState.DEAD:
            return [], unanswered
        retry, fail = [], []
        for task in unanswered:
            if task.spec.task_id in unsent:
                retry.append(task)
            elif task.retries_left > 0:
                task.retries_left -= 1
                task.attempt += 1
                retry.append(task)
            else:
                fail.append(task)
        self.mailbox.extendleft(reversed(retry))
        return retry, fail

    def drain(self) -> list[Task]:
        """Every call still waiting: the actor is dead, they all fail."""
        calls = list(self.mailbox)
        self.mailbox.clear()
        return calls

    def idle_and_unreferenced(self) -> bool:
        return (not self.holders and not self.pinned and not self.mailbox and not self.running
                and not self.doubtful and self.state is not ActorState.DEAD)


class ActorDirectory:
    """Every actor of the node, and the names they are registered under."""

    def __init__(self) -> None:
        self.actors: dict[bytes, Actor] = {}
        self.names: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> actor id
        self.by_worker: dict[bytes, Actor] = {}
        # Why recently dead actors died, for calls that still arrive; the actors themselves
        # (their __init__ arguments above all) are dropped.
        self.tombstones: OrderedDict[bytes, str] = OrderedDict()

    def create(self, creation: Task) -> Actor | str:
        """The new actor, or why it cannot be made (its name is taken)."""
        options = creation.spec.actor_options
        key = (options.get("namespace", ""), options.get("name", ""))
        if key[1] and key in self.names:
            return (f"an actor named {key[1]!r} already exists in namespace {key[0]!r}; "
                    "pick another name, or zray.get_actor() the existing one")
        actor = Actor(creation, restarts_left=int(options.get("max_restarts", 0)))
        self.actors[actor.actor_id] = actor
        if key[1]:
            self.names[key] = actor.actor_id
        return actor

    def lookup(self, namespace: str, name: str) -> Actor | None:
        actor_id = self.names.get((namespace, name))
        return self.actors.get(actor_id) if actor_id else None

    def attach_worker(self, actor: Actor, worker: bytes, pid: int) -> None:
        actor.worker, actor.worker_pid = worker, pid
        self.by_worker[worker] = actor

    def detach_worker(self, actor: Actor) -> None:
        self.by_worker.pop(actor.worker, None)
        actor.worker, actor.worker_pid = b"", 0

    def bury(self, actor: Actor, cause: str) -> list[Task]:
        """Mark the actor dead (freeing its name); returns the queued calls, which must fail
        (see Actor.lose_worker for those its worker had)."""
        actor.move(ActorState.DEAD)
        actor.death_cause = cause
        options = actor.options
        key = (options.get("namespace", ""), options.get("name", ""))
        if self.names.get(key) == actor.actor_id:
            del self.names[key]
        self.detach_worker(actor)
        del self.actors[actor.actor_id]
        self.tombstones[actor.actor_id] = cause
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)
        return actor.drain()

    def death_cause(self, actor_id: bytes) -> str:
        return self.tombstones.get(actor_id, "no actor with this id lives on this node")
