"""Fuzzing every socket zray binds (issue 11, item 9).

Thousands of frames, of every message type in zray.protocol, with wrong ids, wrong lengths,
wrong types and wrong versions, go to the agent's ROUTER (as an unregistered peer and as a
registered client), the broker shard's ROUTER, each worker's task (t-) and direct (d-)
sockets and the driver's own d-socket. Afterwards the agent and the shard must be the same
processes, the fuzzed workers too, and a task round trip must work. Every well-formed but
wrong message must get an error reply, but for those rightly answered with silence
(``SILENT``).

The frames come from a seeded ``random.Random`` (``ZRAY_FUZZ_SEED``); ``ZRAY_FUZZ_FRAMES``
sets their number. Three kinds:

- garbage: random bytes, wrong version byte, unknown op, truncated pickles, pickles naming
  globals, wrong field counts, bodies that are no tuple, odd multi-frame layouts;
- well-formed messages of every class (``protocol._BY_OP``), fields of the right types with
  wrong content: unknown ids, empty bytes, huge and negative ints, NaN, random strings (lone
  surrogates among them), lists of wrong-shaped tuples, dicts with odd keys and values;
- well-formed frames whose field values have the wrong types.

Registered fuzz clients give the pid of a helper process (``sleep``) of their own, not the
driver's: a client claiming the driver's pid stops the whole cluster when it leaves
(Agent._drop_client), which is a design question, not something a fuzzer should trip over
by accident. The helpers are killed after fuzzing, so the agent also drops those clients
through their pidfds, with all the state the fuzz left behind.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import math
import os
import pickle
import random
import re
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest
import zmq
from conftest import gcs_shards

import zray
from zray import protocol as p
from zray.node.sessions import ended_sessions_dir

pytestmark = pytest.mark.timeout(180)

SEED = int(os.environ.get("ZRAY_FUZZ_SEED", "20240611"))
FRAMES = int(os.environ.get("ZRAY_FUZZ_FRAMES", "3000"))
# Every process of the fuzzed cluster gets this address-space limit (inherited from the
# driver at init): a message that makes a process allocate without bound (a huge count)
# ends in MemoryError instead of eating the machine's memory.
MEMORY_LIMIT = int(os.environ.get("ZRAY_FUZZ_MEMORY_LIMIT", str(2**30)))

Frames = list[bytes]

# --- values: right types, wrong content -------------------------------------------------

_HUGE_INTS = [2**31, 2**32 + 7, 2**63 - 1, 2**63, -(2**63), 2**64 + 1, 10**30, -(10**30)]
_ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, -1.0]
_ODD_STRS = ["", "\ud800", "\udfff tail", "\x00", "x" * 5000, "ü€😀", "../../etc", "%s%n",
             "driver", "worker", "stdout", "stderr", "resources", "store", "actor",
             "actor_created", "tasks", "objects", "nodes", "nope", " "]


def _bytes(rng: random.Random) -> bytes:
    pick = rng.randrange(10)
    if pick == 0:
        return b""
    if pick == 1:
        return rng.randbytes(16)  # an unknown task id
    if pick == 2:
        return rng.randbytes(20)  # an unknown object id
    if pick == 3:
        return rng.randbytes(8)  # an unknown worker / node id
    if pick == 4:
        return rng.choice([b"*", b"\x00" * 16, b"\xff" * 20, b"r", b"d", b"t"])
    if pick == 5:
        return rng.randbytes(rng.choice([1, 3, 15, 17, 19, 21, 64, 300]))  # wrong lengths
    if pick == 6 and rng.random() < 0.2:
        return rng.randbytes(70_000)  # out of band (protocol.LARGE_FIELD_BYTES)
    if pick == 7:
        return pickle.dumps(rng.choice([(), [], {"a": 1}, ([], {}), None]), protocol=5)
    if pick == 8:
        return b"\x80\x05cbuiltins\neval\n."  # a pickle naming a global (never loaded: it
        # is only a payload, the runtime must treat it as data or refuse it)
    return rng.randbytes(rng.randrange(0, 40))


def _str(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(_ODD_STRS)
    return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 30)))


def _int(rng: random.Random) -> int:
    pick = rng.randrange(4)
    if pick == 0:
        return rng.choice(_HUGE_INTS)
    if pick == 1:
        return rng.choice([-1, -2, 0, 1, 2, 3, 100])
    return rng.randrange(-(2**40), 2**40)


def _float(rng: random.Random) -> float:
    return rng.choice(_ODD_FLOATS) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6)


def _id_list(rng: random.Random) -> list[Any]:
    return [rng.choice([rng.randbytes(20), rng.randbytes(16), b"", rng.randbytes(3)])
            for _ in range(rng.randrange(0, 5))]


def _wrong_shaped(rng: random.Random) -> Any:
    return rng.choice([
        (), (1,), (1, 2), (b"x", None, 0, 0, False), [b"x", None, 0, 0, False],
        (rng.randbytes(20), rng.randbytes(10), 0, 10, False),
        (rng.randbytes(20), None, rng.choice([-1, 0, 4096, 2**40]), rng.choice([0, 7, 2**40]),
         rng.choice([True, False])),
        (None, None, None, None, None), ("tasks", b"k", "{}", None),
        ("tasks", b"k", "\ud800", None), ("nope", b"k", "{}", None), ("tasks", "k", 1, 2),
        (29, ()), (6, (b"", 0, [], [], False, b"", 0.0)), (5,), ("a", "b"),
        1, -1, 2**70, None, "s", b"b", 1.5, math.nan, [[]], {"k": "v"}, [[[[[]]]]],
    ])


def _list(rng: random.Random, name: str) -> list[Any]:
    pick = rng.randrange(4)
    if pick == 0:
        return []
    if pick == 1:
        return _id_list(rng)
    if name == "lines" and pick == 2:
        return [_str(rng) for _ in range(rng.randrange(1, 4))]
    if name == "items" and pick == 2:
        return [_batch_item(rng) for _ in range(rng.randrange(1, 5))]
    if name in ("gpu_ids",) and pick == 2:
        return [rng.choice([0, 1, 7, -1, 2**40, "a\x00", "0"]) for _ in range(rng.randrange(1, 3))]
    return [_wrong_shaped(rng) for _ in range(rng.randrange(1, 4))]


_ODD_DICTS: list[dict[Any, Any]] = [
    {}, {"CPU": 1.0}, {"CPU": -1.0}, {"CPU": math.nan}, {"CPU": math.inf}, {"CPU": -math.inf},
    {"CPU": "x"}, {"CPU": None}, {"CPU": [1]}, {1: 2}, {"GPU": 1.5}, {"GPU": 0.5},
    {"custom": 1e300}, {"CPU": 2**70}, {"": None}, {None: 1}, {(1, 2): 3}, {b"CPU": 1.0},
    {"name": b"x"}, {"name": "n", "namespace": 5}, {"name": [1]}, {"class_name": b"C"},
    {"class_name": "C", "methods": [1]}, {"max_concurrency": "x"}, {"max_restarts": 10**20},
    {"max_task_retries": "y"}, {"lifetime": "detached"}, {"actor_id": "zz"}, {"actor_id": 5},
    {"actor_id": "00" * 16}, {"namespace": None, "name": "x"}, {"class_name": {"a": b"b"}},
]


def _dict(rng: random.Random) -> dict[Any, Any]:
    if rng.random() < 0.8:
        return dict(rng.choice(_ODD_DICTS))
    return {_str(rng): rng.choice([_float(rng), _int(rng), _bytes(rng), None]) for _ in
            range(rng.randrange(1, 4))}


def _value(rng: random.Random, allowed: tuple[type, ...], name: str) -> Any:
    kind = rng.choice(allowed)
    if kind is bytes:
        return _bytes(rng)
    if kind is str:
        return _str(rng)
    if kind is bool:
        return rng.random() < 0.5
    if kind is int:
        return _int(rng)
    if kind is float:
        return _float(rng)
    if kind is list:
        return _list(rng, name)
    if kind is dict:
        return _dict(rng)
    if kind is tuple:
        return _wrong_shaped(rng) if rng.random() < 0.5 else ()
    return None


def field_names(cls: type[p.Message]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


# Plausible values, by field name: a message built from these and then given a few wrong
# fields gets past the first checks of its handler (a plain task, no actor, one return).
_PLAUSIBLE: dict[str, Callable[[random.Random], Any]] = {
    "actor_id": lambda r: b"", "actor_options": lambda r: {}, "direct": lambda r: False,
    "sent_to": lambda r: b"", "owner": lambda r: b"", "function_blob": lambda r: None,
    "retry_filter": lambda r: b"", "num_returns": lambda r: 1,
    "resources": lambda r: {"CPU": 1.0}, "max_retries": lambda r: 0, "deps": lambda r: [],
    "contained": lambda r: [], "args": lambda r: b"", "attempt": lambda r: 0,
    "gpu_ids": lambda r: [], "results": lambda r: [], "retryable": lambda r: False,
    "seconds": lambda r: 0.0, "kind": lambda r: r.choice(["driver", "worker"]),
    "name": lambda r: "f", "job_id": lambda r: r.randbytes(4),
    "function_id": lambda r: r.randbytes(16), "task_id": lambda r: r.randbytes(16),
    "lease_id": lambda r: r.randbytes(16), "object_id": lambda r: r.randbytes(20),
    "worker_id": lambda r: r.randbytes(8), "node_id": lambda r: r.randbytes(8),
    "request_id": lambda r: r.randrange(1, 1000), "size": lambda r: 4096,
    "stop_cluster": lambda r: False, "what": lambda r: r.choice(["resources", "store", "actor"]),
    "args_dict": lambda r: {}, "table": lambda r: "tasks", "limit": lambda r: 10,
    "rows": lambda r: [("tasks", r.randbytes(16), "{}", None)], "seq": lambda r: 1,
    "stream": lambda r: "stdout", "lines": lambda r: ["x"], "prefix": lambda r: "p",
    "text": lambda r: "t", "error": lambda r: None, "count": lambda r: 1,
    "is_error": lambda r: False, "for_get": lambda r: False, "no_restart": lambda r: False,
    "force": lambda r: False, "kill": lambda r: False, "pid": lambda r: os.getpid(),
    "log_to_driver": lambda r: False, "namespace": lambda r: "fuzz",
}


def well_formed(rng: random.Random, cls: type[p.Message]) -> p.Message:
    """A message that decodes (right field types) but says something wrong: every field
    random, or a plausible message with one to three fields wrong."""
    names = field_names(cls)
    values = [_value(rng, allowed, name)
              for allowed, name in zip(cls._types, names, strict=True)]
    if rng.random() < 0.5:
        keep = set(rng.sample(range(len(names)), rng.randrange(1, min(3, len(names)) + 1)))
        for i, name in enumerate(names):
            plausible = _PLAUSIBLE.get(name)
            if i not in keep and plausible is not None:
                value = plausible(rng)
                if isinstance(value, cls._types[i]):
                    values[i] = value
    return cls(*values)


_ANY = [b"", "", 0, 1.5, True, [], {}, (), None, [b"x"], {"a": 1}, 10**30, (b"x", 1)]


def raw(msg: p.Message) -> Frames:
    """``msg`` in one frame as ``encode`` lays it out, whatever its field values are."""
    return [bytes((p.PROTOCOL_VERSION, msg.op)) + pickle.dumps(p._values_of(msg), protocol=5)]


def wrong_types(rng: random.Random, cls: type[p.Message]) -> p.Message:
    """A message of ``cls`` with at least one field of a type it does not allow."""
    msg = well_formed(rng, cls)
    values = list(p._values_of(msg))
    for i in rng.sample(range(len(values)), rng.randrange(1, len(values) + 1)):
        wrong = [v for v in _ANY if not isinstance(v, cls._types[i])]
        values[i] = rng.choice(wrong)
    return cls(*values)


def _batch_item(rng: random.Random) -> Any:
    cls = rng.choice([c for c in p._BY_OP.values() if c is not p.Batch])
    if rng.random() < 0.8:
        return (cls.op, p._values_of(well_formed(rng, cls)))
    return rng.choice([(cls.op,), (cls.op, []), ("op", ()), (p.Batch.op, ([],)), (255, ()),
                       (cls.op, p._values_of(wrong_types(rng, cls)))])


def garbage(rng: random.Random) -> Frames:
    """Frames that are no valid message of this protocol."""
    cls = rng.choice(list(p._BY_OP.values()))
    good = p.encode(well_formed(rng, cls))
    head, body = good[0][:2], b"".join(good)[2:]
    pick = rng.randrange(13)
    if pick == 0:
        return [rng.randbytes(rng.randrange(0, 200))]
    if pick == 1:  # a wrong version
        return [bytes((rng.choice([0, 1, 3, 255]), cls.op)) + body]
    if pick == 2:  # an unknown op
        return [bytes((p.PROTOCOL_VERSION, rng.choice([0, 37, 99, 128, 255]))) + body]
    if pick == 3:  # a truncated pickle
        return [head + body[: rng.randrange(0, max(1, len(body)))]]
    if pick == 4:  # a pickle naming globals
        target = rng.choice([(os.getpid,), (ValueError("x"),), (dataclasses.field,),
                             (print, "x"), (cls,)])
        return [head + pickle.dumps(target, protocol=rng.choice([2, 5]))]
    if pick == 5:  # wrong field counts
        values = p._values_of(well_formed(rng, cls))
        odd = rng.choice([values[:-1], values + (None,), (), values * 2])
        return [head + pickle.dumps(odd, protocol=5)]
    if pick == 6:  # a body that is no tuple
        return [head + pickle.dumps(rng.choice([[1, 2], {"a": 1}, 7, None, b"x", "s"]))]
    if pick == 7:  # header and body split, with extra or missing out-of-band frames
        return rng.choice([[head, body], [head, body, b"extra"], [head], [head, b""],
                           [head + b"\x00", body], [head[:1], body], [b"", b""]])
    if pick == 8:  # out-of-band buffers the pickle does not have
        buffer = pickle.PickleBuffer(b"x" * 10)
        oob = pickle.dumps((buffer,), protocol=5, buffer_callback=lambda b: False)
        return [head, oob]
    if pick == 9:  # a huge declared length
        return [head + b"\x80\x05\x8e" + (2**40).to_bytes(8, "little") + b"xx"]
    if pick == 10:  # many frames
        return [head + body] * rng.randrange(2, 6)
    if pick == 11:  # an empty frame, or only a header
        return rng.choice([[b""], [head], [bytes((p.PROTOCOL_VERSION,))]])
    return [head + rng.randbytes(len(body))]  # random bytes after a valid header


def frames_for(rng: random.Random, kind: str, cls: type[p.Message]) -> Frames:
    if kind == "garbage":
        return garbage(rng)
    if kind == "wrong_types":
        return raw(wrong_types(rng, cls))
    return p.encode(well_formed(rng, cls))


def is_legit_stop(frames: Frames) -> bool:
    """Disconnect(stop_cluster=True) is how a driver stops its private cluster: a fuzzer
    that sends it just stops the cluster."""
    try:
        msg = p.decode(frames)
    except p.ProtocolError:
        return False
    if isinstance(msg, p.Batch):
        return any(type(item) is tuple and len(item) == 2 and item[0] == p.Disconnect.op
                   for item in msg.items)
    return isinstance(msg, p.Disconnect) and msg.stop_cluster


# --- the cluster's sockets and processes ------------------------------------------------


def session() -> str:
    cluster = zray.api._cluster
    assert cluster is not None
    return cluster.session


def children(name: str) -> list[psutil.Process]:
    cluster = zray.api._cluster
    assert cluster is not None
    found = []
    try:
        kids = psutil.Process(cluster.agent.pid).children()
    except psutil.Error:
        return []
    for proc in kids:
        try:
            if name in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def worker_sockets() -> list[str]:
    """Every t- and d-socket in the session: workers', and the driver's own d-socket."""
    return sorted(glob.glob(os.path.join(session(), "t-*.sock"))
                  + glob.glob(os.path.join(session(), "d-*.sock")))


@contextmanager
def memory_limited(limit: int) -> Iterator[None]:
    """Processes started inside inherit an address-space limit of ``limit`` bytes. The
    limit binds this process too while it starts them: it is raised to leave room above
    what this process already maps (its threads' malloc arenas and numpy's, after other
    tests, can pass 1 GiB of address space, most of it never touched)."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = max(limit, mapped + 512 * 2**20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.sent: dict[str, int] = {}
        self.dropped = 0

    def dealer(self, endpoint: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity or self.identity())
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def identity(self) -> bytes:
        return bytes([self.rng.randrange(1, 256)]) + self.rng.randbytes(self.rng.choice([3, 8, 15]))

    def helper_pid(self) -> int:
        helper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        self.helpers.append(helper)
        return helper.pid

    def registered(self, endpoint: str, kind: str,
                   pid: int | None = None) -> tuple[zmq.Socket, bytes]:
        """A DEALER registered with the agent as a client of ``kind``; returns it and its id."""
        client_id = self.rng.randbytes(8)
        sock = self.dealer(endpoint, client_id + b"r")
        pid = self.helper_pid() if pid is None else pid
        sock.send_multipart(p.encode(p.Register(client_id, pid, kind, self.rng.randbytes(4),
                                                False, "fuzz")))
        assert sock.poll(10_000), "the agent did not answer a Register"
        reply = p.decode(sock.recv_multipart())
        assert isinstance(reply, p.Registered), reply
        return sock, client_id

    def send(self, sock: zmq.Socket, frames: Frames, target: str) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            self.sent[target] = self.sent.get(target, 0) + 1
        except zmq.Again:
            self.dropped += 1

    def drain(self) -> None:
        """Read (and forget) whatever came back, so no socket's queue grows."""
        for sock in self.sockets:
            while sock.poll(0):
                sock.recv_multipart()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=500)
        self.context.term()
        for helper in self.helpers:
            helper.kill()
            helper.wait()


def fuzz_frames(rng: random.Random, count: int) -> Iterator[tuple[str, str, Frames]]:
    """``count`` (kind, class name, frames), every class and kind in turn."""
    classes = sorted(p._BY_OP.values(), key=lambda c: c.op)
    kinds = ["well_formed", "well_formed", "wrong_types", "garbage"]
    for i in range(count):
        cls = classes[i % len(classes)]
        kind = kinds[(i // len(classes)) % len(kinds)]
        frames = frames_for(rng, kind, cls)
        if is_legit_stop(frames):
            continue
        yield kind, cls.__name__, frames


def round_trip_works(timeout: float = 30) -> str:
    """"" if a task's round trip works, else what went wrong. In a thread of its own: a
    submit can block for ever (a fake Processed reply leaves the sender no room)."""
    outcome: list[Any] = []

    def trip() -> None:
        try:
            outcome.append(zray.get(zray.remote(lambda: 1).remote(), timeout=timeout))
        except Exception as exc:  # noqa: BLE001  (what failed is the finding)
            outcome.append(exc)

    thread = threading.Thread(target=trip, name="fuzz-round-trip", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if not outcome:
        return f"no answer in {timeout + 5:.0f}s (the submit or the get never returned)"
    if isinstance(outcome[0], Exception):
        return f"{type(outcome[0]).__name__}: {outcome[0]}"
    return "" if outcome[0] == 1 else f"the round trip returned {outcome[0]!r}"


def agent_answers(timeout_s: float = 5.0) -> bool:
    """Whether the agent answers a query within ``timeout_s`` (a wedged agent does not)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    client_id = os.urandom(8)
    sock.setsockopt(zmq.IDENTITY, client_id + b"r")
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{session()}/agent.sock")
        # (the agent's own pid: the driver's is taken, by the driver)
        agent_pid = zray.api._cluster.agent.pid  # type: ignore[union-attr]
        sock.send_multipart(p.encode(p.Register(client_id, agent_pid, "worker", b"",
                                                False, "")))
        if not sock.poll(int(timeout_s * 1000)):
            return False
        sock.recv_multipart()
        sock.send_multipart(p.encode(p.QueryAgent(1, "store", {})))
        return bool(sock.poll(int(timeout_s * 1000)))
    finally:
        sock.close()
        context.term()


def agent_log_path() -> str:
    """The agent's log: in the session directory, or in ZRAY_HOME once the session ended
    (an agent that died took its session down with it)."""
    live = os.path.join(session(), "agent.log")
    if os.path.exists(live):
        return live
    return os.path.join(ended_sessions_dir(), os.path.basename(session()), "agent.log")


def keep_log(tmp_path: Any) -> str:
    """A copy of the agent's log (its session directory goes at shutdown)."""
    kept = os.path.join(str(tmp_path), "agent.log")
    try:
        shutil.copy(agent_log_path(), kept)
    except OSError as exc:
        with open(kept, "w") as f:
            f.write(f"(the agent's log could not be read: {exc})\n")
    return kept


def stop_cluster() -> None:
    """zray.shutdown(), after killing an agent too busy to answer (else shutdown waits)."""
    cluster = zray.api._cluster
    if cluster is not None and cluster.agent.poll() is None and not agent_answers():
        cluster.agent.kill()
    zray.shutdown()


# --- the tests ---------------------------------------------------------------------------


_EXC_LINE = re.compile(r"^(?:\((?P<who>[^)]*?) pid=(?P<pid>\d+)\) )?"
                       r"(?P<exc>[A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)$")


def crashes_in(text: str) -> list[str]:
    """The last line of each traceback in ``text`` (a log, or forwarded worker output)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        prefix = line.split("Traceback")[0]
        handled = i > 0 and "failed to handle" in lines[i - 1]  # the agent caught it
        for later in lines[i + 1:]:
            if later.startswith(prefix) and not later[len(prefix):].startswith(" "):
                body = later[len(prefix):]
                if "Traceback" in body or body.startswith("During handling"):
                    continue
                match = _EXC_LINE.match(later)
                if match:
                    tag = "(caught by the agent) " if handled else ""
                    found.append(f"{tag}{prefix.strip()} {match.group('exc')}"[:300].strip())
                    break
    return found


def wait_for_workers(count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (len(glob.glob(os.path.join(session(), "t-*.sock"))) < count
           and time.monotonic() < deadline):
        time.sleep(0.05)


def test_fuzz_every_socket_leaves_the_cluster_working(tmp_path: Any, capsys: Any) -> None:
    rng = random.Random(SEED)
    with memory_limited(MEMORY_LIMIT):
        zray.init(num_cpus=2, object_store_memory=64 * 2**20)
    fuzzer = Fuzzer(rng)
    problems: list[str] = []
    try:
        assert zray.get(zray.remote(lambda: 0).remote(), timeout=30) == 0
        wait_for_workers(2)
        agent_pid = zray.api._cluster.agent.pid  # type: ignore[union-attr]
        brokers = [proc.pid for proc in gcs_shards()]
        workers = {proc.pid for proc in children("zray.node.worker")}
        assert len(brokers) == 1 and len(workers) == 2
        agent = f"ipc://{session()}/agent.sock"
        broker = f"ipc://{session()}/broker-0.sock"
        direct = worker_sockets()
        assert len(direct) == 5, direct  # two workers' t- and d-sockets, the driver's d-socket

        # The agent gets a third of the frames (from unregistered peers and from registered
        # clients of both kinds), the broker shard and the five direct sockets the rest.
        reg_driver, _ = fuzzer.registered(agent, "driver")
        reg_worker, _ = fuzzer.registered(agent, "worker")
        targets: list[tuple[str, Callable[[], zmq.Socket]]] = [
            ("agent (unregistered peer)", lambda: fuzzer.dealer(agent)),
            ("agent (registered driver)", lambda: reg_driver),
            ("agent (registered worker)", lambda: reg_worker),
            ("broker shard", lambda: fuzzer.dealer(broker)),
        ]
        targets += [(os.path.basename(s), functools.partial(fuzzer.dealer, f"ipc://{s}"))
                    for s in direct]
        peers: dict[str, zmq.Socket] = {}  # a fresh identity every few frames
        for i, (_kind, _name, frames) in enumerate(fuzz_frames(rng, FRAMES)):
            target, make = targets[i % len(targets)]
            if target not in peers or rng.random() < 0.1:
                if target in peers and peers[target] not in (reg_driver, reg_worker):
                    peers[target].close(linger=1000)
                    fuzzer.sockets.remove(peers[target])
                peers[target] = make()
            fuzzer.send(peers[target], frames, target)
            if i % 200 == 199:
                time.sleep(0.05)  # let the receivers keep up
                fuzzer.drain()
        time.sleep(1.0)
        fuzzer.drain()
        # The clients the fuzz registered leave (their helper processes exit): the agent
        # drops them through their pidfds, with whatever they left behind.
        fuzzer.close()
        time.sleep(1.0)

        if zray.api._cluster.agent.poll() is not None:  # type: ignore[union-attr]
            problems.append(f"the agent (pid {agent_pid}) exited")
        elif not agent_answers():
            problems.append(f"the agent (pid {agent_pid}) no longer answers")
        now = [proc.pid for proc in gcs_shards()]
        if now != brokers:
            problems.append(f"the broker shard was pid {brokers}, now {now}")
        client = zray.core.current()
        if client is not None and client._broken:
            problems.append(f"the driver: {client._broken}")
        failure = round_trip_works() if not problems else "not tried"
        if failure:
            problems.append(f"no task round trip after the fuzz: {failure}")
        gone = workers - {proc.pid for proc in children("zray.node.worker")}
        if gone:  # allowed if replaced (the round trip says), but worth knowing
            problems.append(f"fuzzed workers died: {sorted(gone)}")
    finally:
        log = keep_log(tmp_path)
        stop_cluster()
    with open(log, errors="replace") as f:
        agent_log = f.read()
    output = capsys.readouterr()
    crashes = sorted(set(crashes_in(agent_log) + crashes_in(output.err + output.out)))
    assert not problems, (
        f"sent {fuzzer.sent} (dropped {fuzzer.dropped}):\n" + "\n".join(problems)
        + "\n--- tracebacks (the agent's log, the broker's, forwarded worker output):\n"
        + "\n".join(crashes))


# What is rightly answered with silence. The agent: a client that leaves is not answered,
# and Blocked/Unblocked name tasks the scheduler may not know (an actor's call, a direct
# task); well-formed messages about ids it does not know (any more) are what a legitimate
# client sends in a race, and change nothing: a report of a task already settled
# (TaskDone, TaskStarted), a cancel of one that finished, the return of a lease already
# taken back, a subscription to nothing; and a lease request is answered when a worker
# fits it, which may be never (an infeasible one waits, as Ray's tasks do, with a warning
# to its driver). A worker's task socket runs what it is sent (a
# task that cannot run fails to its owner). A direct socket drops answers, cancels and
# hand-backs about tasks it does not know: stale ones are normal (an attempt given up on).
SILENT = {"agent": {"Disconnect", "Blocked", "Unblocked", "TaskStarted", "TaskDone",
                    "CancelTask", "ReturnLease", "Subscribe", "RequestLease"},
          "t-": {"ExecuteTask", "Batch"},
          "d-": {"TaskDone", "Batch", "NotStarted", "CancelRunning"}}


def silent(target: str, name: str) -> bool:
    return any(target.startswith(prefix) and name in names for prefix, names in SILENT.items())


# One well-formed message of each class, with wrong content, sent once from a DEALER of its
# own (registered, at the agent) to every socket zray binds, which must then get a reply.
def test_wrong_messages_get_an_error_reply(tmp_path: Any) -> None:
    rng = random.Random(SEED + 1)
    with memory_limited(MEMORY_LIMIT):
        zray.init(num_cpus=2, object_store_memory=64 * 2**20)
    fuzzer = Fuzzer(rng)
    unanswered: dict[str, list[str]] = {}
    try:
        assert zray.get(zray.remote(lambda: 0).remote(), timeout=30) == 0
        wait_for_workers(2)
        agent = f"ipc://{session()}/agent.sock"
        targets = {"agent": agent, "broker": f"ipc://{session()}/broker-0.sock"}
        for s in worker_sockets():
            targets[os.path.basename(s)] = f"ipc://{s}"
        # Every probe's socket first (registered), then every probe at once:
        # a probe that kills a process leaves the others' replies lost, which shows too.
        probes: list[tuple[str, str, zmq.Socket, Frames]] = []
        for target, endpoint in targets.items():
            for cls in sorted(p._BY_OP.values(), key=lambda c: c.op):
                msg = well_formed(rng, cls)
                if is_legit_stop(p.encode(msg)):
                    msg = p.Disconnect(False)
                if target == "agent":
                    sock, _ = fuzzer.registered(endpoint, "driver")
                else:
                    sock = fuzzer.dealer(endpoint)
                probes.append((target, cls.__name__, sock, p.encode(msg)))
        for target, _, sock, frames in probes:
            fuzzer.send(sock, frames, target)
        # Every probe answered by then (it ends as soon as they are): a worker answers its
        # probes one by one on its main thread, about 45 of them, and on 2 loaded cores
        # (the whole suite, CI) 3 s was seen to run out for the last few.
        deadline = time.monotonic() + 10.0
        for target, name, sock, _ in probes:
            if silent(target, name):
                continue  # (no answer is due: none is waited for)
            if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                unanswered.setdefault(target, []).append(name)
        cluster = zray.api._cluster
        if cluster is not None and cluster.agent.poll() is not None:
            unanswered.setdefault("agent", []).insert(0, "(the agent exited meanwhile)")
        elif unanswered.get("agent") and not agent_answers():
            unanswered["agent"].insert(0, "(the agent stopped answering meanwhile)")
    finally:
        fuzzer.close()
        keep_log(tmp_path)
        stop_cluster()
    assert not unanswered, "well-formed but wrong messages that got no reply:\n" + "\n".join(
        f"{target}: {', '.join(names)}" for target, names in unanswered.items())
