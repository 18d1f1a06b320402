"""What one process knows about objects: where the ready ones are, who waits for which,
and the zero-copy views it holds into the node's store.

The I/O thread files locations as the agent sends them and wakes the waiters; user threads
wait on their own ``Waiter`` (one event each: a ready object wakes only the calls that
wait for it). A location "elsewhere" (a result made on another node) is not ready here:
it is kept for passing the ref on, and a reader asks the agent, which pulls a copy
(``fetch``). A view is a read-only window on the store's mapping, shared by every ``get``
of the object in this process, and counted as a reference until it is collected: its
exporter is a ctypes array over the mapping, because every buffer carved from it (numpy
arrays, Arrow buffers) keeps that one object alive, and it can carry a weakref finalizer.
(No numpy here: the agent and idle workers need not import it.)
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Callable
from typing import Any

from zray.exceptions import TaskError
from zray.objects.refs import RefCounter
from zray.objects.serialization import deserialize
from zray.objects.store import Mapping

Location = tuple[Any, ...]  # (object_id, data, offset, size, is_error), see zray.protocol


class Signal:
    """A one-shot ``threading.Event`` on a bare lock: a blocked get is woken by one lock
    release, where an Event makes a Condition and a lock per wait (its round trip's
    hottest wake-up). ``set`` is called under LocalObjects' lock. ``nudge``: also called
    when set, while a thread waits for it some other way (zray/leader.py)."""

    __slots__ = ("_lock", "_set", "nudge")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False
        self.nudge: Callable[[], None] | None = None

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()
            nudge = self.nudge
            if nudge is not None:
                nudge()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it was set, waiting at most ``timeout`` seconds for it."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # (a later wait returns at once)
            return True
        return self._set


class Waiter:
    """One blocked get/wait: woken once ``remaining`` more of its ``ids`` are ready."""

    __slots__ = ("ids", "remaining", "event", "fetch_local")

    def __init__(self, ids: set[bytes], remaining: int, fetch_local: bool = True) -> None:
        self.ids = ids
        self.remaining = remaining
        self.event = Signal()
        self.fetch_local = fetch_local  # False: ready on another node counts as ready

    def one_ready(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.event.set()


class LocalObjects:
    def __init__(self, refs: RefCounter) -> None:
        self.refs = refs
        self.mapping: Mapping | None = None
        self._lock = threading.Lock()
        self._ready: dict[bytes, Location] = {}
        self._elsewhere: dict[bytes, Location] = {}  # ready on another node only
        self.fetch: Callable[[list[bytes]], None] = lambda ids: None  # ask the agent
        self._subscribed: set[bytes] = set()
        # The blocked calls, one per thread at most: a ready object is checked against
        # each (few), where registering each call under every id it waits for would cost
        # a wait() over many refs as much as the refs (and again to unregister).
        self._waiters: list[Waiter] = []
        # Futures (``ref.future()``, ``await ref``): called once the object is ready here;
        # by id, as there may be many (10,000 awaited refs are 10,000 entries, no thread).
        self._callbacks: dict[bytes, list[Callable[[], None]]] = {}
        self._views: weakref.WeakValueDictionary[bytes, Any] = weakref.WeakValueDictionary()

    def ready_among(self, ids: list[bytes], fetch_local: bool = True) -> set[bytes]:
        ready = self._ready.keys() & ids
        return ready if fetch_local else ready | (self._elsewhere.keys() & ids)

    def location(self, object_id: bytes) -> Location:
        return self._ready[object_id]

    def take(self, ids: list[bytes]) -> list[tuple[Location, memoryview | None]] | None:
        """The ready objects' locations, each with a view of its block if it is in the
        store, or None if one of them has left its block meanwhile (``release_blocks``:
        wait for it again). Atomic with ``release_blocks``: a view made here is one the
        agent hears of before its block can move."""
        with self._lock:
            if not all(object_id in self._ready for object_id in ids):
                return None
            taken = []
            for object_id in ids:
                location = self._ready[object_id]
                _, data, offset, size, _ = location
                in_store = data is None and offset >= 0
                taken.append((location, self._view(object_id, offset, size)
                              if in_store else None))
            return taken

    def release_blocks(self, ids: list[bytes], keep: Callable[[bytes], bool]
                       ) -> tuple[list[bytes], list[bytes]]:
        """The agent moves these objects out of their blocks (to disk): forget where they
        were, except those a live view maps or ``keep`` says are used in place; returns
        (released, in use). A later read asks the agent again. One we asked for and were
        not told the place of yet stays asked for: our request crossed the agent's, which
        answers it once the object has left (read back) or stays."""
        released, in_use = [], []
        with self._lock:
            for object_id in ids:
                if object_id in self._views or keep(object_id):
                    in_use.append(object_id)
                    continue
                if self._ready.pop(object_id, None) is not None:
                    self._subscribed.discard(object_id)
                released.append(object_id)
        return released, in_use

    def get_location(self, object_id: bytes) -> Location | None:
        """Where it is, here or "elsewhere" (to pass it on), or None: not known ready."""
        return self._ready.get(object_id) or self._elsewhere.get(object_id)

    def file(self, locations: list[Location]) -> None:
        """Locations the agent sent for objects we asked about; wake who waits for them.
        One ready elsewhere is fetched at once if someone waits for it, else when read."""
        fetch: list[bytes] = []
        called: list[Callable[[], None]] = []
        with self._lock:
            for location in locations:
                object_id = location[0]
                if object_id in self._subscribed and location[1] is None and location[2] < 0:
                    new = object_id not in self._elsewhere
                    self._elsewhere[object_id] = location
                    waiters = [w for w in self._waiters if object_id in w.ids]
                    if any(w.fetch_local for w in waiters) or object_id in self._callbacks:
                        fetch.append(object_id)
                    else:  # (the next wait for it asks the agent)
                        self._subscribed.discard(object_id)
                    for waiter in waiters:
                        if new and not waiter.fetch_local:
                            waiter.one_ready()
                elif object_id in self._subscribed:
                    self._elsewhere.pop(object_id, None)
                    new = object_id not in self._ready
                    self._ready[object_id] = location
                    if new:
                        for waiter in self._waiters:
                            if object_id in waiter.ids:
                                waiter.one_ready()
                        called += self._callbacks.pop(object_id, ())
        if fetch:
            self.fetch(fetch)
        for callback in called:
            callback()

    def on_ready(self, object_id: bytes, callback: Callable[[], None]) -> bool | None:
        """Call ``callback`` (on the I/O thread: it must not block) once the object is
        ready here: None if it is already (not called), else whether to subscribe."""
        with self._lock:
            if object_id in self._ready:
                return None
            self._callbacks.setdefault(object_id, []).append(callback)
            subscribe = object_id not in self._subscribed
            self._subscribed.add(object_id)
            return subscribe

    def expect(self, object_ids: list[bytes]) -> None:
        """Results of our direct tasks and actor calls: their workers send them here."""
        with self._lock:
            self._subscribed.update(object_ids)

    def remember(self, location: Location) -> None:
        """An object this process made itself (put): readable without asking the agent."""
        with self._lock:
            self._subscribed.add(location[0])
            self._ready[location[0]] = location

    def forget(self, object_ids: list[bytes]) -> None:
        """This process no longer holds these objects."""
        with self._lock:
            for object_id in object_ids:
                self._ready.pop(object_id, None)
                self._elsewhere.pop(object_id, None)
                self._subscribed.discard(object_id)

    def start_wait(self, ids: list[bytes], count: int, fetch_local: bool = True,
                   unique: set[bytes] | None = None
                   ) -> tuple[Waiter | None, list[bytes], list[bytes]]:
        """Register a wait for ``count`` of ``ids`` (``unique``: their set, if made
        already; ``fetch_local``: ready here, else ready anywhere): (waiter or None if
        already satisfied, the ids not ready, the ids to ask the agent about)."""
        if unique is None:
            unique = set(ids)
        with self._lock:
            missing = unique.difference(self._ready)
            if not fetch_local:
                missing.difference_update(self._elsewhere)
            remaining = count - (len(unique) - len(missing))
            if remaining <= 0:
                return None, [], []
            waiter = Waiter(missing, remaining, fetch_local)
            self._waiters.append(waiter)
            to_subscribe = list(missing.difference(self._subscribed))
            self._subscribed.update(to_subscribe)
        return waiter, list(missing), to_subscribe

    def end_wait(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake_all(self) -> None:
        """The agent is gone: every waiter must wake up and find out."""
        with self._lock:
            for waiter in self._waiters:
                waiter.event.set()
        self.call_back_all()

    def call_back_all(self) -> None:
        """Call every ``on_ready`` callback now (the agent is gone, or we are closing)."""
        with self._lock:
            callbacks = [c for waiting in self._callbacks.values() for c in waiting]
            self._callbacks.clear()
        for callback in callbacks:
            callback()

    def value_of(self, location: Location, view: memoryview | None = None) -> Any:
        """The value at a location (``view``: of its block, from ``take``); raises it if
        it is an error."""
        object_id, data, offset, size, is_error = location
        if data is None and view is None:
            view = self._view(object_id, offset, size)
        value = deserialize(data if view is None else view)
        if is_error:
            raise value.as_instanceof_cause() if isinstance(value, TaskError) else value
        return value

    def _view(self, object_id: bytes, offset: int, size: int) -> memoryview:
        """A read-only view of a store object; the object is pinned while the view lives."""
        base = self._views.get(object_id)
        if base is None:
            assert self.mapping is not None
            base = (ctypes.c_char * size).from_buffer(self.mapping.mmap, offset)
            self.refs.borrowed(object_id)  # tells the agent if this process held no ref yet
            weakref.finalize(base, self.refs.dropped, object_id)
            self._views[object_id] = base
        return memoryview(base).cast("B").toreadonly()
