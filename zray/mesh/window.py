"""Credit windows: how many messages one node may have in flight to another.

Each direction of each mesh connection (a node's DEALER to a peer's door) has a window of
``size`` messages. The sender spends one credit per message and queues what it cannot send
yet; the receiver, every ``size // 2`` messages it has handled, sends ``Credit(size // 2)``
back. So at most ``size`` messages wait in the receiver's socket queue (its memory stays
bounded whatever the sender does), a sender never meets the sockets' high-water mark
(``size`` is below it, so nothing is dropped and no send blocks), and order is kept: the
queue is first in, first out. No I/O here: the owner of the socket sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

Frames = list[bytes]


class SendWindow:
    def __init__(self, size: int, send: Callable[[Frames], None]) -> None:
        self.size = size
        self.credit = size
        self._send = send
        self.queued: deque[Frames] = deque()
        self.sent = 0

    def send(self, frames: Frames) -> None:
        if self.credit > 0 and not self.queued:
            self.credit -= 1
            self.sent += 1
            self._send(frames)
        else:
            self.queued.append(frames)

    def granted(self, credit: int) -> None:
        """The receiver handled ``credit`` more: send what waits, as far as it goes."""
        self.credit = min(self.size, self.credit + max(0, credit))
        while self.credit > 0 and self.queued:
            self.credit -= 1
            self.sent += 1
            self._send(self.queued.popleft())


class ReceiveWindow:
    def __init__(self, size: int) -> None:
        self.step = max(1, size // 2)
        self._handled = 0

    def handled(self) -> int:
        """Count one message handled; the credit to give back now (0: none yet)."""
        self._handled += 1
        if self._handled < self.step:
            return 0
        self._handled = 0
        return self.step
