"""What the agent checks of a message's content before it acts on it.

zray/protocol.py checks a message's shape (its fields' count and types); this checks what
the fields say, where acting on a wrong value would break the agent later, far from the
message: an id of the wrong length, a resource that is not a finite number, a count out of
range, a string that cannot be written to the GCS. ``content`` returns why a message cannot
be used, or "" if it can; the agent then rejects it (Agent.reject).
"""

from __future__ import annotations

import json
import math
from typing import Any

from zray import protocol as p
from zray.ids import OBJECT_ID_BYTES, TASK_ID_BYTES

MAX_RETURNS = 1 << 16
_WORKER_ID_BYTES = 8
_LEASE_ID_BYTES = _WORKER_ID_BYTES + 8  # the owner's worker id and a counter
_REF = (OBJECT_ID_BYTES, TASK_ID_BYTES)  # a ref inside a value: an object, or an actor handle

# The id fields of each message a client sends the agent: field -> the lengths allowed (a
# list field holds ids of those lengths).
_IDS: dict[type[p.Message], dict[str, tuple[int, ...]]] = {
    p.Register: {"worker_id": (_WORKER_ID_BYTES,)},
    p.ExportFunction: {"function_id": (TASK_ID_BYTES,)},
    p.SubmitTask: {"task_id": (TASK_ID_BYTES,), "deps": (OBJECT_ID_BYTES,), "contained": _REF},
    p.TaskDone: {"task_id": (TASK_ID_BYTES,), "contained": _REF},
    p.Blocked: {"task_id": (TASK_ID_BYTES,)},
    p.TaskStarted: {"task_id": (TASK_ID_BYTES,)},
    p.Unblocked: {"task_id": (TASK_ID_BYTES,)},
    p.Subscribe: {"object_ids": (OBJECT_ID_BYTES,)},
    p.PutObject: {"object_id": (OBJECT_ID_BYTES,), "contained": _REF},
    p.CreateObject: {"object_id": (OBJECT_ID_BYTES,)},
    p.SealObject: {"object_id": (OBJECT_ID_BYTES,), "contained": _REF},
    p.RefsChanged: {"added": _REF, "released": _REF},
    p.KillActor: {"actor_id": (TASK_ID_BYTES,)},
    p.CancelTask: {"object_id": (OBJECT_ID_BYTES,)},
    p.RequestLease: {"lease_id": (_LEASE_ID_BYTES,)},
    p.ReturnLease: {"lease_id": (_LEASE_ID_BYTES,)},
    p.CallsReported: {"actor_id": (TASK_ID_BYTES,), "unsent": (TASK_ID_BYTES,)},
}


def content(msg: p.Message) -> str:
    """Why ``msg`` (from a client) cannot be used, or ""."""
    for field, lengths in _IDS.get(type(msg), {}).items():
        value = getattr(msg, field)
        for one in value if isinstance(value, list) else [value]:
            if type(one) is not bytes or len(one) not in lengths:
                return f"{field}: not an id of {' or '.join(map(str, lengths))} bytes"
    check = _SPECIFIC.get(type(msg))
    return check(msg) if check is not None else ""


def _register(msg: p.Register) -> str:
    if msg.kind not in ("driver", "worker", "observer"):
        return f"kind {msg.kind!r} is not 'driver', 'worker' or 'observer'"
    if not 0 < msg.pid < 1 << 22:  # (the kernel's largest pid_max)
        return f"pid {msg.pid} is not a process id"
    return _text(msg.namespace)


def _submit_task(msg: p.SubmitTask) -> str:
    """(A function never exported is not checked here: such a task fails, so its submitter's
    get says so, as for any task that cannot run.)"""
    if not 0 <= msg.num_returns <= MAX_RETURNS:
        return f"num_returns={msg.num_returns} is not between 0 and {MAX_RETURNS}"
    is_call = bool(msg.actor_id) and not msg.actor_options
    if not is_call and not msg.function_id:
        return "a task or an actor's creation must name its function"
    if msg.actor_id and len(msg.actor_id) != TASK_ID_BYTES:
        return f"an actor id is {TASK_ID_BYTES} bytes, not {len(msg.actor_id)}"
    if msg.parent and len(msg.parent) != TASK_ID_BYTES:
        return f"a parent task id is {TASK_ID_BYTES} bytes, not {len(msg.parent)}"
    if msg.actor_options:
        try:  # (its options go to the GCS as JSON)
            json.dumps(msg.actor_options, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            return f"actor_options cannot be written as JSON text: {exc}"
    return _text(msg.name) or _resources(msg.resources)


def _request_lease(msg: p.RequestLease) -> str:
    return _text(msg.name) or _resources(msg.resources)


def _export_function(msg: p.ExportFunction) -> str:
    return _text(msg.name)


def _task_done(msg: p.TaskDone) -> str:
    for location in msg.results:
        if not (type(location) is tuple and len(location) == 5
                and type(location[0]) is bytes and len(location[0]) == OBJECT_ID_BYTES
                and (location[1] is None or type(location[1]) in (bytes, memoryview))
                and type(location[2]) is int and type(location[3]) is int
                and location[2] >= -1 and location[3] >= 0 and type(location[4]) is bool):
            # (offset -1: ready on another node; see zray.protocol)
            return "results: not a list of (object id, data, offset, size, is_error)"
    return _text(msg.error)


def _create_object(msg: p.CreateObject) -> str:
    return "" if msg.size >= 0 else f"size {msg.size} is negative"


def _resources(resources: dict[Any, Any]) -> str:
    for name, amount in resources.items():
        if not (type(name) is str and type(amount) in (int, float) and math.isfinite(amount)
                and amount >= 0):
            return "resources must map names to finite amounts >= 0"
    return ""


_MAX_TEXT = 1 << 16  # characters of a name (it goes into GCS rows and log lines)


def _text(*strings: str) -> str:
    """A lone surrogate cannot be written as UTF-8 (to the GCS, or a log)."""
    for text in strings:
        if len(text) > _MAX_TEXT:
            return f"a text of {len(text):,} characters (at most {_MAX_TEXT:,})"
        try:
            text.encode()
        except UnicodeEncodeError:
            return f"{text!r} is not valid text"
    return ""


_SPECIFIC: dict[type[p.Message], Any] = {
    p.Register: _register, p.SubmitTask: _submit_task, p.RequestLease: _request_lease,
    p.TaskDone: _task_done, p.CreateObject: _create_object, p.ExportFunction: _export_function,
}


def placement_group(args: dict[str, Any], strategies: tuple[str, ...]) -> str:
    """A create_placement_group query's arguments ("" if they are sound)."""
    bundles, strategy, name = args.get("bundles"), args.get("strategy"), args.get("name")
    if strategy not in strategies:
        return f"strategy {strategy!r} is not one of {', '.join(strategies)}"
    if type(name) is not str or _text(name):
        return f"name {name!r} is not a str"
    if not isinstance(bundles, list) or not bundles or len(bundles) > 10_000:
        return "bundles must be a list of 1 to 10,000 dicts"
    for bundle in bundles:
        if not isinstance(bundle, dict) or not bundle or _resources(bundle):
            return f"bundle {bundle!r} must map resource names to finite amounts >= 0"
        if not any(amount > 0 for amount in bundle.values()):
            return f"bundle {bundle!r} reserves nothing"
    return ""
