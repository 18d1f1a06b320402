"""``Queue``: a first-in first-out queue that tasks and actors share, as Ray's
``ray.util.queue.Queue``. It lives in an actor (an asyncio one: a blocked ``get`` holds
no thread there); the handle can be passed to tasks and actors.

    q = Queue(maxsize=100)
    q.put(item)                 # blocks while full (timeout=: raises Full)
    q.get(timeout=1.0)          # blocks while empty (raises Empty)
"""

from __future__ import annotations

import asyncio
import queue as std_queue
from typing import Any

import zray

__all__ = ["Queue", "Empty", "Full"]


class Empty(std_queue.Empty):
    pass


class Full(std_queue.Full):
    pass


class Queue:
    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"Queue: maxsize must be an int >= 0 (0: no bound), got {maxsize!r}")
        self.maxsize = maxsize
        self.actor = _QueueActor.options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return int(zray.get(self.actor.qsize.remote()))

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return bool(zray.get(self.actor.empty.remote()))

    def full(self) -> bool:
        return bool(zray.get(self.actor.full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; while full, wait (``timeout`` seconds at most, then Full), or
        raise Full at once if not ``block``."""
        zray.get(self._put(item, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; while empty, wait (``timeout`` seconds at most, then
        Empty), or raise Empty at once if not ``block``."""
        return zray.get(self._get(block, timeout))

    def _put(self, item: Any, block: bool, timeout: float | None) -> zray.ObjectRef:
        if not block:
            return self.actor.put_nowait.remote(item)
        _check(timeout)
        return self.actor.put.remote(item, timeout)

    def _get(self, block: bool, timeout: float | None) -> zray.ObjectRef:
        if not block:
            return self.actor.get_nowait.remote()
        _check(timeout)
        return self.actor.get.remote(timeout)

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_nowait_batch(self, items: list[Any]) -> None:
        """Add all of ``items``, or none (Full) if they do not all fit now."""
        zray.get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Take ``num_items`` items, or none (Empty) if fewer are there now."""
        return list(zray.get(self.actor.get_nowait_batch.remote(num_items)))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """``put`` for asyncio code: awaits the queue's answer (no thread is held)."""
        await self._put(item, block, timeout)

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code: awaits the queue's answer (no thread is held)."""
        return await self._get(block, timeout)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor (its items go with it)."""
        if self.actor is not None:
            zray.kill(self.actor)
            self.actor = None


def _check(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class _QueueCore:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            raise Full(f"the queue stayed full for {timeout}s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout}s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full ({self.maxsize} items)") from None

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    async def put_nowait_batch(self, items: list[Any]) -> None:
        if self.maxsize and self.queue.qsize() + len(items) > self.maxsize:
            raise Full(f"cannot add {len(items)} items: {self.queue.qsize()} of "
                       f"{self.maxsize} are in the queue")
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait_batch(self, num_items: int) -> list[Any]:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot take {num_items} items: the queue holds "
                        f"{self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]


_QueueActor: Any = zray.remote(num_cpus=0)(_QueueCore)  # (Any: an actor class)
