"""The node's object directory and reference counts: events in, notifications out, no I/O.

An object lives while anything needs it: a process holding a ref or a zero-copy view
(``holders``), a queued or running task that takes it as an argument, or another live
object that contains a ref to it (both counted in ``pins``). When the last of these lets go
the object is freed: its store block returns to the allocator, and the refs it contained
are unpinned in turn.

Lifecycle (an illegal move raises and changes nothing)::

    PENDING --(task result or seal)--> READY
    PENDING --create--> CREATING --seal--> READY        (store objects)
    new --put (inline)--> READY
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from zray.ids import is_put_object
from zray.objects.store import Allocator

Client = bytes  # a connected process's worker id
Location = tuple  # (object_id, data, offset, size, is_error), see zray.protocol


class ObjState(enum.Enum):
    PENDING = "PENDING"  # a task will produce it
    CREATING = "CREATING"  # a block is allocated, the writer has not sealed it yet
    READY = "READY"


_ALLOWED = {
    ObjState.PENDING: {ObjState.CREATING, ObjState.READY},
    ObjState.CREATING: {ObjState.CREATING, ObjState.READY},
    ObjState.READY: set(),
}


@dataclass
class ObjectEntry:
    object_id: bytes
    job_id: bytes
    state: ObjState = ObjState.PENDING
    data: bytes | None = None
    offset: int = -1
    size: int = 0
    is_error: bool = False
    holders: set[Client] = field(default_factory=set)
    pins: int = 0
    contained: list[bytes] = field(default_factory=list)
    subscribers: set[Client] = field(default_factory=set)
    delivered: bool = False
    writer: Client = b""  # who is writing its store block (CREATING)

    def location(self) -> Location:
        return (self.object_id, self.data, self.offset, self.size, self.is_error)

    @property
    def listed(self) -> bool:
        """Whether the GCS lists it (``zray inspect objects``): what holds store memory,
        and errors. Small values are not: a row (and its delete) per task result would
        cost the agent and the broker more than the task itself."""
        return self.offset >= 0 or self.is_error

    def move(self, state: ObjState) -> None:
        if state not in _ALLOWED[self.state]:
            raise ValueError(f"object {self.object_id.hex()}: {self.state.name} -> {state.name}")
        self.state = state


@dataclass(frozen=True)
class Freed:
    """An object was freed; ``unhandled_error`` is set if it was an error nobody read."""

    object_id: bytes
    job_id: bytes
    unhandled_error: bytes | None
    listed: bool  # it was in the GCS's objects table (see ObjectEntry.listed)


class ObjectTable:
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator
        self.entries: dict[bytes, ObjectEntry] = {}
        self.notify: list[tuple[Client, Location]] = []  # drained by the agent after each event
        self.freed: list[Freed] = []
        self.became_ready: list[bytes] = []
        # Pins of ids that are not objects (actor handles inside values): (id, +1/-1) ->
        # whether the id was known there.
        self.other_pins: Callable[[bytes, int], bool] = lambda _id, _delta: False

    # --- making objects --------------------------------------------------------------

    def expect(self, object_id: bytes, job_id: bytes, holder: Client) -> None:
        """A task was submitted: its return object will exist; the submitter holds it."""
        entry = self.entries.setdefault(object_id, ObjectEntry(object_id, job_id))
        entry.holders.add(holder)

    def put_inline(self, object_id: bytes, job_id: bytes, data: bytes, contained: list[bytes],
                   holder: Client, is_error: bool = False) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id)
            entry.holders.add(holder)
        if entry.state is ObjState.READY:
            return  # a retried task produced it again: the first value stands
        if entry.state is ObjState.CREATING:  # its writer died; this (an error) replaces it
            self.allocator.free(entry.offset)
            entry.offset = -1
        entry.data, entry.size, entry.is_error = data, len(data), is_error
        self._ready(entry, contained)

    def create(self, object_id: bytes, job_id: bytes, size: int, holder: Client) -> int:
        """A store block for the object: its offset, -1 if full, -2 if already sealed."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.state is ObjState.READY:
            return -2
        offset = self.allocator.allocate(size)
        if offset is None:
            return -1
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id)
            entry.holders.add(holder)
        if entry.state is ObjState.CREATING:  # a retry after the writer died mid-write
            self.allocator.free(entry.offset)
        entry.move(ObjState.CREATING)
        entry.offset, entry.size, entry.writer = offset, size, holder
        return offset

    def seal(self, object_id: bytes, contained: list[bytes], is_error: bool) -> None:
        entry = self.entries.get(object_id)
        if entry is None or entry.state is not ObjState.CREATING:
            return  # its creator released it before sealing; nothing waits for it
        entry.is_error = is_error
        self._ready(entry, contained)

    def _ready(self, entry: ObjectEntry, contained: list[bytes]) -> None:
        entry.move(ObjState.READY)
        self.became_ready.append(entry.object_id)
        entry.contained = [c for c in contained if self._pin(c)]
        for client in entry.subscribers:
            self.notify.append((client, entry.location()))
        entry.subscribers.clear()
        self._maybe_free(entry)

    # --- reading and counting --------------------------------------------------------

    def subscribe(self, client: Client, object_id: bytes, for_get: bool) -> bool:
        """Notify ``client`` when the object is ready; False if it does not exist.

        ``for_get``: the value will be read, so an error in it counts as handled."""
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        entry.delivered = entry.delivered or for_get
        if entry.state is ObjState.READY:
            self.notify.append((client, entry.location()))
        else:
            entry.subscribers.add(client)
        return True

    def add_holder(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.add(client)

    def release(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.discard(client)
            entry.subscribers.discard(client)
            self._maybe_free(entry)

    def release_all(self, client: Client) -> None:
        """A process is gone: everything it held is let go, and puts it never sealed."""
        for entry in list(self.entries.values()):
            if entry.state is ObjState.CREATING and entry.writer == client and is_put_object(
                entry.object_id
            ):
                del self.entries[entry.object_id]
                self.allocator.free(entry.offset)
            elif client in entry.holders or client in entry.subscribers:
                self.release(client, entry.object_id)

    def pin(self, object_id: bytes) -> bool:
        return self._pin(object_id)

    def unpin(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            self.other_pins(object_id, -1)
        else:
            entry.pins -= 1
            self._maybe_free(entry)

    def mark_delivered(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.delivered = True

    def get(self, object_id: bytes) -> ObjectEntry | None:
        return self.entries.get(object_id)

    def is_ready(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        return entry is not None and entry.state is ObjState.READY

    def _pin(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        if entry is None:
            return self.other_pins(object_id, +1)
        entry.pins += 1
        return True

    def _maybe_free(self, entry: ObjectEntry) -> None:
        if entry.holders or entry.pins > 0:
            return
        if entry.state is not ObjState.READY:
            return  # still being made: freed once it is sealed with no one left
        del self.entries[entry.object_id]
        if entry.offset >= 0:
            self.allocator.free(entry.offset)
        unhandled = entry.data if entry.is_error and not entry.delivered else None
        self.freed.append(Freed(entry.object_id, entry.job_id, unhandled, entry.listed))
        for contained in entry.contained:
            self.unpin(contained)

    # --- accounting ------------------------------------------------------------------

    def bytes_in_store(self) -> int:
        return self.allocator.in_use
