"""An exported function or class: the blob it travels in, and loading it in a worker.

The blob holds three things: the exporting process's import path (functions of importable
modules are pickled by reference, so the worker must find the driver's modules: a script's
directory, a test's rootdir, as in Ray), the source of the files its by-value code came from,
and the pickled function. Code keeps its file names (zray.objects.serialization.Pickler) and
the worker puts the shipped source in ``linecache``, so a remote traceback or a warning names
the user's file and line and shows the line, even where the worker cannot read that file.
"""

from __future__ import annotations

import linecache
import pickle
import sys
from typing import Any

from zray.objects.serialization import dumps

# Source shipped with one export, at most: a script is small; a huge generated file is not
# worth its bytes in every export (a worker that can read it still shows its lines).
MAX_SOURCE_BYTES = 1 << 20


def export_blob(fn: Any) -> bytes:
    """``fn`` (a function or a class) ready to send to workers; TypeError if it cannot be."""
    files: set[str] = set()
    try:
        pickled = dumps(fn, code_files=files)
    except Exception as exc:
        raise TypeError(f"remote function {getattr(fn, '__qualname__', fn)!r} cannot be "
                        f"pickled: {exc}. Functions must not capture locks, sockets or open "
                        "files; create those inside the function instead.") from exc
    return pickle.dumps((list(sys.path), _sources(files), pickled))


def load_function(blob: bytes) -> Any:
    """The function or class in ``blob``, its import path added and its source known."""
    driver_path, sources, pickled = pickle.loads(blob)
    sys.path.extend(entry for entry in driver_path if entry not in sys.path)
    for filename, lines in sources.items():
        # No mtime: linecache.checkcache() leaves the entry alone (as for a zipimported file).
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return pickle.loads(pickled)


def _sources(files: set[str]) -> dict[str, list[str]]:
    """The lines of each file that ``linecache`` knows (a script, a notebook cell)."""
    sources: dict[str, list[str]] = {}
    budget = MAX_SOURCE_BYTES
    for filename in sorted(files):
        linecache.checkcache(filename)
        lines = linecache.getlines(filename)
        size = sum(map(len, lines))
        if lines and size <= budget:
            sources[filename] = lines
            budget -= size
    return sources
