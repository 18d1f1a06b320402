"""The agent's objects: requests about them, and what those cause.

Requests: Subscribe (send me this object once ready), PutObject, CreateObject and
SealObject (a value made inline or written into the store), RefsChanged (a process took or
dropped refs; actor handles are counted by the actors). The decisions are the
``ObjectTable``'s (no I/O); ``deliver`` sends what they caused: ready objects to their
subscribers, GCS rows, notices of errors nobody read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zray import protocol as p
from zray.ids import task_of
from zray.node import failures
from zray.node.object_table import ObjState
from zray.node.sessions import zray_home
from zray.node.spilling import Spiller, spill_directory

if TYPE_CHECKING:
    from zray.node.agent import Agent


class ObjectManager:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.table = agent.objects
        config = agent.config
        self.spiller = Spiller(
            self.table, lambda: agent.mapping.view,
            spill_directory(config.object_spill_dir, agent.session, zray_home()),
            config.object_spill_max_bytes,
            lambda client, ids: agent.send(client, p.ReleaseBlocks(ids)),
            lambda client: client in agent.clients and not agent.clients[client].remote,
            lambda entry: agent.gcs.record_object(entry, agent.node_id),
            lambda object_id: agent.task_unfinished(task_of(object_id)))

    def deliver(self) -> None:
        """Send what the last messages caused: ready objects, unhandled-error notices,
        and in a cluster pulls, copies served and refs given back; objects to read back
        from disk, and requests that waited for room."""
        spiller = self.spiller
        for object_id in self.table.to_restore:
            spiller.restore(object_id)
        self.table.to_restore.clear()
        if spiller.due or (self.table.freed and (spiller.waiting or spiller.restoring)):
            spiller.retry_waiting()
        ready = []
        while self.table.became_ready:
            object_id = self.table.became_ready.pop()
            ready.append(object_id)
            entry = self.table.get(object_id)
            if entry is not None and entry.listed:
                self.agent.gcs.record_object(entry, self.agent.node_id)
            self.agent.tasks.object_ready(object_id)
            self.agent.actors.object_ready(object_id)
        if self.agent.member is not None:
            self.agent.member.objects_changed(ready, bool(self.table.freed))
        self._ask_rebuilds()
        by_client: dict[bytes, list[p.Location]] = {}
        for client_id, location in self.table.notify:
            by_client.setdefault(client_id, []).append(location)
        self.table.notify.clear()
        for client_id, locations in by_client.items():
            self.agent.send(client_id, p.ObjectsReady(locations))
        for freed in self.table.freed:
            if freed.spilled:
                self.spiller.freed(freed.object_id, freed.spilled)
            if freed.listed:
                self.agent.gcs.record("objects", freed.object_id, None)
            if freed.unhandled_error is not None:
                self.agent.notice(freed.job_id, "", freed.unhandled_error)
        self.table.freed.clear()

    def _ask_rebuilds(self) -> None:
        """Lost results now needed: their owners run their tasks again; one whose owner
        is not a process of this node any more is lost for good."""
        by_owner: dict[bytes, list[bytes]] = {}
        for owner, object_id in self.table.to_rebuild:
            by_owner.setdefault(owner, []).append(object_id)
        self.table.to_rebuild.clear()
        for owner, object_ids in by_owner.items():
            client = self.agent.clients.get(owner)
            if client is not None and not client.remote:
                self.agent.send(owner, p.Rebuild(b"", object_ids))
                continue
            for object_id in object_ids:
                entry = self.table.get(object_id)
                error = failures.owner_gone_with_lineage(object_id)
                if entry is not None:
                    self.table.put_inline(object_id, entry.job_id, error, [], b"", True)
        if self.table.became_ready:  # (errors filed just now)
            self.deliver()

    def on_unrebuildable(self, client_id: bytes, msg: p.Unrebuildable) -> None:
        """An owner cannot rebuild these (no lineage, no retries left): ``error`` stands."""
        entries = [self.table.get(object_id) for object_id in msg.object_ids]
        if not all(e is not None and e.owner == client_id and e.state is ObjState.PENDING
                   for e in entries):
            self.agent.reject(client_id, msg, "it names objects that are not results of "
                                              "its own tasks waiting to be rebuilt")
            return
        for entry in entries:
            assert entry is not None
            self.table.put_inline(entry.object_id, entry.job_id, msg.error, [], b"", True)

    def arguments(self, deps: list[bytes]) -> list[p.Location]:
        """The Locations of a task's arguments, for its ExecuteTask (each now counted as
        read). Inline values beyond the config's message budget are first copied into the
        store, biggest first, so the message stays within a frame (a reduce over a
        thousand small results); with the store full they stay inline."""
        entries = [self.table.entries[dep] for dep in deps]
        for entry in entries:
            self.table.mark_delivered(entry.object_id)
        inline = sum(len(entry.data) for entry in entries if entry.data is not None)
        budget = self.agent.config.message_budget
        for entry in sorted(entries, key=lambda e: e.size, reverse=True):
            if inline <= budget:
                break
            if entry.data is None or entry.is_error:  # (errors travel inline; a repeat)
                continue
            offset = self.table.allocate(entry.size)
            if offset is None:
                break
            self.agent.mapping.view[offset : offset + entry.size] = entry.data
            inline -= entry.size
            entry.data, entry.offset = None, offset
            self.agent.gcs.record_object(entry, self.agent.node_id)
        return [entry.location() for entry in entries]

    def on_subscribe(self, client_id: bytes, msg: p.Subscribe) -> None:
        for object_id in msg.object_ids:
            if not self.table.subscribe(client_id, object_id, msg.for_get):
                error = failures.object_lost(object_id, "get")
                self.table.notify.append((client_id, (object_id, error, 0, len(error), True)))

    def on_put(self, client_id: bytes, msg: p.PutObject) -> None:
        job_id = self.agent.clients[client_id].job_id
        self.table.put_inline(msg.object_id, job_id, msg.data, msg.contained, client_id)

    def on_create(self, client_id: bytes, msg: p.CreateObject) -> None:
        job_id = self.agent.clients[client_id].job_id
        offset = self.table.create(msg.object_id, job_id, msg.size, msg.owner or client_id)
        if offset == -1 and self.spiller.need(msg.size, lambda: self._create_again(client_id,
                                                                                  msg)):
            return  # (answered once objects went to disk)
        error = "" if offset != -1 else failures.store_full_text(
            msg.size, self.table.allocator, self.spiller.limit_text())
        self.agent.send(client_id, p.ObjectCreated(msg.request_id, offset, error))

    def _create_again(self, client_id: bytes, msg: p.CreateObject) -> None:
        if client_id in self.agent.clients:  # (not gone while it waited)
            self.on_create(client_id, msg)

    def on_blocks_released(self, client_id: bytes, msg: p.BlocksReleased) -> None:
        if not self.spiller.on_released(client_id, msg.released, msg.in_use):
            self.agent.reject(client_id, msg, "it names objects the agent did not ask it to "
                                              "give the blocks of")

    def on_seal(self, client_id: bytes, msg: p.SealObject) -> None:
        entry = self.table.get(msg.object_id)
        if entry is None or entry.state is not ObjState.CREATING:
            self.agent.reject(client_id, msg, "it seals an object that is not being written")
            return
        self.table.seal(msg.object_id, msg.contained, msg.is_error)

    def on_fetch(self, client_id: bytes, msg: p.Fetch) -> None:
        """A worker needs these arguments of a task sent to it over TCP from ``msg.node``:
        subscribed, and pulled from there if we have no copy."""
        if not self._of_this_cluster(client_id, msg, msg.node):
            return
        job_id = self.agent.clients[client_id].job_id
        for object_id in msg.object_ids:
            self.table.elsewhere(object_id, msg.node, job_id)
        self.on_subscribe(client_id, p.Subscribe(msg.object_ids, True))

    def on_lend(self, client_id: bytes, msg: p.LendObjects) -> None:
        """A worker's results go to an owner on another node: lent to that node."""
        if not self._of_this_cluster(client_id, msg, msg.node):
            return
        for object_id in msg.object_ids:
            if self.table.lend(object_id, msg.node):
                self.table.release(msg.holder, object_id)

    def _of_this_cluster(self, client_id: bytes, msg: p.Message, node: bytes) -> bool:
        """Whether ``node`` is a node of our cluster (else ``msg`` is rejected)."""
        member = self.agent.member
        if member is None or node not in member.membership.nodes:
            self.agent.reject(client_id, msg, f"node {node.hex()[:16]} is not a node of "
                                              "this cluster")
            return False
        return True

    def on_refs(self, client_id: bytes, msg: p.RefsChanged) -> None:
        for object_id in msg.added:
            if not self.agent.actors.holds(client_id, object_id, True):
                self.table.add_holder(client_id, object_id)
        for object_id in msg.released:
            if not self.agent.actors.holds(client_id, object_id, False):
                self.table.release(client_id, object_id)
