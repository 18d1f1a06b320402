"""Running one task or actor call inside a worker: arguments in, TaskDone out.

Shared by plain tasks (zray/node/worker.py) and actor calls (zray/actors/host.py). The
return values are handed back with the TaskDone: refs inside them must stay held until the
TaskDone that pins them has been sent.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import zray
from zray import protocol as p
from zray.core import CoreClient
from zray.exceptions import TaskCancelledError, TaskError
from zray.ids import TaskID, return_object_id
from zray.node import failures
from zray.node.output import finish_lines
from zray.objects.arguments import check_ref_count, resolve_arguments
from zray.objects.serialization import Serialized, deserialize, serialize
from zray.specs import TaskContext

_ZRAY_DIR = os.path.dirname(os.path.abspath(zray.__file__))

Outcome = tuple[p.TaskDone, list[Any]]
_ERROR_TEXT = 1000  # characters of an error's "Type: message" in the GCS row...
_TRACEBACK_TEXT = 8000  # ...and of its traceback


def run_sync(client: CoreClient, task: p.ExecuteTask,
             target: Callable[[], Callable[..., Any]]) -> Outcome:
    """Call ``target()(*args)`` for the task; exceptions become its error result."""
    started = _enter(client, task)
    try:
        fn = target()
        args, kwargs = resolve_args(client, task)
        result = fn(*args, **kwargs)
        if task.num_returns == 1 and inspect.isgenerator(result):
            return stream(client, task, result, started), []
        values = split_returns(task, result)
        return finish(client, task, values, started), values
    except Exception as exc:
        return fail(client, task, exc, started), []


async def run_async(client: CoreClient, task: p.ExecuteTask,
                    fn: Callable[..., Awaitable[Any]]) -> Outcome:
    """The same for an ``async def`` actor method, on the actor's event loop."""
    started = _enter(client, task)
    try:
        args, kwargs = resolve_args(client, task)
        result = fn(*args, **kwargs)
        if task.num_returns == 1 and inspect.isasyncgen(result):
            count = 0
            try:
                async for value in result:
                    send_item(client, task, count, value)
                    count += 1
            except Exception as exc:
                return _stream_failed(client, task, count, exc, started), []
            return finish(client, task, [count], started), []
        values = split_returns(task, await result)
        return finish(client, task, values, started), values
    except Exception as exc:
        return fail(client, task, exc, started), []


def _enter(client: CoreClient, task: p.ExecuteTask) -> float:
    """Set up the task's context; returns when it started."""
    started = time.perf_counter()
    client.context = TaskContext(TaskID(task.task_id), task.name, task.job_id,
                                 list(task.gpu_ids), task.attempt, task.actor_id,
                                 task.placement or client.actor_placement)
    if task.owner and not task.actor_id:  # a leased task: the agent hears when it is done
        now = client.last_started = time.monotonic()
        client.running[task.task_id] = [task.attempt, now, time.time(), False]
        client.wake_if_idle()  # (its I/O thread reports it if it runs a while)
    visible = ",".join(map(str, task.gpu_ids))
    if os.environ.get("CUDA_VISIBLE_DEVICES") != visible:  # (a putenv per task otherwise)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return started


def resolve_args(client: CoreClient, task: p.ExecuteTask) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = deserialize(task.args)
    # A stored argument is on another node if it says so (offset -1), or if the task's
    # owner is on another node (it sent its own store's offsets, over TCP).
    home = client.owner_nodes.get(task.owner, b"")
    far = [loc[0] for loc in task.deps if loc[1] is None and (loc[2] < 0 or home)]
    if not far:
        return resolve_arguments(args, kwargs, [client.objects.value_of(loc) for loc in task.deps])
    # Ours pulls them. Held meanwhile, as refs are: a release of the same object by the
    # last task (a view it made) must not cancel this fetch.
    for object_id in far:
        client.refs.borrowed(object_id)
    try:
        client.fetch(far, home)
        while (taken := client.objects.take(far)) is None:  # (one went to disk meanwhile:
            client.fetch(far)  # the agent reads it back)
        fetched = {location[0]: (location, view) for location, view in taken}
        values = [client.objects.value_of(*fetched.get(loc[0], (loc, None)))
                  for loc in task.deps]
    finally:
        for object_id in far:
            client.refs.dropped(object_id)
    return resolve_arguments(args, kwargs, values)


def stream(client: CoreClient, task: p.ExecuteTask, generator: Any,
           started: float) -> p.TaskDone:
    """Run a generator task: each value it yields goes to its owner at once
    (zray/generators.py); the answer is how many it yielded."""
    count = 0
    try:
        for value in generator:
            send_item(client, task, count, value)
            count += 1
    except Exception as exc:
        return _stream_failed(client, task, count, exc, started)
    return finish(client, task, [count], started)


def _stream_failed(client: CoreClient, task: p.ExecuteTask, count: int, exc: Exception,
                   started: float) -> p.TaskDone:
    """The generator raised: the error is its next item, then the stream ends."""
    error = error_payload(exc, task.name, client.config.message_budget)
    location = (return_object_id(task.task_id, count + 1), error.to_bytes(), -1, error.size,
                True)
    _send_item(client, p.TaskDone(task.task_id, task.attempt, [location],
                                  list(error.contained), False, task.owner, 0.0, os.getpid(),
                                  "", 0.0, item=count))
    return dataclasses.replace(finish(client, task, [count + 1], started),
                               error=_error_text(exc))


def send_item(client: CoreClient, task: p.ExecuteTask, index: int, value: Any) -> None:
    """A value a generator yielded: stored (inline if small) and reported at once."""
    ser = serialize(value)
    location = client.store_value(return_object_id(task.task_id, index + 1), ser, False,
                                  task.owner, may_inline=ser.size <= client.config.message_budget)
    contained = list(ser.contained) if location[1] is not None else []
    _send_item(client, p.TaskDone(task.task_id, task.attempt, [location], contained, False,
                                  task.owner, 0.0, os.getpid(), "", 0.0, item=index))


def _send_item(client: CoreClient, item: p.TaskDone) -> None:
    finish_lines()  # (what it printed first is shown first)
    _route(client, item)


def split_returns(task: p.ExecuteTask, result: Any) -> list[Any]:
    if task.num_returns == 1:
        return [result]
    if task.num_returns == 0:
        return []
    if inspect.isgenerator(result):  # (a generator with an int num_returns: all at the end)
        result = list(result)
    if not isinstance(result, (tuple, list)) or len(result) != task.num_returns:
        raise ValueError(f"{task.name}() has num_returns={task.num_returns} but returned "
                         f"{type(result).__name__} {result!r:.60}")
    return list(result)


def finish(client: CoreClient, task: p.ExecuteTask, values: list[Any],
           started: float) -> p.TaskDone:
    """The TaskDone of values returned: small ones inline, while they add up to at most
    the message budget (a thousand returns of 100 KB each go to the store past it)."""
    contained: list[bytes] = []
    results = []
    budget = client.config.message_budget
    for i, value in enumerate(values):
        ser = serialize(value)
        location = client.store_value(return_object_id(task.task_id, i), ser, False,
                                      task.owner, may_inline=ser.size <= budget)
        if location[1] is not None:  # inline: its refs are pinned through TaskDone
            budget -= ser.size
            contained.extend(ser.contained)
        results.append(location)
    if len(contained) > client.config.max_refs_per_value:  # (the text only when needed)
        check_ref_count(len(contained), client.config.max_refs_per_value,
                        f"the return values of {task.name}()")
    seconds = time.perf_counter() - started
    return p.TaskDone(task.task_id, task.attempt, results, contained, False, task.owner,
                      seconds, os.getpid(), "", time.time() - seconds)


def fail(client: CoreClient, task: p.ExecuteTask, exc: Exception,
         started: float | None = None) -> p.TaskDone:
    error = error_payload(exc, task.name, client.config.message_budget)
    # Every return is the same error: one bytes object, which the message pickles once.
    results = failures.as_results(task.task_id, max(1, task.num_returns), error.to_bytes())
    contained = list(error.contained)
    retryable = not isinstance(exc, TaskCancelledError) and should_retry(task.retry_filter, exc)
    seconds = 0.0 if started is None else time.perf_counter() - started
    return p.TaskDone(task.task_id, task.attempt, results, contained, retryable, task.owner,
                      seconds, os.getpid(), _error_text(exc),
                      0.0 if started is None else time.time() - seconds)


def hand_in(client: CoreClient, outcome: Outcome) -> None:
    """Answer a finished task or call: to its owner, who reports it to the agent (the owner
    holds the answer, so the agent's table stays whole whatever happens to this worker).

    Output is flushed first, its lines ended (the agent forwards it). Some answers go to
    the agent, which files them before passing them on (see Agent.on_task_done): a task
    the agent sent itself (no owner); results holding refs or actor handles; and any task
    after which the agent must hear from this worker before it lets go of the task's
    arguments (AgentSender.agent_first: a ref it was given and kept, a task it submitted):
    one connection keeps that order. Refs inside the results stay held until the TaskDone
    that pins them has gone: the caller keeps ``outcome`` until this returns."""
    done = outcome[0]
    client.running.pop(done.task_id, None)
    client.cancelled.discard(done.task_id)
    finish_lines()
    _route(client, done)


def _route(client: CoreClient, done: p.TaskDone) -> None:
    if not done.owner or done.contained or client.tx.agent_first():
        client.tx.send(done)
    elif client.peers.routed(done.owner):  # (an owner on another node, over TCP)
        client.peers.send(done.owner, _lent_to_owner(client, done))
    else:
        client.peers.send(done.owner, done)


def _lent_to_owner(client: CoreClient, done: p.TaskDone) -> p.TaskDone:
    """The answer for an owner on another node: results in our store stay here, lent to
    its node (our agent hears first), "elsewhere" to it (offset -1, on our node)."""
    stored = [loc[0] for loc in done.results if loc[1] is None and loc[2] >= 0]
    if stored:
        client.tx.send(p.LendObjects(stored, client.owner_nodes.get(done.owner, b""),
                                     done.owner))
        done = dataclasses.replace(done, results=[
            (loc[0], None, -1, loc[3], loc[4]) if loc[1] is None else loc
            for loc in done.results])
    return dataclasses.replace(done, node=client.node_id)


def _error_text(exc: BaseException) -> str:
    """``Type: message`` on its first line (short), then the remote traceback's end, as
    valid text (an exception's message may hold anything): for the task's GCS row."""
    head = f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT].replace("\n", " ")
    text = f"{head}\n{remote_traceback(exc)[-_TRACEBACK_TEXT:]}"
    return text.encode("utf-8", "replace").decode("utf-8")


def error_payload(exc: BaseException, name: str, max_bytes: int) -> Serialized:
    """The task's error as it travels (always inline): the exception and its traceback;
    only the text (cut to fit) when the exception cannot be pickled or is over
    ``max_bytes`` (one holding a big array)."""
    text = remote_traceback(exc)
    try:
        ser = serialize(TaskError(exc, name, text, os.getpid()))
        if ser.size <= max_bytes:
            return ser
    except TypeError:  # the exception itself cannot be pickled: keep its text
        pass
    keep = max_bytes // 16  # characters from each end (one takes up to 4 bytes pickled)
    if len(text) > 2 * keep:
        left_out = f"\n... ({len(text) - 2 * keep:,} characters left out) ...\n"
        text = text[:keep] + left_out + text[-keep:]
    return serialize(TaskError(None, name, text, os.getpid()))


def remote_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as the user would write it: zray's own frames left out."""
    info = traceback.TracebackException.from_exception(exc)
    info.stack = traceback.StackSummary.from_list(
        [frame for frame in info.stack if not frame.filename.startswith(_ZRAY_DIR)])
    return "".join(info.format())


def should_retry(retry_filter: bytes, exc: Exception) -> bool:
    if not retry_filter:
        return False
    if retry_filter == b"*":
        return True
    return isinstance(exc, tuple(pickle.loads(retry_filter)))
