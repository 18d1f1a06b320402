"""Leases on other nodes' workers, asked through the two nodes' agents.

An owner asks its agent for a lease; when no worker here is free and a peer has room
(zray/node/placement.py), the agent asks the peer's agent for it instead. The grant carries
the worker's TCP sockets, and owner and worker then talk straight to each other
(zray/mesh/direct.py): only the lease's request, grant, loss and return pass here. A
worker with no TCP socket (none yet: it just started) is reached through the agents
instead, owner and worker code unchanged: each agent binds, in its own session
directory, the sockets the other side's process would have had, and relays what arrives
on them over the mesh::

    owner --ExecuteTask--> t-W.sock (proxy, here)  ==mesh==>  peer agent --> worker W
    owner <--TaskDone----- this agent  <==mesh==  d-X.sock (proxy, at the peer) <-- worker W
    owner <-LeaseGranted, LeaseLost, ReturnIdleLeases-- this agent <==mesh== peer agent
    owner --ReturnLease--> this agent ==mesh==> peer agent

Values in a store stay there: an argument in this node's store is lent to the peer (its
location becomes "elsewhere", offset -1), which pins it for the task and pulls a copy
(zray/node/transfer.py) while the worker asks for it; a result in the peer's store is lent
back to this node the same way, and pulled when someone here reads it. Small values travel
inline in the messages, as on one node. (On the direct paths the worker's agent fetches
its arguments from the owner's node, and the worker lends its results there itself.)

Mesh frames: ``[Relayed(target, kind)] + frames of the message``; this node's DEALER to a
peer's door has this node's id as identity, so the peer's answers come back on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zmq

from zray import protocol as p
from zray.mesh.auth import Credentials, secure_client
from zray.mesh.window import ReceiveWindow, SendWindow
from zray.node.launcher import direct_endpoint
from zray.node.membership import NodeInfo
from zray.node.object_table import ObjectTable
from zray.rate_limit import RateLimitedLog

log = logging.getLogger("zray.relay")

_HWM = 1000  # every mesh socket's high-water mark; credit windows stay below it
_SENT_KEPT = 100_000  # tasks sent to peers whose node is remembered for their GCS row


@dataclass
class RemoteLease:
    node: bytes  # the peer whose worker it is
    owner: bytes
    request: p.RequestLease
    worker: bytes = b""  # once granted


class Relay:
    def __init__(self, context: zmq.Context, node_id: bytes, agent_endpoint: str,
                 credentials: Credentials, door: zmq.Socket, objects: ObjectTable,
                 send_worker: Callable[[bytes, list[bytes], str], None],
                 window: int = 512) -> None:
        """``door``: this node's mesh ROUTER (answers to peers go out on it); ``objects``:
        this node's, for the refs that cross (lent, borrowed, pinned for a task);
        ``send_worker(worker, message, kind)``: to a worker of this node, on its "t" or
        "d" socket; ``window``: messages in flight each way on each connection."""
        self.context, self.node_id, self.agent_endpoint = context, node_id, agent_endpoint
        self.credentials, self.door, self.objects = credentials, door, objects
        self.send_worker = send_worker
        self.complaints = RateLimitedLog(log)
        # Messages relayed (zray status): by direction, and sent by kind ("sent t": tasks
        # for a worker there, "sent d": its answers back, "sent actor", "sent lease", ...).
        self.counts: Counter[str] = Counter()
        self.window = window
        self.links: dict[bytes, zmq.Socket] = {}  # peer node -> DEALER to its door
        # Each direction of each connection has a credit window (zray/mesh/window.py).
        self._link_out: dict[bytes, SendWindow] = {}  # peer node -> our sends to it
        self._link_in: dict[bytes, ReceiveWindow] = {}  # peer node -> its answers to us
        self._door_out: dict[bytes, SendWindow] = {}  # peer's identity -> our answers
        self._door_in: dict[bytes, ReceiveWindow] = {}  # peer's identity -> its sends
        # Origin side: leases asked of peers for our owners, and the proxies of their
        # workers (t- and d-sockets here, read by us).
        self.leases: dict[bytes, RemoteLease] = {}
        self.asked = Counter[bytes]()  # peer -> lease requests not answered yet
        self.proxies: dict[zmq.Socket, tuple[bytes, bytes, str]] = {}  # -> node, worker, kind
        self._sent_to: OrderedDict[bytes, str] = OrderedDict()  # task id -> peer (hex)
        self._worker_proxies: dict[bytes, list[zmq.Socket]] = {}
        # Peer side: owners elsewhere holding leases on our workers, by the door identity
        # of their agent, and the proxies of their direct sockets (here).
        self.via: dict[bytes, bytes] = {}
        # Arguments borrowed for peers' tasks on our workers, pinned until the answer
        # passes: task id -> (owner, object ids).
        self._task_pins: dict[bytes, tuple[bytes, list[bytes]]] = {}
        self._owner_proxies: dict[bytes, zmq.Socket] = {}
        self.by_owner_proxy: dict[zmq.Socket, bytes] = {}

    @property
    def sockets(self) -> list[zmq.Socket]:
        return [*self.links.values(), *self.proxies, *self.by_owner_proxy]

    # --- origin side: our owners' leases on peers' workers ----------------------------

    def ask_lease(self, node: NodeInfo, owner: bytes, msg: p.RequestLease) -> None:
        self.leases[msg.lease_id] = RemoteLease(node.node_id, owner, msg)
        self.asked[node.node_id] += 1
        self.link_to(node)
        self._send_link(node.node_id, p.Relayed(owner, "lease"), p.encode(msg))

    def return_lease(self, owner: bytes, msg: p.ReturnLease) -> bool:
        """An owner gives back a lease: True if it was one of a peer's (sent there)."""
        lease = self.leases.pop(msg.lease_id, None)
        if lease is None:
            return False
        if not lease.worker:
            self.asked[lease.node] -= 1
        self._send_link(lease.node, p.Relayed(owner, "lease"), p.encode(msg))
        self._unproxy_worker(lease.worker)
        return True

    def node_gone(self, node: bytes) -> tuple[list[tuple[bytes, p.Message]], list[bytes]]:
        """A peer died: (what our owners must hear of their leases there: LeaseLost for
        those granted, their RequestLease again for those not granted yet; the owners
        of that node that held leases here or called our actors)."""
        told: list[tuple[bytes, p.Message]] = []
        for lease_id, lease in list(self.leases.items()):
            if lease.node != node:
                continue
            del self.leases[lease_id]
            if lease.worker:
                self._unproxy_worker(lease.worker)
                told.append((lease.owner, p.LeaseLost(lease_id, 0, f"node {node.hex()[:16]} "
                                                      "died", True)))
            else:
                self.asked[node] -= 1
                told.append((lease.owner, lease.request))
        return told, [owner for owner, identity in self.via.items() if identity == node]

    def owner_gone(self, owner: bytes) -> None:
        """A process of ours left: its leases on peers end there too."""
        nodes = set()
        for lease_id, lease in list(self.leases.items()):
            if lease.owner == owner:
                del self.leases[lease_id]
                if not lease.worker:
                    self.asked[lease.node] -= 1
                self._unproxy_worker(lease.worker)
                nodes.add(lease.node)
        for node in nodes:
            self._send_link(node, p.Relayed(owner, "lease"), p.encode(p.Disconnect(False)))

    def on_link(self, sock: zmq.Socket) -> list[tuple[bytes, str, p.Message | list[bytes]]]:
        """Answers from a peer's agent: (owner, kind, message) for the agent to pass on
        (kind "owner": from the agent; "d": the frames, to its direct socket; "log": its
        drivers)."""
        out: list[tuple[bytes, str, p.Message | list[bytes]]] = []
        node = next(n for n, s in self.links.items() if s is sock)
        while p.has_input(sock):
            frames = sock.recv_multipart()
            if p.is_message(frames, p.Credit):
                self._on_credit(self._link_out.get(node), frames)
                continue
            credit = self._link_in[node].handled()
            if credit:
                sock.send_multipart(p.encode(p.Credit(credit)))
            envelope = self._envelope(frames)
            if envelope is None:
                continue
            self.counts["from peers"] += 1
            if envelope.kind == "d":  # (a worker's answers: passed on as they are)
                self._borrow_results(node, self._message(frames[1:]))
                out.append((envelope.target, "d", frames[1:]))
                continue
            msg = self._message(frames[1:])
            if msg is None:
                continue
            if envelope.kind == "owner":  # (an answer the peer's agent filed first)
                self._borrow_results(node, msg)
            if isinstance(msg, p.LeaseGranted):
                if not self._granted(msg):
                    continue
                if not msg.addresses:  # (no direct path to it: through us)
                    self.proxy_worker(node, msg.worker_id)
                msg = _replace(msg, remote=True)
            elif isinstance(msg, p.LeaseLost):
                lease = self.leases.pop(msg.lease_id, None)
                if lease is not None:
                    self._unproxy_worker(lease.worker)
            elif isinstance(msg, p.ActorAddress) and msg.worker_id and not msg.addresses:
                self.proxy_worker(node, msg.worker_id)  # (an actor's there: through us)
            elif envelope.kind == "objects":
                envelope = p.Relayed(node, "objects")  # (for us, from that node)
            out.append((envelope.target, envelope.kind, msg))
        return out

    def _borrow_results(self, node: bytes, msg: p.Message | None) -> None:
        """Answers from ``node`` for our owners: their results in its store, and the refs
        inside them, are lent to us (pulled when read here)."""
        messages = p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]
        for done in messages:
            if not isinstance(done, p.TaskDone):
                continue
            for object_id, data, offset, size, is_error in done.results:
                if data is None and offset < 0:
                    self.objects.borrowed(object_id, node, b"", size, is_error, done.owner)
            for ref in done.contained:
                self.objects.borrowed(ref, node, b"", 0)

    def _granted(self, msg: p.LeaseGranted) -> bool:
        lease = self.leases.get(msg.lease_id)
        if lease is None or lease.worker:
            return False  # (returned meanwhile: the peer hears of it)
        self.asked[lease.node] -= 1
        lease.worker = msg.worker_id
        return True

    def proxy_worker(self, node: bytes, worker: bytes) -> None:
        """Bind, here, the task and direct sockets of ``node``'s worker: what our owners
        send there is relayed to it."""
        if worker in self._worker_proxies:
            return
        socks = [self._bind(direct_endpoint(self.agent_endpoint, worker, kind))
                 for kind in ("t", "d")]
        for sock, kind in zip(socks, ("t", "d"), strict=True):
            self.proxies[sock] = (node, worker, kind)
        self._worker_proxies[worker] = socks

    def send_to_peer(self, node: bytes, owner: bytes, kind: str, msg: p.Message) -> None:
        """Relay ``msg`` for ``owner`` to ``node`` (linked already: ``link_to``)."""
        self._send_link(node, p.Relayed(owner, kind), p.encode(msg))

    def on_proxy(self, sock: zmq.Socket) -> None:
        """What an owner sent a peer's worker: relayed there, its arguments in our store
        lent to that node (re-encoded only then)."""
        node, worker, kind = self.proxies[sock]
        for frames in self._read_rewritten(sock, lambda msg: self._lend_arguments(msg, node),
                                           f"a message for worker {worker.hex()[:8]}"):
            self._send_link(node, p.Relayed(worker, kind), frames)

    def ran_on(self, task_id: bytes) -> str:
        """The peer (hex id) a task of our owners was sent to run on, or ""."""
        return self._sent_to.pop(task_id, "")

    def _lend_arguments(self, msg: p.Message, node: bytes) -> p.Message:
        """An ExecuteTask for ``node``'s worker, its arguments in our store lent to that
        node (noted as sent there, for the task's GCS row)."""
        if not isinstance(msg, p.ExecuteTask):
            return msg
        self._sent_to[msg.task_id] = node.hex()
        if len(self._sent_to) > _SENT_KEPT:  # (those whose report never came: the oldest)
            self._sent_to.popitem(last=False)
        if all(loc[1] is not None for loc in msg.deps):
            return msg
        return _replace(msg, deps=[self.lent(loc, node) for loc in msg.deps])

    def lent(self, location: p.Location, node: bytes) -> p.Location:
        """``location`` as ``node`` sees it once we lend it there: inline values as they
        are, values in our store "elsewhere" (offset -1)."""
        object_id, data, offset, size, is_error = location
        if data is not None:
            return location
        self.objects.lend(object_id, node)  # (gone already: its puller learns it is lost)
        return (object_id, None, -1, size, is_error)

    def _borrow_arguments(self, node: bytes, frames: list[bytes]) -> None:
        """Tasks from ``node`` for our workers: the arguments it lent us are pinned until
        each task's answer passes, and pulled here at once."""
        msg = self._message(frames)
        for task in p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]:
            if not isinstance(task, p.ExecuteTask):
                continue
            lent = [loc for loc in task.deps if loc[1] is None]
            if not lent:
                continue
            self._unpin_task(task.task_id)  # (sent again: the pins of its last sending)
            for object_id, _, _, size, is_error in lent:
                self.objects.borrowed(object_id, node, task.job_id, size, is_error)
                self.objects.pin(object_id)
                self.objects.want(object_id)
            self._task_pins[task.task_id] = (task.owner, [loc[0] for loc in lent])

    def _unpin_task(self, task_id: bytes) -> None:
        _, pinned = self._task_pins.pop(task_id, (b"", []))
        for object_id in pinned:
            self.objects.unpin(object_id)

    # --- peer side: owners elsewhere, our workers ---------------------------------------

    def on_door(self, identity: bytes,
                frames: list[bytes]) -> tuple[bytes, str, p.Message] | None:
        """A relayed message that came to our door: sent on to a worker of ours here (as
        it is), or (owner, kind, message) for the agent to handle: kind "lease" (an
        owner's lease request or return), "actor" (a caller's message about an actor of
        ours), "object" (an argument of its call)."""
        if p.is_message(frames, p.Credit):
            self._on_credit(self._door_out.get(identity), frames)
            return None
        window = self._door_in.get(identity)
        if window is None:
            window = self._door_in[identity] = ReceiveWindow(self.window)
        credit = window.handled()
        if credit:
            self._door_raw(identity, p.encode(p.Credit(credit)))
        envelope = self._envelope(frames)
        if envelope is None:
            return None
        self.counts["from peers"] += 1
        if envelope.kind in ("t", "d"):
            if envelope.kind == "t":
                self._borrow_arguments(identity, frames[1:])
            self.send_worker(envelope.target, frames[1:], envelope.kind)
            return None
        msg = self._message(frames[1:])
        if envelope.kind not in ("lease", "actor", "object", "objects", "groups") or \
                msg is None:
            return None
        if envelope.kind in ("objects", "groups"):  # (node to node: the target is the sender)
            return identity, envelope.kind, msg
        owner = envelope.target
        if isinstance(msg, (p.RequestLease, p.Register)):  # (an owner's first message)
            self.via[owner] = identity
            if owner not in self._owner_proxies:
                sock = self._bind(direct_endpoint(self.agent_endpoint, owner, "d"))
                self._owner_proxies[owner] = sock
                self.by_owner_proxy[sock] = owner
        elif owner not in self.via and not isinstance(msg, p.Disconnect):
            return None  # (a Disconnect may come for each kind: the first one ends its via)
        return owner, envelope.kind, msg

    def remote_owner_gone(self, owner: bytes) -> None:
        for task_id in [t for t, (o, _) in self._task_pins.items() if o == owner]:
            self._unpin_task(task_id)
        self.via.pop(owner, None)
        sock = self._owner_proxies.pop(owner, None)
        if sock is not None:
            self.by_owner_proxy.pop(sock, None)
            self._close(sock)

    def to_owner(self, owner: bytes, msg: p.Message, kind: str = "owner") -> bool:
        """Send to an owner on another node (through its agent): False if it is not one."""
        identity = self.via.get(owner)
        if identity is None:
            return False
        self._door_send(identity, owner, kind, p.encode(self._lend_results(owner, msg)))
        return True

    def answer_node(self, identity: bytes, msg: p.Message) -> None:
        """To the node whose agent is connected to our door as ``identity``."""
        self._door_send(identity, b"", "objects", p.encode(msg))

    def _door_send(self, identity: bytes, owner: bytes, kind: str, frames: list) -> None:
        self.counts["to peers"] += 1
        self.counts[f"sent {kind}"] += 1
        window = self._door_out.get(identity)
        if window is None:
            window = self._door_out[identity] = SendWindow(
                self.window, lambda framed: self._door_raw(identity, framed))
        window.send([*p.encode(p.Relayed(owner, kind)), *frames])

    def _door_raw(self, identity: bytes, frames: list) -> None:
        try:
            self.door.send_multipart([identity, *frames])
        except zmq.ZMQError as exc:  # its agent is gone (its death is seen through the GCS)
            self.complaints.warning("door", "could not relay to %s: %s", identity.hex()[:8],
                                    exc)

    def _on_credit(self, window: SendWindow | None, frames: list[bytes]) -> None:
        msg = self._message(frames)
        if window is not None and isinstance(msg, p.Credit):
            window.granted(msg.count)

    @property
    def queued(self) -> int:
        """Messages waiting for credit, all peers together (zray status)."""
        return sum(len(w.queued) for w in [*self._link_out.values(), *self._door_out.values()])

    def on_owner_proxy(self, sock: zmq.Socket) -> None:
        """A worker of ours answered an owner elsewhere: its results in our store are lent
        to the owner's node."""
        owner = self.by_owner_proxy[sock]
        identity = self.via.get(owner)
        for frames in self._read_rewritten(sock, lambda msg: self._lend_results(owner, msg),
                                           f"an answer for {owner.hex()[:8]}"):
            if identity is not None:
                self._door_send(identity, owner, "d", frames)

    def _read_rewritten(self, sock: zmq.Socket, change: Callable[[p.Message], p.Message],
                        what: str) -> Iterator[list[bytes]]:
        """Each message waiting on a proxy, with ``change`` applied (see ``_rewritten``);
        a malformed one is dropped, saying it was ``what``."""
        while p.has_input(sock):
            try:
                yield _rewritten(sock.recv_multipart()[1:], change)
            except p.ProtocolError as exc:
                self.complaints.warning("proxy", "dropped %s: %s", what, exc)

    def _lend_results(self, owner: bytes, msg: p.Message) -> p.Message:
        """An answer of our worker to ``owner`` elsewhere: the task's arguments are let
        go here; its results in our store, and the refs inside them, are lent to the
        owner's node (the owner's hold on them here becomes that node's)."""
        if isinstance(msg, p.NotStarted):
            for task_id in msg.task_ids:
                self._unpin_task(task_id)
        if not isinstance(msg, p.TaskDone):
            return msg
        self._unpin_task(msg.task_id)
        node = self.via.get(owner, b"")
        for ref in msg.contained:
            self.objects.lend(ref, node)
        if all(loc[1] is not None for loc in msg.results):
            return msg
        results = [self.lent(loc, node) for loc in msg.results]
        for object_id, data, *_ in msg.results:
            if data is None:
                self.objects.release(owner, object_id)
        return _replace(msg, results=results)

    # --- the mesh -------------------------------------------------------------------

    def link_to(self, node: NodeInfo) -> zmq.Socket:
        sock = self.links.get(node.node_id)
        if sock is None:
            sock = self.links[node.node_id] = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.node_id)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, _HWM)  # (above the credit window: never reached)
            sock.setsockopt(zmq.RCVHWM, _HWM)
            endpoint = f"tcp://{node.address}"
            secure_client(sock, endpoint, self.credentials)
            sock.connect(endpoint)
            self._link_out[node.node_id] = SendWindow(self.window, sock.send_multipart)
            self._link_in[node.node_id] = ReceiveWindow(self.window)
        return sock

    def _send_link(self, node_id: bytes, envelope: p.Relayed, frames: list[bytes]) -> None:
        """To a peer we are linked to (``link_to``), within its credit window."""
        window = self._link_out.get(node_id)
        if window is not None:
            self.counts["to peers"] += 1
            self.counts[f"sent {envelope.kind}"] += 1
            window.send([*p.encode(envelope), *frames])

    def _envelope(self, frames: list[bytes]) -> p.Relayed | None:
        try:
            envelope = p.decode(frames[:1])
        except p.ProtocolError as exc:
            self.complaints.warning("mesh", "dropped a malformed relayed message: %s", exc)
            return None
        if not isinstance(envelope, p.Relayed) or len(frames) < 2:
            self.complaints.warning("mesh", "dropped %s: not relayed", type(envelope).__name__)
            return None
        return envelope

    def _message(self, frames: list[bytes]) -> p.Message | None:
        try:
            return p.decode(frames)
        except p.ProtocolError as exc:
            self.complaints.warning("mesh", "dropped a malformed relayed message: %s", exc)
            return None

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        return sock

    def _unproxy_worker(self, worker: bytes) -> None:
        if not worker or any(lease.worker == worker for lease in self.leases.values()):
            return
        for sock in self._worker_proxies.pop(worker, []):
            self.proxies.pop(sock, None)
            self._close(sock)

    @staticmethod
    def _close(sock: zmq.Socket) -> None:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint.removeprefix("ipc://"))

    def close(self) -> None:
        for sock in [*self.proxies, *self.by_owner_proxy]:
            self._close(sock)
        for sock in self.links.values():
            sock.close(linger=0)


def _rewritten(frames: list[bytes],
               change: Callable[[p.Message], p.Message]) -> list[bytes]:
    """The frames of a message (or Batch) with ``change`` applied to each message in it:
    the frames as they were if it changed none (no re-encoding on the common path)."""
    msg = p.decode(frames)
    messages = p.unbatch(msg) if isinstance(msg, p.Batch) else [msg]
    changed = [change(one) for one in messages]
    if all(a is b for a, b in zip(changed, messages, strict=True)):
        return frames
    return p.encode(p.one_or_batch(changed))


def _replace(msg: p.Message, **fields: object) -> p.Message:
    return dataclasses.replace(msg, **fields)  # type: ignore[type-var]
