"""Remote generators (Ray's ``ObjectRefGenerator``): each value a task or actor method
yields becomes an object the moment it is yielded, and its caller can read it then.

How a stream travels. The task's return 0 is its completion: the number of values it
yielded. The k-th value (from 0) is object ``return_object_id(task, k + 1)``, owned by the
caller like any result; the worker reports it at once in a TaskDone with ``item=k``, routed
as an answer is (to the owner directly, or through the agent when it holds refs), and the
owner files it and tells its agent as it does answers (zray/core.py ``_answered``). An
exception the generator raises becomes the object of the item where it was raised, and the
stream ends there. Reports may arrive out of order (two routes): a completion that says
item k exists means it is on its way.

``num_returns="dynamic"`` is the older form: the task runs the generator to its end and
returns one ``DynamicObjectRefGenerator`` of refs to the values (put by its worker).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from zray.ids import return_object_id, task_of
from zray.objects.refs import ObjectRef

if TYPE_CHECKING:
    from zray.core import CoreClient


def is_generator(fn: Any) -> bool:
    """Whether calling ``fn`` remotely streams what it yields (Ray's default for a
    generator function or method, sync or async)."""
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


class ObjectRefGenerator:
    """What calling a remote generator returns: iterate it (or ``async for``) for refs to
    the values, in order, each as soon as it was yielded."""

    def __init__(self, completion: ObjectRef, client: CoreClient) -> None:
        self._completion = completion
        self._client = client
        self._task_id = task_of(completion.id)
        self._next = 0  # the index of the next item to hand out
        self._count: int | None = None  # how many there are, once the task is done

    def __iter__(self) -> Iterator[ObjectRef]:
        return self

    def __next__(self) -> ObjectRef:
        ref = self._advance(None)
        assert ref is not None
        return ref

    def __aiter__(self) -> AsyncIterator[ObjectRef]:
        return self

    async def __anext__(self) -> ObjectRef:
        while True:
            try:
                ref = self._advance(0)
            except StopIteration:
                raise StopAsyncIteration from None
            if ref is not None:
                return ref
            futures = [asyncio.wrap_future(self._client.when_ready(object_id))
                       for object_id in self._pending_ids()]
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
            for future in futures:
                future.cancel()

    def completed(self) -> ObjectRef:
        """A ref ready once the generator has ended (its value: how many it yielded)."""
        return self._completion

    def is_finished(self) -> bool:
        return self._count is not None and self._next >= self._count

    def next_ready(self) -> bool:
        """Whether ``next()`` would return at once."""
        ready = self._client.objects.ready_among(self._pending_ids(), fetch_local=False)
        return bool(ready)

    def _pending_ids(self) -> list[bytes]:
        """What the next ``next()`` waits for: its item, or the end."""
        item = return_object_id(self._task_id, self._next + 1)
        self._client.objects.expect([item])  # (its report may come before we ask)
        return [item, self._completion.id]

    def _advance(self, timeout: float | None) -> ObjectRef | None:
        """The next item's ref once it is here (None if ``timeout`` passed first);
        StopIteration at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        item, completion = self._pending_ids()
        objects = self._client.objects
        while True:
            ready = objects.ready_among([item, completion], fetch_local=False)
            if item in ready:
                self._next += 1
                return ObjectRef(item, self._client.refs, created=True)
            if completion in ready and self._count is None:
                self._count = int(self._client.get([self._completion], None)[0])
            if self._count is not None and self._next >= self._count:
                raise StopIteration
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                return None
            self._client.wait_ids([item] if self._count is not None else [item, completion],
                                  left)

    def __del__(self) -> None:
        """Items already here that nobody will read are let go (and those still to come,
        as they arrive)."""
        client = getattr(self, "_client", None)
        if client is not None and not self.is_finished():
            client.abandon_stream(self._task_id, self._next)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()}, next item {self._next})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: refs to what it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = refs

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


def run_dynamic(fn: Any) -> Any:
    """The function a ``num_returns="dynamic"`` task runs in place of ``fn``."""
    import functools

    @functools.wraps(fn)
    def dynamic(*args: Any, **kwargs: Any) -> DynamicObjectRefGenerator:
        from zray.api import put

        return DynamicObjectRefGenerator([put(value) for value in fn(*args, **kwargs)])

    return dynamic
