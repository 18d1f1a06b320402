"""The processes connected to a node agent: drivers and workers, and what they run.

The agent routes by these: replies to a client's receiving socket, a task's output and
notices to the drivers of its job, a named-actor lookup to its job's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zray.node.scheduler import Task
from zray.node.worker_pool import WorkerProcess


@dataclass
class Client:
    client_id: bytes
    kind: str  # "driver" or "worker"
    pid: int
    job_id: bytes
    log_to_driver: bool
    pidfd: int = -1  # watched for drivers; workers are watched through the pool
    worker: WorkerProcess | None = None
    functions: set[bytes] = field(default_factory=set)  # exported functions it has
    job_row: dict[str, Any] = field(default_factory=dict)  # a driver's job, as the GCS has it
    remote: bool = False  # a caller on another node, of an actor here (its agent relays)
    addresses: dict[str, str] = field(default_factory=dict)  # a worker's TCP sockets

    def addresses_for(self, other: Client | None) -> dict[str, str]:
        """This worker's TCP sockets if ``other`` (an owner, a caller) is on another node."""
        return self.addresses if other is None or other.remote else {}


class Clients:
    def __init__(self) -> None:
        self.by_id: dict[bytes, Client] = {}
        self.namespaces: dict[bytes, str] = {}  # job id -> its driver's namespace
        self.running_on: dict[int, Task] = {}  # worker pid -> its task, to route its output

    def add(self, client: Client, namespace: str) -> None:
        self.by_id[client.client_id] = client
        if client.kind == "driver":
            self.namespaces[client.job_id] = namespace

    def remove(self, client_id: bytes) -> None:
        self.by_id.pop(client_id, None)

    def __contains__(self, client_id: bytes) -> bool:
        return client_id in self.by_id

    def __getitem__(self, client_id: bytes) -> Client:
        return self.by_id[client_id]

    def get(self, client_id: bytes) -> Client | None:
        return self.by_id.get(client_id)

    def with_pidfd(self, fd: int) -> Client | None:
        return next((c for c in self.by_id.values() if c.pidfd == fd), None)

    def pidfds(self) -> set[int]:
        return {c.pidfd for c in self.by_id.values() if c.pidfd >= 0}

    def job_of(self, client_id: bytes) -> bytes:
        """A driver's job, or the job of the task a worker is running."""
        client = self.by_id[client_id]
        task = self.running_on.get(client.pid)
        return task.spec.job_id if client.kind == "worker" and task else client.job_id

    def drivers_of(self, job_id: bytes | None) -> list[Client]:
        """The drivers of a job (every driver for None)."""
        return [c for c in self.by_id.values() if c.kind == "driver"
                and (job_id is None or c.job_id == job_id)]
