"""A thread blocked in a get reads its own answer: the leader.

A task's answer comes back to its owner on a lane (zray/lane.py). Read by the I/O thread,
it costs two wake-ups before the blocked thread runs: the I/O thread's, then, once it has
filed the answer and released the waiter's lock, the blocked thread's, which also needs
the GIL the I/O thread holds until it polls again. Measured, that hand-over was 55 µs of a
0.31 ms round trip. So one blocked thread at a time, the leader, polls the answer lanes
itself (with a pipe the filing of its object also writes to, for answers that come
another way: the agent's, another node's), reads and files what comes, and returns as
soon as what it waits for is ready.

The I/O thread polls the lanes through an epoll set of its own that holds theirs
(``io_fileno``). While a thread leads, their set is out of it, so an answer wakes the
leader alone; put back when the wait ends, it wakes the I/O thread only if something came
meanwhile that the leader did not read. The I/O thread also reads the lanes before it takes
the agent's messages (which may say a worker died: what it answered first is seen first).
"""

from __future__ import annotations

import math
import os
import select
import threading
import time

from zray.lane import SharedLanes
from zray.objects.local import Signal

_LEAVE_S = 5.0  # how long closing waits for a leading thread to leave the lanes


class Leader:
    def __init__(self, lanes: SharedLanes) -> None:
        self._lanes = lanes
        self._one = threading.Lock()  # held by the leading thread
        self._ident = 0  # the leading thread's
        self._closed = False  # the process is shutting down: the lanes are not ours
        self._io_epoll = select.epoll()  # what the I/O thread polls the lanes through
        self._io_epoll.register(lanes.fileno(), select.EPOLLIN)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()  # (used by the leading thread only)
        self._poll.register(lanes.fileno(), select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)

    def wait(self, signal: Signal, timeout: float | None) -> bool:
        """``signal.wait(timeout)``, reading the lanes meanwhile if no other thread does."""
        if self._closed or not self._one.acquire(blocking=False):
            return signal.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if not self._closed:
                self._lead(signal, deadline)
        finally:
            self._one.release()
        # (closing: the lanes are no longer ours to read; else set, or the time is up)
        return signal.wait(None if deadline is None else deadline - time.monotonic())

    def _lead(self, signal: Signal, deadline: float | None) -> None:
        self._io_epoll.unregister(self._lanes.fileno())
        self._ident = threading.get_ident()
        signal.nudge = self._nudge
        try:
            while not signal.is_set() and not self._closed:
                if deadline is None:
                    timeout_ms = -1
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    timeout_ms = math.ceil(left * 1000)
                for fd, _ in self._poll.poll(timeout_ms):
                    if fd == self._wake_r:
                        self._drain_wake()
                    elif not self._closed:
                        self._lanes.read()
        finally:
            signal.nudge = None
            self._ident = 0
            self._io_epoll.register(self._lanes.fileno(), select.EPOLLIN)

    def leading(self) -> bool:
        """Whether a thread reads the lanes now."""
        return self._one.locked()

    def io_fileno(self) -> int:
        """For the I/O thread's poll: readable when a lane is, and no thread leads."""
        return self._io_epoll.fileno()

    def close(self) -> None:
        """Before the lanes close: a leading thread leaves them (it waits on as others do),
        so no thread polls their descriptors once closed (their numbers are reused)."""
        self._closed = True
        try:
            os.write(self._wake_w, b"c")
        except BlockingIOError:  # (full: a leader wakes anyway)
            pass
        left = self._one.acquire(timeout=_LEAVE_S)
        self._io_epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if left:
            self._one.release()

    def _nudge(self) -> None:
        """The leader's object is ready (filed by another thread): wake its poll."""
        if threading.get_ident() != self._ident:
            try:
                os.write(self._wake_w, b"n")
            except (BlockingIOError, OSError):  # (full: it wakes anyway; closed: closing)
                pass

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
