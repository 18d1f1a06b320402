"""Errors the agent stores as task results or tells the driver, worded in one place.

Each message names what failed (task, object, pid) and says what to check next.
"""

from __future__ import annotations

import pickletools

from zray import protocol as p
from zray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
    TaskCancelledError,
    WorkerCrashedError,
    ZrayError,
)
from zray.ids import is_put_object, return_object_id, short
from zray.objects.serialization import deserialize, pickled_part, serialize
from zray.objects.store import Allocator


def as_results(task_id: bytes, num_returns: int, error: bytes) -> list[tuple[object, ...]]:
    """Every result of the task is ``error`` (the Locations of a task that fails unrun)."""
    return [(return_object_id(task_id, i), error, 0, len(error), True)
            for i in range(num_returns)]


def unrun_answer(task_id: bytes, attempt: int, results: list[tuple[object, ...]],
                 owner: bytes = b"") -> p.TaskDone:
    """The answer of a task that ends without (another) run, its ``results`` errors: what
    its caller waits for in place of a worker's."""
    return p.TaskDone(task_id, attempt, results, [], False, owner, 0.0, 0, "", 0.0)


def any_error(results: list[tuple[object, ...]]) -> bool:
    """Whether a task's results (Locations) hold an error: the task ended FAILED."""
    return any(location[4] for location in results)


def _payload(error: Exception) -> bytes:
    return serialize(error).to_bytes()


def node_died(name: str, how: str, max_retries: int) -> bytes:
    return _payload(NodeDiedError(
        f"task {name}() was running on a node that died ({how}), and it was already retried "
        f"{max_retries} time(s) (max_retries={max_retries}); raise max_retries to run it "
        "elsewhere when a node dies"))


def worker_crashed(name: str, pid: int, how: str, max_retries: int) -> bytes:
    return _payload(WorkerCrashedError(
        f"the worker running {name}() (pid={pid}) {how}, and the task was already retried "
        f"{max_retries} time(s) (max_retries={max_retries}). Check for a segfault in native "
        "code, a call to os._exit, or the kernel's OOM killer (dmesg); raise max_retries if "
        "the crash is transient."
    ))


def object_lost(object_id: bytes, needed_by: str) -> bytes:
    return _payload(ObjectLostError(
        f"object {short(object_id)} needed by {needed_by} no longer exists: every reference "
        "to it was dropped before it was read. Keep the ObjectRef alive until the value is "
        "no longer needed."
    ))


def placement_group_removed(group_hex: str) -> bytes:
    return _payload(ZrayError(f"placement group {group_hex[:16]} was removed before it was "
                              "ready"))


def spill_file_unreadable(object_id: bytes, path: str, exc: OSError) -> bytes:
    return _payload(ObjectLostError(
        f"object {short(object_id)} was spilled to {path}, which cannot be read back: "
        f"{exc}. Something removed or damaged the node's spill directory while the "
        "cluster ran (object_spill_dir)."
    ))


def infeasible_text(name: str, demand: dict[str, float], total: dict[str, float]) -> str:
    wants = ", ".join(f"{k}={v:g}" for k, v in sorted(demand.items()) if v > 0)
    has = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()))
    return (f"task {name}() asks for {{{wants}}} but no node can ever provide it (this node "
            f"has {{{has}}}); it stays pending. Lower its num_cpus/num_gpus/resources, or "
            "start zray with more (zray.init(num_cpus=..., resources={...})).")


def store_full_text(size: int, allocator: Allocator, disk: str) -> str:
    """``disk``: what the spill directory holds and may hold (zray/node/spilling.py)."""
    mb = 2**20
    return (f"the object store cannot fit an object of {size / mb:.1f} MB: "
            f"{allocator.in_use / mb:.1f} MB of {allocator.capacity / mb:.1f} MB are in use by "
            f"live objects (largest free block {allocator.largest_free() / mb:.1f} MB) that "
            f"cannot go to disk now (tasks read them, or zero-copy views map them), and {disk}. "
            "Drop ObjectRefs and views you no longer need, or pass a larger "
            "object_store_memory (or object_spill_max_bytes) to zray.init().")


def actor_died(call: str, cause: str) -> bytes:
    return _payload(ActorDiedError(
        f"the actor cannot run {call}(): it is dead because {cause}. Create a new actor, or "
        "give it max_restarts (and max_task_retries) to survive process deaths."
    ))


def actor_unschedulable(why: str) -> bytes:
    return _payload(ActorUnschedulableError(f"the actor can be placed on no node: {why}"))


def owner_died(name: str, pid: int) -> bytes:
    return _payload(OwnerDiedError(
        f"{name}() was submitted by a process (pid={pid}) that exited before the task "
        "finished, so its result is lost. A task's result lives as long as the process "
        "that called .remote(); keep it alive until its results are read."
    ))


def lost_with_node(object_id: bytes, node: bytes) -> bytes:
    """An object whose only copy was on a node that left, and which no owner here can
    rebuild: a put's owner went with it (as in Ray, OwnerDiedError); a task's result whose
    owner is elsewhere (its owner's node rebuilds its own copy, not this one)."""
    where = f"node {node.hex()[:16]}, which left the cluster"
    if is_put_object(object_id):
        return _payload(OwnerDiedError(
            f"object {short(object_id)} was put by a process on {where}: its owner died "
            "with its only copy. Return values instead of refs to puts made in tasks, or "
            "keep a copy on a node that lives (zray.get it here first)."))
    return _payload(ObjectLostError(
        f"object {short(object_id)} had its only copy on {where}, and this node does not "
        "own it (its owner's node rebuilds it): pass the ref from its owner again, or run "
        "the task that made it again"))


def owner_gone_with_lineage(object_id: bytes) -> bytes:
    return _payload(OwnerDiedError(
        f"object {short(object_id)} had its only copy on a node that died, and the process "
        "that owns it (it submitted its task, and keeps its lineage) exited, so nothing "
        "can rebuild it. Keep the submitting process alive while its results are needed."))


def cannot_rebuild(object_id: bytes, name: str, why: str) -> bytes:
    """An owner's answer for a lost result it cannot rebuild: Ray's errors, by ``why``:
    "evicted" (its lineage was dropped), "attempts" (no retries left), else not its task
    or one whose results are not rebuilt (an actor's call, a put)."""
    what = f"object {short(object_id)} ({name or 'a result'}) had its only copy on a node that died"
    if why == "evicted":
        return _payload(ObjectReconstructionFailedLineageEvictedError(
            f"{what}, and its task's lineage was dropped to keep the owner's lineage under "
            "max_lineage_bytes, so it cannot be rebuilt. Raise max_lineage_bytes "
            "(ZRAY_MAX_LINEAGE_BYTES), or keep fewer results alive at once."))
    if why == "attempts":
        return _payload(ObjectReconstructionFailedMaxAttemptsExceededError(
            f"{what}, and rebuilding it would run {name}() more often than its max_retries "
            "allow. Raise max_retries to rebuild it again."))
    return _payload(ObjectReconstructionFailedError(
        f"{what}; only the results of plain tasks are rebuilt from lineage (not puts, actor "
        "calls, or tasks of another owner). Keep a copy on a node that lives (zray.get it "
        "in the driver), or make it again."))


def cancelled(name: str) -> bytes:
    return _payload(TaskCancelledError(f"{name}() was cancelled with zray.cancel()"))


def describe(payload: bytes) -> str:
    """``Type: message`` of a stored error, read from its pickle without running any of it
    (the agent has not the user's classes, and must not run their code): one of zray's
    own errors, or the importable class of what a task raised, with the first text after
    it. Only the start of the pickle is read; "" if nothing fits (a class pickled by
    value: the worker's TaskDone said what it was)."""
    try:
        pickled = bytes(pickled_part(payload)[:_DESCRIBE_BYTES])
        strings: list[str] = []
        kind, wrapped = "", False
        for op, arg, _ in pickletools.genops(pickled):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                if kind:
                    return f"{kind}: {arg}"[:_DESCRIBE_TEXT]
                strings.append(str(arg))
            elif op.name in ("STACK_GLOBAL", "GLOBAL"):
                module, name = (strings[-2:] if op.name == "STACK_GLOBAL"
                                else str(arg).split()[-2:])
                if name == "_rebuild_task_error":  # a task's error: its cause's class next
                    wrapped = True
                elif name.startswith("_") or not (wrapped or module == "zray.exceptions"):
                    return ""
                else:
                    kind = name
        return kind
    except Exception:  # a truncated or odd pickle: no description
        return ""


_DESCRIBE_BYTES = 64 * 1024
_DESCRIBE_TEXT = 1000


def error_text(data: bytes | None) -> str:
    """A stored error as text (its remote traceback), for errors about errors."""
    try:
        return f"its __init__ raised:\n{deserialize(data or b'')}"
    except Exception as exc:  # the error's class may not exist in the agent
        return f"its __init__ raised an error that cannot be shown here ({exc!r})"


def actor_unavailable(call: str, pid: int, how: str) -> bytes:
    return _payload(ActorUnavailableError(
        f"{call}() was sent to the actor when its process (pid={pid}) {how}; the actor is "
        "restarting, and the call has no retries left (max_task_retries), so it may or may "
        "not have run. Calls made from now on wait for the restart; give the actor "
        "max_task_retries to have such calls run again."
    ))


def unknown_function(name: str, function_id: bytes) -> bytes:
    return _payload(ZrayError(
        f"{name}() names function {short(function_id)}, which was never exported to this "
        "node, so it cannot run. A zray client exports a function before its first task; "
        "this request did not come from one, or came out of order."
    ))
