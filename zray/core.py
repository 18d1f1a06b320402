"""The zray core inside every driver and worker: submit, put, get, wait.

::

    user threads --- tx DEALER (AgentSender) ----> node agent ROUTER  ipc://SESSION/agent.sock
    "zray-io" thread <--- rx DEALER --------------    (ready objects, replies, logs, leases)
    "zray-io" thread <--- lanes ------------------    SESSION/ld-<id>.sock (zray/lane.py):
                                                      results of our leased tasks and actor
                                                      calls from this node's processes
    "zray-io" thread <--- direct ROUTER ----------    ipc://SESSION/d-<id>.sock: the same
                                                      from peers without a lane here
    Peers: lanes, or DEALERs ---> other processes     (tasks to leased workers, results)

User threads send straight on ``tx`` (no hop through another thread on the submit path;
zray/sender.py keeps the order of messages and ref-count edges), while one thread,
"zray-io", owns the receiving sockets: it files incoming object locations
(``LocalObjects``, which wakes the waiters) and replies, runs the owner's side of leases
(zray/leasing.py), prints forwarded task output, hands the agent's tasks to a worker's
main loop, and flushes edges and batched messages when due. It also watches the agent's
pidfd, so a dead agent fails every waiter at once instead of leaving it hanging. With
nothing due it sleeps until a message comes (``_poll_timeout_ms``): an idle process never
wakes.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextvars
import itertools
import json
import logging
import math
import operator
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from zray import protocol as p
from zray.actors.caller import ActorCaller
from zray.config import Config
from zray.exceptions import GetTimeoutError, NodeDiedError, ObjectStoreFullError, ZrayError
from zray.ids import (
    TaskID,
    WorkerID,
    child_task_id,
    new_worker_id,
    put_object_id,
    return_object_id,
    task_of,
)
from zray.lane import LaneListener, LaneWriter, SharedLanes, lane_path
from zray.leader import Leader
from zray.leasing import DirectSubmitter, DirectTask
from zray.lineage import Lineage
from zray.malloc import keep_large_blocks_warm
from zray.mesh.direct import DirectTcp
from zray.node import failures
from zray.node.inbox import TaskInbox
from zray.node.launcher import direct_endpoint
from zray.objects.arguments import check_ref_count, encode_arguments
from zray.objects.local import LocalObjects
from zray.objects.refs import ObjectRef, RefCounter, object_id_of
from zray.objects.serialization import Serialized, deserialize, serialize
from zray.objects.store import Mapping
from zray.peers import Peers
from zray.protocol import has_input
from zray.rate_limit import RateLimitedLog
from zray.runtime_env import ENV_VARIABLE, Resolver
from zray.sender import AgentSender
from zray.specs import FunctionDescriptor, TaskContext, TaskOptions

log = logging.getLogger("zray")

_CHORES_EVERY_S = 0.001
# A leased task still running after this long is reported to the agent (TaskStarted), so
# the GCS shows it RUNNING; shorter ones are not worth a message.
_REPORT_RUNNING_AFTER_S = 0.05
# A worker's I/O thread polls this long after a task started before it sleeps until a
# message comes: a task starting while it sleeps must wake it (to report the task if it
# runs long), a wake-up per task in a stream of short ones.
_AWAKE_AFTER_TASK_S = 1.0

_runtime: CoreClient | None = None


def current() -> CoreClient | None:
    return _runtime


def set_current(client: CoreClient | None) -> None:
    global _runtime
    _runtime = client


def current_counter() -> RefCounter | None:
    return _runtime.refs if _runtime is not None else None


# What other processes send a process's direct socket: answers (one, or a Batch), tasks
# handed back (NotStarted), cancels of the task it runs.
_DIRECT_MESSAGES = (p.Batch, p.NotStarted, p.CancelRunning)


class CoreClient:
    def __init__(self, endpoint: str, kind: str, job_id: bytes, config: Config,
                 log_to_driver: bool = True,
                 on_agent_death: Callable[[], None] | None = None) -> None:
        self.kind = kind
        keep_large_blocks_warm()
        self._on_agent_death = on_agent_death
        self.on_cancel: Callable[[bytes], None] | None = None  # set by a worker
        self.cancelled: set[bytes] = set()  # a worker's tasks cancelled while they run
        # Why the agent is gone, for NodeDiedError (a driver, the agent's parent, can say).
        self.explain_agent_death: Callable[[], str] = lambda: "the node agent exited"
        self.job_id = job_id
        self.config = config
        self.log_to_driver = log_to_driver
        self.namespace = ""
        self.worker_id: WorkerID = new_worker_id()
        self.refs = RefCounter()
        self._root_context = TaskContext(TaskID(b""), "idle")
        # The running task, per thread and per asyncio task (threaded and async actors).
        self._context: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("zray_task")
        self.node_id = b""
        self.resources: dict[str, float] = {}
        self._zmq = p.bounded_context(config.max_frame_bytes)
        self._tx = self._socket(endpoint, b"t")
        self._rx = self._socket(endpoint, b"r")
        # Direct messages from other processes: tasks sent on a lease (a worker), their
        # results (an owner). Bound before Register, so a peer told of us can connect.
        self._direct = self._zmq.socket(zmq.ROUTER)
        self._direct.setsockopt(zmq.LINGER, 0)
        self._direct.setsockopt(zmq.RCVHWM, 0)
        self._direct.bind(direct_endpoint(endpoint, self.worker_id))
        self._lanes = SharedLanes(LaneListener(lane_path(endpoint, self.worker_id, "d"),
                                               config.max_frame_bytes),  # (zray/lane.py)
                                  self._on_lane_messages)
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the I/O thread at once
        self._leader = Leader(self._lanes)
        self.mesh: DirectTcp | None = None  # a cluster node's: the TCP paths across nodes
        self._direct_tcp: zmq.Socket | None = None  # answers from workers elsewhere
        self.owner_nodes: dict[bytes, bytes] = {}  # an owner elsewhere -> its node
        # A context of its own, so a worker about to exit can wait for its answers to go
        # (deliver_before_exit) without closing the sockets its other threads use.
        self._peers_zmq = p.bounded_context(config.max_frame_bytes)
        self.peers = Peers(self._peers_zmq, self.worker_id, endpoint, lanes=True,
                           on_backlog=lambda: os.write(self._wake_w, b"l"))
        self.inbox = TaskInbox(self, self._zmq, endpoint) if kind == "worker" else None
        self.leasing: DirectSubmitter | None = None  # once registered (it needs the CPUs)
        self._futures: concurrent.futures.ThreadPoolExecutor | None = None  # (future())
        self._cond = threading.Condition()  # guards _replies
        self.objects = LocalObjects(self.refs)
        # Held from reading objects' locations to deferring the notice that pins them, and
        # while answering the agent's ReleaseBlocks: see _release_blocks.
        self._locations_guard = threading.Lock()
        self.actor_placement: dict[str, Any] = {}  # an actor's process: its placement group's
        self.objects.fetch = lambda ids: self.tx.send(p.Subscribe(ids, True))
        # The runtime_env its work runs in, which its tasks inherit (a driver's: init's)
        self.runtime_envs = Resolver(self.put, lambda: self.node_id, os.environ.get(
            ENV_VARIABLE, "") if kind == "worker" else "")
        self._replies: dict[int, p.Message] = {}
        self._request_ids = itertools.count(1)
        self._exported: set[bytes] = set()
        self._broken = ""
        # Leased tasks this worker runs: task id -> [attempt, since (monotonic), wall
        # clock, reported]; set by zray/node/execution.py, read by the I/O thread.
        self.running: dict[bytes, list[Any]] = {}
        self.last_started = -math.inf  # (monotonic) when the last of them started
        self._complaints = RateLimitedLog(log)
        self._stopping = False
        self._io: threading.Thread | None = None
        self._agent_pidfd = -1
        self.lineage = Lineage(config.max_lineage_bytes)
        self.tx = AgentSender(self._tx, self.refs, config.batch_window_ms / 1000,
                              config.poll_interval_ms, lambda: os.write(self._wake_w, b"d"),
                              self._released, self.wake_if_idle)
        self._io_idle = False  # the I/O thread sleeps until a message comes (_poll_timeout_ms)
        self.refs.on_pending = self.wake_if_idle
        self.actor_calls = ActorCaller(self.worker_id, self.peers, self.tx,
                                        config.batch_window_ms / 1000)

    @property
    def context(self) -> TaskContext:
        return self._context.get(self._root_context)

    @context.setter
    def context(self, value: TaskContext) -> None:
        if self.kind == "driver":
            self._root_context = value  # every driver thread submits as the driver
        else:
            self._context.set(value)

    def _socket(self, endpoint: str, role: bytes) -> zmq.Socket:
        sock = self._zmq.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.worker_id + role)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # The agent binds while we start (init, a worker started with it): retry every
        # 5 ms, not zmq's default 100 ms, which start-up would otherwise wait out.
        sock.setsockopt(zmq.RECONNECT_IVL, 5)
        sock.connect(endpoint)
        return sock

    # --- lifecycle -------------------------------------------------------------------

    def connect(self, timeout_s: float, still_starting: Callable[[], str] | None = None) -> None:
        """Register with the agent; ``still_starting`` returns why to give up early, or ""."""
        hello = p.Register(self.worker_id, os.getpid(), self.kind, self.job_id,
                           self.log_to_driver, self.namespace)
        p.send(self._rx, hello)
        deadline = time.monotonic() + timeout_s
        while not self._rx.poll(50):
            reason = still_starting() if still_starting else ""
            if reason or time.monotonic() > deadline:
                raise NodeDiedError(reason or f"the node agent did not answer within {timeout_s}s")
        reply = p.decode(self._rx.recv_multipart())
        if not isinstance(reply, p.Registered):
            raise NodeDiedError(f"the node agent answered {type(reply).__name__} to Register")
        self.node_id, self.resources = reply.node_id, reply.resources
        self.objects.mapping = Mapping(reply.store_path, reply.store_size)
        if reply.mesh:
            self._listen_on_tcp(reply.mesh)
        self.lineage.enabled = bool(reply.mesh)  # (a node of a cluster: others may die)
        self._agent_pidfd = os.pidfd_open(reply.agent_pid)
        self.leasing = DirectSubmitter(self.worker_id, self.peers, self.tx.send,
                                       lambda msg: self.tx.defer(msg, soon=False, wake=False,
                                                                 awaited=False),
                                       self.objects.file,
                                       self.objects.get_location,
                                       self.resources.get("CPU", 1.0),
                                       self.config.lease_idle_ms / 1000, self.lineage)
        self._io = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)
        self._io.start()

    def _listen_on_tcp(self, mesh: dict[str, str]) -> None:
        """In a cluster: bind our direct sockets on TCP too (zray/mesh/direct.py), and
        tell the agent where (a worker: owners elsewhere get it with their lease)."""
        self.mesh = DirectTcp(self._zmq, mesh["host"], mesh["token"],
                              self.config.encrypt_loopback)
        sock = self._direct_tcp = self._zmq.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        addresses = {"d": self.mesh.bind(sock)}
        if self.inbox is not None:
            addresses["t"] = self.mesh.bind(self.inbox.tcp_socket())
        self.mesh.start()
        self.peers.secure(self.mesh.credentials,
                          p.Introduce(self.worker_id, self.node_id, {"d": addresses["d"]}))
        if self.kind == "worker":
            self.tx.send(p.Listening(addresses))

    def introduced(self, msg: p.Introduce) -> None:
        """An owner on another node (its first message on a TCP connection to us)."""
        address = msg.addresses.get("d")
        if isinstance(address, str) and address.startswith("tcp://"):
            self.owner_nodes[msg.client_id] = msg.node_id
            self.peers.route(msg.client_id, "d", address)

    def _barrier(self) -> None:
        """Round trip to the agent after flushing refs: notices it owes us arrive first."""
        if self._io is None:
            return
        self.actor_calls.flush()  # calls made go, not to be left running at the agent
        self.tx.flush()  # releases go before the query, not after it
        try:
            self.query("resources")
        except NodeDiedError:
            pass

    def close(self, stop_cluster: bool = False) -> None:
        if not self._broken:
            self._barrier()
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._io is not None:
            self._io.join()
        self.objects.call_back_all()  # (futures not ready fail: we are closing)
        if self._futures is not None:
            self._futures.shutdown(wait=False)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if not self._broken:
            self.tx.send(p.Disconnect(stop_cluster))
        # A get still waiting in another thread raises this, not hangs.
        self._break(self._broken or "zray.shutdown() was called while this waited")
        self.peers.close()
        self._peers_zmq.term()
        self._direct.close()
        self._leader.close()  # (first: a thread blocked in a get may be reading the lanes)
        self._lanes.close()
        if self._direct_tcp is not None:
            self._direct_tcp.close()
        if self.mesh is not None:
            self.mesh.close()
        if self.inbox is not None:
            self.inbox.close()
        self._tx.close()
        self._rx.close(linger=0)
        self._zmq.term()
        if self._agent_pidfd >= 0:
            os.close(self._agent_pidfd)
        if self.objects.mapping is not None:
            self.objects.mapping.close()

    def deliver_before_exit(self, timeout_s: float) -> None:
        """The process exits right after this (a task called os._exit): the answers it sent
        reach their owners first. zmq sends from a thread of its own, which dies with the
        process: an answer sent just before would be lost, and its finished task run again
        and blamed for the crash."""
        self.peers.deliver(timeout_s)

    # --- the I/O thread --------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._rx, zmq.POLLIN)
        poller.register(self._direct, zmq.POLLIN)
        if self._direct_tcp is not None:
            poller.register(self._direct_tcp, zmq.POLLIN)
        poller.register(self._agent_pidfd, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        lanes = self._leader.io_fileno()  # (read by a blocked get too: zray/leader.py)
        poller.register(lanes, zmq.POLLIN)
        waiting_for_room: list[LaneWriter] = []  # lanes we send on with a backlog
        last_chores = 0.0
        while not self._stopping:
            try:
                events = dict(poller.poll(self._poll_timeout_ms(time.monotonic())))
                self._io_idle = False
                if self._agent_pidfd in events:
                    self._fail(f"{self.explain_agent_death()}; the cluster is gone")
                    return
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                # Answers first: a notice from the agent that their worker died comes after
                # whatever that worker sent us (ActorCaller.moved, DirectSubmitter).
                answers: list[p.TaskDone] = []
                if self._direct in events:
                    self._take_direct(self._direct, answers)
                if self._direct_tcp is not None and self._direct_tcp in events:
                    self._take_direct(self._direct_tcp, answers)
                if answers:
                    self._take_answers(answers)
                if lanes in events or self._rx in events:
                    self._lanes.read()
                waiting_for_room = self._wait_for_room(poller, waiting_for_room)
                while self._rx in events and has_input(self._rx):
                    self._dispatch(self._rx.recv_multipart(), from_agent=True)
                now = time.monotonic()
                # Chores at most every _CHORES_EVERY_S while messages flow, not after each:
                # a thread just woken by a result gets the GIL sooner.
                if not events or now - last_chores >= _CHORES_EVERY_S:
                    if self.leasing is not None:
                        self.leasing.expire_idle(now)
                    self.actor_calls.flush(now)
                    self._report_running(now)
                    self.tx.flush(now)
                    last_chores = now
            except Exception as exc:  # without this thread nothing wakes a waiter again
                log.exception("zray's I/O thread failed")
                self._fail(f"zray's I/O thread failed: {exc!r}")
                return

    def _poll_timeout_ms(self, now: float) -> int:
        """How long the I/O thread may sleep: until a deferred message is due; a poll
        period while a chore may come due (a lease to give back when idle, corked actor
        calls, a running task to report, or one that may start any moment: a task started
        in the last second); else until a message comes (the agent's pidfd and the wake
        pipe are among them), so an idle process does not wake at all."""
        busy = (self.running or now - self.last_started < _AWAKE_AFTER_TASK_S
                or self.actor_calls.corked() or self.refs.pending()
                or self.tx.holding() or (self.leasing is not None and self.leasing.leases))
        timeout = self.tx.timeout_ms(now) if busy else self.tx.deferred_timeout_ms()
        if timeout is not None:
            return timeout
        self._io_idle = True  # (then a ref let go, or a message deferred, wakes us)
        if (self.refs.pending() or self.tx.holding()
                or self.tx.deferred_timeout_ms() is not None):
            self._io_idle = False  # (one came meanwhile)
            return self.tx.timeout_ms(now)
        return -1

    def wake_if_idle(self) -> None:
        """Something for the I/O thread to send later: wake it if it sleeps until a
        message comes (else its next pass sees to it)."""
        if self._io_idle:
            self._io_idle = False
            try:
                os.write(self._wake_w, b"i")
            except OSError:  # (closed: the process is shutting down)
                pass

    def _report_running(self, now: float) -> None:
        for task_id, entry in list(self.running.items()):
            attempt, since, started, reported = entry
            if not reported and now - since >= _REPORT_RUNNING_AFTER_S:
                entry[3] = True  # (sent, not deferred: a deferred message would send the
                self.tx.send(p.TaskStarted(task_id, attempt, started))  # answer via the agent)

    def _take_direct(self, sock: zmq.Socket, answers: list[p.TaskDone]) -> None:
        """Every message waiting on a direct socket; the answers among them go into
        ``answers``, taken together (a lease then gets its next tasks in one message, not
        one per answer)."""
        while True:
            try:  # (NOBLOCK until Again: cheaper than asking the socket before each one)
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = self._direct_message(frames[1:], answers, sock is self._direct_tcp)
            if msg is not None:
                p.send_rejected(sock, frames[0], msg,
                                "a direct socket takes answers, NotStarted and cancels")

    def _on_lane_messages(self, messages: list[list[Any]]) -> None:
        """What our lanes brought (zray/lane.py), read by the I/O thread or a blocked get."""
        answers: list[p.TaskDone] = []
        for frames in messages:
            self._direct_message(frames, answers, False)
        if answers:
            self._take_answers(answers)

    def _direct_message(self, frames: list[Any], answers: list[p.TaskDone],
                        over_tcp: bool) -> p.Message | None:
        """Take one direct message; returns one to reject."""
        try:
            msg = p.decode(frames)
        except p.ProtocolError as exc:
            self._complaints.warning("malformed", "dropped a malformed message: %s", exc)
            return None
        if isinstance(msg, p.TaskDone):
            answers.append(msg)
        elif isinstance(msg, p.Introduce) and over_tcp:
            self.introduced(msg)
        elif isinstance(msg, _DIRECT_MESSAGES):
            self._dispatch_message(msg, from_agent=False)
        else:  # (anyone may write to this socket: a peer of ours never sends these)
            self._complaints.warning("direct", "rejected a %s on the direct socket",
                                     type(msg).__name__)
            return msg
        return None

    def _take_answers(self, answers: list[p.TaskDone]) -> None:
        try:
            self._answered(answers, from_agent=False)
        except Exception as exc:  # (as in _dispatch_message)
            self._complaints.warning("answers", "dropped answers that cannot be used: %r", exc)

    def _wait_for_room(self, poller: zmq.Poller, waiting: list[LaneWriter]) -> list[LaneWriter]:
        """Write what our lanes hold back; poll for room in those still holding some."""
        still = self.peers.flush_backlogs()
        if still or waiting:
            for lane in waiting:
                if lane not in still:
                    poller.unregister(lane)
            for lane in still:
                if lane not in waiting:
                    poller.register(lane, zmq.POLLOUT)
        return still

    def _dispatch(self, frames: list[bytes], from_agent: bool) -> None:
        try:
            msg = p.decode(frames)
        except p.ProtocolError as exc:
            log.warning("dropped a malformed message: %s", exc)
            return
        self._dispatch_message(msg, from_agent)

    def _dispatch_message(self, msg: p.Message, from_agent: bool) -> None:
        try:
            self._dispatch_checked(msg, from_agent)
        except Exception as exc:  # a message we cannot use must not stop this thread
            self._complaints.warning(type(msg).__name__, "dropped a %s that cannot be used: %r",
                                     type(msg).__name__, exc)

    def _dispatch_checked(self, msg: p.Message, from_agent: bool) -> None:
        if isinstance(msg, p.TaskDone):
            self._answered([msg], from_agent)
        elif isinstance(msg, p.ObjectsReady):
            self.objects.file(msg.locations)
        elif isinstance(msg, (p.ObjectCreated, p.AgentReply)) and from_agent:
            with self._cond:
                self._replies[msg.request_id] = msg
                self._cond.notify_all()
        elif isinstance(msg, p.ExecuteTask) and self.inbox is not None:
            self.inbox.from_agent(msg)
        elif isinstance(msg, p.Batch):  # results from a worker that ran several of our tasks
            try:
                messages = p.unbatch(msg)
            except p.ProtocolError as exc:
                log.warning("dropped a malformed batch: %s", exc)
                return
            self._answered([one for one in messages if isinstance(one, p.TaskDone)], from_agent)
            for one in messages:
                if not isinstance(one, p.TaskDone):
                    self._dispatch_message(one, from_agent)
        elif isinstance(msg, p.CancelRunning) and self.on_cancel is not None:
            self.on_cancel(msg.task_id)
        elif isinstance(msg, p.LeaseGranted) and self.leasing is not None:
            self.leasing.on_granted(msg)
        elif isinstance(msg, p.ClusterResized) and self.leasing is not None:
            self.leasing.resize(float(msg.resources.get("CPU", 1.0)))
        elif isinstance(msg, p.LeaseRefused) and self.leasing is not None:
            self.leasing.on_refused(msg)
        elif isinstance(msg, p.LeaseLost) and self.leasing is not None:
            self.leasing.on_lease_lost(msg)
        elif isinstance(msg, p.ReturnIdleLeases) and self.leasing is not None:
            self.leasing.return_idle()
        elif isinstance(msg, p.ActorAddress):
            self.actor_calls.moved(msg)
        elif isinstance(msg, p.Processed):
            self.tx.processed(msg.count)
        elif isinstance(msg, p.Rebuild) and from_agent:
            self._rebuild(msg)
        elif isinstance(msg, p.ReleaseBlocks) and from_agent:
            self._release_blocks(msg)
        elif isinstance(msg, p.NotStarted) and self.leasing is not None:
            self.leasing.on_not_started(msg)
        elif isinstance(msg, p.LogLines):
            stream = sys.stderr if msg.stream == "stderr" else sys.stdout
            stream.write("".join(f"({msg.prefix}) {line}\n" for line in msg.lines))
            stream.flush()
        elif isinstance(msg, p.Rejected):
            self._complaints.warning("rejected", "the node agent rejected a message (op %d): %s",
                                     msg.of, msg.reason)
        elif isinstance(msg, p.Notice):
            print(f"zray: {msg.text or _unhandled_error_text(msg.error)}", file=sys.stderr,
                  flush=True)

    def _answered(self, answers: list[p.TaskDone], from_agent: bool) -> None:
        """Answers to our actor calls and leased tasks (the owner's side sees to a lease's
        next tasks once for them all). A worker's answer is reported to the agent from
        here: we hold it, so the agent hears of it even if that worker dies right after
        (the agent's own answers, and those it passed on, it has)."""
        for_leases = []
        # Reports due soon: the I/O thread must hear of them if a blocked get read these
        # answers (zray/leader.py); its own loop sends them otherwise.
        wake = threading.current_thread() is not self._io
        for done in answers:
            if done.item >= 0:  # a value a generator of ours yielded (zray/generators.py)
                self.objects.expect([location[0] for location in done.results])
                self.objects.file(done.results)
                if not from_agent:
                    self.tx.defer(done, soon=True, wake=wake, awaited=False)
            elif self.actor_calls.answered(done.task_id):
                self.objects.file(done.results)
                if not from_agent:  # (soon: the actor's mailbox releases calls on it)
                    self.tx.defer(done, soon=True, wake=wake, awaited=False)
            else:
                for_leases.append(done)
        if for_leases and self.leasing is not None:
            self.leasing.on_done(for_leases, from_agent)

    def _released(self, object_ids: list[bytes]) -> None:
        """This process let go of these objects: forgotten here, and their lineage."""
        self.objects.forget(object_ids)
        self.lineage.released(object_ids)

    def _rebuild(self, msg: p.Rebuild) -> None:
        if self.leasing is not None:
            self.leasing.on_rebuild(msg)
        elif not msg.task_id:  # (a process that leases nothing keeps no lineage)
            for object_id in msg.object_ids:
                self.tx.send(p.Unrebuildable([object_id], failures.cannot_rebuild(
                    object_id, "", "")))

    def _release_blocks(self, msg: p.ReleaseBlocks) -> None:
        """The agent moves these objects to disk: we forget their blocks, unless we still
        map them (a view, or a kept task of our lineage reads them in place). The answer
        goes after every message we deferred, and no location read before it can be used
        without a notice deferred before it (the guard, see submit): a task that reads
        one is pinned at the agent before the agent takes our answer."""
        with self._locations_guard:
            released, in_use = self.objects.release_blocks(msg.object_ids, self.lineage.maps)
            if released:
                self.actor_calls.forget_locations(set(released))
            self.tx.send(p.BlocksReleased(released, in_use))

    def _fail(self, reason: str) -> None:
        if self._on_agent_death is not None:
            self._on_agent_death()
        self._break(reason)
        if self.inbox is not None:
            self.inbox.from_agent(None)

    def _break(self, reason: str) -> None:
        """Every wait, now and later, raises ``reason`` (_check_broken)."""
        with self._cond:
            self._broken = reason
            self._cond.notify_all()
        self.objects.wake_all()

    def _check_export_size(self, fn: FunctionDescriptor) -> None:
        """Refuse a function too large for a message (as Ray refuses one over 100 MB)."""
        limit = self.config.max_function_bytes
        if len(fn.blob) > limit:
            raise ValueError(
                f"the remote function {fn.name} is too large: {len(fn.blob) / 2**20:.1f} MiB "
                f"pickled, over the {limit / 2**20:.1f} MiB limit (max_frame_bytes less 64 KiB). "
                "Check that its definition does not capture a large array or other object in "
                "scope: pass it as an argument, or zray.put() it and pass the ref.")

    def _check_broken(self) -> None:
        if self._broken:
            raise NodeDiedError(self._broken)

    # --- tasks -----------------------------------------------------------------------

    def submit(self, fn: FunctionDescriptor | None, name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], options: TaskOptions, actor_id: bytes = b"",
               actor_options: dict[str, Any] | None = None) -> tuple[bytes, list[ObjectRef]]:
        """Submit a task, an actor's creation (``actor_options``) or an actor method call
        (``actor_id`` without ``fn``); returns its task id and refs to its results."""
        self._check_broken()
        self.tx.wait_for_room(self._check_broken)
        if fn is not None and fn.function_id not in self._exported:
            self._check_export_size(fn)
            self.tx.send(p.ExportFunction(fn.function_id, fn.name, fn.blob))
            self._exported.add(fn.function_id)
        runtime_env = "" if actor_id and not actor_options else \
            self.runtime_envs.wire(options.runtime_env)
        task_id = child_task_id(self.context.task_id, next(self.context.submitted))
        if actor_options:
            actor_id = task_id  # an actor is named after the task that creates it
        # A plain task whose arguments are all here runs on a lease (zray/leasing.py); the
        # agent still hears of it first, so it can pin the arguments and expect the results.
        # A retried task's children go through the agent, which merges them by id with the
        # ones the first attempt submitted (they must not run twice).
        may_lease = (fn is not None and not actor_id and self.leasing is not None
                     and self.context.attempt == 0)
        inline_max = self.config.inline_object_max_bytes
        # On a lease, arguments up to direct_arg_max_bytes travel in the task message itself:
        # one copy through a socket beats a store round trip and fresh pages to write.
        encoded = encode_arguments(
            name, args, kwargs, self.config.direct_arg_max_bytes if may_lease else inline_max,
            self.config.max_refs_per_value, self._put_serialized)
        # From reading the arguments' locations until the notice that pins them is
        # deferred, the store may not move them (_release_blocks). Not held while the
        # arguments are encoded: a put waits for the agent, which may wait for us.
        with self._locations_guard:
            _, deps, contained, _ = encoded
            direct_deps = self._dep_locations(deps) if may_lease and not contained else None
            if direct_deps is not None or len(encoded[0]) <= inline_max:
                return self._submit_locked(fn, name, (args, kwargs), options, actor_id,
                                           actor_options, task_id, encoded, direct_deps,
                                           runtime_env)
        encoded = encode_arguments(  # through the agent after all
            name, args, kwargs, inline_max, self.config.max_refs_per_value,
            self._put_serialized)
        with self._locations_guard:
            return self._submit_locked(fn, name, (args, kwargs), options, actor_id,
                                       actor_options, task_id, encoded, None, runtime_env)

    def _submit_locked(self, fn: FunctionDescriptor | None, name: str,
                       call: tuple[tuple[Any, ...], dict[str, Any]], options: TaskOptions,
                       actor_id: bytes, actor_options: dict[str, Any] | None, task_id: bytes,
                       encoded: tuple[bytes, list[bytes], list[bytes], list[ObjectRef]],
                       direct_deps: list[p.Location | None] | None, runtime_env: str
                       ) -> tuple[bytes, list[ObjectRef]]:
        """Submit, ``encoded`` (see encode_arguments) and the places of its arguments
        read (``direct_deps``: it goes on a lease), under the locations guard;
        ``runtime_env`` resolved (zray/runtime_env.py)."""
        blob, deps, contained, keep_alive = encoded
        if fn is not None and not actor_id and direct_deps is None:
            self._check_runs_here(name, options.strategy)
        job_id = self.context.job_id
        notice = p.SubmitTask(  # a direct task's arguments go to its worker, not the agent
            task_id, job_id, fn.function_id if fn else b"", name,
            blob if direct_deps is None else b"", deps,
            contained, options.num_returns, options.resources, options.max_retries,
            options.retry_filter, actor_id, actor_options or {}, direct_deps is not None, b"",
            self.context.task_id, placement=options.placement, runtime_env=runtime_env,
        )
        refs = [ObjectRef(return_object_id(task_id, i), self.refs, created=True)
                for i in range(options.num_returns)]
        if actor_id and not actor_options:  # a call: the actor's worker answers us directly
            self.objects.expect([ref.id for ref in refs])
            # Sent straight to the actor's worker if its arguments are all here (else the
            # agent's mailbox waits for them); the refs among them stay held until it goes.
            here = None if contained else self._dep_locations(deps, own_on_the_way=False)
            self.actor_calls.call(notice, here, (*call, keep_alive))
            return task_id, refs
        if direct_deps is not None:  # the worker answers us directly
            self.objects.expect([ref.id for ref in refs])
            self.tx.defer(notice, soon=False, awaited=False)  # in a batch, before anything
            # else we send; a wait for its results needs it not (the worker answers us)
        else:
            self.tx.send(notice)
        # (keep_alive: refs of large arguments put on the caller's behalf, let go when
        # submit returns: the notice that pins them is on its way)
        if direct_deps is not None and fn is not None and self.leasing is not None:
            self.leasing.functions.setdefault(fn.function_id, fn.blob)
            self.leasing.submit(DirectTask(
                task_id, job_id, fn.function_id, name, blob, direct_deps, options.num_returns,
                options.retry_filter, options.max_retries, options.resources, deps,
                options.strategy, options.placement, runtime_env))
        return task_id, refs

    def _check_runs_here(self, name: str, strategy: dict[str, Any]) -> None:
        """A task sent through the agent runs on this node in this version (its arguments
        hold refs nested in values, or one is not ready here): a hard affinity to another
        node is refused at once rather than broken."""
        node = strategy.get("node")
        if node and not strategy.get("soft") and node != self.node_id.hex():
            raise ZrayError(
                f"{name}: a task whose arguments hold refs or actor handles nested inside "
                "values, or are not ready yet, runs on its submitter's node in this version, "
                f"so it cannot keep its hard affinity to node {node[:16]}; pass those refs "
                "as top-level arguments once ready, or use soft=True")

    def _dep_locations(self, deps: list[bytes], own_on_the_way: bool = True
                       ) -> list[p.Location | None] | None:
        """Where each of ``deps`` is, None for a result of our own direct task still on its
        way if ``own_on_the_way`` (the task will wait for it here); None overall if one is
        neither, or an error (the agent waits for it, or fails the task with it)."""
        locations: list[p.Location | None] = []
        inline = 0  # bytes of the values that would travel in the task's message
        for object_id in deps:
            location = self.objects.get_location(object_id)
            if location is None and not (own_on_the_way and self.leasing is not None
                                         and task_of(object_id) in self.leasing.tasks):
                return None
            if location is not None and location[4]:
                return None
            # (one on its way may come inline, at most so big)
            inline += (self.config.inline_object_max_bytes if location is None
                       else 0 if location[1] is None else len(location[1]))
            if inline > self.config.message_budget:  # the agent moves some to the store
                return None
            locations.append(location)
        return locations

    def future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        """A future of the ref's value: set once it is ready here, by one shared thread
        (no thread, and no blocked call, per future)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def read(_: object) -> None:  # (on the I/O thread: the value is read on the other)
            if self._stopping:
                if not future.cancelled():
                    future.set_exception(ZrayError(
                        f"zray.shutdown() was called before {ref} was ready"))
                return
            if self._futures is None:
                self._futures = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="zray-futures")
            self._futures.submit(self._resolve_future, future, ref)

        self.when_ready(ref.id).add_done_callback(read)
        return future

    def when_ready(self, object_id: bytes) -> concurrent.futures.Future[None]:
        """A future set (to None) once the object is ready here (or the agent is gone);
        it is not read."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def ready() -> None:
            try:
                future.set_result(None)
            except concurrent.futures.InvalidStateError:
                pass  # (cancelled: nobody waits for it any more)

        subscribe = self.objects.on_ready(object_id, ready)
        if subscribe is None:
            ready()
            return future
        self.actor_calls.flush()  # what it waits for may be among them (as _await)
        if subscribe:
            self.tx.send(p.Subscribe([object_id], True))
        else:
            self.tx.flush_for_wait()
        if self._broken:
            self.objects.wake_all()  # (the agent died before the callback was filed)
        return future

    def wait_ids(self, ids: list[bytes], timeout: float | None) -> None:
        """Return once one of these objects is ready anywhere, or ``timeout`` passed."""
        self._await(ids, 1, timeout, raise_on_timeout=False, fetch_local=False)

    def abandon_stream(self, task_id: bytes, first: int) -> None:
        """A generator of ours was dropped: the items from ``first`` that are here are
        let go (each was held for it since it arrived)."""
        index = first
        while self.objects.ready_among([return_object_id(task_id, index + 1)],
                                       fetch_local=False):
            ObjectRef(return_object_id(task_id, index + 1), self.refs, created=True)
            index += 1  # (made and dropped at once: the agent hears of the release)

    def _resolve_future(self, future: concurrent.futures.Future[Any], ref: ObjectRef) -> None:
        try:
            value = self.get([ref], None)[0]
        except BaseException as exc:
            if not future.cancelled():
                future.set_exception(exc)
        else:
            if not future.cancelled():
                future.set_result(value)

    def cancel(self, object_id: bytes, force: bool) -> None:
        task_id = task_of(object_id)
        if self.actor_calls.cancel(task_id):
            return
        if self.leasing is None or not self.leasing.cancel(task_id, force):
            self.tx.send(p.CancelTask(object_id, force))

    # --- objects ---------------------------------------------------------------------

    def put(self, value: Any) -> ObjectRef:
        self._check_broken()
        return self._put_serialized(serialize(value))

    def _put_serialized(self, ser: Serialized) -> ObjectRef:
        object_id = put_object_id(self.context.task_id, next(self.context.puts))
        location = self.store_value(object_id, ser, is_error=False, remember=True)
        if location[1] is not None:
            self.objects.remember(location)
            self.tx.send(p.PutObject(object_id, location[1], ser.contained))
        return ObjectRef(object_id, self.refs, created=True)

    def store_value(self, object_id: bytes, ser: Serialized, is_error: bool,
                    owner: bytes = b"", may_inline: bool = True,
                    remember: bool = False) -> tuple[Any, ...]:
        """Hand a serialised value to the node: inline (if small and ``may_inline``), or
        written into the store in place.

        An inline value only comes back as a location (with its data): the caller sends it,
        put in a PutObject, a task's results in its TaskDone. Errors always travel inline,
        so the agent can hand them to dependents and report them if nobody reads them.
        ``remember``: a store value's location is kept here (a put), before the agent hears
        of it (it may ask for the block back at once)."""
        check_ref_count(len(ser.contained), self.config.max_refs_per_value, "a value")
        if (may_inline and ser.size <= self.config.inline_object_max_bytes) or is_error:
            return (object_id, ser.to_bytes(), 0, ser.size, is_error)
        offset = self._create(object_id, ser.size, owner)
        if offset == -2:  # a retried task made it again; the first value stands
            return (object_id, None, -1, ser.size, is_error)
        assert self.objects.mapping is not None
        ser.write_into(self.objects.mapping.view[offset : offset + ser.size])
        location = (object_id, None, offset, ser.size, is_error)
        if remember:
            self.objects.remember(location)
        self.tx.send(p.SealObject(object_id, ser.contained, is_error))
        return location

    def request(self, make: Callable[[int], p.Message], releases_first: bool = False) -> Any:
        """Send the request ``make(request_id)`` and wait for the agent's reply to it."""
        request_id = next(self._request_ids)
        self.tx.send(make(request_id), releases_first)
        with self._cond:
            while request_id not in self._replies:
                self._check_broken()
                self._cond.wait(1.0)
            return self._replies.pop(request_id)

    def query(self, what: str, **args: Any) -> Any:
        if what == "resources" and self.leasing is not None:
            self.leasing.return_idle()  # our idle leases are free, not in use
        reply = self.request(lambda rid: p.QueryAgent(rid, what, args))
        return json.loads(reply.body_json)

    def _create(self, object_id: bytes, size: int, owner: bytes) -> int:
        reply = self.request(lambda rid: p.CreateObject(rid, object_id, size, owner),
                             releases_first=True)
        if reply.offset == -1:
            raise ObjectStoreFullError(reply.error)
        return reply.offset

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        ids = list(map(object_id_of, refs))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._await(ids, len(set(ids)), left, for_get=True)
            taken = self.objects.take(ids)
            if taken is not None:
                break  # (else one went to disk meanwhile: the agent reads it back)
        errors = [loc[0] for loc, _ in taken if loc[4]]
        if errors:  # tell the agent they were read, so it does not report them unhandled
            self.tx.send(p.Subscribe(errors, True))
        return [self.objects.value_of(location, view) for location, view in taken]

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None,
             fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
        ids = list(map(object_id_of, refs))
        unique = set(ids)
        if len(unique) != len(ids):
            raise ValueError("zray.wait() got the same ObjectRef more than once; pass each "
                             "ref once")
        self._await(ids, num_returns, timeout, raise_on_timeout=False,
                    fetch_local=fetch_local, unique=unique)
        # C-speed loops only: wait() is called in loops over long lists of refs.
        ready = self.objects.ready_among(ids, fetch_local)
        if len(ready) <= _FEW_READY:  # (a drain: one at a time) found, not each tested
            at = sorted(map(ids.index, ready))[:num_returns]
            rest = []
            for start, end in zip([-1, *at], [*at, len(refs)], strict=True):
                rest += refs[start + 1 : end]
            return [refs[i] for i in at], rest
        is_ready = list(map(ready.__contains__, ids))
        if sum(is_ready) > num_returns:  # the first ones in input order count as ready
            ready_so_far = list(itertools.accumulate(map(int, is_ready)))
            extra = bisect.bisect_left(ready_so_far, num_returns + 1)  # first one too many
            is_ready[extra:] = itertools.repeat(False, len(is_ready) - extra)
        return (list(itertools.compress(refs, is_ready)),
                list(itertools.compress(refs, map(operator.not_, is_ready))))

    def get_from(self, object_id: bytes, node: bytes, timeout: float) -> Any:
        """The value of an object on ``node``, which our agent need not know of (named out
        of band: a runtime_env's package)."""
        ref = ObjectRef(object_id, self.refs, created=False)
        if node != self.node_id:
            self.objects.expect([object_id])  # (subscribed by the Fetch)
            self.tx.send(p.Fetch([object_id], node))
        return self.get([ref], timeout)[0]

    def fetch(self, ids: list[bytes], node: bytes = b"") -> None:
        """Wait until these objects, ready on other nodes, have a copy here (a task's
        arguments: its worker is not blocked, the copy is on its way). ``node``: where
        they are, if our agent may not know (a task sent to us over TCP)."""
        if node:
            self.objects.expect(ids)  # (subscribed by the Fetch)
            self.tx.send(p.Fetch(ids, node))
        try:
            self._await(ids, len(set(ids)), _FETCH_HOLDS_CPU_S, for_get=True, lends_cpu=False)
        except GetTimeoutError:  # (one is being rebuilt, or comes from far: the CPU is
            self._await(ids, len(set(ids)), None, for_get=True)  # lent out meanwhile, or
            # the tasks rebuilding it could find none free, and wait for this one for ever)

    def _await(self, ids: list[bytes], count: int, timeout: float | None,
               raise_on_timeout: bool = True, for_get: bool = False,
               lends_cpu: bool = True, fetch_local: bool = True,
               unique: set[bytes] | None = None) -> None:
        """Block until ``count`` of ``ids`` (``unique``: as a set, if the caller has it)
        are ready (here, or anywhere if not ``fetch_local``); a waiting worker lends out
        its CPU."""
        waiter, missing, to_subscribe = self.objects.start_wait(ids, count, fetch_local,
                                                                unique)
        if waiter is None:
            return
        self.actor_calls.flush()  # what we wait for may be among them
        if to_subscribe:
            self.tx.send(p.Subscribe(to_subscribe, for_get))
        else:
            self.tx.flush_for_wait()  # what we wait for may need one of those
        blocked = lends_cpu and self.kind == "worker" and self.context.name != "idle"
        if blocked:
            self.tx.send(p.Blocked(self.context.task_id))
        try:
            self._check_broken()  # the agent may have died before the waiter was filed
            # A worker's tasks' thread never leads: a cancel it read would interrupt itself
            # (a signal) while it files other answers.
            inbox = self.inbox if threading.current_thread() is threading.main_thread() \
                else None
            if inbox is not None and blocked:
                ready = inbox.wait_blocked(waiter.event, timeout)
            elif inbox is not None:
                ready = waiter.event.wait(timeout)
            else:
                ready = self._leader.wait(waiter.event, timeout)
            if not ready:
                if raise_on_timeout:
                    raise GetTimeoutError(
                        f"get timed out after {timeout}s: {waiter.remaining} of "
                        f"{len(set(ids))} objects not ready yet (e.g. {missing[0].hex()})")
            self._check_broken()
        finally:
            self.objects.end_wait(waiter)
            if blocked:
                self.tx.send(p.Unblocked(self.context.task_id))


_FEW_READY = 8  # wait(): ready refs found by position below this many, else each tested

# How long a worker waits for its task's arguments before it lends out its CPU.
_FETCH_HOLDS_CPU_S = 0.2


def _unhandled_error_text(error: bytes | None) -> str:
    try:
        value = deserialize(error or b"")
    except Exception as exc:  # the error's class may not exist in this process
        value = f"(could not be deserialised here: {exc!r})"
    return f"unhandled error from a task whose result was never retrieved: {value}"
