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
    new/PENDING --lent by a node--> REMOTE --pull--> CREATING --last chunk--> READY (a copy)
    REMOTE/CREATING --its home died--> PENDING, lost --wanted--> rebuilt by its owner

A READY store object is in its block, or *on disk* (``spilled``, no block): when the store
is full, objects no task reads (``readers``) go to a spill file, the least recently used
first, and come back into a block when wanted (``to_restore``); zray/node/spilling.py
does the moving and the files.

Across nodes (zray/node/transfer.py moves the bytes), an agent counts for the processes of
its node, as Ray's owners count their borrowers. A node that hands a ref to another node
(a task's argument, a result, a ref inside a copy) *lends* it: ``borrowers[node] += 1``,
which keeps the object alive here. The node that receives it notes ``lenders[node] += 1``;
once nothing of its own uses the object (no holder, pin or borrower of its own), it gives
back what it received (Unborrow with the counts, as ``unborrows``): counts, not a flag,
so a lend that crosses a give-back in flight is never lost. A copy pulled from elsewhere
(``home``) stays cached after that, until its home says it freed the object (``forget``,
sent to the nodes in ``copies``) or the store needs the room.

A task's result whose only copy was on a node that died is *lost*: back to PENDING, and
once something here needs it (a read, a task, a node's pull), its owner is asked to run
the task again (``to_rebuild``), which makes it anew under the same id (lineage
reconstruction; the owner keeps the lineage, zray/lineage.py).
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
    REMOTE = "REMOTE"  # ready on another node (``home``), no copy here
    PENDING = "PENDING"  # a task will produce it
    CREATING = "CREATING"  # a block is allocated, the writer has not sealed it yet
    READY = "READY"


_ALLOWED = {
    ObjState.REMOTE: {ObjState.CREATING, ObjState.READY, ObjState.PENDING},
    ObjState.PENDING: {ObjState.CREATING, ObjState.READY, ObjState.REMOTE},
    ObjState.CREATING: {ObjState.CREATING, ObjState.READY, ObjState.PENDING, ObjState.REMOTE},
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
    # Across nodes (see the module's doc); None until used: most objects never leave.
    home: bytes = b""  # the node it came from: REMOTE, or a copy (b"": made here)
    cached: bool = False  # a copy kept for reuse after nothing here uses it
    wanted: bool = False  # something here waits to read it: pulled if it is made elsewhere
    lenders: dict[bytes, int] | None = None  # node -> refs it lent us, not given back
    borrowers: dict[bytes, int] | None = None  # node -> refs we lent it, not given back
    copies: set[bytes] | None = None  # nodes that pulled a copy from here
    owner: Client = b""  # the process here whose task makes it (it can rebuild it)
    lost: bool = False  # its only copy died with a node; not asked to be rebuilt yet
    readers: int = 0  # queued and running tasks that take it (their workers read its block)
    spilled: bool = False  # it has a spill file (then no block: ``on_disk``)
    used: int = 0  # the table's clock when it was last made, asked for or taken by a task
    told: set[Client] | None = None  # processes sent its block's place (they may read it)
    leaving: bool = False  # its mappers are asked to let go of its block: its place is kept
    # from new readers until it stays (``stays``) or is on disk (``to_disk``)

    def location(self) -> Location:
        return (self.object_id, self.data, self.offset, self.size, self.is_error)

    @property
    def listed(self) -> bool:
        """Whether the GCS lists it (``zray inspect objects``): what holds store memory
        or disk, and errors. Small values are not: a row (and its delete) per task result
        would cost the agent and the broker more than the task itself."""
        return ((self.offset >= 0 or self.spilled) and not self.home) or self.is_error

    @property
    def on_disk(self) -> bool:
        """Its value is only in its spill file: read back into a block before use."""
        return self.spilled and self.offset < 0 and self.data is None

    @property
    def where(self) -> str:
        return "inline" if self.data is not None else "disk" if self.on_disk else "store"

    @property
    def used_here(self) -> bool:
        """Whether anything keeps it: a process, a task or value here, another node."""
        return bool(self.holders or self.pins > 0 or self.borrowers)

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
    spilled: int = 0  # the size of its spill file, to remove (0: it had none)


class ObjectTable:
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator
        self.entries: dict[bytes, ObjectEntry] = {}
        self.notify: list[tuple[Client, Location]] = []  # drained by the agent after each event
        self.freed: list[Freed] = []
        self.became_ready: list[bytes] = []
        self.to_pull: list[bytes] = []  # REMOTE objects something here now waits for
        self.made_elsewhere: list[bytes] = []  # results expected here, found REMOTE
        self.unborrows: list[tuple[bytes, bytes, int]] = []  # (node, object id, count)
        self.forgets: list[tuple[bytes, bytes]] = []  # (node, object id)
        self.to_rebuild: list[tuple[Client, bytes]] = []  # (owner, lost object now needed)
        self.to_restore: list[bytes] = []  # objects on disk something here now waits for
        self.clock = 0  # counts uses, for ObjectEntry.used
        self.gone: set[bytes] = set()  # nodes that left the cluster
        # Pins of ids that are not objects (actor handles inside values): (id, +1/-1) ->
        # whether the id was known there.
        self.other_pins: Callable[[bytes, int], bool] = lambda _id, _delta: False

    # --- making objects --------------------------------------------------------------

    def expect(self, object_id: bytes, job_id: bytes, holder: Client,
               rebuild: bool = False) -> None:
        """A task was submitted: its return object will exist; the submitter holds it
        (unless the task runs again to ``rebuild`` it: then it holds what it held)."""
        entry = self.entries.setdefault(object_id, ObjectEntry(object_id, job_id))
        entry.owner = entry.owner or holder
        if not rebuild:
            entry.holders.add(holder)

    def put_inline(self, object_id: bytes, job_id: bytes, data: bytes, contained: list[bytes],
                   holder: Client, is_error: bool = False) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id)
            if holder:
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
        offset = self.allocate(size)
        if offset is None:
            return -1
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id)
            entry.holders.add(holder)
        if entry.state is ObjState.CREATING:  # a retry after the writer died mid-write
            self.allocator.free(entry.offset)
        entry.move(ObjState.CREATING)
        entry.offset, entry.size, entry.writer = offset, size, holder
        self.touch(entry)
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
        self.touch(entry)
        entry.contained = [c for c in contained if self._pin(c)]
        self._tell_subscribers(entry)
        self._maybe_free(entry)

    # --- reading and counting --------------------------------------------------------

    def subscribe(self, client: Client, object_id: bytes, for_get: bool) -> bool:
        """Notify ``client`` when the object is ready here (a copy pulled first if it is
        elsewhere); False if it does not exist.

        ``for_get``: the value will be read, so an error in it counts as handled."""
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        entry.delivered = entry.delivered or for_get
        self.touch(entry)
        if entry.state is ObjState.READY and not entry.on_disk and not entry.leaving:
            self._tell(client, entry)
        else:
            entry.subscribers.add(client)
            self.want(object_id)
        return True

    def want(self, object_id: bytes) -> None:
        """Something here waits for this object: if it is elsewhere, pull a copy; on
        disk, read it back; if it was lost, have it rebuilt."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.state is ObjState.REMOTE:
            self.to_pull.append(object_id)
        elif entry is not None and entry.on_disk:
            self.to_restore.append(object_id)
        elif entry is not None and entry.state is ObjState.PENDING:
            entry.wanted = True
            self.rebuild_if_lost(object_id)

    def rebuild_if_lost(self, object_id: bytes) -> None:
        """Something needs this object: if it was lost, its owner is asked to rebuild it."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.lost:
            entry.lost = False
            self.to_rebuild.append((entry.owner, object_id))

    def rebuilding(self, object_id: bytes, job_id: bytes, owner: Client) -> bool:
        """``owner`` runs a task again to rebuild a result, and the task takes this
        argument: whether the argument must be rebuilt first (lost with a node, or freed
        since: made anew, PENDING, for the task to wait for; ``owner`` is asked)."""
        entry = self.entries.get(object_id)
        if entry is None:
            self.entries[object_id] = ObjectEntry(object_id, job_id, owner=owner)
            return True
        if entry.lost:
            entry.lost = False
            entry.wanted = True
            return True
        return False

    # --- across nodes ----------------------------------------------------------------

    def lend(self, object_id: bytes, node: bytes) -> bool:
        """We hand a ref to ``node``: the object stays while it has not given it back.
        False if there is no such object here."""
        entry = self.entries.get(object_id)
        if entry is None:
            return False
        if entry.borrowers is None:
            entry.borrowers = {}
        count = entry.borrowers.get(node, 0) + 1
        if count:
            entry.borrowers[node] = count
        else:  # (its give-back came first)
            del entry.borrowers[node]
            self._maybe_free(entry)
        return True

    def borrowed(self, object_id: bytes, node: bytes, job_id: bytes, size: int,
                 is_error: bool = False, holder: Client = b"") -> ObjectEntry:
        """``node`` handed us a ref: an object we do not have yet is REMOTE, there.
        ``holder``: a process here that holds it from now on, if it is new here (a result
        we expected is held by who submitted its task, until they let go: perhaps already,
        before it was made)."""
        entry = self.entries.get(object_id)
        expected = entry is not None and entry.state is ObjState.PENDING
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id, size=size)
            entry.state = ObjState.REMOTE
            entry.home = node
            if holder:
                entry.holders.add(holder)
        elif expected:  # (a result we expected: made there)
            entry.move(ObjState.REMOTE)
            entry.home, entry.size, entry.is_error, entry.lost = node, size, is_error, False
            self.made_elsewhere.append(object_id)
            if entry.wanted:
                self.to_pull.append(object_id)
        elif entry.state is ObjState.REMOTE and entry.home in self.gone:
            entry.home = node  # (the node it was on died: this one has it)
        if entry.lenders is None:
            entry.lenders = {}
        entry.lenders[node] = entry.lenders.get(node, 0) + 1
        if expected and not entry.used_here:  # (let go already: what was lent goes back)
            self._maybe_free(entry)
        return entry

    def elsewhere(self, object_id: bytes, node: bytes, job_id: bytes) -> None:
        """An object we have no entry for is on ``node`` (to pull from; its owner's node
        counts it, not us)."""
        entry = self.entries.get(object_id)
        if entry is None:
            entry = self.entries[object_id] = ObjectEntry(object_id, job_id)
            entry.state, entry.home = ObjState.REMOTE, node
        elif entry.state is ObjState.REMOTE and entry.home in self.gone:
            entry.home = node  # (the node it was on died: its owner's node rebuilds it)

    def unborrow(self, node: bytes, object_id: bytes, count: int) -> None:
        """``node`` gives back ``count`` refs we lent it. Counts may go below zero for a
        while: a give-back that overtook its lend (a worker tells us of a lend as its
        answer leaves, on another connection)."""
        entry = self.entries.get(object_id)
        if entry is None:
            return
        if entry.borrowers is None:
            entry.borrowers = {}
        left = entry.borrowers.get(node, 0) - count
        if left:
            entry.borrowers[node] = left
        else:
            entry.borrowers.pop(node, None)
        self._maybe_free(entry)

    def copied_to(self, object_id: bytes, node: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            if entry.copies is None:
                entry.copies = set()
            entry.copies.add(node)

    def forget(self, object_id: bytes) -> None:
        """Its home freed it: our copy goes once nothing here uses it."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.cached:
            entry.cached = False
            self._maybe_free(entry)

    def node_gone(self, node: bytes) -> None:
        """A node left the cluster: what it borrowed is given back, it keeps no copies,
        and nothing is owed to it. What we have only there is lost: a result of a task
        of ours is rebuilt when needed; one lent to us is pulled from another node that
        lent it, if any (its owner's rebuilds it)."""
        self.gone.add(node)
        for entry in list(self.entries.values()):
            if entry.copies:
                entry.copies.discard(node)
            if entry.lenders:
                entry.lenders.pop(node, None)
            if entry.home == node and entry.state is not ObjState.READY:
                self._home_gone(entry)
                if entry.lost:
                    self._maybe_free(entry)
            if entry.borrowers and node in entry.borrowers:
                del entry.borrowers[node]
                self._maybe_free(entry)

    def _home_gone(self, entry: ObjectEntry) -> None:
        if entry.owner and not is_put_object(entry.object_id):
            self._abort_copy(entry, ObjState.PENDING)
            entry.home, entry.lost = b"", True
            if entry.subscribers or entry.wanted:
                self.want(entry.object_id)
        elif entry.lenders:  # (a copy on its way from there starts again: Transfers)
            entry.home = next(iter(entry.lenders))

    def _abort_copy(self, entry: ObjectEntry, state: ObjState) -> None:
        """Drop a copy that was on its way here (its block), into ``state``."""
        if entry.state is ObjState.CREATING:
            self.allocator.free(entry.offset)
            entry.offset = -1
        entry.move(state)

    def restart_copy(self, object_id: bytes) -> None:
        """A copy on its way here from a node that left is pulled again from ``home``."""
        entry = self.entries.get(object_id)
        if entry is not None and entry.state is ObjState.CREATING:
            self._abort_copy(entry, ObjState.REMOTE)

    def start_copy(self, object_id: bytes, size: int) -> int | None:
        """A block for a copy being pulled (None: the store is full even without unused
        copies); the object is pinned until ``copied``."""
        entry = self.entries.get(object_id)
        if entry is None or entry.state is not ObjState.REMOTE:
            return None
        offset = self.allocate(size)
        if offset is not None:
            entry.move(ObjState.CREATING)
            entry.offset, entry.size = offset, size
        return offset

    def copied(self, object_id: bytes, data: bytes | None, is_error: bool,
               contained: list[bytes]) -> None:
        """A pull is complete (``data``: a small value, kept inline; else its block is
        written): READY here, cached for reuse."""
        entry = self.entries.get(object_id)
        if entry is None or entry.state is ObjState.READY:
            return
        if data is not None:
            if entry.state is ObjState.CREATING:
                self.allocator.free(entry.offset)
            entry.data, entry.offset, entry.size = data, -1, len(data)
        entry.is_error, entry.cached = is_error, not is_error  # (a lost one: not kept)
        self._ready(entry, contained)

    def allocate(self, size: int) -> int | None:
        """A store block, dropping unused cached copies (oldest first) if it must."""
        offset = self.allocator.allocate(size)
        if offset is not None:
            return offset
        for entry in [e for e in self.entries.values() if e.cached and not e.used_here]:
            entry.cached = False
            self._maybe_free(entry)
            offset = self.allocator.allocate(size)
            if offset is not None:
                return offset
        return None

    def add_holder(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.add(client)

    def release(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.holders.discard(client)
            entry.subscribers.discard(client)
            if entry.told:
                entry.told.discard(client)
            self._maybe_free(entry)

    def release_all(self, client: Client) -> None:
        """A process is gone: everything it held is let go, and puts it never sealed."""
        for entry in list(self.entries.values()):
            if entry.state is ObjState.CREATING and entry.writer == client and is_put_object(
                entry.object_id
            ):
                del self.entries[entry.object_id]
                self.allocator.free(entry.offset)
            elif client in entry.holders or client in entry.subscribers or (
                    entry.told and client in entry.told):
                self.release(client, entry.object_id)

    def pin(self, object_id: bytes, reader: bool = False) -> bool:
        """Keep it alive; ``reader``: for a task that reads it (it stays in its block)."""
        if reader and object_id in self.entries:
            entry = self.entries[object_id]
            entry.readers += 1
            self.touch(entry)
        return self._pin(object_id)

    def unpin(self, object_id: bytes, reader: bool = False) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            self.other_pins(object_id, -1)
        else:
            entry.pins -= 1
            entry.readers -= reader
            self._maybe_free(entry)

    def mark_delivered(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None:
            entry.delivered = True

    def get(self, object_id: bytes) -> ObjectEntry | None:
        return self.entries.get(object_id)

    def is_ready(self, object_id: bytes) -> bool:
        """Whether it can be read here now (READY, and not on disk)."""
        entry = self.entries.get(object_id)
        return entry is not None and entry.state is ObjState.READY and not entry.on_disk

    def _tell(self, client: Client, entry: ObjectEntry) -> None:
        self.notify.append((client, entry.location()))
        if entry.offset >= 0:
            if entry.told is None:
                entry.told = set()
            entry.told.add(client)

    def mapped_by(self, entry: ObjectEntry) -> set[Client]:
        """The processes that may read its block: who holds it, and who was told where."""
        return entry.holders | entry.told if entry.told else set(entry.holders)

    def touch(self, entry: ObjectEntry) -> None:
        self.clock += 1
        entry.used = self.clock

    # --- spilling (zray/node/spilling.py moves the bytes) ----------------------------

    def spillable(self) -> list[ObjectEntry]:
        """Objects in blocks that no task reads now, the least recently used first."""
        return sorted((e for e in self.entries.values()
                       if e.state is ObjState.READY and e.offset >= 0 and not e.readers
                       and not e.cached and not e.is_error), key=lambda e: e.used)

    def leaves(self, entry: ObjectEntry) -> None:
        """Its mappers are asked to let go of its block. A process told its place now
        would be told a block about to be freed, and could not know it was meant to let
        go of it too (its answer to the ask may cross the place on the wire): until the
        move ends, who asks for it waits (``subscribers``)."""
        entry.leaving = True

    def stays(self, entry: ObjectEntry) -> None:
        """It did not leave its block after all (mapped by a view, read by a task, or no
        room on the disk): who asked for it meanwhile is told where it is."""
        entry.leaving = False
        if entry.offset >= 0:
            self._tell_subscribers(entry)

    def to_disk(self, entry: ObjectEntry) -> None:
        """Its spill file is written and nothing here maps its block: the block is free.
        Who asked for it while it left has it read back."""
        self.allocator.free(entry.offset)
        entry.offset, entry.spilled, entry.leaving = -1, True, False
        if entry.subscribers:
            self.want(entry.object_id)

    def restored(self, entry: ObjectEntry, offset: int) -> None:
        """It was read back into the block at ``offset``: who waits for it gets it."""
        entry.offset = offset
        self.touch(entry)
        self.became_ready.append(entry.object_id)
        self._tell_subscribers(entry)

    def _tell_subscribers(self, entry: ObjectEntry) -> None:
        """Those waiting for it are sent where it is, once."""
        for client in entry.subscribers:
            self._tell(client, entry)
        entry.subscribers.clear()

    def _pin(self, object_id: bytes) -> bool:
        entry = self.entries.get(object_id)
        if entry is None:
            return self.other_pins(object_id, +1)
        entry.pins += 1
        return True

    def _maybe_free(self, entry: ObjectEntry) -> None:
        if entry.holders or entry.pins > 0 or entry.borrowers:
            return
        if entry.lenders:  # (nothing here uses it: what was lent goes back)
            for node, count in entry.lenders.items():
                self.unborrows.append((node, entry.object_id, count))
            entry.lenders = None
        if entry.state is ObjState.REMOTE or entry.lost:
            del self.entries[entry.object_id]
            return
        if entry.state is not ObjState.READY or entry.cached:
            return  # still being made: freed once it is sealed with no one left
        del self.entries[entry.object_id]
        for node in entry.copies or ():
            self.forgets.append((node, entry.object_id))
        if entry.offset >= 0:
            self.allocator.free(entry.offset)
        unhandled = entry.data if entry.is_error and not entry.delivered else None
        self.freed.append(Freed(entry.object_id, entry.job_id, unhandled, entry.listed,
                                entry.size if entry.spilled else 0))
        for contained in entry.contained:
            self.unpin(contained)

    # --- accounting ------------------------------------------------------------------

    def bytes_in_store(self) -> int:
        return self.allocator.in_use
