"""The public API: init, shutdown, remote, get, put, wait, and the cluster queries.

Only light modules are imported here; the runtime (``zray.core`` and what it needs: ZeroMQ,
the protocol, cloudpickle) is imported where it is used. ``init`` starts the node agent
first and imports the runtime while the agent's interpreter starts up.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zray.config import Config
from zray.ids import driver_task_id, new_job_id
from zray.node.launcher import LocalCluster
from zray.node.resources import default_store_size, node_resources
from zray.runtime_env import check

if TYPE_CHECKING:
    from zray.actors.handle import ActorHandle
    from zray.broker.reader import TableView
    from zray.context import ZrayContext
    from zray.core import CoreClient
    from zray.mesh.records import ClusterRecord
    from zray.objects.refs import ObjectRef
    from zray.runtime_context import RuntimeContext

_lock = threading.RLock()
_cluster: LocalCluster | None = None  # this driver's private cluster, or
_joined: ClusterRecord | None = None  # the cluster it joined
_config = Config()
_context: ZrayContext | None = None  # what init returned, until shutdown

# Ray's init() arguments that only change cosmetics: accepted (so ported code runs
# unchanged), with a notice the first time...
_COSMETIC_RAY_KWARGS = {"include_dashboard", "dashboard_host", "dashboard_port",
                        "configure_logging", "logging_level", "logging_format",
                        "logging_config", "log_to_stderr"}
# ...and those that change behaviour, which zray does not honour: refused when set.
_UNHONOURED_RAY_KWARGS = {
    "_temp_dir": "session directories go under $TMPDIR: set that instead",
    "local_mode": "tasks always run in worker processes; debug one with zray inspect",
    "job_config": "pass runtime_env= and namespace= to init() instead",
    "_system_config": "zray's settings are ZRAY_* environment variables (zray/config.py)",
    "storage": "zray has no cluster storage: write to a shared file system",
    "labels": "node labels are not built; use custom resources= instead",
}
_noticed: set[str] = set()


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict[str, float] | None = None,
         object_store_memory: int | None = None, namespace: str | None = None,
         log_to_driver: bool = True, ignore_reinit_error: bool = False,
         runtime_env: dict[str, Any] | None = None, _gcs_shards: int = 1,
         **ray_kwargs: Any) -> ZrayContext:
    """Start a private local cluster for this driver (``address`` None or "local"), or join
    a running one through its node on this machine (``address`` "auto": the newest
    cluster here; or a node's HOST:PORT; ``ZRAY_ADDRESS`` when not given). ``_gcs_shards``:
    a private cluster's GCS shard processes (each key lives in one). ``runtime_env``:
    what this driver's tasks and actors run with (zray/runtime_env.py). Returns Ray's
    context object (zray/context.py)."""
    global _cluster, _config, _context
    _check_ray_kwargs(ray_kwargs)
    runtime_env = check(runtime_env or {})
    with _lock:
        if _current() is not None:
            if ignore_reinit_error and _context is not None:
                return _context
            raise RuntimeError("zray.init() was already called; call zray.shutdown() first, "
                               "or pass ignore_reinit_error=True")
        address = address or os.environ.get("ZRAY_ADDRESS") or "local"
        if type(_gcs_shards) is not int or _gcs_shards < 1:
            raise ValueError(f"_gcs_shards must be an int >= 1, got {_gcs_shards!r}")
        _config = Config.from_env()
        if address != "local":
            given = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
                     "object_store_memory": object_store_memory}
            if any(value is not None for value in given.values()):
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus, resources "
                    "and object_store_memory must not be provided: the cluster's nodes "
                    "were given theirs by `zray node start`")
            return _join(address, namespace, log_to_driver, runtime_env)
        store_size = object_store_memory or default_store_size(_config)
        total = node_resources(num_cpus, num_gpus, resources, "zray.init()", store_size)
        cluster = LocalCluster.start(total, store_size, _config, _gcs_shards)
        client = None
        try:  # whatever fails from here on, the cluster started goes, and its files
            from zray import core  # while the agent starts

            if cluster.warning:
                print(f"zray: {cluster.warning}", file=sys.stderr, flush=True)
            client = _connect(cluster.endpoint, namespace, log_to_driver,
                              cluster.why_not_running)
            cluster.start_gcs()
            client.runtime_envs.set_own(runtime_env)
        except BaseException:
            if client is not None:
                client.close()
            cluster.agent.kill()
            cluster.stop()
            raise
        _cluster = cluster
        core.set_current(client)
        atexit.register(shutdown)
        from zray.broker.layout import endpoints

        _context = _context_of(client, cluster.endpoint, "127.0.0.1", cluster.session,
                               cluster.endpoint, endpoints(cluster.session, _gcs_shards))
        return _context


def _check_ray_kwargs(ray_kwargs: dict[str, Any]) -> None:
    unknown = set(ray_kwargs) - _COSMETIC_RAY_KWARGS - set(_UNHONOURED_RAY_KWARGS)
    if unknown:
        names = ", ".join(sorted(unknown))
        raise TypeError(f"zray.init() got unknown keyword argument(s): {names}")
    for name, value in ray_kwargs.items():
        if name in _UNHONOURED_RAY_KWARGS and value not in (None, False):
            raise ValueError(f"zray.init({name}={value!r}) is not supported by zray: "
                             f"{_UNHONOURED_RAY_KWARGS[name]}")
        if name in _COSMETIC_RAY_KWARGS and name not in _noticed:
            _noticed.add(name)
            print(f"zray: init({name}=...) changes only cosmetics in Ray; zray accepts it "
                  "and ignores it", file=sys.stderr, flush=True)


def _join(address: str, namespace: str | None, log_to_driver: bool,
          runtime_env: dict[str, Any]) -> ZrayContext:
    """Connect this driver to a running cluster, through its node on this machine
    (``address``: "auto", the head's, or any of its nodes')."""
    from zray import core
    from zray.mesh.records import find_cluster, local_node

    global _joined, _context
    _joined = find_cluster(address)
    node = local_node(_joined, address)
    client = _connect(node.endpoint, namespace, log_to_driver,
                      lambda: "" if node.alive() else f"the node at {node.address} stopped")
    try:
        client.runtime_envs.set_own(runtime_env)
    except BaseException:
        client.close()
        raise
    core.set_current(client)
    atexit.register(shutdown)
    _context = _context_of(client, _joined.address, node.address.rpartition(":")[0],
                           node.session, node.endpoint, _joined.gcs)
    return _context


def _context_of(client: CoreClient, address: str, ip: str, session: str, endpoint: str,
                gcs: list[str]) -> ZrayContext:
    """``init``'s answer: where this driver is connected, in Ray's keys."""
    from zray.context import ZrayContext

    return ZrayContext({
        "address": address, "node_ip_address": ip, "raylet_ip_address": ip,
        "node_id": client.node_id.hex(), "session_dir": session,
        "raylet_socket_name": endpoint, "gcs_address": ",".join(gcs), "webui_url": None,
        "metrics_export_port": None, "redis_address": None})


def _connect(endpoint: str, namespace: str | None, log_to_driver: bool,
             why_not_running: Callable[[], str]) -> CoreClient:
    """A driver's client of the agent at ``endpoint``, registered, with a new job."""
    from zray import core
    from zray.specs import TaskContext

    job_id = new_job_id()
    client = core.CoreClient(endpoint, "driver", job_id, _config, log_to_driver)
    client.namespace = namespace or f"anonymous-{job_id.hex()}"
    client.context = TaskContext(driver_task_id(job_id), "driver", job_id)
    client.explain_agent_death = why_not_running
    try:
        client.connect(_config.startup_timeout_s, why_not_running)
    except BaseException:
        client.close()
        raise
    return client


def shutdown() -> None:
    """Stop the private cluster: no process, socket or shared-memory file stays behind."""
    global _cluster, _joined, _context
    with _lock:
        client = _current()
        _context = None
        if client is None:
            return
        from zray import core

        core.set_current(None)
        client.close(stop_cluster=_cluster is not None)  # (a driver that joined leaves it)
        if _cluster is not None:
            _cluster.stop()
            _cluster = None
        _joined = None


def is_initialized() -> bool:
    return _current() is not None


def _current() -> CoreClient | None:
    core = sys.modules.get("zray.core")  # not imported yet: not initialised either
    return core.current() if core is not None else None



def client_for_call() -> CoreClient:
    """The process's runtime; a driver that never called init() gets a private cluster."""
    client = _current()
    if client is None:
        init()
        client = _current()
        assert client is not None
    return client


def default_max_retries() -> int:
    return _config.default_max_retries


def remote(*args: Any, **options: Any) -> Any:
    """``@zray.remote`` or ``@zray.remote(num_cpus=2, ...)`` on a function."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@zray.remote takes either no arguments or only keyword options, "
                        "e.g. @zray.remote(num_cpus=2)")
    return lambda target: _make_remote(target, options)


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    from zray.actors.handle import ActorClass
    from zray.remote_function import RemoteFunction

    if isinstance(target, type):
        return ActorClass(target, options)
    return RemoteFunction(target, options)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor; ValueError if there is none by that name."""
    from zray.actors.handle import ActorHandle

    found = client_for_call().query("actor", name=name, namespace=namespace or "")
    if "error" in found:
        raise ValueError(found["error"])
    return ActorHandle(bytes.fromhex(found["actor_id"]), found["class_name"], found["methods"])


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop the actor now; later calls raise ActorDiedError (unless it may restart)."""
    from zray import protocol as p
    from zray.actors.handle import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise ValueError(f"zray.kill() takes an actor handle, got {type(actor).__name__}")
    client = client_for_call()
    client.actor_calls.forget(actor.actor_id)
    client.tx.send(p.KillActor(actor.actor_id, no_restart))


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task making ``ref``: dequeue it, interrupt it, or (force) kill its worker."""
    from zray.generators import ObjectRefGenerator
    from zray.objects.refs import ObjectRef

    if isinstance(ref, ObjectRefGenerator):  # (its task: what it yielded so far stays)
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise ValueError(f"zray.cancel() takes an ObjectRef or an ObjectRefGenerator, got "
                         f"{type(ref).__name__}")
    client_for_call().cancel(ref.id, force)


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The values of the refs (blocking); a list in, a list out, in the same order."""
    from zray.objects.refs import ObjectRef

    single = isinstance(object_refs, ObjectRef)
    refs = [object_refs] if single else object_refs
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, ObjectRef) for r in refs):
        bad = next((r for r in refs if not isinstance(r, ObjectRef)), refs) \
            if isinstance(refs, (list, tuple)) else refs
        raise ValueError(f"zray.get() takes an ObjectRef or a list of ObjectRefs, got "
                         f"{type(bad).__name__}: did you call f(...) instead of f.remote(...)?")
    _check_timeout(timeout)
    values = client_for_call().get(list(refs), timeout)  # type: ignore[arg-type]
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store ``value`` once; the ref can be read by any task."""
    from zray.objects.refs import ObjectRef

    if isinstance(value, ObjectRef):
        raise TypeError("zray.put() of an ObjectRef is not allowed; pass the ref itself")
    return client_for_call().put(value)


def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1,
         timeout: float | None = None, fetch_local: bool = True
         ) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """``(ready, not_ready)``: both in input order; at most ``num_returns`` ready.
    ``fetch_local``: ready means a copy is on this node (pulled meanwhile), as in Ray;
    False: made anywhere (a result of this process's own task, made on another node,
    is not pulled)."""
    from zray.generators import ObjectRefGenerator
    from zray.objects.refs import ObjectRef

    # Checked with C-speed loops: wait() is called in loops over long lists of refs.
    refs_only = isinstance(object_refs, (list, tuple)) and all(
        map(isinstance, object_refs, itertools.repeat(ObjectRef)))
    if not refs_only and not (isinstance(object_refs, (list, tuple)) and all(
            isinstance(r, (ObjectRef, ObjectRefGenerator)) for r in object_refs)):
        raise TypeError("zray.wait() takes a list of ObjectRefs (or ObjectRefGenerators)")
    if not object_refs:  # as Ray: before num_returns is checked against the (empty) list
        _check_timeout(timeout)
        return [], []
    if not isinstance(num_returns, int) or num_returns < 0 or num_returns > len(object_refs):
        raise ValueError(f"num_returns={num_returns!r} must be an int between 0 and the number "
                         f"of refs ({len(object_refs)})")
    _check_timeout(timeout)
    if not refs_only:
        return _wait_with_generators(list(object_refs), num_returns, timeout, fetch_local)
    return client_for_call().wait(list(object_refs), num_returns, timeout, fetch_local)


def _wait_with_generators(waitables: list[Any], num_returns: int, timeout: float | None,
                          fetch_local: bool) -> tuple[list[Any], list[Any]]:
    """``wait`` over refs and generators: a generator is ready once its next item is
    (or its end)."""
    from zray.generators import ObjectRefGenerator

    client = client_for_call()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        refs = [w for w in waitables if not isinstance(w, ObjectRefGenerator)]
        ready_refs = set(client.wait(refs, len(refs), 0, fetch_local)[0]) if refs else set()
        ready = [w for w in waitables if (w.next_ready() or w.is_finished()
                                          if isinstance(w, ObjectRefGenerator)
                                          else w in ready_refs)][:num_returns]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if len(ready) >= num_returns or left == 0.0:
            return ready, [w for w in waitables if w not in ready]
        pending = [object_id for w in waitables if w not in ready for object_id in (
            w._pending_ids() if isinstance(w, ObjectRefGenerator) else [w.id])]
        client.wait_ids(pending, left)


def get_gpu_ids() -> list[int]:
    """The GPUs assigned to the running task (CUDA_VISIBLE_DEVICES is set to them)."""
    return list(client_for_call().context.gpu_ids)


def cluster_resources() -> dict[str, float]:
    return dict(client_for_call().query("resources")["total"])


def available_resources() -> dict[str, float]:
    available = client_for_call().query("resources")["available"]
    return {k: v for k, v in available.items() if v > 1e-9}


def nodes() -> list[dict[str, Any]]:
    """Every node of the cluster, as Ray lists them (dead ones too, ``Alive`` False)."""
    listed = []
    for node in client_for_call().query("nodes")["nodes"]:
        host, _, port = node["address"].rpartition(":")
        host = host or "127.0.0.1"  # (a private cluster's node has no TCP address)
        listed.append({"NodeID": node["node_id"], "Alive": node["alive"],
                       "NodeManagerAddress": host, "NodeManagerPort": int(port or 0),
                       "Resources": {**node["resources"], f"node:{host}": 1.0}})
    return listed


def get_runtime_context() -> RuntimeContext:
    """Where the calling driver, task or actor runs (Ray's ``get_runtime_context``)."""
    from zray.runtime_context import RuntimeContext

    return RuntimeContext(client_for_call())


def store_stats() -> dict[str, Any]:
    """The node's object store: bytes in use, capacity, live objects, arena path."""
    return dict(client_for_call().query("store"))


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """This cluster's tasks as a Chrome trace (zray/tracing.py), as in Ray: the list of
    events, or written to ``filename`` (then None). Open it in Perfetto."""
    from zray import tracing as trace

    events = trace.events_of([fields for _, fields, _ in read_table("tasks").rows])
    if filename is None:
        return events
    trace.write(events, filename)
    return None


def read_table(table: str) -> TableView:
    """A GCS table of this driver's cluster: its private cluster's (live, or from the
    logs), or the running GCS of the cluster it joined."""
    from zray.broker.reader import read_live, read_session

    client_for_call()  # (raises if zray is not initialised)
    if _cluster is not None:
        return read_session(_cluster.session, table, None, _config.max_task_history)
    assert _joined is not None
    return read_live(_joined.gcs_address(_config.encrypt_loopback), table, None,
                     _joined.address)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout={timeout!r} must be None or a number of seconds >= 0")
