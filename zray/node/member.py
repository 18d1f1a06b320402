"""A node agent as a member of a cluster (``zray node start``): its door, what it knows of
the other nodes, and the leases it relays.

::

    peers' agents, joining nodes --TCP--> MeshDoor (zray/node/mesh.py)    --> Relay
    this agent --DEALER per peer--> their doors (Relay.links: our owners' leases)
    GCS shards --PUB nodes--> Membership (zray/node/membership.py): who is up, their load

Objects cross between stores as its Transfers pull them (zray/node/transfer.py), lent and
given back as the ObjectTable counts them.

The agent hands it what it needs, no more: its scheduler's queues (to spill lease
requests, zray/node/placement.py), a desk for leases asked by owners elsewhere, its objects and
store, ways to send to its own clients and workers. A private cluster's agent has no
member.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from zray import protocol as p
from zray.broker.follow import Follower
from zray.broker.layout import GcsAddress
from zray.config import Config
from zray.mesh.auth import Credentials
from zray.node.clients import Client, Clients
from zray.node.membership import Membership
from zray.node.mesh import MeshDoor
from zray.node.object_table import ObjectTable, ObjState
from zray.node.placement import Placement, choose_peer, fits, place
from zray.node.placement_groups import PlacementGroups
from zray.node.relay import Relay
from zray.node.remote_actors import RemoteActors
from zray.node.scheduler import Scheduler
from zray.node.spilling import Spiller
from zray.node.transfer import Transfers

_SPILL_SCAN = 64  # queued requests of one shape looked at per pass for spilling


class ActorDesk(Protocol):
    """The agent, as callers on other nodes use its actors: each a remote client."""

    def remote_client(self, client_id: bytes, msg: p.Register) -> None: ...
    def handle(self, client_id: bytes, msg: p.Message) -> None: ...


class LeaseDesk(Protocol):
    """The agent's leases, as owners on other nodes use them (zray/node/leases.py)."""

    def request(self, client_id: bytes, msg: p.RequestLease) -> None: ...
    def give_back(self, client_id: bytes, msg: p.ReturnLease) -> None: ...
    def client_gone(self, client_id: bytes, pid: int) -> None: ...
    def refuse(self, client_id: bytes, msg: p.RequestLease, why: str) -> None: ...


class ClusterMember:
    def __init__(self, context: zmq.Context, node_id: bytes, door: MeshDoor,
                 gcs: GcsAddress, credentials: Credentials, agent_endpoint: str,
                 config: Config, scheduler: Scheduler, desk: LeaseDesk, actor_desk: ActorDesk,
                 objects: ObjectTable, spiller: Spiller, groups: PlacementGroups,
                 clients: Clients,
                 functions: dict[bytes, bytes],
                 send: Callable[[bytes, p.Message], None],
                 send_direct: Callable[[bytes, p.Message | list[bytes], str], None],
                 store: Callable[[], memoryview],
                 status: Callable[[], dict[str, object]]) -> None:
        """``store()``: this node's store, writable; ``status``: this node's, for ``zray
        status`` asking over the mesh."""
        self.node_id, self.door, self.config = node_id, door, config
        self.scheduler, self.desk, self.actor_desk = scheduler, desk, actor_desk
        self.objects, self.clients, self.groups = objects, clients, groups
        self._send, self._send_direct = send, send_direct
        self._status = status
        self.membership = Membership(context, gcs, node_id)
        self.relay = Relay(context, node_id, agent_endpoint, credentials, door.socket,
                           objects, lambda worker, frames, kind: send_direct(worker, frames, kind),
                           config.mesh_window)
        self.actors = RemoteActors(self.relay, Follower(gcs, "actors", context=context),
                                   objects, clients, lambda: self.membership.nodes, functions,
                                   send, actor_desk.handle)
        self.transfers = Transfers(objects, store, self.to_node, self.relay.answer_node,
                                   config.inline_object_max_bytes, spiller.need, spiller.read)
        self._load_reported = (0.0, dict(scheduler.available))
        self._turn = 0  # SPREAD's: the next node in turn
        self._gone: set[bytes] = set()  # nodes seen to have left

    @property
    def address(self) -> str:
        return self.door.address

    def sockets(self) -> set[zmq.Socket]:
        return {self.door.socket, *self.relay.sockets, *self.membership.sockets,
                *self.actors.actor_rows.sockets}

    # --- the loop's events ----------------------------------------------------------

    def on_events(self, events: dict[Any, int]) -> None:
        relay = self.relay
        if self.door.socket in events:
            while p.has_input(self.door.socket):
                got = self.door.on_frames(self.door.socket.recv_multipart())
                if got is None:
                    pass
                elif p.is_message(got[1], p.QueryAgent):
                    self._answer_query(*got)
                else:
                    self._on_relayed_to_us(*got)
        for sock in [s for s in events if isinstance(s, zmq.Socket)]:
            if sock in relay.links.values():
                for owner, kind, msg in relay.on_link(sock):
                    self._on_relayed_back(owner, kind, msg)
            elif sock in relay.proxies:
                relay.on_proxy(sock)
            elif sock in relay.by_owner_proxy:
                relay.on_owner_proxy(sock)
            elif sock in self.membership.sockets:
                self.membership.on_readable(sock)
            else:
                self.actors.actor_rows.on_readable(sock)
        self.membership.tick()
        self.actors.actor_rows.tick()
        self._see_nodes_gone()
        if self.transfers.retry_at:
            self.transfers.tick()
        if self.actors.restarting:
            self.actors.rows_changed()

    def _answer_query(self, identity: bytes, frames: list[bytes]) -> None:
        """``zray status`` (a holder of the token) asks this node how it is."""
        try:
            msg = p.decode(frames)
        except p.ProtocolError:
            return
        assert isinstance(msg, p.QueryAgent)
        body = self._status() if msg.what == "status" else {
            "error": f"a node answers only 'status' over the mesh, not {msg.what!r}"}
        self.door.send(identity, p.AgentReply(msg.request_id, json.dumps(body)))

    def _on_relayed_to_us(self, identity: bytes, frames: list[bytes]) -> None:
        """A peer's agent relays its owner's lease request or return (or its end); not a
        node the cluster declared dead (its late messages are dropped)."""
        known = self.membership.nodes.get(identity)
        if known is not None and not known.alive:
            self.relay.complaints.warning("fenced", "dropped a message from node %s, which "
                                          "the cluster declared dead", identity.hex()[:12])
            return
        got = self.relay.on_door(identity, frames)
        if got is None:
            return
        owner, kind, msg = got
        if kind == "actor":
            if isinstance(msg, p.Register):
                self.actor_desk.remote_client(owner, msg)
            elif owner in self.clients:
                self.actor_desk.handle(owner, msg)
        elif kind == "objects":  # (``owner`` is the node that sent it)
            self._on_objects(owner, msg)
        elif kind == "groups":  # (as for objects)
            self.groups.on_message(owner, msg)
        elif kind == "object" and isinstance(msg, p.ObjectsReady) and owner in self.clients:
            job_id = self.clients[owner].job_id
            for object_id, data, _, size, is_error in msg.locations:
                if data is None:  # (lent: pulled when the call needs it)
                    self.objects.borrowed(object_id, identity, job_id, size, is_error)
                else:
                    self.objects.put_inline(object_id, job_id, data, [], b"", is_error)
        elif isinstance(msg, p.RequestLease):
            self.desk.request(owner, msg)
        elif isinstance(msg, p.ReturnLease):
            self.desk.give_back(owner, msg)
        elif isinstance(msg, p.Disconnect):
            self.desk.client_gone(owner, 0)
            self.relay.remote_owner_gone(owner)

    def _on_objects(self, node: bytes, msg: p.Message) -> None:
        """A node's pull, a chunk it sends back, refs it gives back, copies it freed."""
        if isinstance(msg, p.PullObject):
            self.transfers.on_pull(node, msg)
        elif isinstance(msg, p.ObjectChunk):
            self.transfers.on_chunk(node, msg)
        elif isinstance(msg, p.Unborrow):
            for object_id, count in zip(msg.object_ids, msg.counts, strict=False):
                self.objects.unborrow(node, object_id, count)
        elif isinstance(msg, p.ForgetCopies):
            for object_id in msg.object_ids:
                self.objects.forget(object_id)

    def objects_changed(self, ready: list[bytes], freed: bool) -> None:
        """After the agent's objects changed: serve pulls that waited for the ``ready``
        ones, start the pulls now wanted (and those that found the store full, if some
        was ``freed``), give back refs nothing here uses, tell the nodes with copies of
        what we freed."""
        table = self.objects
        for object_id in [*ready, *table.made_elsewhere]:
            self.transfers.object_ready(object_id)
        table.made_elsewhere.clear()
        self.transfers.start()
        if freed:
            self.transfers.retry_waiting()
        if table.unborrows:
            by_node: dict[bytes, tuple[list[bytes], list[int]]] = {}
            for node, object_id, count in table.unborrows:
                ids, counts = by_node.setdefault(node, ([], []))
                ids.append(object_id)
                counts.append(count)
            table.unborrows.clear()
            for node, (ids, counts) in by_node.items():
                self.to_node(node, p.Unborrow(ids, counts))
        if table.forgets:
            forgotten: dict[bytes, list[bytes]] = {}
            for node, object_id in table.forgets:
                forgotten.setdefault(node, []).append(object_id)
            table.forgets.clear()
            for node, ids in forgotten.items():
                self.to_node(node, p.ForgetCopies(ids))

    def to_node(self, node: bytes, msg: p.Message, kind: str = "objects") -> bool:
        """Send to a node's door: False if it is not a live node of the cluster."""
        info = self.membership.nodes.get(node)
        if info is None or not info.alive or not info.address:
            return False
        self.relay.link_to(info)
        self.relay.send_to_peer(node, b"", kind, msg)
        return True

    def peers_free(self) -> dict[bytes, dict[str, float]]:
        """Each live peer's free resources, as it last said."""
        return {node.node_id: node.available for node in self.membership.peers()}

    def _see_nodes_gone(self) -> None:
        """Nodes that left (a clean stop, or declared dead by the GCS): our objects they
        borrowed are given back and our pulls from them fail; our owners' leases there are
        lost (or asked again elsewhere, if not granted yet), calls to actors there fail;
        their owners' leases and actor handles here end."""
        gone = {n for n, info in self.membership.nodes.items() if not info.alive}
        for node in gone - self._gone:
            self.groups.node_gone(node)
            self.objects.node_gone(node)
            self.transfers.node_gone(node)
            told, owners = self.relay.node_gone(node)
            to_callers, creations = self.actors.home_died(node)
            for owner, msg in [*told, *to_callers]:
                if isinstance(msg, p.RequestLease):
                    self.request_lease(owner, msg)  # (placed again, elsewhere)
                else:
                    self._send(owner, msg)
            for owner in owners:  # (its processes are gone with it)
                if owner in self.clients:
                    self.actor_desk.handle(owner, p.Disconnect(False))
                self.desk.client_gone(owner, 0)
                self.relay.remote_owner_gone(owner)
            for client, creation in creations:  # (its actors that restart: elsewhere)
                where, what = self.place_actor(creation)
                self.actors.replaced(client, creation, what if where == "peer" else None,
                                     what if where == "refuse" else "")
        self._gone = gone

    def request_lease(self, owner: bytes, msg: p.RequestLease) -> None:
        """A lease request of one of our owners: here, on the peer its strategy or its
        arguments name, or refused (a dead or unknown node)."""
        where, what = self.place(msg)
        if where == "peer":
            self.relay.ask_lease(what, owner, msg)
        elif where == "refuse":
            self.desk.refuse(owner, msg, what)
        else:
            self.desk.request(owner, msg)

    def _on_relayed_back(self, owner: bytes, kind: str, msg: p.Message | list[bytes]) -> None:
        """A peer's agent answers one of our owners (or, kind "objects", sends us what
        we pulled: ``owner`` is then that node)."""
        if kind == "objects" and not isinstance(msg, list):
            self._on_objects(owner, msg)
        elif kind == "d":
            self._send_direct(owner, msg, "d")
        elif isinstance(msg, list):
            return
        elif kind == "log" and isinstance(msg, p.LogLines) and owner in self.clients:
            for driver in self.clients.drivers_of(self.clients.job_of(owner)):
                if driver.log_to_driver:
                    self._send(driver.client_id, msg)
        elif kind == "owner":
            self._send(owner, msg)

    # --- what the agent asks --------------------------------------------------------

    def to_owner(self, owner: bytes, msg: p.Message) -> bool:
        """Send to an owner on another node, through its agent: False if it is not one."""
        return self.relay.to_owner(owner, msg)

    def return_lease(self, owner: bytes, msg: p.ReturnLease) -> bool:
        """An owner of ours gives back a lease: True if it was a peer's (sent there)."""
        return self.relay.return_lease(owner, msg)

    def owner_gone(self, owner: bytes) -> None:
        """A client of ours left (its leases and actor handles elsewhere end), or a
        remote client did (its proxy here goes)."""
        self.relay.owner_gone(owner)
        self.actors.client_gone(owner)
        self.relay.remote_owner_gone(owner)

    def intercept(self, client: Client, msg: p.Message) -> p.Message | None:
        """What of a client's message is for another node goes there (an actor's creation
        placed there, anything about an actor living there); the rest, or None, is ours."""
        if isinstance(msg, p.SubmitTask) and msg.actor_options:
            where, what = self.place_actor(msg)
            if where == "peer":
                options = msg.actor_options
                if not options.get("namespace"):  # (as in Ray: the creator's job's)
                    options["namespace"] = self.clients.namespaces.get(msg.job_id, "")
                self.actors.create_there(client, msg, what)
                return None
            if where == "refuse":
                msg.actor_options["unschedulable"] = what
            return msg
        return self.actors.intercept(client, msg)

    def place_actor(self, msg: p.SubmitTask) -> Placement:
        """Where an actor goes: by its strategy, else here while it fits, else the peer
        with the most room (or one that can ever hold it)."""
        strategy = msg.actor_options.get("strategy") or {}
        if strategy:
            self._turn += bool(strategy.get("spread"))
            return place(strategy, msg.resources, self.node_id, self.scheduler.total,
                         self.membership.nodes, self._turn)
        demand = msg.resources
        peer = choose_peer(demand, fits(demand, self.scheduler.available),
                           fits(demand, self.scheduler.total), self.membership.peers(),
                           self.relay.asked)
        return ("peer", peer) if peer is not None else ("here", None)

    def labelled(self, prefix: str) -> str:
        return f"{prefix} node={self.address}"

    def output(self, owner: bytes, prefix: str, stream: str, lines: list[str]) -> None:
        """What a worker printed while running an owner's task: to the owner's drivers if
        it is on another node (tagged with this node)."""
        if owner in self.relay.via:
            self.relay.to_owner(owner, p.LogLines(f"{prefix} node={self.address}", stream,
                                                  lines), "log")

    def spill(self) -> None:
        """Lease requests of our owners that cannot be granted here now go to a peer
        that can (zray/node/placement.py); never those peers sent us."""
        peers = self.membership.peers()
        if not peers:
            return
        for queue in list(self.scheduler.queues.values()):
            for lease in [t for t in itertools.islice(queue, _SPILL_SCAN) if t.lease
                          and not t.pinned and t.submitter not in self.relay.via]:
                demand = lease.spec.resources
                peer = choose_peer(demand, fits(demand, self.scheduler.available),
                                   not lease.infeasible, peers, self.relay.asked)
                if peer is None:
                    break
                self.scheduler.withdraw(lease)
                spec = lease.spec
                self.relay.ask_lease(peer, lease.submitter, p.RequestLease(
                    spec.task_id, spec.job_id, spec.name, spec.resources, {}, [],
                    spec.runtime_env))

    def place(self, msg: p.RequestLease) -> Placement:
        """Where a lease request of one of our owners goes: by its strategy, else to the
        node that holds most of its first task's arguments (if not this one, and it can
        run it), else here."""
        self._turn += bool(msg.strategy.get("spread"))
        strategy = msg.strategy or self._near(msg.near, msg.resources)
        return place(strategy, msg.resources, self.node_id, self.scheduler.total,
                     self.membership.nodes, self._turn)

    def _near(self, object_ids: list[bytes], demand: dict[str, float]) -> dict[str, object]:
        """A soft affinity to the node holding the most bytes of these objects, or {}."""
        held: dict[bytes, int] = {}
        for object_id in object_ids:
            entry = self.objects.get(object_id)
            if entry is not None:
                node = self.node_id if entry.state is not ObjState.REMOTE else entry.home
                held[node] = held.get(node, 0) + entry.size
        best = max(held, key=held.__getitem__, default=self.node_id)
        info = self.membership.nodes.get(best)
        if best == self.node_id or info is None or not fits(demand, info.total):
            return {}
        return {"node": best.hex(), "soft": True}

    def load_changed(self, now: float) -> bool:
        """Whether our free resources changed since we last said (at most every
        load_report_ms): peers choose where to send work by them."""
        at, reported = self._load_reported
        if now - at < self.config.load_report_ms / 1000 or reported == self.scheduler.available:
            return False
        self._load_reported = (now, dict(self.scheduler.available))
        return True

    def fits_somewhere(self, demand: dict[str, float]) -> bool:
        """Whether a live peer could ever run this."""
        return any(fits(demand, node.total) for node in self.membership.peers())

    def totals(self, own: dict[str, float], which: str = "total") -> dict[str, float]:
        return self.membership.totals(own, which)

    def nodes(self) -> list[dict[str, object]]:
        """The other nodes the cluster has had (dead ones too)."""
        return [{"node_id": n.node_id.hex(), "address": n.address, "alive": n.alive,
                 "resources": n.total}
                for n in self.membership.nodes.values() if n.node_id != self.node_id]

    def close(self) -> None:
        self.actors.actor_rows.close()
        self.relay.close()
        self.membership.close()
        self.door.close()

