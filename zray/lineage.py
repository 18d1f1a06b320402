"""What an owner keeps of its finished tasks, to run them again when a result is lost.

A task's result lives on the node that made it. If that node dies while the owner still
holds a ref to the result, or while a task kept here takes it as an argument, the owner
runs the task again (lineage reconstruction, as Ray's owners do): same task id, same result
ids, its own arguments first if they are gone too. So a finished task is kept while:

- a ref to one of its results is alive in this process (``live``: counted from submission,
  so a ref dropped before the task ended counts), or
- a task kept here takes one of its results as an argument (``children``).

Dropping a task lets go of its arguments' tasks in turn. The tasks' bytes (arguments
inline in them, mostly) are capped at ``max_bytes``: past it, the oldest are *evicted*
(their bookkeeping stays, their spec goes), and a result of theirs that is lost fails with
``ObjectReconstructionFailedLineageEvictedError``.

Only a cluster's processes keep lineage (``enabled``): in a private cluster a result
cannot outlive the node that made it.

Thread-safe with a lock of its own, which it holds while calling nothing else: ``released``
comes from the sender, under the core's tx lock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zray.ids import OBJECT_ID_BYTES, is_put_object, task_of

if TYPE_CHECKING:
    from zray.leasing import DirectTask

_OVERHEAD = 256  # bytes a kept task costs beyond its arguments


@dataclass(eq=False)
class _Kept:
    task: DirectTask | None  # None once evicted
    size: int


class Lineage:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.enabled = True
        self.bytes = 0
        self._lock = threading.Lock()
        self._live: dict[bytes, int] = {}  # task id -> its results' refs alive here
        self._deps: dict[bytes, list[bytes]] = {}  # task id -> its arguments' tasks
        self._children: dict[bytes, int] = {}  # task id -> tasks here taking its results
        self._kept: dict[bytes, _Kept] = {}
        self._order: deque[bytes] = deque()  # kept tasks, oldest first (for eviction)
        # Store objects kept tasks would read in place if run again: their blocks must
        # stay where they are (zray/node/spilling.py asks; ``maps`` answers).
        self._blocks: dict[bytes, int] = {}

    def submitted(self, task_id: bytes, num_returns: int, dep_ids: list[bytes]) -> None:
        """A task of ours: its results' refs are alive; its arguments' tasks are needed
        while it is (they may have to run again before it does)."""
        if not self.enabled:
            return
        deps: list[bytes] = [task_of(d) for d in dep_ids if not is_put_object(d)]
        with self._lock:
            self._live[task_id] = num_returns
            self._deps[task_id] = deps
            for dep in deps:
                self._children[dep] = self._children.get(dep, 0) + 1

    def released(self, object_ids: list[bytes]) -> None:
        """This process let go of these objects (each once)."""
        if not self.enabled:
            return
        with self._lock:
            for object_id in object_ids:
                if len(object_id) != OBJECT_ID_BYTES or is_put_object(object_id):
                    continue  # (an actor handle, or a put: no lineage)
                task_id = task_of(object_id)
                live = self._live.get(task_id)
                if live is not None:
                    self._live[task_id] = live - 1
                    if live <= 1:
                        self._drop(task_id)

    def finished(self, task: DirectTask, ok: bool) -> None:
        """A task of ours ended: kept if it succeeded and its results may be needed."""
        task_id = task.task_id
        if not self.enabled:
            return
        with self._lock:
            if task_id in self._kept or task_id not in self._deps:
                return  # (run again to rebuild a result: kept already; or dropped)
            if not ok:
                self._live[task_id] = 0
                self._drop(task_id)
                return
            size = _OVERHEAD + len(task.args) + sum(
                len(loc[1]) for loc in task.deps if loc is not None and loc[1] is not None)
            self._kept[task_id] = _Kept(task, size)
            self.bytes += size
            self._count_blocks(task, +1)
            self._order.append(task_id)
            while self.bytes > self.max_bytes and self._order:
                self._evict(self._order.popleft())
            if len(self._order) > 2 * len(self._kept) + 1024:  # (ids of dropped tasks)
                self._order = deque(t for t in self._order if t in self._kept)

    def find(self, task_id: bytes) -> tuple[DirectTask | None, bool]:
        """The kept task, and whether it was evicted."""
        with self._lock:
            kept = self._kept.get(task_id)
            return (None, False) if kept is None else (kept.task, kept.task is None)

    def maps(self, object_id: bytes) -> bool:
        """Whether a kept task takes this object by its place in the store."""
        with self._lock:
            return object_id in self._blocks

    def _count_blocks(self, task: DirectTask, delta: int) -> None:
        for loc in task.deps:
            if loc is not None and loc[1] is None and loc[2] >= 0:
                left = self._blocks.get(loc[0], 0) + delta
                if left > 0:
                    self._blocks[loc[0]] = left
                else:
                    self._blocks.pop(loc[0], None)

    def __len__(self) -> int:
        return sum(1 for kept in self._kept.values() if kept.task is not None)

    def _evict(self, task_id: bytes) -> None:
        kept = self._kept.get(task_id)
        if kept is not None and kept.task is not None:
            self._count_blocks(kept.task, -1)
            kept.task = None
            self.bytes -= kept.size

    def _drop(self, task_id: bytes) -> None:
        """Let go of a task nothing needs any more, and of its arguments' in turn."""
        stack = [task_id]
        while stack:
            task_id = stack.pop()
            if self._live.get(task_id, 0) > 0 or self._children.get(task_id, 0) > 0:
                continue
            self._live.pop(task_id, None)
            self._children.pop(task_id, None)
            kept = self._kept.pop(task_id, None)
            if kept is not None and kept.task is not None:
                self._count_blocks(kept.task, -1)
                self.bytes -= kept.size
            for dep in self._deps.pop(task_id, ()):
                left = self._children.get(dep, 0) - 1
                self._children[dep] = left
                if left <= 0:
                    stack.append(dep)
