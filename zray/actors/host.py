"""An actor's instance inside its dedicated worker, and how its calls run there.

Calls arrive on the worker's task socket, from the agent's mailbox or straight from their
callers (zray/actors/caller.py), and start in the order they arrive; the host keeps to
``max_concurrency`` itself:

- ``max_concurrency`` 1: on the worker's main thread, one after another.
- threaded (``max_concurrency`` > 1): on a pool of that many threads ("zray-actor-N").
- async (the class has ``async def`` methods): on one event loop in its own thread
  ("zray-actor-loop"), at most ``max_concurrency`` coroutines at once.

An actor's ``concurrency_groups`` ({name: size}) make it threaded (if not async): a method
marked ``@zray.method(concurrency_group=name)`` runs on that group's own pool (or within
its own bound of coroutines); the rest share the default group of ``max_concurrency``.

Calls may arrive ahead of their turn (a pipeline); each kind above starts them in the order
they arrive, and a call cancelled before it starts is answered with TaskCancelledError.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

from zray import protocol as p
from zray.actors.handle import GROUP_ATTR, READY_METHOD, is_async
from zray.core import CoreClient
from zray.exceptions import TaskCancelledError
from zray.exported import load_function
from zray.node import execution
from zray.node.execution import Outcome, fail, run_async

if TYPE_CHECKING:  # imported when an actor needs them: most workers never host one
    import asyncio
    from concurrent.futures import ThreadPoolExecutor


class ActorHost:
    def __init__(self, client: CoreClient, creation: p.ExecuteTask) -> None:
        self.client = client
        self.instance: Any = None
        # By concurrency group ("": the default, of max_concurrency): a threaded actor's
        # pools, an async actor's bounds on its coroutines
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._cancelled: set[bytes] = set()
        self._coroutines: dict[bytes, asyncio.Task[Outcome]] = {}  # running async calls
        client.actor_placement = creation.placement  # (its methods run in its group too)
        self._report(execution.run_sync(client, creation, lambda: self._construct(creation)))
        if self.instance is not None and type(self.instance).__repr__ is not object.__repr__:
            try:
                label = repr(self.instance)[:p.ACTOR_LABEL_CHARS]
            except Exception:  # (a broken __repr__ leaves the class name as the label)
                label = ""
            if label:
                client.tx.send(p.ActorRepr(creation.task_id, label))

    def _construct(self, creation: p.ExecuteTask) -> Any:
        assert creation.function_blob is not None, "an actor's creation carries its class"
        cls = load_function(creation.function_blob)
        options = creation.actor_options
        groups = {"": int(options.get("max_concurrency", 1)),
                  **options.get("concurrency_groups", {})}
        if any(is_async(f) for _, f in inspect.getmembers(cls, callable)):
            import asyncio

            self._loop = asyncio.new_event_loop()
            self._slots = {group: asyncio.Semaphore(size) for group, size in groups.items()}
            threading.Thread(target=self._loop.run_forever, name="zray-actor-loop",
                             daemon=True).start()
        elif groups[""] > 1 or len(groups) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pools = {group: ThreadPoolExecutor(size, thread_name_prefix=(
                f"zray-actor-{group}" if group else "zray-actor"))
                for group, size in groups.items()}
        return lambda *args, **kwargs: self._keep(cls(*args, **kwargs))

    def _keep(self, instance: Any) -> None:
        self.instance = instance

    def cancel(self, task_id: bytes) -> None:
        """From the I/O thread: drop this call if it has not started yet; a running async
        call gets CancelledError raised in its coroutine (a running sync one is not
        interrupted: it may check ``get_runtime_context().is_canceled()``)."""
        self._cancelled.add(task_id)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_coroutine, task_id)

    def _cancel_coroutine(self, task_id: bytes) -> None:
        coroutine = self._coroutines.get(task_id)
        if coroutine is not None:
            coroutine.cancel()

    def run(self, call: p.ExecuteTask) -> None:
        method = getattr(self.instance, call.name, None)
        if self._loop is not None and is_async(method):
            self._loop.call_soon_threadsafe(self._start_coroutine, call, method)
        elif self._loop is not None:  # a plain method of an async actor runs on its loop
            self._loop.call_soon_threadsafe(self._run_and_report, call)
        elif self._pools:
            self._pools[getattr(method, GROUP_ATTR, "")].submit(self._run_and_report, call)
        else:
            self._run_and_report(call)

    def _start_coroutine(self, call: p.ExecuteTask, method: Any) -> None:
        """On the actor's loop: run the call as an asyncio task, which a cancel cancels."""
        assert self._loop is not None
        coroutine = self._loop.create_task(self._run_async(call, method))
        self._coroutines[call.task_id] = coroutine
        coroutine.add_done_callback(lambda done: self._coroutine_done(call, done))

    def _coroutine_done(self, call: p.ExecuteTask, done: asyncio.Task[Outcome]) -> None:
        self._coroutines.pop(call.task_id, None)
        self._report(self._cancelled_outcome(call) if done.cancelled() else done.result())

    async def _run_async(self, call: p.ExecuteTask, method: Any) -> Outcome:
        try:
            async with self._slots[getattr(method, GROUP_ATTR, "")]:
                if call.task_id in self._cancelled:
                    return self._cancelled_outcome(call)
                return await run_async(self.client, call, method)
        except BaseException as exc:  # the caller still gets an answer
            if call.task_id in self._cancelled:  # (its CancelledError, from zray.cancel)
                return self._cancelled_outcome(call)
            return self._ended(call, exc)

    def _run_and_report(self, call: p.ExecuteTask) -> None:
        if call.task_id in self._cancelled:
            self._report(self._cancelled_outcome(call))
            return
        try:
            outcome = execution.run_sync(self.client, call, lambda: self._method(call.name))
        except BaseException as exc:  # SystemExit in a pool thread must not lose the reply
            if not self._pools and self._loop is None:
                raise  # on the main thread it ends the actor's process, as in Ray
            outcome = self._ended(call, exc)
        self._report(outcome)

    def _ended(self, call: p.ExecuteTask, exc: BaseException) -> Outcome:
        return fail(self.client, call, RuntimeError(f"{call.name}() ended with {exc!r}")), []

    def _cancelled_outcome(self, call: p.ExecuteTask) -> Outcome:
        self._cancelled.discard(call.task_id)
        error = TaskCancelledError(f"{call.name}() was cancelled with zray.cancel()")
        return fail(self.client, call, error), []

    def _method(self, name: str) -> Any:
        if name == READY_METHOD:
            return _ready
        method = getattr(self.instance, name, None)
        if method is None:
            raise AttributeError(f"{type(self.instance).__name__} has no method {name!r}")
        return method

    def _report(self, outcome: Outcome) -> None:
        """The caller gets its answer at once, from whichever thread ran the call."""
        self._cancelled.discard(outcome[0].task_id)  # a cancel that came too late
        execution.hand_in(self.client, outcome)


def _ready() -> bool:
    return True
