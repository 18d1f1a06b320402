"""The agent's side of the GCS: it supervises its broker shard and reports rows to it.

Rows go out through ``BrokerLink`` (batched, acknowledged, resent after a broker restart),
never on the hot path: the agent records and moves on. On a private cluster the agent also
starts the broker shard and restarts it whenever it dies (DESIGN.md §3: "restarted by its
node's supervisor"); the shard replays its write-ahead log when it comes back.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

import zmq

from zray.actors.mailbox import Actor
from zray.broker.link import BrokerLink
from zray.config import Config
from zray.node.object_table import ObjectEntry
from zray.node.scheduler import Task
from zray.node.worker_pool import wait_for_exit
from zray.protocol import has_input

log = logging.getLogger("zray.agent")


class GcsClient:
    def __init__(self, context: zmq.Context, endpoint: str, wal: str, node_id: bytes,
                 config: Config) -> None:
        self._argv = [sys.executable, "-m", "zray.broker.shard", "--endpoint", endpoint,
                      "--wal", wal, "--parent-pid", str(os.getpid())]
        self._config = config
        self.stopping = False
        self._last_flush = 0.0
        self._start()
        self.link = BrokerLink(context, endpoint, node_id, config)

    @property
    def fds(self) -> list[int]:
        """What the agent's poller watches for us: the broker's pidfd."""
        return [self.pidfd]

    def record(self, table: str, key: bytes, fields: dict[str, Any] | None,
               blob: bytes | None = None) -> None:
        self.link.record(table, key, fields, blob)

    def record_task(self, task: Task, pid: int = 0) -> None:
        # Its fields are laid out when the row is sent, from the task as it is then: a
        # task recorded several times before a flush costs one row, and a row dropped
        # unsent (BrokerLink.record) costs none.
        self.link.record("tasks", task.spec.task_id, _TaskRow(task, pid, time.time()))

    def record_object(self, entry: ObjectEntry | None, node_id: bytes) -> None:
        if entry is not None:
            self.link.record("objects", entry.object_id, {
                "object_id": entry.object_id.hex(), "job_id": entry.job_id.hex(),
                "size": entry.size, "where": "inline" if entry.data is not None else "store",
                "is_error": entry.is_error, "node_id": node_id.hex()})

    def record_actor(self, actor: Actor) -> None:
        options = actor.options
        self.link.record("actors", actor.actor_id, {
            "actor_id": actor.actor_id.hex(), "class_name": options.get("class_name"),
            "name": options.get("name"), "namespace": options.get("namespace"),
            "state": actor.state.name, "pid": actor.worker_pid,
            "restarts_left": actor.restarts_left, "death_cause": actor.death_cause[:500]})

    def pump(self) -> None:
        """Take acknowledgements; send queued rows once per poll period (so a key updated
        several times meanwhile goes out once) or as soon as a batch is full."""
        while has_input(self.link.socket):
            self.link.handle(self.link.socket.recv_multipart())
        now = time.monotonic()
        due = now - self._last_flush >= self._config.poll_interval_ms / 1000
        if due or self.link.queued_rows() >= self._config.broker_batch_rows:
            self.link.flush(now)
            self._last_flush = now

    def on_broker_exit(self) -> None:
        log.warning("broker shard (pid %d) %s; restarting it", self.proc.pid,
                    f"exited with {self.proc.wait()}")
        os.close(self.pidfd)
        if not self.stopping:
            self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL)
        self.pidfd = os.pidfd_open(self.proc.pid)

    def drain(self, timeout_s: float) -> None:
        """Send every row not yet acknowledged and wait, at most ``timeout_s``, until the
        broker has stored them: a clean stop leaves its whole history in the log. Not if
        the broker has never answered: it is still starting, and waiting for it would add
        its start-up to every short session's stop (a session that short keeps less)."""
        if not self.link.acknowledged:
            return
        deadline = time.monotonic() + timeout_s
        while self.link.unacked_rows() and self.proc.poll() is None:
            self.link.flush(time.monotonic())
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stopping with %d table rows the broker did not store in %.1fs",
                            self.link.unacked_rows(), timeout_s)
                return
            if self.link.socket.poll(int(min(left, 0.1) * 1000), zmq.POLLIN):
                self.link.handle(self.link.socket.recv_multipart())

    def begin_stop(self) -> None:
        """SIGTERM the broker (it closes its log); ``stop`` then waits for it."""
        self.stopping = True
        self.proc.terminate()

    def stop(self) -> None:
        self.begin_stop()
        wait_for_exit([self.proc], self._config.shutdown_timeout_s)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.pidfd)
        self.link.close()


class _TaskRow:
    """A task's row in the GCS, laid out on demand (see record_task)."""

    __slots__ = ("task", "pid", "at")

    def __init__(self, task: Task, pid: int, at: float) -> None:
        self.task, self.pid, self.at = task, pid, at

    def __call__(self) -> dict[str, Any]:
        spec = self.task.spec
        row = {"task_id": spec.task_id.hex(), "name": spec.name, "job_id": spec.job_id.hex(),
               "state": self.task.state.name, "attempt": self.task.attempt, "time": self.at}
        if self.pid:
            row["pid"] = self.pid
        return row
