"""The node agent: one process per machine, one loop.

::

    drivers, workers --(tx, rx DEALERs)--> ROUTER  ipc://SESSION/agent.sock
    worker stdout/stderr pipes, pidfds -->  poller  (output, deaths)
    agent --DEALER (BrokerLink, one per shard)--> broker shard ROUTERs (rows, batched, acked)

Hosts the local scheduler (``Scheduler``), the object directory over the mmap store
(``ObjectTable``), and the worker pool. It decides where work runs and which memory is
free; the GCS only hears about it, asynchronously, so a shard that dies and comes back
disturbs no running task. A private cluster's agent exits with its driver, after sending
its last rows to the shards, and removes the arena; the session ends after it (the
driver, or the GCS supervisor if the driver died, moves its logs to ZRAY_HOME).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from zray import protocol as p
from zray.actors.manager import ActorManager
from zray.config import Config
from zray.ids import new_node_id, return_object_id, short, task_of
from zray.node import checks, failures
from zray.node.clients import Client, Clients
from zray.node.gcs_client import GcsClient
from zray.node.leases import LeaseManager
from zray.node.object_manager import ObjectManager
from zray.node.object_table import ObjectTable
from zray.node.placement_groups import Group, PlacementGroups
from zray.node.scheduler import Scheduler, Task, TaskState
from zray.node.sessions import end_session
from zray.node.tasks import TaskManager
from zray.node.worker_pool import WorkerPool, WorkerProcess, stop_process
from zray.objects.store import Allocator, Mapping, create_arena
from zray.peers import Peers
from zray.protocol import has_input
from zray.rate_limit import RateLimitedLog

if TYPE_CHECKING:  # (a private cluster's agent never imports the cluster side)
    from zray.node.member import ClusterMember

log = logging.getLogger("zray.agent")

# Tasks pending longer than this have their rows (and why they wait) recorded again this
# often, the longest-pending first, at most so many a time.
_REFRESH_PENDING_S = 1.0
_REFRESH_PENDING_ROWS = 200
_BURST = 512  # messages handled per pass of the agent's loop (a Batch counts its items)
# Quiet: after this long without a message, with nothing waiting (Agent._quiet), the loop
# wakes this seldom (its timers, reaping idle workers, may run that much late).
_QUIET_AFTER_S = 1.0
_QUIET_POLL_MS = 1000


_GROUP_QUERIES = ("create_placement_group", "placement_group_ready", "remove_placement_group",
                  "placement_group_named")

# Messages that may concern an actor on another node (zray/node/remote_actors.py).
_FOR_OTHER_NODES = (p.SubmitTask, p.TaskDone, p.CallsReported, p.KillActor, p.CancelTask,
                    p.RefsChanged)


class Agent:
    def __init__(self, args: argparse.Namespace, config: Config, pool: WorkerPool) -> None:
        self.config = config
        self.session = args.session
        self.node_id = new_node_id()
        self.owner_pid = args.owner_pid
        self.owner_client = b""  # the driver that started the cluster, once it registers
        self.resources: dict[str, float] = json.loads(args.resources)
        self.store_path, self.store_size = args.store_path, args.store_size
        create_arena(self.store_path, self.store_size)
        self.objects = ObjectTable(Allocator(self.store_size))
        self.scheduler = Scheduler(self.resources)
        self.clients = Clients()
        self.functions: dict[bytes, bytes] = {}
        self.warned: set[str] = set()
        self.complaints = RateLimitedLog(log)
        self.mapping = Mapping(self.store_path, self.store_size)
        self.workers_log = open(os.path.join(args.session, "workers.log"), "a",  # noqa: SIM115
                                encoding="utf-8", errors="replace")  # (open while it runs)
        self.zmq = p.bounded_context(config.max_frame_bytes)
        self.router = self.zmq.socket(zmq.ROUTER)
        for option, value in ((zmq.ROUTER_MANDATORY, 1), (zmq.LINGER, 0),
                              (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
            self.router.setsockopt(option, value)
        self.router.bind(args.endpoint)
        # Tasks go to each worker's own task socket, read by its main thread (no hop
        # through its I/O thread), all those of one loop pass in one message.
        self.peers = Peers(self.zmq, self.node_id, args.endpoint)
        self.outbox: dict[bytes, list[p.Message]] = {}
        self.pool = pool  # its first workers were started before the agent imported
        # A node of a cluster (zray node start) has a TCP door and peers; a private
        # cluster's agent talks over ipc only.
        door, credentials = _door(self.zmq, args, config) if args.token_file else (None, None)
        gcs = args.gcs.split(",")
        self.gcs = GcsClient(self.zmq, gcs, self.node_id, config, credentials)
        self.address = door.address if door else ""
        self.node_row = {"node_id": self.node_id.hex(), "pid": os.getpid(),
                         "resources": self.resources, "available": self.resources,
                         "state": "ALIVE", "address": self.address, "started": time.time()}
        self.gcs.record_node(self.node_row)
        self.gcs.why_pending = self.scheduler.why_pending
        self.tasks = TaskManager(self)
        self.leases = LeaseManager(self)
        self.object_manager = ObjectManager(self)
        self.actors = ActorManager(self)
        self.objects.other_pins = self.actors.pin  # handles inside objects keep actors alive
        self.placement_groups = PlacementGroups(
            self.node_id, self.scheduler,
            lambda g: self.gcs.record("placement_groups", g.group_id, g.row()),
            self._fill_group_ready, self.actors.stop_placed_in,
            lambda: self.member.peers_free() if self.member else {},
            lambda node, msg: self.member is not None and self.member.to_node(node, msg,
                                                                              "groups"))
        self.member: ClusterMember | None = None
        self.mesh_for_clients: dict[str, str] = {}  # where they bind TCP, with what token
        if door is not None and credentials is not None:
            from zray.mesh.auth import read_token

            self.mesh_for_clients = {"host": door.address.rsplit(":", 1)[0],
                                     "token": read_token(args.token_file)}
            from zray.broker.layout import GcsAddress
            from zray.node.member import ClusterMember

            where = GcsAddress(gcs, args.gcs_publish.split(","), credentials)
            door.welcome = p.Welcome(self.node_id, args.cluster or self.address, gcs,
                                     where.publish)
            self.member = ClusterMember(
                self.zmq, self.node_id, door, where, credentials, args.endpoint, config,
                self.scheduler, self.leases, self, self.objects, self.object_manager.spiller,
                self.placement_groups, self.clients, self.functions,
                self._send_here, lambda peer, msg, kind: self.peers.send(peer, msg, kind=kind),
                lambda: self.mapping.view, self._status)
        self.owner_pidfd = os.pidfd_open(self.owner_pid) if self.owner_pid else -1
        self.ready_file = args.ready_file
        self.supervisor_pid = args.supervisor_pid  # a head's GCS, stopped after us
        self.ends_session = args.end_session
        self.running = True
        self.handled: Counter[int] = Counter()  # messages from clients, by op (zray status)
        self._beat = 0.0  # when our node's row was last recorded (a cluster's node)
        self._told_totals: dict[str, float] = dict(self.resources)  # as clients know them
        self._pending_refreshed = 0.0
        self.handlers: dict[type, Callable[[bytes, Any], None]] = {
            p.Register: self.on_register, p.ExportFunction: self.on_export,
            p.SubmitTask: self.on_submit, p.TaskDone: self.on_task_done,
            p.Blocked: self.on_blocked, p.Unblocked: self.on_unblocked,
            p.Subscribe: self.object_manager.on_subscribe,
            p.PutObject: self.object_manager.on_put,
            p.CreateObject: self.object_manager.on_create,
            p.SealObject: self.object_manager.on_seal,
            p.RefsChanged: self.object_manager.on_refs, p.Disconnect: self.on_disconnect,
            p.QueryAgent: self.on_query, p.KillActor: self.on_kill,
            p.CancelTask: self.on_cancel, p.RequestLease: self.on_request_lease,
            p.ReturnLease: self.on_return_lease, p.CallsReported: self.actors.calls_reported,
            p.TaskStarted: self.leases.started,
            p.Listening: self.on_listening, p.Fetch: self.object_manager.on_fetch,
            p.LendObjects: self.object_manager.on_lend,
            p.Unrebuildable: self.object_manager.on_unrebuildable,
            p.BlocksReleased: self.object_manager.on_blocks_released,
            p.ActorRepr: self.on_actor_repr,
        }
        for _ in pool.by_pid:
            self.scheduler.worker_starting()

    # --- the loop --------------------------------------------------------------------

    def run(self) -> None:
        log.info("node %s serving %s with %s", short(self.node_id), self.router.getsockopt_string(
            zmq.LAST_ENDPOINT), self.resources)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if self.ready_file:  # (zray node start waits for it: the node accepts work now)
            _write_json(self.ready_file, {"address": self.address,
                                          "node_id": self.node_id.hex()})
        for sock in self.gcs.sockets:
            poller.register(sock, zmq.POLLIN)
        if self.owner_pidfd >= 0:
            poller.register(self.owner_pidfd, zmq.POLLIN)
        registered_fds: set[int] = set()
        mesh_sockets: set[zmq.Socket] = set()
        last_event = time.monotonic()
        while self.running:
            registered_fds = self._sync_fds(poller, registered_fds)
            mesh_sockets = self._sync_mesh_sockets(poller, mesh_sockets)
            now = time.monotonic()
            events = dict(poller.poll(_QUIET_POLL_MS if self._quiet(now - last_event)
                                      else self.config.poll_interval_ms))
            if events:
                last_event = time.monotonic()
            for fd in [e for e in events if isinstance(e, int)]:
                self._on_fd(fd)
            if self.member is not None:
                self._guarded(self.member.on_events, events)
                if self.member.membership.fenced:  # (the GCS declared us dead)
                    log.error("this node was declared dead by the cluster (silent past "
                              "node_timeout_s=%gs): stopping its workers and exiting",
                              self.config.node_timeout_s)
                    self.running = False
                    break
            # At most _BURST messages per pass: under a steady flood the router always has
            # input, and the passes' other duties (sends to workers, GCS rows and acks) must
            # still run, or their queues grow without bound.
            handled = 0
            while (self.router in events and self.running and handled < _BURST
                   and has_input(self.router)):
                handled += self._on_frames(self.router.recv_multipart())
            self._guarded(self._after_events)
            self.gcs.pump()

    def _quiet(self, since_event: float) -> bool:
        """Whether nothing may come due here before a message does: no message for a
        while, no task or group waiting, no table row to send, and no cluster to keep
        heartbeats with. Then the loop sleeps for longer, and an idle node is idle."""
        return (since_event >= _QUIET_AFTER_S and self.member is None
                and not self.scheduler.tasks and not self.placement_groups.pending
                and not self.gcs.unacked_rows())

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """A step of the loop: a bad value that got past the checks must not stop the node."""
        try:
            step(*args)
        except Exception:
            self.complaints.warning("pass", "a pass of the agent's loop failed:\n%s",
                                    traceback.format_exc())

    def _sync_fds(self, poller: zmq.Poller, registered: set[int]) -> set[int]:
        wanted = set(self.pool.by_fd) | self.clients.pidfds()
        for fd in registered - wanted:
            poller.unregister(fd)
        for fd in wanted - registered:
            poller.register(fd, zmq.POLLIN)
        return wanted

    def _sync_mesh_sockets(self, poller: zmq.Poller,
                           registered: set[zmq.Socket]) -> set[zmq.Socket]:
        """The cluster member's sockets come and go (proxies, snapshot queries)."""
        if self.member is None:
            return registered
        wanted = self.member.sockets()
        for sock in registered - wanted:  # (closed ones too: the poller keeps no handle)
            poller.unregister(sock)
        for sock in wanted - registered:
            poller.register(sock, zmq.POLLIN)
        return wanted

    def _report(self, now: float) -> None:
        """Our node's row again when our free resources changed (peers choose where work
        goes by them), and at least every node_heartbeat_s (the GCS knows we live); our
        clients, when the cluster's resources changed (a node came or went)."""
        assert self.member is not None
        if self.member.load_changed(now) or now - self._beat >= self.config.node_heartbeat_s:
            self._beat = now
            self.node_row.update(available=dict(self.scheduler.available),
                                 resources=dict(self.scheduler.total),  # (groups' too)
                                 heartbeat=time.time())
            self.gcs.record_node(self.node_row)
        totals = self.cluster_resources()
        if totals != self._told_totals:
            self._told_totals = totals
            for client in list(self.clients.by_id.values()):
                if client.kind != "observer" and not client.remote:
                    self._send_here(client.client_id, p.ClusterResized(totals))

    def on_request_lease(self, client_id: bytes, msg: p.RequestLease) -> None:
        """Here, on the peer the strategy names, or refused (a dead or unknown node)."""
        if self.member is not None:
            self.member.request_lease(client_id, msg)
        elif msg.strategy.get("node") not in (None, self.node_id.hex()) and not \
                msg.strategy.get("soft"):
            self.leases.refuse(client_id, msg, f"its NodeAffinitySchedulingStrategy names "
                                               f"node {msg.strategy['node'][:16]}, not a "
                                               "node of this cluster")
        else:
            self.leases.request(client_id, msg)

    def on_return_lease(self, client_id: bytes, msg: p.ReturnLease) -> None:
        if self.member is None or not self.member.return_lease(client_id, msg):
            self.leases.give_back(client_id, msg)

    def cluster_resources(self, which: str = "total") -> dict[str, float]:
        """Every live node's resources (``which``: "total" or "available"), summed."""
        own = self.scheduler.total if which == "total" else self.scheduler.available
        return self.member.totals(own, which) if self.member else dict(own)

    def _nodes(self) -> list[dict[str, object]]:
        """Every node the cluster has had (dead ones too), this one as it is now."""
        own = {"node_id": self.node_id.hex(), "address": self.address, "alive": True,
               "resources": self.resources}
        return [own, *(self.member.nodes() if self.member else [])]

    def _on_fd(self, fd: int) -> None:
        if fd == self.owner_pidfd:
            log.info("the driver (pid %d) exited; stopping the cluster", self.owner_pid)
            self.running = False
        elif fd in self.pool.by_fd:
            worker, what = self.pool.by_fd[fd]
            if what == "exit":
                self._on_worker_exit(worker)
            else:
                self._forward_output(worker, what, self.pool.read_lines(fd))
        else:
            client = self.clients.with_pidfd(fd)
            if client is not None:
                self._drop_client(client)

    def _on_frames(self, frames: list[bytes]) -> int:
        """Handle one message (or Batch) from a client; returns how many it held."""
        identity = frames[0]
        try:
            msg = p.decode(frames[1:])
        except p.ProtocolError as exc:
            self.complaints.warning("malformed", "dropped a malformed message from %s: %s",
                                    identity.hex(), exc)
            return 1
        client_id = identity[:-1]
        if not isinstance(msg, p.Register) and client_id not in self.clients:
            self.complaints.warning("unregistered", "dropped %s from unregistered %s",
                                    type(msg).__name__, short(client_id))
            return 1
        if isinstance(msg, p.Batch):
            try:
                messages = p.unbatch(msg)
            except p.ProtocolError as exc:
                self.reject(client_id, msg, f"malformed batch: {exc}")
                messages = []
            for one in messages:
                self._handle(client_id, one)
            # Its sender waits for this before it defers too many more: the direct paths
            # must not outrun the agent's bookkeeping of them.
            self.send(client_id, p.Processed(len(msg.items)))
            return len(msg.items)
        self._handle(client_id, msg)
        return 1

    def _handle(self, client_id: bytes, msg: p.Message) -> None:
        self.handled[msg.op] += 1
        self.handle(client_id, msg, here=False)

    def handle(self, client_id: bytes, msg: p.Message, here: bool = True) -> None:
        """Handle a client's message, checked; what of it concerns another node goes
        there unless ``here`` (a remote client's, whose own agent decided that already:
        zray/node/remote_actors.py)."""
        handler = self.handlers.get(type(msg))
        if handler is None:
            self.reject(client_id, msg, "the agent takes no such message from a client")
            return
        reason = checks.content(msg)
        if reason:
            self.reject(client_id, msg, reason)
            return
        try:
            if not here and self.member is not None and isinstance(msg, _FOR_OTHER_NODES):
                rest = self.member.intercept(self.clients[client_id], msg)
                if rest is None:
                    return  # (it went to another node)
                msg = rest
            handler(client_id, msg)
        except Exception as exc:  # one message (untrusted, or a bug) must not stop the node
            log.debug("failed to handle %s", type(msg).__name__, exc_info=True)
            self.reject(client_id, msg, f"failed to handle it: {exc!r}")

    def reject(self, client_id: bytes, msg: p.Message, reason: str) -> None:
        """Drop a message that cannot be used: a log line (rate-limited) and an error
        reply; a caller blocked on the reply gets an error instead of waiting forever."""
        name = type(msg).__name__
        self.complaints.warning(name, "rejected %s from %s: %s", name, short(client_id), reason)
        error = f"the node agent rejected {name}: {reason}"
        if isinstance(msg, p.CreateObject):
            self.send(client_id, p.ObjectCreated(msg.request_id, -1, error))
        elif isinstance(msg, p.QueryAgent):
            self.send(client_id, p.AgentReply(msg.request_id, json.dumps({"error": error})))
        else:
            self.send(client_id, p.Rejected(msg.op, reason[:1000]))

    def send(self, client_id: bytes, msg: p.Message) -> None:
        if self.member is not None and self.member.to_owner(client_id, msg):
            return  # (an owner on another node: through its agent)
        self._send_here(client_id, msg)

    def _send_here(self, client_id: bytes, msg: p.Message) -> None:
        try:
            p.send(self.router, msg, client_id + b"r")
        except zmq.ZMQError as exc:  # EHOSTUNREACH: it is gone; its pidfd will tell us
            log.debug("could not send %s to %s: %s", type(msg).__name__, short(client_id), exc)
        except p.MessageTooLarge as exc:  # what it answers was bounded: a bug, not a reason
            self.complaints.warning(type(msg).__name__, "not sent to %s: %s", short(client_id),
                                    exc)

    # --- clients ---------------------------------------------------------------------

    def on_register(self, client_id: bytes, msg: p.Register) -> None:
        if client_id in self.clients:
            self.reject(client_id, msg, "this client is registered already")
            return
        claims_owner = msg.pid == self.owner_pid
        if claims_owner and (self.owner_client or msg.kind != "driver"):
            self.reject(client_id, msg, f"pid {msg.pid} is the driver's, registered already")
            return
        pooled = msg.kind == "worker" and msg.pid in self.pool.by_pid
        # Any other client is watched through its pidfd, so it is dropped when it exits:
        # one whose pid cannot be watched is not taken at all (it could never be dropped).
        pidfd = -1 if pooled else os.pidfd_open(msg.pid)
        client = Client(client_id, msg.kind, msg.pid, msg.job_id, msg.log_to_driver)
        client.pidfd = pidfd
        self.clients.add(client, msg.namespace)
        if claims_owner:
            self.owner_client = client_id
        if msg.kind == "driver":
            self._record_job(client, "RUNNING")
        self.send(client_id, p.Registered(self.node_id, os.getpid(), self.store_path,
                                          self.store_size, self.cluster_resources(),
                                          self.mesh_for_clients))
        if pooled:
            client.worker = self.pool.by_pid[msg.pid]
            client.worker.worker_id = client_id
            if not self.actors.claim_worker(client_id, msg.pid):
                self.scheduler.worker_started(client_id, client.worker.env_key)

    def on_listening(self, client_id: bytes, msg: p.Listening) -> None:
        """A worker's TCP sockets: owners and callers elsewhere get them (direct paths)."""
        client = self.clients[client_id]
        if client.kind != "worker" or self.member is None or not msg.addresses or not all(
                type(v) is str and v.startswith("tcp://") for v in msg.addresses.values()):
            self.reject(client_id, msg, "only a worker of a cluster's node listens on TCP, "
                                        "at tcp:// addresses")
            return
        client.addresses = dict(msg.addresses)

    def remote_client(self, client_id: bytes, msg: p.Register) -> None:
        """A caller on another node, of an actor here: a client with no process here (its
        agent relays for it, and says when it is gone)."""
        if client_id not in self.clients:
            client = Client(client_id, msg.kind, msg.pid, msg.job_id, msg.log_to_driver)
            client.remote = True
            self.clients.add(client, msg.namespace)

    def on_disconnect(self, client_id: bytes, msg: p.Disconnect) -> None:
        client = self.clients[client_id]
        self._drop_client(client, clean=True)
        if msg.stop_cluster and client_id != self.owner_client:
            self.reject(client_id, msg, "only the driver that started the cluster stops it")
        elif msg.stop_cluster:
            self.running = False

    def _record_job(self, driver: Client, state: str) -> None:
        """A driver's job: RUNNING from its registration, then SUCCEEDED when it
        disconnects, FAILED when it dies without (Ray's job states)."""
        if state == "RUNNING":
            driver.job_row = {"job_id": driver.job_id.hex(), "driver_pid": driver.pid,
                              "node_id": self.node_id.hex(), "state": state,
                              "namespace": self.clients.namespaces.get(driver.job_id, ""),
                              "start_time": time.time()}
        else:
            driver.job_row.update(state=state, end_time=time.time())
        self.gcs.record("jobs", driver.job_id, dict(driver.job_row))

    def _drop_client(self, client: Client, clean: bool = False) -> None:
        if client.kind == "driver" and client.job_row:
            self._record_job(client, "SUCCEEDED" if clean else "FAILED")
        self.clients.remove(client.client_id)
        if client.pidfd >= 0:
            os.close(client.pidfd)
        self.objects.release_all(client.client_id)
        self.object_manager.spiller.client_gone(client.client_id)
        self.leases.client_gone(client.client_id, client.pid)
        if self.member is not None:
            self.member.owner_gone(client.client_id)
        self.actors.client_gone(client.client_id, client.job_id, client.kind == "driver")
        if client.kind == "driver":
            self.placement_groups.job_ended(client.job_id)
        if client.client_id == self.owner_client:
            self.running = False

    def notice(self, job_id: bytes | None, text: str, error: bytes | None = None) -> None:
        for driver in self.clients.drivers_of(job_id):
            self.send(driver.client_id, p.Notice(text, error))

    # --- tasks and actors -------------------------------------------------------------

    def on_export(self, client_id: bytes, msg: p.ExportFunction) -> None:
        if len(msg.blob) > self.config.max_function_bytes:  # (clients refuse it first)
            self.reject(client_id, msg, f"a function of {len(msg.blob):,} bytes is too large")
            return
        if msg.function_id not in self.functions:
            self.functions[msg.function_id] = msg.blob
            self.gcs.record("functions", msg.function_id, {"name": msg.name}, msg.blob)

    def on_submit(self, client_id: bytes, msg: p.SubmitTask) -> None:
        """Pin what the task reads, then hand it to the tasks or the actors."""
        task = Task(msg, client_id)
        for i in range(msg.num_returns):
            self.objects.expect(return_object_id(msg.task_id, i), msg.job_id, client_id,
                                msg.rebuild)
        if msg.rebuild:  # (its owner waits for this answer before it sends it to a worker)
            gone = [d for d in msg.deps if self.objects.rebuilding(d, msg.job_id, client_id)]
            self.send(client_id, p.Rebuild(msg.task_id, gone))
        if self._known(msg.task_id):  # a retried parent submitted it again (same lineage,
            if msg.actor_options:      # same id): one copy runs, both submitters hold it
                self.actors.holds(client_id, msg.actor_id, True)
            return
        lost = [d for d in msg.deps if not self.objects.pin(d, reader=True)]
        for ref in msg.contained:
            self.objects.pin(ref)
        missing = {d for d in msg.deps if not self.objects.is_ready(d)} - set(lost)
        if not msg.direct:  # (it waits here for them: those on other nodes are pulled)
            for dep in missing:
                self.objects.want(dep)
        self.gcs.record_task(task)
        if lost:
            self.fail_with(task, failures.object_lost(lost[0], msg.name))
        elif msg.function_id and not msg.direct and msg.function_id not in self.functions:
            self.fail_with(task, failures.unknown_function(msg.name, msg.function_id))
        elif msg.actor_options:
            self.actors.create(task, missing)
        elif msg.actor_id:
            self.actors.call(task, missing)
        elif msg.direct:
            self.leases.notice(task)
        else:
            self.tasks.submit(task, missing)

    def _known(self, task_id: bytes) -> bool:
        return self.task_unfinished(task_id) or task_id in self.actors.directory.actors

    def task_unfinished(self, task_id: bytes) -> bool:
        """Whether the task has not ended here yet (queued, running, or on a lease)."""
        return (task_id in self.scheduler.tasks or task_id in self.leases.direct
                or task_id in self.actors.calls)

    def on_task_done(self, client_id: bytes, msg: p.TaskDone) -> None:
        if msg.item >= 0:
            self.file_streamed(client_id, msg)
        elif self.actors.task_done(client_id, msg):
            pass
        elif msg.owner:
            self.leases.done(client_id, msg)
        else:
            worker = self.clients[client_id].worker
            if worker is not None:
                self.clients.running_on.pop(worker.pid, None)
            self.tasks.done(client_id, msg)

    def file_streamed(self, client_id: bytes, msg: p.TaskDone) -> None:
        """A value a generator yielded (zray/generators.py), from its worker or its owner:
        filed as its owner's, and passed on to the owner if it did not send it."""
        task = self.scheduler.tasks.get(msg.task_id)
        owner = msg.owner or (task.submitter if task is not None else b"")
        client = self.clients.get(owner)
        job_id = task.spec.job_id if task is not None else client.job_id if client else b""
        for object_id, data, _, size, is_error in msg.results:
            if data is not None:
                self.objects.put_inline(object_id, job_id, data, msg.contained, owner,
                                        is_error)
            elif msg.node:  # (in the store of the node it ran on, lent to us)
                self.objects.borrowed(object_id, msg.node, job_id, size, is_error, owner)
        if owner and owner != client_id:
            if client is not None and not client.remote:
                self.send(owner, msg)
            elif self.member is not None:
                self.member.to_owner(owner, msg)

    def relay(self, client_id: bytes, msg: p.TaskDone) -> None:
        """Pass on a worker's answer to its owner, once filed here.

        Such answers come through here, not straight to their owner, when the agent must
        hear first of what the worker did just before (one connection keeps order, two do
        not): its results hold refs to objects or actors it made, or it holds refs it was
        given (see zray.node.execution.hand_in)."""
        if msg.owner and msg.owner != client_id:
            self.send(msg.owner, msg)

    def on_blocked(self, client_id: bytes, msg: p.Blocked) -> None:
        self.scheduler.set_blocked(self._blocking(client_id, msg.task_id), True)

    def on_unblocked(self, client_id: bytes, msg: p.Unblocked) -> None:
        self.scheduler.set_blocked(self._blocking(client_id, msg.task_id), False)

    def _blocking(self, client_id: bytes, task_id: bytes) -> bytes:
        """What holds the CPU of a task that blocks: itself, or the lease it runs on."""
        lease = self.scheduler.busy.get(client_id)
        return lease.spec.task_id if lease is not None and lease.lease else task_id

    def on_actor_repr(self, client_id: bytes, msg: p.ActorRepr) -> None:
        actor = self.actors.directory.by_worker.get(client_id)
        if actor is None or actor.actor_id != msg.actor_id or not isinstance(msg.text, str):
            self.reject(client_id, msg, "only an actor's own worker labels it")
            return
        actor.label = msg.text[:p.ACTOR_LABEL_CHARS]

    def on_kill(self, client_id: bytes, msg: p.KillActor) -> None:
        itself = self.actors.directory.by_worker.get(client_id)
        self.actors.kill(msg.actor_id, msg.no_restart,
                         itself is not None and itself.actor_id == msg.actor_id)

    def on_cancel(self, client_id: bytes, msg: p.CancelTask) -> None:
        task_id = task_of(msg.object_id)
        if not self.actors.cancel(task_id):
            self.tasks.cancel(task_id, msg.force)

    def send_execute(self, task: Task, worker_id: bytes, gpu_ids: list[int]) -> None:
        client = self.clients[worker_id]
        spec = task.spec
        blob = None
        if spec.function_id and spec.function_id not in client.functions:
            blob = self.functions[spec.function_id]
            client.functions.add(spec.function_id)
        deps = self.object_manager.arguments(spec.deps)
        is_call = bool(spec.actor_id) and not spec.actor_options  # answered to its caller too
        self.outbox.setdefault(worker_id, []).append(p.ExecuteTask(
            spec.task_id, spec.job_id, spec.function_id, spec.name, spec.args, deps,
            spec.num_returns, spec.retry_filter, gpu_ids, blob, task.attempt,
            spec.actor_id, spec.actor_options, task.submitter if is_call else b"",
            spec.placement))
        assert client.worker is not None
        self.clients.running_on[client.worker.pid] = task
        task.pid = client.worker.pid
        self.gcs.record_task(task)

    def dep_error(self, task: Task) -> bytes | None:
        """The first of the task's arguments that is an error (now counted as read)."""
        for dep in task.spec.deps:
            entry = self.objects.get(dep)
            if entry is not None and entry.is_error:
                self.objects.mark_delivered(dep)
                return entry.data  # errors always travel inline
        return None

    def fail_with(self, task: Task, error: bytes, why: str = "") -> None:
        """Every result of the task is ``error``; the task never ran (or never will).
        ``why``: the error as "Type: message", for the task's GCS row."""
        results = failures.as_results(task.spec.task_id, task.spec.num_returns, error)
        if task.spec.actor_id and not task.spec.actor_options:  # its caller waits for the
            # actor's answer, not ours: it gets one in its place, by task id
            self.send(task.submitter, failures.unrun_answer(task.spec.task_id, task.attempt,
                                                            results))
        self.finish_task(task, results, [], why or failures.describe(error))

    def finish_task(self, task: Task, results: list[p.Location], contained: list[bytes],
                    error: str = "", ran: p.TaskDone | None = None) -> None:
        """File a task's results; ``ran``: the worker's answer, whose clock times its run
        (the agent hears of a leased task's end late, in its owner's batch)."""
        task.error = error
        if ran is not None and ran.started:
            task.retime(TaskState.RUNNING, ran.started)
            task.retime(task.state, ran.started + ran.seconds)
        for object_id, data, _, _, is_error in results:
            if data is not None:
                self.objects.put_inline(object_id, task.spec.job_id, data, contained,
                                        task.submitter, is_error)
        self.release_task_args(task)  # (a live actor's __init__ never gets here: it keeps
        # its arguments for restarts, and ActorManager releases them when it dies)
        self.gcs.record_task(task)

    def release_task_args(self, task: Task) -> None:
        for dep in task.spec.deps:
            self.objects.unpin(dep, reader=True)
        for ref in task.spec.contained:
            self.objects.unpin(ref)

    def warn_infeasible(self, task: Task) -> None:
        """Tell the task's driver that no node can ever run it (once per kind of task)."""
        if any("_group_" in name for name in task.spec.resources):
            return  # (it waits for its placement group, which says why in its row)
        if self.member is not None and self.member.fits_somewhere(task.spec.resources):
            return  # (a peer can: it goes there)
        key = f"{task.spec.name}:{sorted(task.spec.resources.items())}"
        if key not in self.warned:
            self.warned.add(key)
            self.notice(task.spec.job_id, failures.infeasible_text(
                task.spec.name, task.spec.resources, self.scheduler.total))

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        # What it sent before it died (a finished task's report) is taken first: its
        # death must not be taken for a crash of a task that finished.
        while has_input(self.router):
            self._on_frames(self.router.recv_multipart())
        self.flush_output(worker)
        how = self.pool.reap(worker)
        self.clients.running_on.pop(worker.pid, None)
        client = self.clients.get(worker.worker_id)
        if client is not None:
            self._drop_client(client)
        self.peers.forget(worker.worker_id)
        self.outbox.pop(worker.worker_id, None)
        if not self.actors.worker_exited(worker.pid, how):
            self.tasks.worker_exited(client.client_id if client else None, worker.pid, how,
                                     worker.env_key)
        pooled = len(self.pool.by_pid) - len(self.actors.directory.by_worker)
        if self.running and pooled < self.scheduler.pool_size_target():
            self.pool.start()
            self.scheduler.worker_starting()

    def _after_events(self) -> None:
        """Deliver ready objects, queue what they unblock, dispatch, report frees."""
        self.object_manager.deliver()
        if self.placement_groups.pending:
            self.placement_groups.place_pending()
        self.actors.place_waiting()
        self.tasks.dispatch()
        now = time.monotonic()
        if self.member is not None:
            self.member.spill()
            self._report(now)
        for worker_id, messages in self.outbox.items():
            self.peers.send(worker_id, p.one_or_batch(messages), kind="t")
        self.outbox.clear()
        self.leases.ask_for_idle(now)
        self.tasks.reap_idle(now)
        if now - self._pending_refreshed >= _REFRESH_PENDING_S:
            self._pending_refreshed = now
            self._refresh_pending()

    def _refresh_pending(self) -> None:
        """Record again the tasks pending longest, so their rows say why they wait now
        (a row is laid out when it is sent; what a task waits for changes after)."""
        waited = time.time() - _REFRESH_PENDING_S
        pending = [t for t in self._tasks_here() if t.submitted < waited
                   and t.state in (TaskState.WAITING_DEPS, TaskState.QUEUED)]
        for task in sorted(pending, key=lambda t: t.submitted)[:_REFRESH_PENDING_ROWS]:
            self.gcs.record_task(task)

    def on_query(self, client_id: bytes, msg: p.QueryAgent) -> None:
        # What earlier messages caused reaches the client before the reply.
        self.object_manager.deliver()
        body: dict[str, object]
        if msg.what == "resources":  # (the cluster's: every live node's, summed)
            body = {"total": self.cluster_resources(),
                    "available": self.cluster_resources("available")}
        elif msg.what == "nodes":
            body = {"nodes": self._nodes()}
        elif msg.what == "actor":
            namespace = msg.args.get("namespace") or self.clients.namespaces.get(
                self.clients.job_of(client_id), "")
            body = self.actors.lookup(str(msg.args.get("name")), namespace)
            elsewhere = (self.member.actors.lookup(str(msg.args.get("name")), namespace)
                         if self.member is not None and "error" in body else None)
            body = elsewhere or body
        elif msg.what == "actor_created":
            body = {"error": self.actors.refused_reason(bytes.fromhex(msg.args["actor_id"]))}
        elif msg.what == "gcs":  # each shard's link: rows queued, batches in flight, ...
            body = {"links": self.gcs.stats()}
        elif msg.what == "status":
            body = self._status()
        elif msg.what in _GROUP_QUERIES:
            body = self._on_group_query(client_id, msg.what, msg.args)
        elif msg.what == "store":
            body = {**self._store_status(), "path": self.store_path}
        else:
            body = {"error": f"unknown query {msg.what!r}"}
        self.send(client_id, p.AgentReply(msg.request_id, json.dumps(body)))

    def _on_group_query(self, client_id: bytes, what: str, args: dict[str, Any]
                        ) -> dict[str, Any]:
        """Placement groups (zray/node/placement_groups.py), asked by zray.util's."""
        groups = self.placement_groups
        if what == "create_placement_group":
            # (the strategies' one definition is the client's: loaded once a group is made)
            from zray.util.placement_group import STRATEGIES

            error = checks.placement_group(args, STRATEGIES)
            if error:
                return {"error": error}
            if args["name"] and groups.named(args["name"]) is not None:
                return {"error": f"a placement group named {args['name']!r} exists already"}
            group = Group(os.urandom(14), args["name"], args["strategy"], args["bundles"],
                          self.clients.job_of(client_id), bool(args["detached"]))
            groups.create(group)
            return {"id": group.group_id.hex()}
        if what == "placement_group_named":
            named = groups.named(str(args.get("name")))
            return named.row() if named else {"error": "no such group"}
        try:
            group_id = bytes.fromhex(str(args.get("id")))
        except ValueError:
            return {"error": f"{args.get('id')!r} is not a placement group's id"}
        if group_id not in groups.groups:
            return {"error": f"placement group {group_id.hex()} is not one this node "
                             "coordinates: in this version a group is asked about, and "
                             "removed, from the node of the process that created it"}
        if what == "remove_placement_group":
            groups.remove(group_id)
            return {}
        try:
            object_id = bytes.fromhex(str(args.get("object_id")))
        except ValueError:
            return {"error": f"{args.get('object_id')!r} is not an object id"}
        self.objects.expect(object_id, self.clients.job_of(client_id), client_id)
        groups.wait_ready(group_id, object_id)
        return {}

    def _fill_group_ready(self, object_id: bytes, group: Group) -> None:
        from zray.objects.serialization import serialize
        from zray.util.placement_group import PlacementGroup, PlacementGroupID

        entry = self.objects.get(object_id)
        if entry is None:
            return  # (its ref was dropped meanwhile)
        if group.state == "REMOVED":
            value, is_error = failures.placement_group_removed(group.group_id.hex()), True
        else:
            value = serialize(PlacementGroup(PlacementGroupID(group.group_id),
                                             group.bundles)).to_bytes()
            is_error = False
        self.objects.put_inline(object_id, entry.job_id, value, [], b"", is_error)

    def _tasks_here(self) -> list[Task]:
        """The tasks not finished that this agent knows: the scheduler's (not its lease
        requests) and those sent on leases (QUEUED: at their owner, or sent ahead)."""
        return [t for t in self.scheduler.tasks.values() if not t.lease] + list(
            self.leases.direct.values())

    def _store_status(self) -> dict[str, Any]:
        return {"bytes_in_use": self.objects.bytes_in_store(),
                "capacity": self.objects.allocator.capacity,
                "objects": len(self.objects.entries), **self.object_manager.spiller.status()}

    def _status(self) -> dict[str, object]:
        """What ``zray status`` shows of this node: resources, store, workers, and how many
        tasks run or wait, for what."""
        states = Counter(t.state for t in self._tasks_here())
        return {
            "node_id": self.node_id.hex(), "pid": os.getpid(),
            "resources": {"total": self.scheduler.total, "available": self.scheduler.available},
            "store": self._store_status(),
            "workers": {"processes": len(self.pool.by_pid), "busy": len(self.scheduler.busy),
                        "actors": len(self.actors.directory.by_worker)},
            "tasks": {"running": states[TaskState.RUNNING],
                      "queued": states[TaskState.QUEUED],
                      "waiting_for_arguments": states[TaskState.WAITING_DEPS],
                      # (a lease request stands for its owner's tasks of one shape)
                      "infeasible_shapes": sum(t.infeasible and t.state is TaskState.QUEUED
                                               for t in self.scheduler.tasks.values())},
            "gcs": self.gcs.stats(),
            "address": self.address, "state": "ALIVE",
            "messages": {p.name_of(op): count for op, count in self.handled.items()},
            "relayed": ({**self.member.relay.counts,
                         "waiting for credit": self.member.relay.queued}
                        if self.member else {}),
            "transfers": self.member.transfers.status() if self.member else {},
        }

    # --- output, broker, stopping ----------------------------------------------------

    def flush_output(self, worker: WorkerProcess) -> None:
        """Forward what the worker printed and we have not read yet, now: before it goes,
        or its task's lease does (the owner, answered straight from another node, can
        give the lease back before we read the end of its output)."""
        for fd, (owner, what) in list(self.pool.by_fd.items()):
            if owner is worker and what != "exit":
                self._forward_output(worker, what, self.pool.read_lines(fd))

    def _forward_output(self, worker: WorkerProcess, stream: str, lines: list[str]) -> None:
        if not lines:
            return
        task = self.clients.running_on.get(worker.pid)
        actor = self.actors.directory.by_worker.get(worker.worker_id)
        name = (actor.label or actor.options["class_name"]) if actor else \
            task.spec.name if task else "worker"
        prefix = f"{name} pid={worker.pid}"
        job = (task.spec.job_id if task else actor.creation.spec.job_id if actor else None)
        drivers = self.clients.drivers_of(job)  # (a driver elsewhere with an actor here too)
        if task is not None and self.member is not None and not drivers:
            self.member.output(task.submitter, prefix, stream, lines)  # (a lease's owner's)
        for driver in drivers:
            if driver.log_to_driver:
                labelled = self.member.labelled(prefix) if driver.remote and self.member else prefix
                self.send(driver.client_id, p.LogLines(labelled, stream, lines))
        # Kept with the session's logs too: what the workers printed, after the fact.
        mark = " [stderr]" if stream == "stderr" else ""
        self.workers_log.write("".join(f"({prefix}){mark} {line}\n" for line in lines))
        self.workers_log.flush()

    def stop(self) -> None:
        try:
            self.gcs.node_stopped()
            self.gcs.drain(self.config.shutdown_timeout_s / 2)
            self.pool.stop_all(self.config.shutdown_timeout_s)
            self.gcs.close()
            self.mapping.close()
            self.peers.close()
            self.router.close()
            if self.member is not None:
                self.member.close()
            self.zmq.term()
            self.workers_log.close()
        finally:  # whatever failed above, the node's files go
            if os.path.exists(self.store_path):
                os.unlink(self.store_path)
            self.object_manager.spiller.remove_all()
            if self.supervisor_pid:
                stop_process(self.supervisor_pid, self.config.shutdown_timeout_s)
            if self.ends_session:
                end_session(self.session, self.config.kept_sessions)


def _door(context: zmq.Context, args: argparse.Namespace,
          config: Config) -> tuple[Any, Any]:
    """A cluster node's TCP door and the credentials it asks for."""
    from zray.mesh.auth import load_credentials
    from zray.node.mesh import MeshDoor

    credentials = load_credentials(args.token_file, config.encrypt_loopback)
    return MeshDoor(context, args.listen, credentials), credentials


def _write_json(path: str, value: object) -> None:
    with open(path + ".new", "w") as f:
        json.dump(value, f)
    os.replace(path + ".new", path)


def run_agent(args: argparse.Namespace, pool: WorkerPool) -> None:
    """Run the agent until its driver leaves or it is told to stop (see zray/node/boot.py)."""
    logging.basicConfig(level=logging.INFO, format="[agent] %(levelname)s %(message)s")
    if args.token_file:  # (a cluster's node moves objects in 8 MiB chunks: kept warm)
        from zray.malloc import keep_large_blocks_warm

        keep_large_blocks_warm()
    agent = Agent(args, Config.from_env(), pool)
    signal.signal(signal.SIGTERM, lambda *_: setattr(agent, "running", False))
    try:
        agent.run()
    finally:
        agent.stop()
