"""Actors on other nodes: placed by the same rules as tasks, called as if they were here.

An actor lives on one node, its home, where its mailbox and worker are (zray/actors/).
A caller on another node talks to its own agent as ever; that agent forwards what concerns
the actor to the home's agent, which takes the caller for a client of its own (a remote
client: no process of its own to watch, answers relayed back)::

    caller --SubmitTask(actor_id), TaskDone reports, CallsReported, KillActor, CancelTask,
             RefsChanged of the handle--> its agent --Relayed(caller, "actor")--> home agent
    caller <--ActorAddress, answers-- its agent <==mesh== home agent, actor's worker
    caller --direct calls--> t-W proxy at its agent ==mesh==> worker W (zray/node/relay.py)

The refs a call takes (top-level or nested in its arguments) go to the home first, in an
ObjectsReady relayed as kind "object": a small ready value inline, anything else lent
(its location "elsewhere": the home pulls it when the call needs it, from here, once it
is ready here; zray/node/transfer.py). The home's mailbox waits for them, so calls still
run in the order they were made.
A call's answer comes straight to its caller; the caller's report of it is filed here (so
the refs resolve here) and forwarded (the home's mailbox needs it). Named actors elsewhere
are found through the GCS's actors table, followed here. No I/O but through the relay.

When an actor's home dies, its actors restart on a node alive if their row (the GCS's)
still allows restarts (``restarts_left``) and the node that created them lives: that node
kept the creation and places it again, with one restart fewer; every node with callers
holds their calls (``restarting``) until the row names the new home. Calls the dead home
had are in doubt, as when a worker dies (zray/actors/manager.py): once a caller has
reported the answers it got (CallsReported), its other calls run again at the new home,
first and in order, within the actor's ``max_task_retries``, or fail with
ActorUnavailableError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from zray import protocol as p
from zray.broker.follow import Follower
from zray.ids import return_object_id, task_of
from zray.node import failures
from zray.node.clients import Client, Clients
from zray.node.membership import NodeInfo
from zray.node.object_table import ObjectTable, ObjState
from zray.node.relay import Relay


@dataclass
class _Home:
    node: bytes
    callers: set[bytes]  # our clients that called it


@dataclass
class _Call:
    actor_id: bytes
    caller: bytes
    name: str
    num_returns: int
    client: Client | None = None  # the caller, and its notice: to run it again elsewhere
    notice: p.SubmitTask | None = None
    in_doubt: bool = False  # sent to a home that died: run again, or fail, once reported


@dataclass
class _Restart:
    """An actor whose home died, until the GCS's row names its new one."""

    old: bytes  # the home that died
    unreported: set[bytes]  # callers here whose CallsReported has not come yet
    queue: list[tuple[Client, p.Message]] = dataclasses.field(default_factory=list)


class RemoteActors:
    def __init__(self, relay: Relay, actor_rows: Follower, objects: ObjectTable,
                 clients: Clients, nodes: Callable[[], dict[bytes, NodeInfo]],
                 functions: dict[bytes, bytes], send: Callable[[bytes, p.Message], None],
                 here: Callable[[bytes, p.Message], None]) -> None:
        """``functions``: the agent's exported functions and classes, by id (a class goes
        to the node its actor is created on); ``send(client, msg)``: to a client of ours;
        ``here(client, msg)``: a client's message for this agent's own actors (one that
        restarted here)."""
        self.send, self.here = send, here
        self.relay, self.actor_rows = relay, actor_rows
        self.objects, self.clients = objects, clients
        self.nodes = nodes
        self.functions = functions
        self._exported: set[tuple[bytes, bytes]] = set()  # (function id, node)
        self.homes: dict[bytes, _Home] = {}  # actor id -> where it lives (not here)
        self.calls: dict[bytes, _Call] = {}  # calls in flight, by task id
        self.dead: dict[bytes, str] = {}  # actor id -> why (its node died)
        # A direct call -> (its caller, its arguments here, pinned until it reports)
        self._pinned: dict[bytes, tuple[bytes, list[bytes]]] = {}
        self._introduced: set[tuple[bytes, bytes]] = set()  # (client, node)
        self.creations: dict[bytes, tuple[Client, p.SubmitTask]] = {}  # ours, placed there
        self.restarting: dict[bytes, _Restart] = {}  # by actor id

    # --- our clients' messages --------------------------------------------------------

    def create_there(self, client: Client, msg: p.SubmitTask, node: NodeInfo) -> None:
        """An actor's creation goes to ``node``, its home from now on (kept here: it is
        created again elsewhere if that node dies)."""
        msg.actor_options["creator_node"] = self.relay.node_id.hex()
        home = self.homes.setdefault(msg.actor_id, _Home(node.node_id, set()))
        home.node = node.node_id
        self.creations[msg.actor_id] = (client, msg)
        self._forward(client, msg, node.node_id)

    def intercept(self, client: Client, msg: p.Message) -> p.Message | None:
        """What of ``msg`` is for an actor elsewhere goes there; the rest (or None) is
        the agent's to handle."""
        if isinstance(msg, p.SubmitTask) and msg.actor_id in self.dead and \
                not msg.actor_options:  # (its node died: the call fails here)
            self.send(client.client_id, self._fail(
                _Call(msg.actor_id, client.client_id, msg.name, msg.num_returns), msg.task_id,
                msg.job_id))
            return None
        if isinstance(msg, p.SubmitTask) and msg.actor_id in self.homes:
            home = self.homes[msg.actor_id]
            home.callers.add(client.client_id)
            for i in range(msg.num_returns):  # (the answer is filed here: callers here wait)
                self.objects.expect(return_object_id(msg.task_id, i), msg.job_id,
                                    client.client_id)
            call = self.calls[msg.task_id] = _Call(msg.actor_id, client.client_id, msg.name,
                                                   msg.num_returns, client, msg)
            if msg.direct:  # (its arguments went to the worker: pulled from here until the
                for dep in msg.deps:  # caller reports the answer)
                    self.objects.pin(dep)
                self._pinned[msg.task_id] = (client.client_id, list(msg.deps))
            if msg.direct and msg.actor_id in self.restarting:
                call.in_doubt = True  # (sent to the worker that died: settled as the rest)
            else:
                self._to_home(client, msg, msg.actor_id)
            return None
        if isinstance(msg, p.CallsReported) and msg.actor_id in self.restarting:
            self._settle(client, msg)
            return None
        if isinstance(msg, p.TaskDone) and msg.task_id in self.calls:
            actor_id = self.calls.pop(msg.task_id).actor_id
            for object_id, data, offset, size, is_error in msg.results:
                if data is not None:
                    self.objects.put_inline(object_id, client.job_id, data, [],
                                            client.client_id, is_error)
                elif offset < 0 and msg.node:  # (left on the actor's node, lent to us)
                    self.objects.borrowed(object_id, msg.node, client.job_id, size, is_error,
                                          client.client_id)
            self._unpin(msg.task_id)
            if actor_id in self.homes and actor_id not in self.restarting:
                self._forward(client, msg, self.homes[actor_id].node)
            return None
        if isinstance(msg, (p.CallsReported, p.KillActor)) and msg.actor_id in self.homes:
            self._to_home(client, msg, msg.actor_id)
            return None
        if isinstance(msg, p.CancelTask) and task_of(msg.object_id) in self.calls:
            self._forward(client, msg,
                          self.homes[self.calls[task_of(msg.object_id)].actor_id].node)
            return None
        if isinstance(msg, p.RefsChanged):
            return self._split_refs(client, msg)
        return msg

    def _split_refs(self, client: Client, msg: p.RefsChanged) -> p.Message | None:
        """Handles of actors elsewhere are counted at their home; the rest here."""
        by_node: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        for held, ids in ((0, msg.added), (1, msg.released)):
            for object_id in ids:
                home = self.homes.get(object_id)
                if home is not None:
                    by_node.setdefault(home.node, ([], []))[held].append(object_id)
        if not by_node:
            return msg
        for node, (added, released) in by_node.items():
            self._forward(client, p.RefsChanged(added, released), node)
        moved = {i for added, released in by_node.values() for i in added + released}
        rest = p.RefsChanged([i for i in msg.added if i not in moved],
                             [i for i in msg.released if i not in moved])
        return rest if rest.added or rest.released else None

    def lookup(self, name: str, namespace: str) -> dict[str, object] | None:
        """A live named actor elsewhere, from the GCS's actors table (None: none)."""
        for key, fields in self.actor_rows.rows().items():
            if (fields.get("name") == name and fields.get("namespace") == namespace
                    and fields.get("state") not in ("DEAD", None) and fields.get("node_id")):
                node = bytes.fromhex(fields["node_id"])
                info = self.nodes().get(node)
                if info is None or not info.alive:
                    continue
                self.homes.setdefault(key, _Home(node, set()))
                return {"actor_id": key.hex(), "class_name": fields.get("class_name"),
                        "methods": fields.get("methods", [])}
        return None

    def _unpin(self, task_id: bytes) -> None:
        for dep in self._pinned.pop(task_id, (b"", []))[1]:
            self.objects.unpin(dep)

    def home_died(self, node: bytes) -> tuple[list[tuple[bytes, p.Message]],
                                              list[tuple[Client, p.SubmitTask]]]:
        """``node`` died, and the actors living there with it: those that may restart
        wait for their new home (their calls in flight in doubt), the others are dead:
        their calls fail with ActorDiedError, as any later one will. Their callers stop
        calling their workers. Returns what to send to whom, and the creations of ours
        to place again."""
        told: list[tuple[bytes, p.Message]] = []
        again: list[tuple[Client, p.SubmitTask]] = []
        rows = self.actor_rows.rows()
        for actor_id, home in [(a, h) for a, h in self.homes.items() if h.node == node]:
            row = rows.get(actor_id) or {}
            if self._may_restart(row):
                restart = self.restarting.setdefault(actor_id, _Restart(node, set()))
                restart.old = node  # (its new home may die too before it is known here)
                restart.unreported |= home.callers
                home.node = b""
                held = {m.task_id for _, m in restart.queue if isinstance(m, p.SubmitTask)}
                for task_id, call in self.calls.items():  # (those held here never went)
                    if call.actor_id == actor_id and task_id not in held:
                        call.in_doubt = True
                if actor_id in self.creations:
                    client, creation = self.creations[actor_id]
                    options = {**creation.actor_options,
                               "max_restarts": int(row["restarts_left"]) - 1}
                    again.append((client, dataclasses.replace(creation,
                                                              actor_options=options)))
            else:
                del self.homes[actor_id]
                self.creations.pop(actor_id, None)
                self.dead[actor_id] = f"its node {node.hex()[:16]} died"
            told += [(caller, p.ActorAddress(actor_id, b"", [])) for caller in home.callers]
        for task_id, call in [(t, c) for t, c in self.calls.items() if c.actor_id in self.dead]:
            del self.calls[task_id]
            told.append((call.caller, self._fail(call, task_id, b"")))
        return told, again

    def _may_restart(self, row: dict) -> bool:
        """Whether a dead home's actor restarts: restarts left, and its creator's node
        (which places it again) alive."""
        creator = self.nodes().get(bytes.fromhex(row.get("creator_node") or ""))
        return int(row.get("restarts_left") or 0) > 0 and creator is not None and creator.alive

    def _to_home(self, client: Client, msg: p.Message, actor_id: bytes) -> None:
        restart = self.restarting.get(actor_id)
        if restart is not None:
            restart.queue.append((client, msg))
        else:
            self._forward(client, msg, self.homes[actor_id].node)

    def _settle(self, client: Client, msg: p.CallsReported) -> None:
        """A caller reported the answers it got from a dead home: its other calls there
        run again at the new home, first, or fail (no ``max_task_retries`` left)."""
        restart = self.restarting[msg.actor_id]
        restart.unreported.discard(client.client_id)
        unsent = {bytes(t) for t in msg.unsent if type(t) is bytes}
        retries = int((self.actor_rows.rows().get(msg.actor_id) or {}).get(
            "max_task_retries") or 0)
        again: list[tuple[Client, p.Message]] = []
        for task_id, call in list(self.calls.items()):
            if call.actor_id != msg.actor_id or call.caller != client.client_id or \
                    not call.in_doubt or call.notice is None:
                continue
            call.in_doubt = False
            if task_id in unsent or retries > 0:  # (through the agents this time)
                again.append((client, dataclasses.replace(call.notice, direct=False,
                                                          sent_to=b"")))
            else:
                del self.calls[task_id]
                error = failures.actor_unavailable(
                    call.name, 0, f"was on node {restart.old.hex()[:16]}, which died")
                self.send(call.caller, self._answer_with(call, task_id, error))
        restart.queue[:0] = again

    def rows_changed(self) -> None:
        """The GCS's actors rows moved: an actor that restarts takes its calls to its new
        home once every caller here has reported (or gives up: its row says DEAD)."""
        rows = self.actor_rows.rows()
        for actor_id, restart in list(self.restarting.items()):
            row = rows.get(actor_id) or {}
            node = bytes.fromhex(row.get("node_id") or "")
            info = self.nodes().get(node)
            if row.get("state") == "DEAD" and node != restart.old:
                self._gave_up(actor_id, str(row.get("death_cause") or "it died"))
            elif info is not None and info.alive and node != restart.old and \
                    not restart.unreported:
                del self.restarting[actor_id]
                self._moved(actor_id, node, restart.queue)

    def _moved(self, actor_id: bytes, node: bytes, queue: list[tuple[Client, p.Message]]
               ) -> None:
        """The held calls (recorded here already) go to the actor's new home; if that is
        this node, its agent takes them over as its own clients' calls."""
        here = node == self.relay.node_id
        if here:
            del self.homes[actor_id]
        else:
            self.homes[actor_id].node = node
        for client, msg in queue:
            if not here:
                self._forward(client, msg, node)
                continue
            if isinstance(msg, p.SubmitTask):
                self.calls.pop(msg.task_id, None)
                self._unpin(msg.task_id)
            self.here(client.client_id, msg)

    def _gave_up(self, actor_id: bytes, cause: str) -> None:
        self.restarting.pop(actor_id, None)
        self.homes.pop(actor_id, None)
        self.creations.pop(actor_id, None)
        self.dead[actor_id] = cause
        for task_id, call in [(t, c) for t, c in self.calls.items() if c.actor_id == actor_id]:
            del self.calls[task_id]
            self.send(call.caller, self._fail(call, task_id, b""))

    def replaced(self, client: Client, msg: p.SubmitTask, node: NodeInfo | None,
                 why: str) -> None:
        """Our creation of an actor whose home died, placed again: at ``node``, or
        here (None), or nowhere (``why``: it is dead)."""
        if why:
            self._gave_up(msg.actor_id, f"its node died, and it fits no node left: {why}")
        elif node is not None:
            self.create_there(client, msg, node)
        else:
            self.here(client.client_id, msg)

    def _fail(self, call: _Call, task_id: bytes, job_id: bytes) -> p.TaskDone:
        """The call's results are its actor's death, here; its caller's answer."""
        return self._answer_with(call, task_id,
                                 failures.actor_died(call.name, self.dead[call.actor_id]),
                                 job_id)

    def _answer_with(self, call: _Call, task_id: bytes, error: bytes, job_id: bytes = b""
                     ) -> p.TaskDone:
        """The call's results are ``error``, here; its caller's answer."""
        self._unpin(task_id)
        results = failures.as_results(task_id, max(1, call.num_returns), error)
        for i in range(call.num_returns):
            self.objects.put_inline(return_object_id(task_id, i), job_id, error, [],
                                    call.caller, True)
        return failures.unrun_answer(task_id, 0, results)

    def client_gone(self, client_id: bytes) -> None:
        """Our client left: each home it talked to drops it (its handles, its calls; a
        driver's non-detached actors end with it)."""
        for task_id in [t for t, (caller, _) in self._pinned.items() if caller == client_id]:
            self._unpin(task_id)
        for client, node in [k for k in self._introduced if k[0] == client_id]:
            self._introduced.discard((client, node))
            self.relay.send_to_peer(node, client, "actor", p.Disconnect(False))

    # --- forwarding -------------------------------------------------------------------

    def _forward(self, client: Client, msg: p.Message, node: bytes) -> None:
        info = self.nodes().get(node)
        if info is None or not info.alive:
            return  # (its home is gone: home_died fails what was sent there)
        self.relay.link_to(info)
        if (client.client_id, node) not in self._introduced:
            self._introduced.add((client.client_id, node))
            self.relay.send_to_peer(node, client.client_id, "actor", p.Register(
                client.client_id, client.pid, client.kind, client.job_id,
                client.log_to_driver, self.clients.namespaces.get(client.job_id, "")))
        if isinstance(msg, p.SubmitTask):
            fid = msg.function_id
            if fid and fid in self.functions and (fid, node) not in self._exported:
                self._exported.add((fid, node))
                self.relay.send_to_peer(node, client.client_id, "actor", p.ExportFunction(
                    fid, msg.name, self.functions[fid]))
            msg = self._with_arguments(client, msg, node)
        self.relay.send_to_peer(node, client.client_id, "actor", msg)

    def _with_arguments(self, client: Client, msg: p.SubmitTask, node: bytes) -> p.SubmitTask:
        """Send the home the refs the call takes, before the call (a direct call's went to
        the worker in its message: its notice names none)."""
        if msg.direct:
            return dataclasses.replace(msg, deps=[], contained=[])
        for object_id in [*msg.deps, *msg.contained]:
            self._push(node, client.client_id, object_id)
        return msg

    def _push(self, node: bytes, client: bytes, object_id: bytes) -> None:
        """A small value ready here goes inline; anything else is lent (a value holding
        refs too: pulling it lends those)."""
        entry = self.objects.get(object_id)
        if entry is None:
            return  # (an actor handle, counted by the actors; or lost: the home says so)
        if entry.state is ObjState.READY and entry.data is not None and not entry.contained:
            location = entry.location()
        else:
            self.objects.lend(object_id, node)
            location = (object_id, None, -1, entry.size, entry.is_error)
        self.relay.send_to_peer(node, client, "object", p.ObjectsReady([location]))
