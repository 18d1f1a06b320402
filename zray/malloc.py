"""glibc malloc settings for processes that move large messages (drivers and workers).

By default glibc serves each allocation over 128 KB-32 MB from fresh ``mmap`` pages and
hands them back when freed, so every 1 MB argument costs 256 page faults twice over
(serialising it, receiving it): that is slower than the copy itself. Keeping such blocks on
the heap, and up to ``_TRIM_BYTES`` of freed heap before returning it to the system, lets
them be reused warm. (Ray's object store reuses pre-touched memory for the same reason.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_BYTES = 16 * 1024 * 1024  # above the largest argument sent in a message (8 MB)
_TRIM_BYTES = 64 * 1024 * 1024


# The same for the processes a driver starts, from their first allocation (glibc reads
# these at start-up; other C libraries ignore them).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(_MMAP_BYTES),
              "MALLOC_TRIM_THRESHOLD_": str(_TRIM_BYTES)}


def keep_large_blocks_warm() -> bool:
    """Apply the settings in this process; False where this is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES))
