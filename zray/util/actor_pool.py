"""``ActorPool``: spread calls over a fixed set of actors, as Ray's ``ray.util.ActorPool``.

    pool = ActorPool([Worker.remote() for _ in range(4)])
    list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3]))   # in order
    list(pool.map_unordered(lambda actor, v: actor.double.remote(v), values))

Each actor runs one call of the pool at a time; values wait for a free actor. Results come
back in submission order (``get_next``) or as they finish (``get_next_unordered``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zray
from zray.objects.refs import ObjectRef

__all__ = ["ActorPool"]


class ActorPool:
    def __init__(self, actors: list[Any]) -> None:
        self._idle = list(actors)
        self._future_to_actor: dict[ObjectRef, tuple[int, Any]] = {}
        self._index_to_future: dict[int, ObjectRef] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: deque[tuple[Callable[[Any, Any], ObjectRef], Any]] = deque()

    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """``fn(actor, value)`` for each value, results in the values' order."""
        self._drain_previous()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable[[Any, Any], ObjectRef],
                      values: Iterable[Any]) -> Iterator[Any]:
        """As ``map``, results as they finish."""
        self._drain_previous()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or once one is free."""
        if self._idle:
            actor = self._idle.pop()
            future = fn(actor, value)
            if not isinstance(future, ObjectRef):
                raise TypeError(f"ActorPool: fn must return the ObjectRef of a call "
                                f"(actor.method.remote(...)), got {type(future).__name__}")
            self._future_to_actor[future] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        """Whether a result is still to be returned."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order (raises the call's error)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after "
                             "get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        if timeout is not None and not zray.wait([future], timeout=timeout)[0]:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(future)
        self._return_actor(actor)
        return zray.get(future)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Any finished result (raises the call's error)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = zray.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        future = ready[0]
        index, actor = self._future_to_actor.pop(future)
        self._index_to_future.pop(index, None)
        self._next_return_index = max(self._next_return_index, index + 1)  # (as Ray's)
        self._return_actor(actor)
        return zray.get(future)

    def has_free(self) -> bool:
        """Whether an actor is idle (and no value waits for one)."""
        return bool(self._idle) and not self._pending

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it takes a waiting value at once, if any)."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    def _drain_previous(self) -> None:
        """A new map starts once the results of the last are taken (as Ray's)."""
        while self.has_next():
            self.get_next_unordered()
