"""A worker's stdout and stderr: each task's output ends with a whole line.

The agent reads a worker's pipes line by line and prefixes each line with the task it came
from. A task that prints without a final newline (``print(x, end="")``) would leave a
partial line that waits for the next task's output, and is printed glued to it under the
wrong prefix, or lost if that worker prints nothing more. So the worker's streams note
whether a line is open, and ``finish_lines`` (after each task, before its result goes)
closes it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class _LineTracking:
    """A text stream that remembers whether its last write left a line open."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.line_open = False

    def write(self, text: str) -> int:
        if text:
            self.line_open = not text.endswith("\n")
        return self._stream.write(text)

    def finish_line(self) -> None:
        if self.line_open:
            self._stream.write("\n")
            self.line_open = False
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # everything else is the stream's own
        return getattr(self._stream, name)


def track_lines() -> None:
    """Wrap this process's stdout and stderr (a worker calls this once, at start)."""
    sys.stdout = _LineTracking(sys.stdout)
    sys.stderr = _LineTracking(sys.stderr)


def finish_lines() -> None:
    """End the lines a task left open, and flush, so the agent reads whole lines now."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _LineTracking):
            stream.finish_line()
        else:  # a task replaced the stream: flush what it offers
            stream.flush()
