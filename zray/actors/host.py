"""An actor's instance inside its dedicated worker, and how its calls run there.

The agent's mailbox decides the order and how many calls run at once; the host only runs
what it is sent:

- ``max_concurrency`` 1: on the worker's main thread, one after another.
- threaded (``max_concurrency`` > 1): on a pool of that many threads ("zray-actor-N").
- async (the class has ``async def`` methods): on one event loop in its own thread
  ("zray-actor-loop"); the agent bounds how many coroutines are in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from zray import protocol as p
from zray.core import CoreClient
from zray.node.execution import Outcome, load_function, run_async, run_sync


class ActorHost:
    def __init__(self, client: CoreClient, creation: p.ExecuteTask) -> None:
        self.client = client
        self.instance: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._report(run_sync(client, creation, lambda: self._construct(creation)))

    def _construct(self, creation: p.ExecuteTask) -> Any:
        assert creation.function_blob is not None, "an actor's creation carries its class"
        cls = load_function(creation.function_blob)
        concurrency = int(creation.actor_options.get("max_concurrency", 1))
        if any(inspect.iscoroutinefunction(f) for _, f in inspect.getmembers(cls, callable)):
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="zray-actor-loop",
                             daemon=True).start()
        elif concurrency > 1:
            self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="zray-actor")
        return lambda *args, **kwargs: self._keep(cls(*args, **kwargs))

    def _keep(self, instance: Any) -> None:
        self.instance = instance

    def run(self, call: p.ExecuteTask) -> None:
        method = getattr(self.instance, call.name, None)
        if self._loop is not None and inspect.iscoroutinefunction(method):
            future = asyncio.run_coroutine_threadsafe(
                run_async(self.client, call, method), self._loop)
            future.add_done_callback(lambda f: self._report(f.result()))
        elif self._loop is not None:  # a plain method of an async actor runs on its loop
            self._loop.call_soon_threadsafe(self._run_and_report, call)
        elif self._pool is not None:
            self._pool.submit(self._run_and_report, call)
        else:
            self._run_and_report(call)

    def _run_and_report(self, call: p.ExecuteTask) -> None:
        self._report(run_sync(self.client, call, lambda: self._method(call.name)))

    def _method(self, name: str) -> Any:
        method = getattr(self.instance, name, None)
        if method is None:
            raise AttributeError(f"{type(self.instance).__name__} has no method {name!r}")
        return method

    def _report(self, outcome: Outcome) -> None:
        done, results = outcome
        sys.stdout.flush()
        sys.stderr.flush()
        self.client.send(done)
        del results  # refs inside the results stay held until TaskDone has pinned them
