"""A worker process: runs the tasks its node agent sends, one at a time, on its main thread.

::

    node agent ROUTER <--- tx / rx DEALERs ---> CoreClient (its "zray-io" thread)
                                                   | ExecuteTask, through a queue
                                               main thread: run the task, send TaskDone

Its stdout and stderr are pipes that the agent reads and forwards to the driver, so the
loop flushes both before reporting a task done. If the agent dies the worker exits at once:
nobody is left to take its results.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle

import zray
from zray import core
from zray import protocol as p
from zray.config import Config
from zray.core import CoreClient, Dep, TaskContext
from zray.exceptions import TaskError
from zray.ids import TaskID, return_object_id
from zray.objects.serialization import Serialized, serialize

_ZRAY_DIR = os.path.dirname(os.path.abspath(zray.__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description="zray worker (started by a node agent)")
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()
    config = Config.from_env()
    client = CoreClient(args.endpoint, "worker", b"", config, on_agent_death=lambda: os._exit(1))
    client.connect(config.startup_timeout_s)
    core.set_current(client)
    functions: dict[bytes, Callable[..., Any]] = {}
    while True:
        task = client.tasks.get()
        if task is None:
            break
        done, results = run_task(client, functions, task)
        sys.stdout.flush()
        sys.stderr.flush()
        client.send(done)
        del results  # refs inside the results stay held until TaskDone has pinned them
    client.close()


def run_task(client: CoreClient, functions: dict[bytes, Callable[..., Any]],
             task: p.ExecuteTask) -> tuple[p.TaskDone, list[Any]]:
    """Run one task: its TaskDone, and its return values (keep them until it is sent)."""
    client.context = TaskContext(TaskID(task.task_id), task.name, list(task.gpu_ids))
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, task.gpu_ids))
    contained: list[bytes] = []
    values: list[Any] = []
    try:
        if task.function_blob is not None:
            functions[task.function_id] = load_function(task.function_blob)
        values = _call(client, functions[task.function_id], task)
        results = [_store(client, return_object_id(TaskID(task.task_id), i), serialize(v), False,
                          contained) for i, v in enumerate(values)]
        retryable = False
    except Exception as exc:
        error = _error_payload(exc, task.name)
        results = [_store(client, return_object_id(TaskID(task.task_id), i), error, True, contained)
                   for i in range(task.num_returns)]
        retryable = _should_retry(task.retry_filter, exc)
    finally:
        client.context = TaskContext(TaskID(b""), "idle")
    return p.TaskDone(task.task_id, task.attempt, results, contained, retryable), values


def load_function(blob: bytes) -> Callable[..., Any]:
    """Unpickle an exported function, first adding its driver's import path to ours.

    Functions in importable modules are pickled by reference, so the worker must be able
    to import the driver's modules (a script's directory, a test's rootdir), as in Ray."""
    driver_path, function_blob = pickle.loads(blob)
    sys.path.extend(entry for entry in driver_path if entry not in sys.path)
    return cloudpickle.loads(function_blob)


def _call(client: CoreClient, fn: Callable[..., Any], task: p.ExecuteTask) -> list[Any]:
    from zray.objects.serialization import deserialize

    dep_values = [client.value_of(location) for location in task.deps]
    args, kwargs = deserialize(task.args)
    args = [dep_values[a.index] if isinstance(a, Dep) else a for a in args]
    kwargs = {k: dep_values[v.index] if isinstance(v, Dep) else v for k, v in kwargs.items()}
    result = fn(*args, **kwargs)
    if task.num_returns == 1:
        return [result]
    if not isinstance(result, (tuple, list)) or len(result) != task.num_returns:
        raise ValueError(f"{task.name}() has num_returns={task.num_returns} but returned "
                         f"{type(result).__name__} {result!r:.60}")
    return list(result)


def _store(client: CoreClient, object_id: bytes, ser: Serialized, is_error: bool,
           contained: list[bytes]) -> tuple[Any, ...]:
    location = client.store_value(object_id, ser, is_error)
    if location[1] is not None:  # inline: its refs are pinned through TaskDone
        contained.extend(ser.contained)
    return location


def _error_payload(exc: Exception, name: str) -> Serialized:
    text = remote_traceback(exc)
    try:
        return serialize(TaskError(exc, name, text, os.getpid()))
    except TypeError:  # the exception itself cannot be pickled: keep its text
        return serialize(TaskError(None, name, text, os.getpid()))


def remote_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as the user would write it: zray's own frames left out."""
    info = traceback.TracebackException.from_exception(exc)
    info.stack = traceback.StackSummary.from_list(
        [frame for frame in info.stack if not frame.filename.startswith(_ZRAY_DIR)])
    return "".join(info.format())


def _should_retry(retry_filter: bytes, exc: Exception) -> bool:
    if not retry_filter:
        return False
    if retry_filter == b"*":
        return True
    return isinstance(exc, tuple(cloudpickle.loads(retry_filter)))


if __name__ == "__main__":
    main()
