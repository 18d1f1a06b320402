"""The agent's side of the GCS: it reports rows to the broker shards.

Rows go out through one ``BrokerLink`` per shard (batched, acknowledged, resent after a
shard restart), each row to the shard of its key (``shard_of``), never on the hot path: the
agent records and moves on. The shards are not the agent's: their supervisor
(zray/broker/supervisor.py) starts them and restarts them, so an agent's death leaves the
GCS up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from zray.actors.mailbox import Actor
from zray.broker.link import BrokerLink, Fields
from zray.broker.tables import shard_of
from zray.config import Config
from zray.mesh.auth import Credentials
from zray.node.object_table import ObjectEntry
from zray.node.scheduler import Task, TaskState
from zray.protocol import has_input

log = logging.getLogger("zray.agent")


class GcsClient:
    def __init__(self, context: zmq.Context, endpoints: list[str], node_id: bytes,
                 config: Config, credentials: Credentials | None = None) -> None:
        self._config = config
        self._last_flush = 0.0
        # Each link keeps at most its share of the task history queued, as each shard keeps.
        share = max(1, config.max_task_history // len(endpoints))
        self.links = [BrokerLink(context, endpoint, node_id, config, share, credentials)
                      for endpoint in endpoints]
        self._node_id = node_id
        self._node_hex = node_id.hex()
        # Why a pending task waits, asked when its row is laid out (the agent sets it).
        self.why_pending: Callable[[Task], str] = lambda task: ""
        self._node_row: dict[str, Any] = {}
        self._tasks = 0  # tasks recorded, each once
        self._counted = (0, 0)  # tasks recorded, rows dropped unsent: as the node's row says

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [link.socket for link in self.links]

    def record(self, table: str, key: bytes, fields: Fields | None,
               blob: bytes | None = None) -> None:
        """Queue a row (``fields`` None deletes it) for the shard of ``key``; no I/O."""
        self.links[shard_of(key, len(self.links))].record(table, key, fields, blob)

    def record_node(self, fields: dict[str, Any]) -> None:
        """This node's row; it also counts the tasks recorded (``zray inspect`` tells how
        many of them the GCS did not keep) and the rows its links dropped unsent."""
        self._node_row = dict(fields, tasks_recorded=self._counted[0],
                              dropped_task_rows=self._counted[1])
        self.record("nodes", self._node_id, self._node_row)

    def node_stopped(self) -> None:
        """The node's row says it stopped (a clean stop; a node that dies keeps ALIVE
        until the cluster issue's failure detection marks it)."""
        if self._node_row:
            self.record_node(dict(self._node_row, state="DEAD", end_time=time.time()))

    def record_task(self, task: Task) -> None:
        # Its fields are laid out when the row is sent, from the task as it is then: a
        # task recorded several times before a flush costs one row, and a row dropped
        # unsent (BrokerLink.record) costs none.
        if task.row is None:  # its first record: one layout function for all its rows
            task.row = _TaskRow(task, self._node_hex, self.why_pending)
            self._tasks += 1
        self.record("tasks", task.spec.task_id, task.row)

    def record_object(self, entry: ObjectEntry | None, node_id: bytes) -> None:
        if entry is not None:
            self.record("objects", entry.object_id, {
                "object_id": entry.object_id.hex(), "job_id": entry.job_id.hex(),
                "size": entry.size, "where": entry.where,
                "is_error": entry.is_error, "node_id": node_id.hex()})

    def record_actor(self, actor: Actor) -> None:
        options = actor.options
        self.record("actors", actor.actor_id, {
            "actor_id": actor.actor_id.hex(), "class_name": options.get("class_name"),
            "name": options.get("name"), "namespace": options.get("namespace"),
            "state": actor.state.name, "pid": actor.worker_pid, "node_id": self._node_hex,
            "methods": options.get("methods", []),
            "restarts_left": actor.restarts_left, "death_cause": actor.death_cause[:500],
            # (for the nodes of its callers, if its node dies: zray/node/remote_actors.py)
            "max_task_retries": actor.max_task_retries,
            "creator_node": options.get("creator_node", "")})

    def pump(self) -> None:
        """Take acknowledgements; send queued rows every ``gcs_flush_ms`` (so a key updated
        several times meanwhile goes out once) or as soon as a batch is full."""
        now = time.monotonic()
        due = now - self._last_flush >= self._config.gcs_flush_ms / 1000
        for link in self.links:
            while has_input(link.socket):
                link.handle(link.socket.recv_multipart())
            if due or link.queued_rows() >= self._config.broker_batch_rows:
                link.flush(now)
        if due:
            self._last_flush = now
            self._update_counts()

    def _update_counts(self) -> None:
        counts = (self._tasks, sum(link.dropped_rows for link in self.links))
        if counts != self._counted and self._node_row:
            self._counted = counts
            self.record_node(self._node_row)

    def unacked_rows(self) -> int:
        return sum(link.unacked_rows() for link in self.links)

    def drain(self, timeout_s: float) -> None:
        """Send every row not yet acknowledged and wait, at most ``timeout_s``, until the
        shards have stored them: a clean stop leaves its whole history in the logs. Not for
        a shard that has never answered: it is still starting, and waiting for it would add
        its start-up to every short session's stop (a session that short keeps less)."""
        self._update_counts()
        links = [link for link in self.links if link.acknowledged]
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        for link in links:
            poller.register(link.socket, zmq.POLLIN)
        while any(link.unacked_rows() for link in links):
            for link in links:
                link.flush(time.monotonic())
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("stopping with %d table rows the shards did not store in %.1fs",
                            sum(link.unacked_rows() for link in links), timeout_s)
                return
            for sock, _ in poller.poll(int(min(left, 0.1) * 1000)):
                next(link for link in links if link.socket is sock).handle(
                    sock.recv_multipart())

    def stats(self) -> list[dict[str, Any]]:
        """Each link's state, for ``zray status`` and tests."""
        return [link.stats() for link in self.links]

    def close(self) -> None:
        for link in self.links:
            link.close()


class _TaskRow:
    """A task's row in the GCS, laid out on demand (see record_task)."""

    __slots__ = ("task", "node", "why_pending")

    def __init__(self, task: Task, node: str, why_pending: Callable[[Task], str]) -> None:
        self.task, self.node, self.why_pending = task, node, why_pending

    def __call__(self) -> str:
        """The row as JSON, laid out by hand (one per task: json.dumps of the same dict
        cost the agent twice as much). Its keys are the README's (``zray inspect tasks
        --json``); ``times``: every state it entered, in µs after ``submitted``."""
        task = self.task
        if not task.row_head:  # (the same for every row of the task: laid out once)
            spec = task.spec
            args = ",".join(f'"{dep.hex()}"' for dep in spec.deps)  # (top-level ref args)
            task.row_head = (
                f'{{"task_id":"{spec.task_id.hex()}","name":{_json_str(spec.name)},'
                f'"job_id":"{spec.job_id.hex()}",'
                f'"parent_task_id":"{spec.parent.hex()}","submitted":{task.submitted!r},'
                f'"arg_ids":[{args}],')
        times = ",".join(f'"{state}":{us}' for state, us in task.times.items())
        extra = f',"worker_pid":{task.pid}' if task.pid else ""
        if task.error:  # "Type: message", and the traceback on the lines after
            first, _, traceback = task.error.partition("\n")
            kind, _, message = first.partition(": ")
            extra += f',"error_type":{_json_str(kind)},"error_message":{_json_str(message)}'
            if traceback:
                extra += f',"traceback":{_json_str(traceback)}'
        if ((task.state is TaskState.WAITING_DEPS or task.state is TaskState.QUEUED)
                and time.time() - task.submitted >= 1.0):  # (not a task in passing)
            reason = self.why_pending(task)
            if reason:
                extra += f',"pending_reason":{_json_str(reason)}'
        return (f'{task.row_head}"node_id":"{task.ran_on or self.node}",'
                f'"state":"{task.state.name}","attempt":{task.attempt},'
                f'"times":{{{times}}}{extra}}}')


_json_str = json.JSONEncoder(ensure_ascii=False).encode  # a name, quoted and escaped
