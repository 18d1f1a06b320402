"""Everything a process sends its node agent, in one order: ``AgentSender`` on the tx DEALER.

Two kinds of traffic share the socket and must not overtake each other:

- reference-count edges (``RefsChanged``): refs this process started holding go out before
  the next message (which may hand them on, e.g. a result containing a borrowed ref); refs
  it let go go out after it (the message may pin them first, e.g. a ref inside a put);
- messages nobody waits on yet (a direct task's notice, a worker's report of one, an actor
  call), deferred and sent together in one ``Batch``: always before any later message, and
  before any release (they may pin what is let go). A wait flushes them only if it may
  depend on one (``flush_for_wait``): an owner waiting for its direct task's answer does
  not make the agent wake for its notice and its released refs on every round trip.

Any thread may send; one lock orders it all. The I/O thread calls ``flush`` every pass and
sleeps no longer than ``timeout_ms`` says.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import zmq

from zray import protocol as p
from zray.objects.refs import RefCounter

_BATCH_MAX = 256
_MAX_UNPROCESSED = 4096  # deferred messages sent that the agent has not handled yet


class AgentSender:
    def __init__(self, socket: zmq.Socket, refs: RefCounter, window_s: float,
                 idle_timeout_ms: int, wake_io: Callable[[], object],
                 on_released: Callable[[list[bytes]], None],
                 wake_idle_io: Callable[[], object] = lambda: None) -> None:
        self._socket = socket
        self._refs = refs
        self._window_s = window_s
        self._idle_timeout_ms = idle_timeout_ms
        self._wake_io = wake_io
        self._on_released = on_released  # this process forgets them (LocalObjects.forget)
        self._wake_idle_io = wake_idle_io  # the I/O thread, if it sleeps with nothing due
        self._lock = threading.Lock()
        self._deferred: list[p.Message] = []
        self._deferred_since = 0.0
        self._deferred_soon = False  # one of them must go within the batch window
        self._deferred_awaited = False  # a wait may depend on one of them (flush_for_wait)
        self._held_released: list[bytes] = []
        self._room = threading.Condition(self._lock)
        self._unprocessed = 0  # deferred messages sent, not yet reported handled (Processed)

    def send(self, msg: p.Message, releases_first: bool = False) -> None:
        """Send ``msg`` with the pending edges around it; ``releases_first``: a request that
        pins nothing and wants the memory back (CreateObject, so a freed block is reused
        rather than fresh pages touched) goes after the releases."""
        with self._lock:
            _, released = self._drain_refs_locked()
            self._send_deferred_locked()
            if released and releases_first:
                self._send_released(released)
            p.send(self._socket, msg)
            if released and not releases_first:
                self._send_released(released)

    def defer(self, msg: p.Message, soon: bool = True, wake: bool = True,
              awaited: bool = True) -> None:
        """Send ``msg`` later, in a Batch: within the batch window if ``soon`` (an actor's
        answers, which its mailbox waits for), else within a poll period (a submitter's
        notices, a worker's reports: whatever depends on them is sent after them anyway);
        sooner with this process's next message, 256 messages, or its next wait if
        ``awaited`` (a wait may depend on it: not so a notice of a task the owner sent
        itself, whose answer comes straight back). ``wake``: wake the I/O thread to see
        to it (not needed where the caller's own loop sends what is due, as a worker's
        main thread does between tasks)."""
        with self._lock:
            if not self._deferred:
                self._deferred_since = time.monotonic()
                self._wake_idle_io()
            self._deferred_awaited = self._deferred_awaited or awaited
            if soon and not self._deferred_soon:
                self._deferred_soon = True
                if wake:
                    self._wake_io()
            self._deferred.append(msg)
            if len(self._deferred) >= _BATCH_MAX:
                self._send_deferred_locked()

    def flush(self, now: float | None = None) -> None:
        """Edges out, and deferred messages once due (``now`` None: at once). While a
        deferred message waits, releases wait with it."""
        with self._lock:
            _, released = self._drain_refs_locked()
            if self._deferred and now is not None and now < self._due_locked():
                self._held_released = released
                return
            self._send_deferred_locked()
            if released:
                self._send_released(released)

    def wait_for_room(self, still_alive: Callable[[], None]) -> None:
        """Block a submitting thread while the agent is far behind on the deferred messages
        (notices of direct tasks and calls do not wait for it otherwise, and its backlog
        would grow without bound). Never called holding another lock, nor from the I/O
        thread, which takes the agent's Processed replies; ``still_alive`` raises if the
        agent is gone."""
        with self._lock:
            while self._unprocessed + len(self._deferred) >= _MAX_UNPROCESSED:
                self._send_deferred_locked()
                still_alive()
                self._room.wait(0.1)

    def processed(self, count: int) -> None:
        """The agent handled ``count`` of our deferred messages (from the I/O thread)."""
        with self._lock:
            self._unprocessed = max(0, self._unprocessed - max(0, count))
            if self._unprocessed < _MAX_UNPROCESSED // 2:
                self._room.notify_all()

    def flush_for_wait(self) -> None:
        """Before a wait: send the deferred messages if the wait may depend on one (and
        whatever came before it); else leave them, and released refs, for their batch."""
        with self._lock:
            if self._deferred_awaited:
                _, released = self._drain_refs_locked()
                self._send_deferred_locked()
                if released:
                    self._send_released(released)

    def timeout_ms(self, now: float) -> int:
        """How long the I/O thread may sleep before something here is due."""
        with self._lock:
            return self._timeout_locked(now) if self._deferred else self._idle_timeout_ms

    def holding(self) -> bool:
        """Whether released refs wait here for the next flush (``agent_first``, or a
        deferred message not due yet)."""
        return bool(self._held_released)

    def deferred_timeout_ms(self) -> int | None:
        """Like ``timeout_ms``, but None when nothing is deferred (a worker's main thread
        waiting for its next task sends its reports when due, and otherwise sleeps)."""
        with self._lock:
            return self._timeout_locked(time.monotonic()) if self._deferred else None

    def _timeout_locked(self, now: float) -> int:
        # At least 1: poll() truncates to whole milliseconds, and 0 would spin.
        return max(1, math.ceil((self._due_locked() - now) * 1000))

    def _due_locked(self) -> float:
        """When the deferred messages must go: within the batch window if one of them is
        ``soon``, else within a poll period (fewer, bigger batches; fewer wake-ups of the
        agent while this process runs a tight loop)."""
        window = self._window_s if self._deferred_soon else self._idle_timeout_ms / 1000
        return self._deferred_since + window

    def agent_first(self) -> bool:
        """Whether the agent must hear from this process before a task's owner hears the
        task is done: this process holds refs it did not hold before (a worker kept a ref
        it was given), or has deferred messages (a notice of a task it submitted, which may
        pin the task's arguments). The edges of the new refs are sent now; the rest goes
        with the next message, and only this socket keeps that order."""
        with self._lock:
            added, self._held_released = self._drain_refs_locked()
            if self._held_released:
                self._wake_idle_io()  # (sent by the next flush, if nothing goes before)
            return bool(added) or bool(self._deferred)

    def _drain_refs_locked(self) -> tuple[list[bytes], list[bytes]]:
        """Send the added edges now; return them, and the released ones (held back so far
        included), which the caller sends or holds back."""
        added, released = self._refs.drain()
        if self._held_released:
            held, self._held_released = self._held_released, []
            again = set(held).intersection(added)
            if again:  # let go, held back, taken again: the agent never heard it went
                added = [i for i in added if i not in again]
                held = [i for i in held if i not in again]
            released = held + released
        if added:
            p.send(self._socket, p.RefsChanged(added, []))
        return added, released

    def _send_deferred_locked(self) -> None:
        if self._deferred:
            p.send(self._socket, p.batch(self._deferred))
            self._unprocessed += len(self._deferred)
            self._deferred = []
            self._deferred_soon = self._deferred_awaited = False

    def _send_released(self, released: list[bytes]) -> None:
        self._on_released(released)
        p.send(self._socket, p.RefsChanged([], released))
