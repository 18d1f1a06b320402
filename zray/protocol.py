"""Every wire message of zray, defined once, encoded one way, validated on receipt.

Layout of one message (after any routing frames)::

    2 bytes   version (PROTOCOL_VERSION), op code (the message class's ``op``)
    n bytes   pickle (protocol 5) of the tuple of the message's field values

in one ZeroMQ frame: each frame of a multipart message is a separate send, and sends
dominate a small message's cost. A message with a large ``bytes`` field (``LARGE_FIELD_BYTES``
and up, e.g. a task carrying a big argument; also inside a Batch's items) goes as header,
pickle, then each such field in a frame of its own, out of band (pickle protocol 5): it is
handed to the socket as it is, not copied into the pickle.

Field values are plain data only (bytes, str, int, float, bool, None, and lists, tuples and
dicts of those). Decoding unpickles with a loader that refuses every global, so a frame can
not name a class or function to run; it then checks the field count and each field's
top-level type. A frame that fails any check raises ``ProtocolError``; process loops log it
and drop it, never crash. User values travel inside ``bytes`` fields, already serialised
by ``zray.objects.serialization``.

Object locations travel as the tuple ``Location = (object_id, data, offset, size, is_error)``:
``data`` holds the serialised value when it is inline, else None and the value lives at
``offset`` in the node's mmap store; an ``offset`` of -1 with no data means "ready on
another node": its reader asks its own agent, which pulls a copy (zray/node/transfer.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import operator
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import zmq

PROTOCOL_VERSION = 6

Location = tuple  # (object_id: bytes, data: bytes | None, offset: int, size: int, is_error: bool)


class ProtocolError(ValueError):
    """A frame that is not a valid zray message of this protocol version."""


class MessageTooLarge(ValueError):
    """A message with a frame over ``max_frame_bytes``: every zray socket disconnects a
    peer that sends one (ZMQ_MAXMSGSIZE), so senders refuse it first (``encode``)."""


class Message:
    op: ClassVar[int]
    _types: ClassVar[tuple[tuple[type, ...], ...]]
    _values: ClassVar[Callable[[Any], Any]]  # the field values, in order


_BY_OP: dict[int, type[Message]] = {}
_HEADERS: dict[int, bytes] = {}


M = TypeVar("M", bound=type)


def message(op: int) -> Callable[[M], M]:
    """Register a frozen dataclass as the wire message with this op code."""

    def register(cls: M) -> M:
        if op in _BY_OP:
            raise RuntimeError(f"op {op} is used by both {_BY_OP[op].__name__} and {cls.__name__}")
        cls.op = op  # type: ignore[attr-defined]
        fields = dataclasses.fields(cls)
        cls._types = tuple(_runtime_types(str(f.type)) for f in fields)  # type: ignore[attr-defined]
        cls._values = operator.attrgetter(*(f.name for f in fields))  # type: ignore[attr-defined]
        _BY_OP[op] = cls
        _HEADERS[op] = bytes((PROTOCOL_VERSION, op))
        return cls

    return register


_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "bytes": (bytes,), "str": (str,), "int": (int,), "bool": (bool,), "float": (float, int),
    "list": (list,), "dict": (dict,), "tuple": (tuple,), "None": (type(None),),
}


def _runtime_types(annotation: str) -> tuple[type, ...]:
    """``"bytes | None"`` -> ``(bytes, NoneType)``: field annotations are plain names (read
    as strings, which is cheaper at import than typing.get_type_hints)."""
    return tuple(t for part in annotation.split("|") for t in _PLAIN_TYPES[part.strip()])


# --- client (driver or worker) <-> node agent --------------------------------------------


@message(1)
@dataclass(frozen=True, slots=True)
class Register(Message):
    """First message of a client, sent from its receiving socket so the agent can route to it."""

    worker_id: bytes
    pid: int
    kind: str  # "driver", "worker", or "observer" (only asks: ``zray status``)
    job_id: bytes
    log_to_driver: bool
    namespace: str  # a driver's namespace for named actors


@message(2)
@dataclass(frozen=True, slots=True)
class Registered(Message):
    node_id: bytes
    agent_pid: int
    store_path: str
    store_size: int
    resources: dict
    mesh: dict = dataclasses.field(default_factory=dict)  # a cluster's node: host, token


@message(3)
@dataclass(frozen=True, slots=True)
class ExportFunction(Message):
    function_id: bytes
    name: str
    blob: bytes


@message(4)
@dataclass(frozen=True, slots=True)
class SubmitTask(Message):
    task_id: bytes
    job_id: bytes
    function_id: bytes
    name: str
    args: bytes  # serialised (args, kwargs) with top-level refs replaced by placeholders
    deps: list  # object ids of the top-level ref arguments, in placeholder order
    contained: list  # object ids of refs nested inside the arguments
    num_returns: int
    resources: dict  # {"CPU": 1.0, "GPU": 0.0, "custom": 2.0}
    max_retries: int
    retry_filter: bytes  # b"" none, b"*" any exception, else pickled tuple of classes
    actor_id: bytes  # b"" for a plain task; else the actor this creates or calls
    actor_options: dict  # only when creating an actor: name, namespace, max_restarts, ...
    direct: bool  # the owner sent it itself (a lease, an actor's worker): the agent records
    # and pins, and expects the results
    sent_to: bytes  # a direct actor call: the actor's worker it went to (b"" otherwise)
    parent: bytes  # the task (or driver) that submitted it: the GCS row, the timeline's flows
    # Its owner runs it again to rebuild a result lost with a node: the agent answers with
    # Rebuild, naming the arguments that are gone too, before the owner sends it to a worker.
    rebuild: bool = False
    placement: dict = field(default_factory=dict)  # its placement group (zray.util's)
    runtime_env: str = ""  # resolved (zray/runtime_env.py): the workers it may run on


@message(5)
@dataclass(frozen=True, slots=True)
class ExecuteTask(Message):
    task_id: bytes
    job_id: bytes
    function_id: bytes
    name: str
    args: bytes
    deps: list  # Locations of the top-level ref arguments, in placeholder order
    num_returns: int
    retry_filter: bytes
    gpu_ids: list
    function_blob: bytes | None  # sent with the first task of a function to each worker
    attempt: int
    actor_id: bytes  # b"" for a plain task
    actor_options: dict  # only for an actor's creation (its __init__)
    owner: bytes  # b"": sent by the agent; else the owner that sent it on a lease
    placement: dict = field(default_factory=dict)  # its placement group, as in SubmitTask


@message(6)
@dataclass(frozen=True, slots=True)
class TaskDone(Message):
    """A worker finished a task; store-backed results were created and sealed before."""

    task_id: bytes
    attempt: int
    results: list  # Locations of the return values (inline ones carry their data)
    contained: list  # object ids of refs nested inside the return values
    retryable: bool  # the task raised an exception that its retry_filter accepts
    owner: bytes  # a direct task's owner (the worker reports to both); b"" otherwise
    seconds: float  # how long it ran: its owner sends short tasks ahead, several at once
    pid: int  # the worker process that ran it (0: it never ran)
    error: str  # "Type: message" of the exception it raised ("" if none), for the GCS row
    started: float  # when it started, by the worker's wall clock (0.0: it never ran)
    node: bytes = b""  # the node it ran on, if not its owner's: results left there
    # >= 0: not the end but the value a generator yielded item-th, now, in ``results``
    # (object return_object_id(task_id, item + 1): zray/generators.py)
    item: int = -1


@message(7)
@dataclass(frozen=True, slots=True)
class Blocked(Message):
    """The worker's task waits in get(): release its CPU so other tasks can run."""

    task_id: bytes


@message(8)
@dataclass(frozen=True, slots=True)
class Unblocked(Message):
    task_id: bytes


@message(9)
@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Send ObjectsReady for each of these objects once it is ready (at once if it is).

    ``for_get``: the caller will read the values (an error then counts as handled);
    ``wait`` subscribes without it."""

    object_ids: list
    for_get: bool


@message(10)
@dataclass(frozen=True, slots=True)
class ObjectsReady(Message):
    locations: list  # Locations


@message(11)
@dataclass(frozen=True, slots=True)
class PutObject(Message):
    """An inline object made by put() or by a task's caller-side serialisation."""

    object_id: bytes
    data: bytes
    contained: list


@message(12)
@dataclass(frozen=True, slots=True)
class CreateObject(Message):
    request_id: int
    object_id: bytes
    size: int
    owner: bytes  # who holds it once made (a direct task's owner); b"": the requester


@message(13)
@dataclass(frozen=True, slots=True)
class ObjectCreated(Message):
    request_id: int
    offset: int  # -1 when the store could not fit it; then ``error`` says why
    error: str


@message(14)
@dataclass(frozen=True, slots=True)
class SealObject(Message):
    object_id: bytes
    contained: list
    is_error: bool


@message(15)
@dataclass(frozen=True, slots=True)
class RefsChanged(Message):
    """This process started (added) or stopped (released) holding refs to these objects."""

    added: list
    released: list


@message(16)
@dataclass(frozen=True, slots=True)
class LogLines(Message):
    prefix: str
    stream: str  # "stdout" or "stderr"
    lines: list


@message(17)
@dataclass(frozen=True, slots=True)
class Notice(Message):
    """Something the driver's user should read: an infeasible task, an unhandled error."""

    text: str
    error: bytes | None  # a serialised error nobody retrieved; the driver formats it


@message(18)
@dataclass(frozen=True, slots=True)
class Disconnect(Message):
    """A clean goodbye; with ``stop_cluster`` the agent also stops (private clusters)."""

    stop_cluster: bool


@message(19)
@dataclass(frozen=True, slots=True)
class QueryAgent(Message):
    """Ask the agent: "resources", "store", "gcs" (its links to the shards), or "actor"
    (``args``: name, namespace)."""

    request_id: int
    what: str
    args: dict


@message(20)
@dataclass(frozen=True, slots=True)
class AgentReply(Message):
    request_id: int
    body_json: str


@message(21)
@dataclass(frozen=True, slots=True)
class KillActor(Message):
    actor_id: bytes
    no_restart: bool


@message(22)
@dataclass(frozen=True, slots=True)
class CancelTask(Message):
    """Cancel the task that makes this object: dequeue it, interrupt it, or kill it."""

    object_id: bytes
    force: bool


@message(23)
@dataclass(frozen=True, slots=True)
class CancelRunning(Message):
    """Agent to worker: interrupt this task if it is still the one running."""

    task_id: bytes


# --- leases and direct tasks (zray/leasing.py, zray/node/leases.py) --------------------


@message(24)
@dataclass(frozen=True, slots=True)
class RequestLease(Message):
    """Owner to agent: a worker for tasks of this function and shape, when one fits."""

    lease_id: bytes
    job_id: bytes
    name: str
    resources: dict
    strategy: dict  # {} default, {"spread": True}, {"node": hex id, "soft": bool}
    near: list  # ids of the first task's largest arguments in a store: run where they are
    runtime_env: str = ""  # its tasks', resolved (zray/runtime_env.py)


@message(25)
@dataclass(frozen=True, slots=True)
class LeaseGranted(Message):
    lease_id: bytes
    worker_id: bytes  # send ExecuteTask to its task socket (launcher.direct_endpoint "t")
    gpu_ids: list
    remote: bool  # a worker of another node (its agents relay: send more tasks ahead)
    addresses: dict = dataclasses.field(default_factory=dict)  # its TCP sockets: "t", "d"


@message(26)
@dataclass(frozen=True, slots=True)
class ReturnLease(Message):
    """Owner to agent: the worker is free again; ``kill``: stop it (a forced cancel)."""

    lease_id: bytes
    kill: bool


@message(27)
@dataclass(frozen=True, slots=True)
class LeaseLost(Message):
    """Agent to owner: the leased worker died; what it was running did not finish."""

    lease_id: bytes
    pid: int
    how: str
    node_died: bool = False  # the worker's whole node: its tasks fail with NodeDiedError


@message(28)
@dataclass(frozen=True, slots=True)
class ReturnIdleLeases(Message):
    """Agent to owner: work is waiting for resources; give back every lease not in use."""

    reason: str


@message(29)
@dataclass(frozen=True, slots=True)
class Batch(Message):
    """Several messages in one frame (``batch``/``unbatch``): deferred notices and reports
    to the agent, tasks sent together to a worker, answers sent together to an owner. Each
    item is ``(op, field values)``."""

    items: list


def batch(messages: list[Message]) -> Batch:
    return Batch([(m.op, _values_of(m)) for m in messages])


def is_message(frames: list[bytes], cls: type[Message]) -> bool:
    """Whether ``frames`` (after any routing frame) hold a ``cls`` of this protocol, by its
    header alone (what to decode, or pass on undecoded)."""
    return bool(frames) and frames[0][:2] == _HEADERS[cls.op]


def name_of(op: int) -> str:
    """The name of the message with op code ``op``."""
    cls = _BY_OP.get(op)
    return cls.__name__ if cls is not None else f"op{op}"


def one_or_batch(messages: list[Message]) -> Message:
    """What to send for ``messages`` (at least one): the message itself, or a Batch."""
    return messages[0] if len(messages) == 1 else batch(messages)


def unbatch(msg: Batch) -> list[Message]:
    """The messages in a Batch, each checked as ``decode`` checks one; raises ProtocolError."""
    out = []
    for item in msg.items:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not int:
            raise ProtocolError("Batch: each item must be (op, field values)")
        cls = _BY_OP.get(item[0])
        if cls is None or cls is Batch:
            raise ProtocolError(f"Batch: op {item[0]} cannot be batched")
        out.append(_build(cls, item[1]))
    return out


@message(35)
@dataclass(frozen=True, slots=True)
class ActorAddress(Message):
    """Agent to caller: send this actor's calls straight to its worker's task socket
    (``worker_id`` b"": the actor is restarting or dead, send them through the agent)."""

    actor_id: bytes
    worker_id: bytes
    gpu_ids: list
    addresses: dict = dataclasses.field(default_factory=dict)  # its TCP sockets: "t", "d"


@message(37)
@dataclass(frozen=True, slots=True)
class CallsReported(Message):
    """Caller to agent, answering ActorAddress with no worker: every answer it has from the
    worker that is gone went before this (as TaskDone reports), and ``unsent`` are calls whose
    notices went but that it never sent that worker. The agent settles the rest."""

    actor_id: bytes
    unsent: list


@message(38)
@dataclass(frozen=True, slots=True)
class Rejected(Message):
    """Agent to client: a message of yours (its op code, ``of``) could not be used, and why
    (an unknown id, a value out of range): it was dropped and changed nothing."""

    of: int
    reason: str


@message(39)
@dataclass(frozen=True, slots=True)
class TaskStarted(Message):
    """Worker to agent: a task sent on a lease has been running since ``started`` (wall
    clock); sent only for one still running after a moment, so ``zray inspect`` shows it
    RUNNING (the agent hears of a leased task otherwise only when it is done)."""

    task_id: bytes
    attempt: int
    started: float


@message(40)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """To a node's mesh socket, first: a node joining the cluster (``node_id`` empty: one
    asking where the cluster's GCS is), with what it speaks; answered by Welcome, or by
    Rejected naming the mismatch."""

    node_id: bytes
    zray_version: str
    protocol: int


@message(41)
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Node to a node that said Hello: who it is, and where the cluster's GCS is."""

    node_id: bytes
    cluster: str  # the head's HOST:PORT
    gcs: list  # the shards' ROUTER endpoints, in shard order
    gcs_publish: list  # their PUB endpoints


@message(42)
@dataclass(frozen=True, slots=True)
class Relayed(Message):
    """Agent to agent, over the mesh: the message in the frames after this one is for
    ``target`` (zray/node/relay.py): ``kind`` "lease" (an owner's lease request or
    return, to the agent of the worker's node), "t" or "d" (to a worker's task or direct
    socket, there), "owner" or "d" (back to the owner: from its agent, or to its direct
    socket), "log" (output for the drivers of the owner's job), "objects" (node to node:
    pulls, chunks and ref counts of objects, ``target`` empty), "groups" (node to node:
    placement groups' bundles, ``target`` empty)."""

    target: bytes
    kind: str


@message(43)
@dataclass(frozen=True, slots=True)
class LeaseRefused(Message):
    """Agent to owner: no node may ever grant this lease (its strategy names a node that
    is dead or unknown): the tasks waiting for it fail with ``error`` (serialised)."""

    lease_id: bytes
    error: bytes


@message(44)
@dataclass(frozen=True, slots=True)
class ClusterResized(Message):
    """Agent to its clients: the cluster's resources changed (a node joined or left):
    owners ask for as many leases as it now has CPUs."""

    resources: dict


@message(45)
@dataclass(frozen=True, slots=True)
class Credit(Message):
    """Node to node: I have handled ``count`` more of your messages on this connection;
    you may send as many more (zray/mesh/window.py). Outside the window itself."""

    count: int


@message(46)
@dataclass(frozen=True, slots=True)
class PullObject(Message):
    """Node to node: send me ``size`` bytes of this object from ``offset`` (a chunk of a
    copy I am making; zray/node/transfer.py)."""

    object_id: bytes
    offset: int
    size: int


@message(47)
@dataclass(frozen=True, slots=True)
class ObjectChunk(Message):
    """Node to node, the answer to a PullObject: ``data`` is the object's bytes from
    ``offset`` of ``total``; the first chunk also names the refs the value holds (lent to
    the puller with it). ``error`` (text): there is no such object here. ``redirect``: I
    have no copy; pull it from that node (where I borrowed it from)."""

    object_id: bytes
    offset: int
    total: int
    data: bytes
    is_error: bool
    contained: list
    error: str
    redirect: bytes


@message(48)
@dataclass(frozen=True, slots=True)
class Unborrow(Message):
    """Node to node: of the refs to these objects you handed my node, I give back this
    many each (nothing here holds them any more; zray/node/object_table.py)."""

    object_ids: list
    counts: list


@message(49)
@dataclass(frozen=True, slots=True)
class ForgetCopies(Message):
    """Node to node: these objects, of which you pulled a copy from me, are freed here:
    drop your copy once nothing of yours uses it."""

    object_ids: list


@message(50)
@dataclass(frozen=True, slots=True)
class Listening(Message):
    """Worker to its agent: my sockets on TCP, for owners and callers on other nodes
    (``addresses``: "t" tasks, "d" answers and cancels)."""

    addresses: dict


@message(51)
@dataclass(frozen=True, slots=True)
class Introduce(Message):
    """Owner to a worker of another node, first on a TCP connection: answer me at
    ``addresses["d"]``; objects I lend you are on node ``node_id``."""

    client_id: bytes
    node_id: bytes
    addresses: dict


@message(52)
@dataclass(frozen=True, slots=True)
class Fetch(Message):
    """Worker to its agent: send me these objects once here; they are on ``node`` (its
    owner's, which sent the task over TCP), to pull from."""

    object_ids: list
    node: bytes


@message(53)
@dataclass(frozen=True, slots=True)
class LendObjects(Message):
    """Worker to its agent: these results of mine go to ``holder`` on node ``node``:
    lend them to that node (before the answer leaves)."""

    object_ids: list
    node: bytes
    holder: bytes


@message(54)
@dataclass(frozen=True, slots=True)
class Rebuild(Message):
    """Agent to owner: these results of your tasks had their only copy on a node that
    died, and something needs them: run their tasks again (from your lineage). With a
    ``task_id``: the answer to that task's SubmitTask(rebuild=True), naming its arguments
    that are gone too (none: it may go)."""

    task_id: bytes
    object_ids: list


@message(55)
@dataclass(frozen=True, slots=True)
class Unrebuildable(Message):
    """Owner to its agent: these objects cannot be rebuilt; ``error`` is their value."""

    object_ids: list
    error: bytes


@message(56)
@dataclass(frozen=True, slots=True)
class ReleaseBlocks(Message):
    """Agent to a process holding these objects: the store needs their blocks (they go
    to disk). Stop using the locations you have; answer which you still map (a live
    zero-copy view: those stay)."""

    object_ids: list


@message(57)
@dataclass(frozen=True, slots=True)
class BlocksReleased(Message):
    """A process to its agent, after every message it deferred before (a task's notice
    that pins its arguments comes first): it no longer uses the blocks of ``released``;
    ``in_use`` it still maps."""

    released: list
    in_use: list


@message(58)
@dataclass(frozen=True, slots=True)
class ReserveBundles(Message):
    """A placement group's coordinator to a node (zray/node/placement_groups.py): hold
    these bundles of the group (their indexes in it), all or none."""

    group_id: bytes
    indexes: list
    bundles: list


@message(59)
@dataclass(frozen=True, slots=True)
class BundlesReserved(Message):
    """A node to a group's coordinator: it holds the bundles asked (``error`` empty), or
    none of them, and why."""

    group_id: bytes
    error: str


@message(60)
@dataclass(frozen=True, slots=True)
class CommitBundles(Message):
    """A group's coordinator to a node holding bundles: every node holds its own; make
    them usable (under the group's resource names)."""

    group_id: bytes


@message(61)
@dataclass(frozen=True, slots=True)
class ReleaseBundles(Message):
    """A group's coordinator to a node holding bundles: give them back (the group was
    removed, or another node refused its own)."""

    group_id: bytes


@message(62)
@dataclass(frozen=True, slots=True)
class ActorRepr(Message):
    """An actor's worker to its agent: the instance's ``repr()``, made once it exists (its
    class defines ``__repr__``): what its output lines are labelled with."""

    actor_id: bytes
    text: str  # at most ACTOR_LABEL_CHARS


ACTOR_LABEL_CHARS = 200


@message(36)
@dataclass(frozen=True, slots=True)
class Processed(Message):
    """Agent to client: it has handled this many deferred messages of yours (one Batch);
    a client keeps at most so many unhandled (AgentSender.wait_for_room)."""

    count: int


@message(34)
@dataclass(frozen=True, slots=True)
class NotStarted(Message):
    """Worker to owner: these tasks sent on a lease were not started (the one before them
    blocked); run them elsewhere."""

    task_ids: list


# --- node agent <-> broker shard ------------------------------------------------------


@message(30)
@dataclass(frozen=True, slots=True)
class TableBatch(Message):
    """Rows to upsert (``fields`` None deletes); acknowledged once in the write-ahead log.

    A row is ``(table, key, fields_json, blob)``: ``fields_json`` is a JSON object that
    ``zray inspect`` can show without user code, ``blob`` optional opaque bytes. A node's
    batches to a shard are numbered 1, 2, ... (``seq``); the shard stores them in that
    order only (go-back-N): it acknowledges a batch it stored before again, and answers a
    batch after a gap (it lost some, restarting) with the ack of the last one it stored,
    which makes the sender resend from the gap.
    """

    seq: int
    node_id: bytes
    rows: list


@message(31)
@dataclass(frozen=True, slots=True)
class BatchAck(Message):
    """The shard has stored every batch of this node up to ``seq``."""

    seq: int


@message(32)
@dataclass(frozen=True, slots=True)
class Query(Message):
    """The newest ``limit`` rows of ``table`` (0: all), or only the row of ``key``."""

    request_id: int
    table: str
    limit: int
    key: bytes  # b"": every key


@message(33)
@dataclass(frozen=True, slots=True)
class QueryReply(Message):
    request_id: int
    rows: list  # (key, fields_json, blob, time first inserted): the newest that fit one reply
    stats: dict  # the shard's: {"dropped_tasks": older tasks not kept, "bad_rows": ...}


# The messages that may go as several, each with part of these lists: they mean the same
# split (a Batch's items are independent messages; the others list independent things).
_SPLIT_FIELDS: dict[type[Message], tuple[str, ...]] = {
    Batch: ("items",), ObjectsReady: ("locations",), Subscribe: ("object_ids",),
    RefsChanged: ("added", "released"), LogLines: ("lines",), NotStarted: ("task_ids",),
}

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enum flags
# cost an enum construction per ``&``, on a path taken for every message


def has_input(socket: Any) -> bool:
    """Whether a message waits on the socket: a flag read, where ``socket.poll(0)`` would
    build a poller per call (it showed at the top of the agent's profile)."""
    return bool(socket.getsockopt(_EVENTS) & _POLLIN)


def send_rejected(router: Any, identity: bytes, msg: Message, reason: str) -> None:
    """Answer ``msg``, from ``identity`` on a ROUTER socket, with Rejected; never blocks,
    never raises (the peer may be gone, or never listening)."""
    try:
        send(router, Rejected(msg.op, reason), identity, zmq.NOBLOCK)
    except zmq.ZMQError:
        pass


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise ProtocolError(f"message frame names a global ({module}.{name}); refused")


def plain_loads(data: bytes) -> Any:
    """Unpickle plain data only (no global may be named); ProtocolError (a ValueError) for
    anything else. For bytes that came from outside this process: frames, a log file."""
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"does not unpickle as plain data: {exc!r}") from exc


def _values_of(msg: Message) -> tuple[Any, ...]:
    values = type(msg)._values(msg)
    if type(values) is not tuple:  # attrgetter of a single field returns the bare value
        values = (values,)
    return values


LARGE_FIELD_BYTES = 64 * 1024  # a field this big travels in a frame of its own, and is
# received as a view of it (here and on a lane, zray/lane.py), not copied

# The bound on every frame, sent or received, in this process: ``bounded_context`` sets it
# from the config of the cluster this process belongs to (one per process).
_max_frame_bytes = 64 * 1024 * 1024


def bounded_context(max_frame_bytes: int) -> zmq.Context:
    """A ZeroMQ context whose sockets disconnect a peer that sends a frame over
    ``max_frame_bytes`` (before it is read into memory), and the same bound for ``encode``."""
    global _max_frame_bytes
    _max_frame_bytes = max_frame_bytes
    context = zmq.Context()
    context.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    return context


def encode(msg: Message) -> list[Any]:
    """The frames of ``msg``; raises MessageTooLarge if one is over the frame bound."""
    values = _values_of(msg)
    if not _has_large(values, type(msg) is Batch):
        frame = _HEADERS[msg.op] + pickle.dumps(values, protocol=5)
        if len(frame) > _max_frame_bytes:
            raise _too_large(msg, len(frame))
        return [frame]
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(_out_of_band(values, type(msg) is Batch), protocol=5,
                        buffer_callback=buffers.append)
    frames = [_HEADERS[msg.op], body, *(buffer.raw() for buffer in buffers)]
    largest = max(map(len, frames))
    if largest > _max_frame_bytes:
        raise _too_large(msg, largest)
    return frames


def _too_large(msg: Message, size: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"a {type(msg).__name__} message has a frame of {size:,} bytes, over the bound of "
        f"{_max_frame_bytes:,} (max_frame_bytes; ZRAY_MAX_FRAME_BYTES raises it for a cluster)")


def send(socket: Any, msg: Message, route: bytes | None = None, flags: int = 0) -> None:
    """Send ``msg`` (after a ROUTER's ``route`` frame), in several messages if it is too
    large for one and its lists may be split (``_SPLIT_FIELDS``); else MessageTooLarge."""
    try:
        frames = encode(msg)
    except MessageTooLarge:
        parts = _split(msg)
        if parts is None:
            raise
        for part in parts:
            send(socket, part, route, flags)
        return
    # A message of one frame is small: copied, which costs less than wrapping it in a
    # zmq.Frame; large fields (frames of their own) go uncopied.
    copy = len(frames) == 1
    socket.send_multipart(frames if route is None else [route, *frames], flags, copy=copy)


def _split(msg: Message) -> list[Message] | None:
    """``msg`` as several messages that mean the same, each smaller; None if it is one."""
    fields = _SPLIT_FIELDS.get(type(msg), ())
    filled = [name for name in fields if getattr(msg, name)]
    replace: Any = dataclasses.replace  # (typed for dataclass instances; a Message is one)
    with_: Callable[..., Message] = functools.partial(replace, msg)
    if len(filled) > 1:  # one message per list (RefsChanged: the added ones first)
        return [with_(**{other: [] for other in fields if other != name}) for name in filled]
    if not filled or len(getattr(msg, filled[0])) < 2:
        return None
    items = getattr(msg, filled[0])
    half = len(items) // 2
    return [with_(**{filled[0]: items[:half]}), with_(**{filled[0]: items[half:]})]


def _is_large(value: Any) -> bool:
    return type(value) is bytes and len(value) >= LARGE_FIELD_BYTES


def _batch_fields(item: Any) -> tuple[Any, ...]:
    """A Batch item's field values (none if the item is malformed: decode refuses it)."""
    if type(item) is tuple and len(item) == 2 and type(item[1]) is tuple:
        return item[1]
    return ()


def _has_large(values: tuple[Any, ...], is_batch: bool) -> bool:
    if is_batch:
        return any(_is_large(v) for item in values[0] for v in _batch_fields(item))
    return any(_is_large(v) for v in values)


def _out_of_band(values: tuple[Any, ...], is_batch: bool) -> tuple[Any, ...]:
    if is_batch:
        return ([(item[0], _out_of_band(item[1], False)) if _batch_fields(item) else item
                 for item in values[0]],)
    return tuple(pickle.PickleBuffer(v) if _is_large(v) else v for v in values)


def received(frames: list[Any]) -> list[Any]:
    """Frames received with ``copy=False`` as ``decode`` takes them: small ones as bytes,
    large ones (big arguments) as read-only views of the frame, not copied again."""
    return [frame.buffer if len(frame) >= LARGE_FIELD_BYTES else frame.bytes for frame in frames]


def decode(frames: list[Any]) -> Message:
    """The message in ``frames``; raises ProtocolError for anything malformed."""
    if len(frames) == 1 and len(frames[0]) >= 2:
        body: Any = memoryview(frames[0])[2:]
    elif len(frames) >= 2 and len(frames[0]) == 2:
        body = frames[1]  # and out-of-band fields after it
    else:
        raise ProtocolError(f"expected a 2-byte header and a body, got {len(frames)} frames")
    version, op = frames[0][0], frames[0][1]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this process speaks {PROTOCOL_VERSION}")
    cls = _BY_OP.get(op)
    if cls is None:
        raise ProtocolError(f"unknown op {op}")
    try:
        values = _NoGlobals(io.BytesIO(body), buffers=frames[2:]).load()
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"{cls.__name__}: body does not unpickle: {exc!r}") from exc
    return _build(cls, values)


def _build(cls: type[Message], values: Any) -> Message:
    if type(values) is not tuple or len(values) != len(cls._types):
        raise ProtocolError(f"{cls.__name__}: expected {len(cls._types)} fields")
    for value, allowed in zip(values, cls._types, strict=True):
        # (a memoryview stands for bytes: a large field received uncopied, ``received``)
        if not isinstance(value, allowed) and not (type(value) is memoryview
                                                   and bytes in allowed):
            raise ProtocolError(f"{cls.__name__}: field of type {type(value).__name__}")
    return cls(*values)
