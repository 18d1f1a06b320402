"""Spilling: when the store is full, objects go to files on disk and come back when wanted.

A request for a block that does not fit (a new object, an object read back, a copy being
pulled) asks ``need``: objects no task reads are moved out, the least recently used first,
until the block would fit; the request is tried again once they are out (``waiting``).
Moving an object is a handshake, because every process on the node reads the store in
place and keeps the locations it was given::

    agent                                      each local process holding the object
      write its spill file (removed when the object is freed or read back)
      ReleaseBlocks([id, ...])  ------------>  drops the location it keeps; a live
                                               zero-copy view of it: "in use"
                                <------------  its deferred messages (a task's notice
                                               pins the arguments the task reads), then
                                               BlocksReleased(released, in_use)
      all released, still no task reading it: the block is freed (``on_disk``)

So a block is reused only once nobody can still read it. An object on disk that something
here waits for (a read, a task's argument) is read back into a block (``restore``); a node
pulling it is served from its file. ``ObjectStoreFullError`` comes only when nothing more
can go to disk: every object is read by a task or mapped by a view, or the disk limit
(``object_spill_max_bytes``, or 95% of the disk) is reached.

The files are plain writes, in the agent's loop, to the page cache: a 64 MiB object costs
the loop tens of milliseconds (the throughput is in ``zray microbenchmark``'s spill line).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable

import psutil

from zray.node import failures
from zray.node.object_table import Client, ObjectEntry, ObjectTable

_DISK_FULL_FRACTION = 0.95  # (Ray's local_fs_capacity_threshold)


def spill_directory(configured: str, session: str, zray_home: str) -> str:
    """Where a node's spill files go: ``configured``, else its session directory, unless
    that is on tmpfs (memory: spilling there frees nothing), then under ZRAY_HOME."""
    if configured:
        return os.path.join(configured, os.path.basename(session))
    if _on_tmpfs(session):
        return os.path.join(zray_home, "spill", os.path.basename(session))
    return os.path.join(session, "spill")


def _on_tmpfs(path: str) -> bool:
    real = os.path.realpath(path)
    best, fstype = "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") + "/"
        if (real + "/").startswith(mount) and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype in ("tmpfs", "ramfs")


class Spiller:
    def __init__(self, table: ObjectTable, view: Callable[[], memoryview], directory: str,
                 max_bytes: int, ask: Callable[[Client, list[bytes]], None],
                 is_local: Callable[[Client], bool],
                 record: Callable[[ObjectEntry], None],
                 being_made: Callable[[bytes], bool]) -> None:
        """``view()``: the node's store; ``ask(client, ids)``: send it ReleaseBlocks;
        ``is_local(client)``: a process of this node (one that maps the store);
        ``record(entry)``: its GCS row again (it moved); ``being_made(id)``: whether the
        task that makes it has not ended here yet (its worker's answer, with the block's
        place, may still be on its way to the owner: it stays)."""
        self.table, self.view, self.directory = table, view, directory
        self.max_bytes = max_bytes
        self.ask, self.is_local, self.record = ask, is_local, record
        self.being_made = being_made
        self.moving: dict[bytes, set[Client]] = {}  # object -> processes yet to answer
        self.released_by: dict[bytes, set[Client]] = {}  # object -> processes that let go
        self.asked: dict[Client, set[bytes]] = {}  # process -> objects it is yet to answer for
        self.in_use: set[bytes] = set()  # mapped by a view: not asked again while waiting
        self.waiting: list[Callable[[], None]] = []  # requests to try again once there is room
        self.restoring: set[bytes] = set()  # objects waiting for a block to be read into
        self.due = False  # room was made without a handshake: try ``waiting`` again
        self._retrying = False
        self.disk_bytes = 0  # in spill files now
        self.disk_objects = 0
        self.counts: Counter[str] = Counter()  # zray status: totals each way

    # --- making room -----------------------------------------------------------------

    def need(self, size: int, retry: Callable[[], None]) -> bool:
        """A block of ``size`` did not fit: move objects out until it would; ``retry``
        runs once they are out. False: nothing can go (the request fails now)."""
        if not self.waiting and not self._retrying:
            self.in_use.clear()  # (a new squeeze: views may have gone since the last)
        if not self._start_moves(size):
            return False
        self.waiting.append(retry)
        return True

    def _start_moves(self, size: int) -> bool:
        """Whether any object is on its way out (started now, or before)."""
        room = self.table.allocator.largest_free() + sum(
            e.size for e in map(self.table.get, self.moving) if e is not None)
        asks: dict[Client, list[bytes]] = {}
        for entry in self.table.spillable():
            if room >= size:
                break
            object_id = entry.object_id
            if object_id in self.moving or object_id in self.in_use or self.being_made(
                    object_id):
                continue
            if not self._disk_has_room(entry.size):
                continue
            holders = {c for c in self.table.mapped_by(entry) if self.is_local(c)}
            if not holders:  # (held by tasks' values or other nodes only: out at once)
                if self._moved_out(entry):
                    room, self.due = room + entry.size, True
                continue
            room += entry.size
            self.moving[object_id], self.released_by[object_id] = holders, set()
            self.table.leaves(entry)
            for client in holders:
                asks.setdefault(client, []).append(object_id)
        self._ask(asks)
        return bool(self.moving) or self.due

    def _ask(self, asks: dict[Client, list[bytes]]) -> None:
        for client, object_ids in asks.items():
            self.asked.setdefault(client, set()).update(object_ids)
            self.ask(client, object_ids)

    def on_released(self, client: Client, released: list[bytes], in_use: list[bytes]) -> bool:
        """A process answered; False if it names objects it was not asked about."""
        asked = self.asked.get(client, set())
        if not asked.issuperset(released) or not asked.issuperset(in_use):
            return False
        asked.difference_update(released)
        asked.difference_update(in_use)
        if not asked:
            self.asked.pop(client, None)
        for object_id in in_use:
            if self.moving.pop(object_id, None) is not None:
                del self.released_by[object_id]
                self.in_use.add(object_id)
                self._stays(object_id)
                self.due = True  # (try again: others may go instead)
        for object_id in released:
            self._answered(object_id, client)
        return True

    def client_gone(self, client: Client) -> None:
        self.asked.pop(client, None)
        for object_id in [i for i, asked in self.moving.items() if client in asked]:
            self._answered(object_id, client)

    def _answered(self, object_id: bytes, client: Client) -> None:
        asked = self.moving.get(object_id)
        if asked is None:
            return
        asked.discard(client)
        self.released_by[object_id].add(client)
        if asked:
            return
        entry = self.table.get(object_id)
        # Processes told where it is while we asked the others are asked in turn.
        later = {c for c in self.table.mapped_by(entry) if self.is_local(c)} - \
            self.released_by[object_id] if entry is not None else set()
        if later:
            self.moving[object_id] = later
            self._ask({client: [object_id] for client in later})
            return
        del self.moving[object_id], self.released_by[object_id]
        if entry is not None and not self._moved_out(entry):
            self.table.stays(entry)
        self.due = True

    def _stays(self, object_id: bytes) -> None:
        entry = self.table.get(object_id)
        if entry is not None:
            self.table.stays(entry)

    def _moved_out(self, entry: ObjectEntry) -> bool:
        """Write its file and free its block, unless a task reads it now (its notice came
        before the answer) or the disk is full."""
        if entry.offset < 0 or entry.readers or entry.object_id not in self.table.entries:
            return False
        if not self._disk_has_room(entry.size):
            return False
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(self._path(entry.object_id), "wb") as f:
            f.write(self.view()[entry.offset : entry.offset + entry.size])
        self.disk_bytes += entry.size
        self.disk_objects += 1
        self.counts["objects spilled"] += 1
        self.counts["bytes spilled"] += entry.size
        self.table.to_disk(entry)
        self.record(entry)
        return True

    def retry_waiting(self) -> None:
        """Try again what waited for room (each asks ``need`` again if it still does not
        fit), and the objects waiting to be read back."""
        self.due, self._retrying = False, True
        waiting, self.waiting = self.waiting, []
        try:
            for retry in waiting:
                retry()
        finally:
            self._retrying = False
        for object_id in list(self.restoring):
            self.restoring.discard(object_id)
            self.restore(object_id)

    # --- reading back ----------------------------------------------------------------

    def restore(self, object_id: bytes) -> None:
        """Read an object on disk back into a block, now or once there is room."""
        entry = self.table.get(object_id)
        if entry is None or not entry.on_disk or object_id in self.restoring:
            return
        offset = self.table.allocate(entry.size)
        if offset is None:
            # Waits, even if nothing can go now: a task ending or a view dropped makes room.
            self.restoring.add(object_id)
            self._start_moves(entry.size)
            return
        try:
            with open(self._path(object_id), "rb") as f:
                if f.readinto(self.view()[offset : offset + entry.size]) != entry.size:
                    raise OSError(f"it holds fewer than the object's {entry.size} bytes")
        except OSError as exc:  # (its readers get ObjectLostError, not a hang)
            self.table.allocator.free(offset)
            self.freed(object_id, entry.size)
            error = failures.spill_file_unreadable(object_id, self._path(object_id), exc)
            entry.data, entry.size, entry.is_error, entry.spilled = error, len(error), True, False
            self.table.restored(entry, -1)
            return
        self.counts["objects restored"] += 1
        self.counts["bytes restored"] += entry.size
        self.freed(object_id, entry.size)  # (its room on disk is for what it displaced)
        entry.spilled = False
        self.table.restored(entry, offset)
        self.record(entry)

    def read(self, object_id: bytes, start: int, size: int) -> bytes:
        """Bytes of an object on disk (for a node pulling it)."""
        with open(self._path(object_id), "rb") as f:
            return os.pread(f.fileno(), size, start)

    def freed(self, object_id: bytes, size: int) -> None:
        """The object is gone: so is its file."""
        try:
            os.unlink(self._path(object_id))
        except FileNotFoundError:
            pass  # (removed by hand: counted as gone all the same)
        self.disk_bytes -= size
        self.disk_objects -= 1

    def remove_all(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def status(self) -> dict[str, int | str]:
        return {"spilled_bytes": self.disk_bytes, "spilled_objects": self.disk_objects,
                "spill_dir": self.directory,
                **{k.replace(" ", "_"): v for k, v in sorted(self.counts.items())}}

    def limit_text(self) -> str:
        """What the disk holds and may hold, for ObjectStoreFullError."""
        mb = 2**20
        limit = (f"its limit of {self.max_bytes / mb:.1f} MB (object_spill_max_bytes)"
                 if self.max_bytes else f"{_DISK_FULL_FRACTION:.0%} of its disk")
        return (f"{self.disk_bytes / mb:.1f} MB are spilled to {self.directory}, up to "
                f"{limit}")

    def _disk_has_room(self, size: int) -> bool:
        """Whether a file of ``size`` fits under the limit. The objects waiting to be read
        back count as room: each leaves its file once back, so an object read back from a
        full disk swaps places with one that goes out (the disk holds both meanwhile)."""
        leaving = sum(e.size for e in map(self.table.get, self.restoring) if e is not None)
        if self.max_bytes:
            return self.disk_bytes + size <= self.max_bytes + leaving
        probe = self.directory
        while not os.path.isdir(probe):  # (made at the first spill)
            probe = os.path.dirname(probe)
        usage = shutil.disk_usage(probe)
        return usage.used + size <= _DISK_FULL_FRACTION * usage.total + leaving

    def _path(self, object_id: bytes) -> str:
        return os.path.join(self.directory, object_id.hex())
