"""``ObjectRef`` and the per-process reference counter behind it.

Each process counts the refs (and zero-copy views) it holds per object and tells its node
agent only about edges: the first one it holds that it did not create itself ("added") and
the last one it let go ("released"). ``ObjectRef.__del__`` and view finalizers run inside
garbage collection, at any moment and in any thread, so they only append to a deque; the
counting happens in ``drain``, under a lock that no finalizer ever takes.
"""

from __future__ import annotations

import concurrent.futures
import operator
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from zray.objects.serialization import record_contained_ref

_CREATED, _BORROWED, _DROPPED = 0, 1, 2


class RefCounter:
    def __init__(self) -> None:
        self._events: deque[tuple[bytes, int]] = deque()
        self._counts: dict[bytes, int] = {}
        self._lock = threading.Lock()
        # Called when a ref is taken or let go: the process's I/O thread sends the edges
        # (CoreClient wakes it if it sleeps with nothing due).
        self.on_pending: Callable[[], None] = lambda: None

    def created(self, object_id: bytes) -> None:
        """This process made the object (submit or put): the agent already counts it."""
        self._events.append((object_id, _CREATED))

    def borrowed(self, object_id: bytes) -> None:
        """This process got a ref or view it did not make (e.g. unpickled from a value)."""
        self._events.append((object_id, _BORROWED))
        self.on_pending()

    def dropped(self, object_id: bytes) -> None:
        self._events.append((object_id, _DROPPED))
        self.on_pending()

    def pending(self) -> bool:
        """Whether refs were taken or let go since the last ``drain``."""
        return bool(self._events)

    def drain(self) -> tuple[list[bytes], list[bytes]]:
        """Fold pending events into the counts: the (added, released) edges since last time."""
        added: list[bytes] = []
        released: list[bytes] = []
        with self._lock:
            events, counts = self._events, self._counts
            while events:
                object_id, kind = events.popleft()
                count = counts.get(object_id, 0)
                if kind == _DROPPED:
                    if count <= 1:
                        counts.pop(object_id, None)
                        if object_id in added:  # taken and let go since the last drain,
                            added.remove(object_id)  # with no message between: no edge
                        else:
                            released.append(object_id)
                    else:
                        counts[object_id] = count - 1
                else:
                    if count == 0 and kind == _BORROWED:
                        if object_id in released:  # let go and taken again: no edge at all
                            released.remove(object_id)
                        else:
                            added.append(object_id)
                    counts[object_id] = count + 1
        return added, released


_CURRENT = object()  # (ObjectRef's counter, when not given: this process's)


class ObjectRef:
    """A future for a value in the object store; pass it to tasks or ``zray.get`` it."""

    __slots__ = ("_id", "_counter", "__weakref__")

    def __init__(self, object_id: bytes, counter: Any = _CURRENT,
                 created: bool = False) -> None:
        """``ObjectRef(binary)``, as Ray's: a ref passed out of band, held from now on."""
        if counter is _CURRENT:
            from zray import core

            counter = core.current_counter()
        self._id = object_id
        self._counter = counter
        if counter is not None:
            if created:
                counter.created(object_id)
            else:
                counter.borrowed(object_id)

    def __del__(self) -> None:
        if self._counter is not None:
            self._counter.dropped(self._id)

    def future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` of its value (or of the error it holds)."""
        from zray.api import client_for_call

        return client_for_call().future(self)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await ref`` in asyncio code: its value, without blocking the event loop."""
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()

    @property
    def id(self) -> bytes:
        return self._id

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        """A ref passed out of band (its ``hex()``), held by this process from now on."""
        return cls(bytes.fromhex(hex_id))

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        record_contained_ref(self._id)
        return (_rebuild_ref, (self._id,))


object_id_of = operator.attrgetter("_id")  # ref -> its id, at C speed over many refs


def _rebuild_ref(object_id: bytes) -> ObjectRef:
    """Unpickling a ref in another process makes that process a borrower of the object."""
    from zray import core  # the process's runtime, if it has one

    return ObjectRef(object_id, core.current_counter(), created=False)
