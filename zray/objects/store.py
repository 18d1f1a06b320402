"""The mmap object store: one arena file, an allocator over it, and mappings of it.

The node agent creates the arena (a sparse file in /dev/shm, or on disk when /dev/shm is too
small) and owns the ``Allocator``; every process on the node maps the whole arena once and
reads and writes objects in place. Writing into fresh shared-memory pages costs a page fault
per page (about a tenth of memcpy speed), so the allocator hands out the lowest free
addresses first: freed pages that were already touched are reused before new ones.
"""

from __future__ import annotations

import bisect
import mmap
import os
import shutil
from dataclasses import dataclass

PAGE = 4096
_SHM_DIR = "/dev/shm"


class Allocator:
    """First-fit allocation of page-aligned blocks in ``[0, capacity)``; no I/O."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity // PAGE * PAGE
        self.in_use = 0
        self._free_starts: list[int] = [0]  # sorted block starts
        self._free_sizes: dict[int, int] = {0: self.capacity}
        self._allocated: dict[int, int] = {}

    def allocate(self, size: int) -> int | None:
        """The offset of a new block of at least ``size`` bytes, or None if none fits."""
        need = max(PAGE, -(-size // PAGE) * PAGE)
        for start in self._free_starts:
            block = self._free_sizes[start]
            if block >= need:
                self._take(start, block, need)
                return start
        return None

    def free(self, offset: int) -> None:
        size = self._allocated.pop(offset)  # KeyError: a double free is a bug, surface it
        self.in_use -= size
        i = bisect.bisect(self._free_starts, offset)
        start, end = offset, offset + size
        if i < len(self._free_starts) and self._free_starts[i] == end:  # merge with next
            end += self._free_sizes.pop(self._free_starts.pop(i))
        if i > 0 and self._free_starts[i - 1] + self._free_sizes[self._free_starts[i - 1]] == start:
            start = self._free_starts[i - 1]  # merge with previous
            self._free_sizes[start] = end - start
            return
        self._free_starts.insert(i, start)
        self._free_sizes[start] = end - start

    def largest_free(self) -> int:
        return max(self._free_sizes.values(), default=0)

    def _take(self, start: int, block: int, need: int) -> None:
        i = bisect.bisect_left(self._free_starts, start)
        self._free_starts.pop(i)
        del self._free_sizes[start]
        if block > need:
            self._free_starts.insert(i, start + need)
            self._free_sizes[start + need] = block - need
        self._allocated[start] = need
        self.in_use += need


@dataclass(frozen=True)
class ArenaPlacement:
    path: str
    on_disk: bool
    warning: str  # empty unless we had to fall back to disk


def place_arena(name: str, size: int, fallback_dir: str) -> ArenaPlacement:
    """Where to put an arena of ``size`` bytes: /dev/shm if it has room, else on disk."""
    shm_free = shutil.disk_usage(_SHM_DIR).free if os.path.isdir(_SHM_DIR) else 0
    if shm_free >= size:
        return ArenaPlacement(os.path.join(_SHM_DIR, name), False, "")
    warning = (
        f"/dev/shm has {shm_free / 2**20:.0f} MB free but the object store needs "
        f"{size / 2**20:.0f} MB, so zray falls back to a disk-backed store in {fallback_dir} "
        "(slower). To fix it: give the container more shared memory (docker run "
        f"--shm-size={-(-size // 2**30) + 1}g, or a larger tmpfs on /dev/shm), or pass a "
        "smaller object_store_memory to zray.init()."
    )
    return ArenaPlacement(os.path.join(fallback_dir, name), True, warning)


def create_arena(path: str, size: int) -> None:
    """A new sparse file of ``size`` bytes; pages are touched on first use, not here."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class Mapping:
    """One process's mapping of the whole arena."""

    def __init__(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self.mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.view = memoryview(self.mmap)

    def close(self) -> None:
        """Unmap, unless zero-copy views still point in; then the OS unmaps at exit."""
        try:
            self.view.release()
            self.mmap.close()
        except BufferError:
            pass
